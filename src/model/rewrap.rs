//! KEK rotation for a sealed file: rewrap its DEK under the keyring's active KEK version.
//!
//! Only the key envelope changes; chunk bytes are never touched. When the new envelope has the
//! same length as the old one (the usual case: same keyring id, new version), the new prefix is
//! written in place with one `pwrite` + `fdatasync`: the whole prefix (< 512 bytes) lies inside
//! the file's first disk sector, and disks write a sector atomically, so a crash leaves either
//! the old or the new envelope — both valid — and the cost is O(header), not O(file). Otherwise
//! the file is rewritten beside the original and renamed over it (write-then-rename).
//! Either way the result is re-opened and verified before success is reported.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::keys::{KekRef, KeyProvider, TrustedPublishers};
use crate::seal::{encode_prefix, rewrap_envelope, rewrap_file, SealedFile};

/// The first disk sector: writes within it are atomic.
const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum RewrapError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Opaque on purpose, like every sealed-file refusal.
    #[error("sealed model {0} rejected: integrity, signature or key check failed")]
    Rejected(String),
}

/// What a rewrap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrapReport {
    pub from: KekRef,
    pub to: KekRef,
    /// True when only the prefix was rewritten in place.
    pub in_place: bool,
}

/// Rewraps `path` under `keys.active()`. A file already under the active version is left alone.
pub fn rewrap_sealed_file(
    path: &Path,
    keys: &dyn KeyProvider,
    trusted: &TrustedPublishers,
) -> Result<RewrapReport, RewrapError> {
    let p = path.display().to_string();
    let io = |source| RewrapError::Io {
        path: p.clone(),
        source,
    };
    let rejected = |_| RewrapError::Rejected(p.clone());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let sealed = SealedFile::open(BufReader::new(&file), trusted, keys).map_err(rejected)?;
    let header = sealed.header().clone();
    let old = sealed.envelope().clone();
    let chunks_offset = sealed.layout().chunks_offset;
    drop(sealed);
    let from = old.kek().clone();
    let active = keys.active();
    if from == active {
        return Ok(RewrapReport {
            from: from.clone(),
            to: from,
            in_place: true,
        });
    }
    let new = rewrap_envelope(&header, &old, keys, keys).map_err(rejected)?;
    let prefix = encode_prefix(&header, &new);
    let in_place = prefix.len() as u64 == chunks_offset && chunks_offset <= SECTOR;
    if in_place {
        file.write_all_at(&prefix, 0).map_err(io)?;
        file.sync_data().map_err(io)?;
    } else {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".rewrap-")
            .tempfile_in(dir)
            .map_err(io)?;
        {
            let mut src = BufReader::with_capacity(1 << 20, &file);
            src.seek(SeekFrom::Start(0)).map_err(io)?;
            let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file());
            rewrap_file(&mut src, &mut out, trusted, keys, keys).map_err(rejected)?;
            out.flush().map_err(io)?;
        }
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
    }
    // Prove the result opens under the new version before reporting success.
    let check = File::open(path).map_err(io)?;
    let reopened = SealedFile::open(BufReader::new(check), trusted, keys).map_err(rejected)?;
    let to = reopened.envelope().kek().clone();
    Ok(RewrapReport { from, to, in_place })
}
