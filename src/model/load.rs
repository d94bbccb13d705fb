//! Loading a sealed model: verify, unwrap, decrypt `meta` into zeroizing memory and `tensors`
//! straight into the locked region, then build the model, tokenizer and chat template.
//!
//! Every failure of the sealed file (wrong key, flipped bit, truncation, untrusted signer) comes
//! out as the one opaque [`LoadError::Rejected`], so the error is no oracle.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use zeroize::Zeroizing;

use crate::config::Config;
use crate::engine::LlamaModel;
use crate::keys::{parse_public_key, KeyProvider, Keyring, TrustedPublishers};
use crate::seal::{SealError, SealedFile};
use crate::securemem::{LockPolicy, LockedRegion};
use crate::tokenizer::{ChatTemplate, ModelTokenizer};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path} is invalid: {reason}")]
    Key {
        what: &'static str,
        path: String,
        reason: String,
    },
    /// Deliberately says nothing about which check failed.
    #[error("sealed model {path} rejected: integrity, signature or key check failed")]
    Rejected { path: String },
    #[error("cannot allocate locked memory for the weights: {0}")]
    Memory(std::io::Error),
    #[error("sealed model {path} holds an unusable model: {reason}")]
    Model { path: String, reason: String },
    /// The GPU failed while taking the model (driver, memory, kernel load).
    #[error("GPU: {0}")]
    Gpu(String),
}

/// A model ready to serve.
pub struct LoadedModel {
    pub model: Arc<LlamaModel>,
    pub tokenizer: Arc<ModelTokenizer>,
    pub chat: ChatTemplate,
    /// The KEK that unwrapped the DEK (for the audit trail and rewrap status).
    pub kek_ref: crate::keys::KekRef,
    pub publisher: String,
    pub weights_locked: bool,
    /// The locked region holding the tensor data (kept for memory-scan tests).
    pub weights: Arc<LockedRegion>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("kek", &self.kek_ref)
            .field("publisher", &self.publisher)
            .finish_non_exhaustive()
    }
}

/// Reads the keyring and trusted publisher keys named by the config.
pub fn load_key_material(cfg: &Config) -> Result<(Keyring, TrustedPublishers), LoadError> {
    let keyring_path = cfg.keyring.display().to_string();
    let text =
        Zeroizing::new(
            std::fs::read_to_string(&cfg.keyring).map_err(|source| LoadError::Io {
                what: "keyring",
                path: keyring_path.clone(),
                source,
            })?,
        );
    let keyring = Keyring::from_json(&text).map_err(|e| LoadError::Key {
        what: "keyring",
        path: keyring_path,
        reason: e.to_string(),
    })?;
    Ok((keyring, load_trusted(cfg)?))
}

/// The configured KEK provider: the HSM when `[keys.pkcs11]` is set, else the keyring file.
pub fn key_provider(cfg: &Config) -> Result<Box<dyn KeyProvider>, LoadError> {
    match &cfg.pkcs11 {
        Some(p11) => Ok(Box::new(open_pkcs11(p11)?)),
        None => Ok(Box::new(load_key_material(cfg)?.0)),
    }
}

/// Opens the HSM-backed KEK provider (the PIN is read from its file, never from the config).
pub fn open_pkcs11(
    p11: &crate::config::Pkcs11Settings,
) -> Result<crate::keys::Pkcs11Kek, LoadError> {
    let pin_path = p11.pin_file.display().to_string();
    let pin = std::fs::read_to_string(&p11.pin_file).map_err(|source| LoadError::Io {
        what: "PKCS#11 PIN file",
        path: pin_path.clone(),
        source,
    })?;
    crate::keys::Pkcs11Kek::open(&crate::keys::Pkcs11Config {
        module: p11.module.clone(),
        token_label: p11.token_label.clone(),
        pin: Zeroizing::new(pin.trim_end().to_string()),
        key_label_prefix: p11.key_label_prefix.clone(),
    })
    .map_err(|e| LoadError::Key {
        what: "PKCS#11 token",
        path: p11.module.display().to_string(),
        reason: e.to_string(),
    })
}

/// Reads the trusted publisher keys named by the config.
pub fn load_trusted(cfg: &Config) -> Result<TrustedPublishers, LoadError> {
    let mut trusted = TrustedPublishers::new();
    for (id, path) in &cfg.trusted_publishers {
        let p = path.display().to_string();
        let pem = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            what: "publisher key",
            path: p.clone(),
            source,
        })?;
        parse_public_key(&pem)
            .and_then(|k| trusted.insert(id, k))
            .map_err(|e| LoadError::Key {
                what: "publisher key",
                path: p,
                reason: e.to_string(),
            })?;
    }
    Ok(trusted)
}

pub fn load_sealed_model(cfg: &Config) -> Result<LoadedModel, LoadError> {
    let keys = key_provider(cfg)?;
    let trusted = load_trusted(cfg)?;
    let keyring = keys.as_ref();
    let policy = if cfg.require_locked_weights {
        LockPolicy::Required
    } else {
        LockPolicy::BestEffort
    };
    open_sealed(&cfg.sealed_model, keyring, &trusted, policy)
}

/// Opens `path` as a sealed file: signature checked and DEK unwrapped, no plaintext yet.
fn open_verified(
    path: &Path,
    keys: &dyn KeyProvider,
    trusted: &TrustedPublishers,
) -> Result<SealedFile<File>, LoadError> {
    let file = File::open(path).map_err(|source| LoadError::Io {
        what: "sealed model",
        path: path.display().to_string(),
        source,
    })?;
    // Unbuffered: `SealedFile::open` seeks to every chunk's tag, and each seek would throw away
    // a read buffer and refill it (a 1 MiB buffer read the file twice over; on an H200 the
    // sealed load to the device took 1.42x the plaintext load with it, ~1.0-1.2x without).
    // The bulk reads are whole chunks straight into the caller's buffer either way.
    SealedFile::open(file, trusted, keys).map_err(|_| LoadError::Rejected {
        path: path.display().to_string(),
    })
}

/// Opens and verifies the sealed model at `path` and decrypts its `meta` segment (the GGUF
/// header and tokenizer) into zeroizing memory; the `tensors` segment is left to the caller
/// (into locked host memory, or to the GPU).
pub(crate) fn open_with_meta(
    path: &Path,
    keys: &dyn KeyProvider,
    trusted: &TrustedPublishers,
) -> Result<(SealedFile<File>, Zeroizing<Vec<u8>>), LoadError> {
    let rejected = || LoadError::Rejected {
        path: path.display().to_string(),
    };
    let mut sealed = open_verified(path, keys, trusted)?;
    let meta_len = usize::try_from(sealed.header().meta_len()).map_err(|_| rejected())?;
    let mut meta = Zeroizing::new(vec![0u8; meta_len]);
    sealed
        .decrypt_meta_into(&mut meta)
        .map_err(|_| rejected())?;
    Ok((sealed, meta))
}

/// Opens, verifies and decrypts a sealed GGUF model.
pub fn open_sealed(
    path: &Path,
    keyring: &dyn KeyProvider,
    trusted: &TrustedPublishers,
    policy: LockPolicy,
) -> Result<LoadedModel, LoadError> {
    let p = path.display().to_string();
    let rejected = |_: SealError| LoadError::Rejected { path: p.clone() };
    let (mut sealed, meta) = open_with_meta(path, keyring, trusted)?;
    let header = sealed.header().clone();
    let tensors_len = usize::try_from(header.tensors_len())
        .map_err(|_| LoadError::Rejected { path: p.clone() })?;
    let mut region = LockedRegion::new(tensors_len, policy).map_err(LoadError::Memory)?;
    sealed
        .decrypt_tensors_into(region.as_mut_slice())
        .map_err(rejected)?;
    let weights = Arc::new(region);
    let kek_ref = sealed.envelope().kek().clone();
    let publisher = header.publisher_key_id().to_string();

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let built =
        build_model(&meta, weights.clone(), threads).map_err(|reason| LoadError::Model {
            path: p.clone(),
            reason,
        })?;
    Ok(LoadedModel {
        model: Arc::new(built.model),
        tokenizer: Arc::new(built.tokenizer),
        chat: built.chat,
        kek_ref,
        publisher,
        weights_locked: weights.is_locked(),
        weights,
    })
}

/// What the host builds from a model's GGUF header and tensor data.
#[derive(Debug)]
pub struct BuiltModel {
    pub model: LlamaModel,
    pub tokenizer: ModelTokenizer,
    pub chat: ChatTemplate,
}

/// Parses `meta` (exactly the GGUF header: metadata and tensor infos, up to the tensor data) and
/// builds the model over `weights` (the tensor data), with the tokenizer and chat template from
/// the metadata. The error is a one-line reason.
///
/// Public because it is the whole host-side GGUF parsing path of [`open_sealed`], run by the
/// `gguf_meta` fuzz target on arbitrary bytes.
pub fn build_model(
    meta: &[u8],
    weights: Arc<LockedRegion>,
    threads: usize,
) -> Result<BuiltModel, String> {
    let (ct, tokenizer, chat) = read_meta(meta)?;
    let model = LlamaModel::load_with_threads(&ct, weights, threads).map_err(|e| e.to_string())?;
    Ok(BuiltModel {
        model,
        tokenizer,
        chat,
    })
}

/// The decrypted `meta` segment (the GGUF header) read into the tensor table, tokenizer and chat
/// template — what every engine needs besides the weights.
pub fn read_meta(
    meta: &[u8],
) -> Result<(gguf_file::Content, ModelTokenizer, ChatTemplate), String> {
    let ct = super::gguf_header::read_header(meta)?;
    if ct.tensor_data_offset != meta.len() as u64 {
        return Err("GGUF header length does not match the sealed meta segment".into());
    }
    let spec = super::tokenizer_spec(&ct)?;
    let tokenizer = ModelTokenizer::from_spec(&spec).map_err(|e| e.to_string())?;
    let chat = ChatTemplate::from_spec(&spec).map_err(|e| e.to_string())?;
    Ok((ct, tokenizer, chat))
}

/// Checks a sealed file's signature and every chunk tag without producing plaintext; returns a
/// one-line description for the CLI.
pub fn verify_sealed_file(
    path: &Path,
    keyring: &dyn KeyProvider,
    trusted: &TrustedPublishers,
) -> Result<String, LoadError> {
    let p = path.display().to_string();
    let rejected = |_: SealError| LoadError::Rejected { path: p.clone() };
    let mut sealed = open_verified(path, keyring, trusted)?;
    sealed.verify_all_tags().map_err(rejected)?;
    let h = sealed.header();
    Ok(format!(
        "model {:?}, meta {} B, tensors {} B, KEK {}, publisher {}",
        h.model_id(),
        h.meta_len(),
        h.tensors_len(),
        sealed.envelope().kek(),
        h.publisher_key_id()
    ))
}

/// The KEK a sealed file's DEK is wrapped under (signature checked; no plaintext produced).
pub fn sealed_kek(
    path: &Path,
    keys: &dyn KeyProvider,
    trusted: &TrustedPublishers,
) -> Result<crate::keys::KekRef, LoadError> {
    Ok(open_verified(path, keys, trusted)?.envelope().kek().clone())
}
