//! Sealing a plaintext GGUF file: the GGUF header (metadata and tensor table) becomes the `meta`
//! segment and the tensor data the `tensors` segment of a sealed file.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rand::rngs::OsRng;

use crate::keys::{KeyProvider, PublisherKey};
use crate::seal::{seal, PayloadKind, SealParams, SealSummary};

#[derive(Debug, thiserror::Error)]
pub enum SealGgufError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a readable GGUF file: {reason}")]
    NotGguf { path: String, reason: String },
    #[error("sealing failed: {0}")]
    Seal(#[from] crate::seal::SealError),
}

/// Length of the GGUF header, i.e. the offset where tensor data starts.
pub fn gguf_meta_len(path: &Path) -> Result<(u64, u64), SealGgufError> {
    let p = path.display().to_string();
    let mut f = File::open(path).map_err(|source| SealGgufError::Io {
        path: p.clone(),
        source,
    })?;
    let total = f
        .metadata()
        .map_err(|source| SealGgufError::Io {
            path: p.clone(),
            source,
        })?
        .len();
    let ct =
        super::gguf_header::read_header_from(&mut f).map_err(|reason| SealGgufError::NotGguf {
            path: p.clone(),
            reason,
        })?;
    if ct.tensor_data_offset > total {
        return Err(SealGgufError::NotGguf {
            path: p,
            reason: "tensor data starts past the end of the file".into(),
        });
    }
    Ok((ct.tensor_data_offset, total))
}

/// Seals `input` (a GGUF file) into `output`, which must not exist yet. The output is written
/// through a temporary file and renamed into place, so a failed seal leaves nothing behind.
pub fn seal_gguf_file(
    input: &Path,
    output: &Path,
    model_id: &str,
    keys: &dyn KeyProvider,
    publisher: &PublisherKey,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<SealSummary, SealGgufError> {
    let (meta_len, total) = gguf_meta_len(input)?;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SealGgufError::Io { path, source }
    };
    let reader = BufReader::with_capacity(1 << 20, File::open(input).map_err(io(input))?);
    let dir = output.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".sealing-")
        .tempfile_in(dir)
        .map_err(io(output))?;
    let out = OpenOptions::new()
        .write(true)
        .mode(0o600)
        .open(tmp.path())
        .map_err(io(output))?;
    let mut writer = BufWriter::with_capacity(1 << 20, out);
    let params = SealParams::new(model_id, PayloadKind::Gguf);
    let summary = seal(
        reader,
        &mut writer,
        meta_len,
        total,
        &params,
        keys,
        publisher,
        &mut OsRng,
        &mut |done| progress(done, total),
    )?;
    writer.flush().map_err(io(output))?;
    writer.get_ref().sync_all().map_err(io(output))?;
    drop(writer);
    tmp.persist_noclobber(output)
        .map_err(|e| SealGgufError::Io {
            path: output.display().to_string(),
            source: e.error,
        })?;
    Ok(summary)
}
