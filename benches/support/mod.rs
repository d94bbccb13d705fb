//! Set-up shared by the bench binaries: the verified demo model and fresh dev keys.
#![allow(dead_code)]

pub mod plaintext;

use std::path::{Path, PathBuf};

use cloister::devstate::{self, StatePaths};
use cloister::keys::{Keyring, PublisherKey, TrustedPublishers};
use cloister::model::fetch;

/// The demo GGUF, fetched and verified by the project's own fetcher.
pub fn demo_gguf() -> PathBuf {
    fetch::demo_model(&fetch::default_cache_dir()).expect("demo model")
}

/// Fresh development keys under `dir`.
pub struct DevKeys {
    pub keyring: Keyring,
    pub publisher: PublisherKey,
    pub trusted: TrustedPublishers,
}

pub fn dev_keys(dir: &Path) -> DevKeys {
    let state = StatePaths::new(dir);
    devstate::init(&state).expect("dev keys");
    let keyring =
        Keyring::from_json(&std::fs::read_to_string(state.keyring()).expect("kr")).expect("kr");
    let pem = std::fs::read_to_string(state.publisher_key()).expect("pub");
    let publisher = PublisherKey::from_pkcs8_pem(devstate::DEV_PUBLISHER_ID, &pem).expect("pub");
    let mut trusted = TrustedPublishers::new();
    trusted
        .insert(devstate::DEV_PUBLISHER_ID, publisher.verifying_key())
        .expect("trust");
    DevKeys {
        keyring,
        publisher,
        trusted,
    }
}
