//! TLS for the public listener (rustls, ring provider): TLS 1.3 and 1.2, ALPN h2 + http/1.1,
//! and development certificates.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read TLS private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot generate a development certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Builds the server config from PEM files (certificate chain, then private key).
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert_path.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert_path.display().to_string(),
            reason: "no certificate in file".into(),
        });
    }
    // The error of a PEM parse never contains key bytes.
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Key {
        path: key_path.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A self-signed certificate for `localhost` and `127.0.0.1` (development only).
/// Returns (certificate PEM, private key PEM).
pub fn self_signed_dev_cert() -> Result<(String, Zeroizing<String>), TlsError> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let certified = rcgen::generate_simple_self_signed(names)?;
    Ok((
        certified.cert.pem(),
        Zeroizing::new(certified.signing_key.serialize_pem()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_cert_loads_into_a_server_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed_dev_cert().expect("generate");
        std::fs::write(dir.path().join("c.pem"), cert).expect("write");
        std::fs::write(dir.path().join("k.pem"), key.as_bytes()).expect("write");
        let cfg = server_config(&dir.path().join("c.pem"), &dir.path().join("k.pem")).expect("cfg");
        assert_eq!(cfg.alpn_protocols[0], b"h2");
        // A key that does not match the certificate is refused.
        let (_, other_key) = self_signed_dev_cert().expect("generate");
        std::fs::write(dir.path().join("k.pem"), other_key.as_bytes()).expect("write");
        assert!(server_config(&dir.path().join("c.pem"), &dir.path().join("k.pem")).is_err());
    }
}
