//! The development state folder (`.cloister/` by default): generated keys, certificates and the
//! sealed demo model, for `cloister keys init` and `cloister quickstart`.
//!
//! Every secret is written with mode 0600 inside 0700 folders, through a temporary file and a
//! rename, so a crash never leaves a half-written key. Existing files are never overwritten:
//! re-running set-up keeps the keys (and so the sealed model and minted tokens) valid.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::rngs::OsRng;

use crate::auth::DevIssuer;
use crate::keys::{Keyring, PublisherKey};

/// Key ids of the generated development keys.
pub const DEV_KEYRING_ID: &str = "dev-kek";
pub const DEV_PUBLISHER_ID: &str = "dev-publisher";
pub const DEV_JWT_KID: &str = "dev-issuer-1";
pub const DEV_AUDIT_KEY_ID: &str = "dev-audit-1";
pub const DEV_WATERMARK_ID: &str = "wm-dev-1";

/// Paths inside a state folder. `configs/dev.toml` names the same layout.
#[derive(Debug, Clone)]
pub struct StatePaths {
    pub root: PathBuf,
}

impl StatePaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StatePaths { root: root.into() }
    }
    pub fn keyring(&self) -> PathBuf {
        self.root.join("keys/kek.json")
    }
    /// The watermark keyring (secret keys of the output watermark).
    pub fn watermark_keys(&self) -> PathBuf {
        self.root.join("keys/watermark.json")
    }
    pub fn publisher_key(&self) -> PathBuf {
        self.root.join("keys/publisher.pem")
    }
    pub fn publisher_public(&self) -> PathBuf {
        self.root.join("keys/publisher.pub.pem")
    }
    pub fn issuer_key(&self) -> PathBuf {
        self.root.join("keys/jwt-issuer.pem")
    }
    pub fn jwks(&self) -> PathBuf {
        self.root.join("keys/jwks.json")
    }
    pub fn audit_key(&self) -> PathBuf {
        self.root.join("keys/audit.pem")
    }
    pub fn audit_public(&self) -> PathBuf {
        self.root.join("keys/audit.pub.pem")
    }
    pub fn tls_cert(&self) -> PathBuf {
        self.root.join("tls/cert.pem")
    }
    pub fn tls_key(&self) -> PathBuf {
        self.root.join("tls/key.pem")
    }
    pub fn sealed_model(&self, model_id: &str) -> PathBuf {
        self.root.join("models").join(format!("{model_id}.sealed"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("generating {what}: {reason}")]
    Generate { what: &'static str, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

fn gen_err(what: &'static str) -> impl FnOnce(String) -> StateError {
    move |reason| StateError::Generate { what, reason }
}

/// What `init` did, for the CLI to report.
#[derive(Debug, Default)]
pub struct InitReport {
    pub created: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

/// Creates every missing development key and certificate under `paths.root`.
pub fn init(paths: &StatePaths) -> Result<InitReport, StateError> {
    let mut report = InitReport::default();
    for dir in ["", "keys", "tls", "models"] {
        private_dir(&paths.root.join(dir))?;
    }
    let mut step =
        |path: PathBuf, make: &mut dyn FnMut() -> Result<Vec<(PathBuf, Vec<u8>)>, StateError>| {
            if path.exists() {
                report.kept.push(path);
                return Ok(());
            }
            for (p, bytes) in make()? {
                write_private(&p, &bytes)?;
                report.created.push(p);
            }
            Ok::<(), StateError>(())
        };
    step(paths.keyring(), &mut || {
        let ring = Keyring::generate(DEV_KEYRING_ID, &mut OsRng)
            .map_err(|e| gen_err("KEK keyring")(e.to_string()))?;
        Ok(vec![(paths.keyring(), ring.to_json().as_bytes().to_vec())])
    })?;
    step(paths.watermark_keys(), &mut || {
        let ring = crate::watermark::WatermarkKeyring::generate(DEV_WATERMARK_ID, &mut OsRng)
            .map_err(|e| gen_err("watermark keyring")(e.to_string()))?;
        Ok(vec![(
            paths.watermark_keys(),
            ring.to_json().as_bytes().to_vec(),
        )])
    })?;
    step(paths.publisher_key(), &mut || {
        let key = PublisherKey::generate(DEV_PUBLISHER_ID, &mut OsRng)
            .map_err(|e| gen_err("publisher key")(e.to_string()))?;
        let private = key
            .to_pkcs8_pem()
            .map_err(|e| gen_err("publisher key")(e.to_string()))?;
        let public = key
            .public_key_pem()
            .map_err(|e| gen_err("publisher key")(e.to_string()))?;
        Ok(vec![
            (paths.publisher_public(), public.into_bytes()),
            (paths.publisher_key(), private.as_bytes().to_vec()),
        ])
    })?;
    step(paths.issuer_key(), &mut || {
        let issuer = DevIssuer::generate(&mut OsRng, DEV_JWT_KID)
            .map_err(|e| gen_err("JWT issuer key")(e.to_string()))?;
        let private = issuer
            .to_pkcs8_pem()
            .map_err(|e| gen_err("JWT issuer key")(e.to_string()))?;
        Ok(vec![
            (paths.jwks(), issuer.jwks_json().into_bytes()),
            (paths.issuer_key(), private.as_bytes().to_vec()),
        ])
    })?;
    step(paths.audit_key(), &mut || {
        let id = crate::audit::KeyId::new(DEV_AUDIT_KEY_ID)
            .map_err(|e| gen_err("audit key")(e.to_string()))?;
        let signer = crate::audit::AuditSigner::generate(id.clone(), &mut OsRng);
        let private = signer
            .to_pkcs8_pem()
            .map_err(|e| gen_err("audit key")(e.to_string()))?;
        let public = signer
            .verifier()
            .public_key_pem(&id)
            .ok_or_else(|| gen_err("audit key")("no public key".into()))?;
        Ok(vec![
            (paths.audit_public(), public.into_bytes()),
            (paths.audit_key(), private.as_bytes().to_vec()),
        ])
    })?;
    step(paths.tls_key(), &mut || {
        let (cert, key) = crate::tls::self_signed_dev_cert()
            .map_err(|e| gen_err("TLS certificate")(e.to_string()))?;
        Ok(vec![
            (paths.tls_cert(), cert.into_bytes()),
            (paths.tls_key(), key.as_bytes().to_vec()),
        ])
    })?;
    Ok(report)
}

/// Creates `dir` (and parents) and restricts it to the owner.
pub fn private_dir(dir: &Path) -> Result<(), StateError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// Writes `bytes` to `path` with mode 0600, atomically (temporary file, fsync, rename).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map_or_else(Default::default, |n| n.to_string_lossy()),
        std::process::id()
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_private_files_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = StatePaths::new(dir.path().join("state"));
        let first = init(&paths).expect("init");
        assert_eq!(first.created.len(), 10, "{:?}", first.created);
        for p in &first.created {
            let mode = fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let root_mode = fs::metadata(&paths.root)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(root_mode, 0o700);
        let kek_before = fs::read(paths.keyring()).expect("read");
        let second = init(&paths).expect("init again");
        assert!(second.created.is_empty());
        assert_eq!(
            fs::read(paths.keyring()).expect("read"),
            kek_before,
            "keys are never replaced"
        );
    }
}
