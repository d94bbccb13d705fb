//! `cloister audit export --since`: copy the part of a log an auditor asked for.
//!
//! Records are exported as a **contiguous suffix**: from the first record with
//! `time_unix_ms >= since` to the end, with every checkpoint line in that range, plus checkpoints
//! sitting exactly at the boundary (they anchor the first exported record). Picking records by
//! time one by one would cut the hash chain (record times come from the caller's clock and are
//! not guaranteed monotonic), so the suffix is the unit that still verifies.
//!
//! The recipient verifies the export with
//! [`verify_from(.., ChainStart::FirstLine)`](super::verify::verify_from): the first line is the
//! anchor and each later checkpoint's signed head authenticates every exported record before it.
//! Records after the last exported checkpoint are reported as an unsealed tail.
//!
//! The exporter re-checks structure, sequence and chain while copying (so it never ships a
//! visibly broken log) but not signatures: it needs no key, and the recipient checks them. On
//! error the output may hold a partial export: write to a temporary file and rename.

use std::io::{BufRead, Write};

use super::verify::{Chain, ChainStart, LineReader, Step, VerifyError};

/// What was exported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportReport {
    /// Records written.
    pub records: u64,
    /// Checkpoint lines written.
    pub checkpoints: u64,
    /// `seq` of the first exported record.
    pub first_seq: Option<u64>,
}

/// Export failures.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The source log is damaged at this line.
    #[error(transparent)]
    Source(#[from] VerifyError),
    /// Writing the export failed.
    #[error("writing export failed: {0}")]
    Write(#[from] std::io::Error),
}

/// Copies records with `time_unix_ms >= since_unix_ms` (as a contiguous suffix) and the
/// checkpoints that cover them from `reader` to `writer`.
pub fn export_since<R: BufRead, W: Write>(
    reader: R,
    since_unix_ms: u64,
    mut writer: W,
) -> Result<ExportReport, ExportError> {
    let mut lines = LineReader::new(reader);
    let mut chain = Chain::new(None, ChainStart::FirstLine);
    let mut report = ExportReport::default();
    let mut exporting = false;
    // Checkpoint lines since the last record: written if the next record starts the export.
    let mut boundary: Vec<Vec<u8>> = Vec::new();
    while let Some(line) = lines.next_line()? {
        let step = chain
            .step(line)
            .map_err(|(seq, kind)| lines.error(seq, kind))?;
        let raw = lines.raw_line();
        match step {
            Step::Checkpoint if exporting => {
                writer.write_all(raw)?;
                report.checkpoints += 1;
            }
            Step::Checkpoint => boundary.push(raw.to_vec()),
            Step::Record { time_unix_ms, seq } => {
                if !exporting && time_unix_ms >= since_unix_ms {
                    exporting = true;
                    report.first_seq = Some(seq);
                    for cp in boundary.drain(..) {
                        writer.write_all(&cp)?;
                        report.checkpoints += 1;
                    }
                }
                if exporting {
                    writer.write_all(raw)?;
                    report.records += 1;
                } else {
                    boundary.clear();
                }
            }
        }
    }
    writer.flush()?;
    Ok(report)
}
