//! A [`KeyProvider`] whose key-encryption keys live in a PKCS#11 token (an HSM, or SoftHSM2 in
//! tests).
//!
//! Why: with the local [`Keyring`](super::Keyring) the KEK bytes sit in a file and in server
//! memory, so anyone who can read either can unwrap every sealed model. Here each KEK version is
//! an AES-256 secret-key object created *inside* the token (`CKM_AES_KEY_GEN`) with
//! `CKA_SENSITIVE=true` and `CKA_EXTRACTABLE=false`: the token refuses to reveal it, and the
//! host only ever asks the token to encrypt or decrypt a 32-byte data key with it. The only key
//! bytes that reach host memory are the DEK itself — which is the whole point of unwrapping it.
//!
//! Token layout (nothing else is stored):
//! - one token, found by its label ([`Pkcs11Config::token_label`]), logged in as the user;
//! - KEK version `N` is a token object of class `CKO_SECRET_KEY`, type `CKK_AES`, 32 bytes,
//!   labelled `<prefix>-v<N>` (`N` in plain decimal, no leading zeros, `N >= 1`), with
//!   `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE`, `CKA_ENCRYPT`, `CKA_DECRYPT` true and
//!   `CKA_EXTRACTABLE`, `CKA_MODIFIABLE`, `CKA_WRAP`, `CKA_UNWRAP`, `CKA_SIGN`, `CKA_VERIFY`,
//!   `CKA_DERIVE` false. `ENCRYPT/DECRYPT` rather than `WRAP/UNWRAP`: `C_WrapKey` wraps a *key
//!   object*, but the DEK is host bytes (it must be, to decrypt weights), so it is encrypted as
//!   data. Objects with a matching label that are extractable, not sensitive or not 32-byte AES
//!   are refused (someone imported them in plaintext), and so are two objects with one label.
//! - The **active version is the highest `N`** present; there is no separate pointer object, so
//!   rotation is a single atomic object creation. The KEK id in [`KekRef`] is the prefix.
//!
//! Wrapped-DEK bytes: `IV (12, random from the host OS RNG) ‖ AES-256-GCM ciphertext of the DEK
//! (32) ‖ tag (16)` = 60 bytes, computed by the token with `CKM_AES_GCM` (128-bit tag, the
//! caller's AAD) — byte-for-byte the same layout as the local keyring's. (PKCS#11 2.40 tokens such
//! as SoftHSM2 2.6 take the IV from the caller; the 3.0 token-generated-IV message API is not
//! widely implemented.)
//!
//! Concurrency: one logged-in RW session per provider, behind a [`Mutex`] (a PKCS#11 session
//! must not be used by two threads at once), so the provider is `Send + Sync`; HSM calls from
//! one provider are serialised. The PKCS#11 module is loaded and `C_Initialize`d once per
//! process per module path and never finalised (PKCS#11 allows one initialisation per process;
//! unloading a module with live sessions elsewhere in the process would break them).
//!
//! Caching: the version → object-handle map is read at [`Pkcs11Kek::open`] and updated by
//! [`Pkcs11Kek::rotate`]/[`Pkcs11Kek::retire_below`]; an unwrap for a version this process has
//! not seen re-reads the token first, so a rotation done by another process is picked up
//! without a restart ([`Pkcs11Kek::refresh`] does it explicitly). Run rotation/retirement from
//! one administrative process at a time: two concurrent rotations could both create `N+1`,
//! which later opens refuse as a duplicate label.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

use super::kek::{Dek, KekRef, KeyProvider, KEY_LEN};
use super::KeyError;

/// Length of the GCM IV at the front of a wrapped DEK.
const IV_LEN: usize = 12;
/// Length of the GCM tag at the end of a wrapped DEK (128 bits).
const TAG_LEN: usize = 16;
/// Length of a wrapped DEK from this provider: IV ‖ ciphertext ‖ tag (same as the keyring's).
pub const PKCS11_WRAPPED_DEK_LEN: usize = IV_LEN + KEY_LEN + TAG_LEN;
/// Most KEK versions a token may hold for one prefix (as for the keyring).
const MAX_VERSIONS: usize = 1024;

/// Where the KEK lives and how to log in.
///
/// Non-secret fields can come from the server config; the PIN is read by the caller from a file
/// or the environment (never inline in a config file) and is wiped on drop. `Debug` redacts it.
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Label of the token holding the KEKs (exact match, trailing blanks ignored).
    pub token_label: String,
    /// The token's user PIN.
    pub pin: Zeroizing<String>,
    /// KEK object label prefix and KEK id, e.g. `cloister-kek` (labels `cloister-kek-v1`, ...).
    /// Must be a valid key id (`[A-Za-z0-9._:@+-]`, 1..=64 bytes).
    pub key_label_prefix: String,
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"<redacted>")
            .field("key_label_prefix", &self.key_label_prefix)
            .finish()
    }
}

/// A versioned KEK held in a PKCS#11 token. See the module docs.
pub struct Pkcs11Kek {
    /// The label prefix, which is also the KEK id in [`KekRef`].
    id: String,
    state: Mutex<State>,
}

/// Everything behind the lock: the session and the cached version → object map.
struct State {
    session: Session,
    keys: BTreeMap<u32, ObjectHandle>,
}

impl fmt::Debug for Pkcs11Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Kek")
            .field("id", &self.id)
            .field("versions", &self.versions())
            .finish()
    }
}

/// Process-wide PKCS#11 contexts, one per module path (see the module docs).
static CONTEXTS: Mutex<Vec<(PathBuf, Pkcs11)>> = Mutex::new(Vec::new());

/// Loads and initialises `module` once per process; later calls share the context.
fn context(module: &Path) -> Result<Pkcs11, KeyError> {
    let path = module
        .canonicalize()
        .map_err(|e| KeyError::Backend(format!("PKCS#11 module {}: {e}", module.display())))?;
    let mut contexts = CONTEXTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, ctx)) = contexts.iter().find(|(p, _)| *p == path) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(&path).map_err(|e| backend("loading the PKCS#11 module", &e))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Initialised by some other component of this process: share it.
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(backend("C_Initialize", &e)),
    }
    contexts.push((path, ctx.clone()));
    Ok(ctx)
}

/// Maps a cryptoki error to [`KeyError::Backend`]. cryptoki errors carry return codes and
/// function names only, never key material or PINs.
fn backend(what: &str, e: &P11Error) -> KeyError {
    match e {
        P11Error::Pkcs11(rv, function) => KeyError::Backend(format!("{what}: {function}: {rv:?}")),
        other => KeyError::Backend(format!("{what}: {other}")),
    }
}

/// Parses `<prefix>-v<N>` into `N` (decimal, no sign, no leading zero, `N >= 1`).
fn parse_label(prefix: &str, label: &[u8]) -> Option<u32> {
    let rest = label.strip_prefix(prefix.as_bytes())?.strip_prefix(b"-v")?;
    if rest.is_empty() || rest.len() > 10 || rest[0] == b'0' || !rest.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    std::str::from_utf8(rest).ok()?.parse().ok()
}

/// The object label of KEK version `version`.
fn label_for(prefix: &str, version: u32) -> String {
    format!("{prefix}-v{version}")
}

impl Pkcs11Kek {
    /// Loads the module (once per process), finds the token labelled `cfg.token_label`, opens a
    /// read-write session, logs in as the user and reads which KEK versions exist.
    ///
    /// An empty token is fine: the provider then has no active version (`active().version` is
    /// 0 and wraps fail) until [`Pkcs11Kek::rotate`] creates version 1.
    pub fn open(cfg: &Pkcs11Config) -> Result<Self, KeyError> {
        super::check_key_id(&cfg.key_label_prefix)?;
        let ctx = context(&cfg.module)?;
        let mut found = Vec::new();
        for slot in ctx
            .get_slots_with_token()
            .map_err(|e| backend("listing slots", &e))?
        {
            let info = ctx
                .get_token_info(slot)
                .map_err(|e| backend("reading token info", &e))?;
            if info.label() == cfg.token_label.trim_end_matches(' ') {
                found.push(slot);
            }
        }
        let slot = match found.as_slice() {
            [slot] => *slot,
            [] => {
                return Err(KeyError::Backend(format!(
                    "no PKCS#11 token labelled {:?}",
                    cfg.token_label
                )))
            }
            _ => {
                return Err(KeyError::Backend(format!(
                    "several PKCS#11 tokens labelled {:?}",
                    cfg.token_label
                )))
            }
        };
        let session = ctx
            .open_rw_session(slot)
            .map_err(|e| backend("opening a session", &e))?;
        let pin = AuthPin::from(cfg.pin.as_str());
        match session.login(UserType::User, Some(&pin)) {
            // Login state is per application and token: another provider in this process
            // already logged in, and this session shares that state.
            Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(backend("logging in to the token", &e)),
        }
        let keys = scan(&session, &cfg.key_label_prefix)?;
        Ok(Pkcs11Kek {
            id: cfg.key_label_prefix.clone(),
            state: Mutex::new(State { session, keys }),
        })
    }

    /// Creates a new KEK version (highest + 1) inside the token with `CKM_AES_KEY_GEN`,
    /// non-extractable and sensitive, makes it active and returns its number. On an empty token
    /// this creates version 1. Older versions stay usable for unwrapping until retired.
    pub fn rotate(&self) -> Result<u32, KeyError> {
        let mut state = self.lock();
        // Re-read first so a version created by another process is not duplicated.
        state.keys = scan(&state.session, &self.id)?;
        if state.keys.len() >= MAX_VERSIONS {
            return Err(KeyError::InvalidOperation(
                "token holds too many KEK versions",
            ));
        }
        let highest = state.keys.keys().next_back().copied().unwrap_or(0);
        let version = highest
            .checked_add(1)
            .ok_or(KeyError::InvalidOperation("KEK version overflow"))?;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen((KEY_LEN as u64).into()),
            Attribute::Label(label_for(&self.id, version).into_bytes()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
        ];
        let handle = state
            .session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(|e| backend("generating a KEK in the token", &e))?;
        state.keys.insert(version, handle);
        Ok(version)
    }

    /// Destroys every KEK version below `min_version` in the token; files wrapped under them
    /// can no longer be opened. Refuses to retire the active (highest) version.
    pub fn retire_below(&self, min_version: u32) -> Result<(), KeyError> {
        let mut state = self.lock();
        state.keys = scan(&state.session, &self.id)?;
        let active = state.keys.keys().next_back().copied().unwrap_or(0);
        if min_version > active {
            return Err(KeyError::InvalidOperation(
                "cannot retire the active KEK version",
            ));
        }
        let doomed: Vec<(u32, ObjectHandle)> = state
            .keys
            .range(..min_version)
            .map(|(v, h)| (*v, *h))
            .collect();
        for (version, handle) in doomed {
            state
                .session
                .destroy_object(handle)
                .map_err(|e| backend("destroying a retired KEK", &e))?;
            state.keys.remove(&version);
        }
        Ok(())
    }

    /// The KEK versions this provider knows of, ascending (as of the last open, rotate,
    /// retire or refresh).
    pub fn versions(&self) -> Vec<u32> {
        self.lock().keys.keys().copied().collect()
    }

    /// Re-reads the KEK versions from the token (e.g. after another process rotated).
    pub fn refresh(&self) -> Result<(), KeyError> {
        let mut state = self.lock();
        state.keys = scan(&state.session, &self.id)?;
        Ok(())
    }

    /// The KEK id (the label prefix).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Locks the session. A panic while it was held cannot leave the token inconsistent (every
    /// HSM call is a whole operation), so a poisoned lock is taken over rather than propagated.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn unknown(&self, version: u32) -> KeyError {
        KeyError::UnknownKek {
            id: self.id.clone(),
            version,
        }
    }
}

/// Reads the KEK objects labelled `<prefix>-v<N>` from the token, checking each is a 32-byte,
/// sensitive, non-extractable AES key and that no label is used twice.
fn scan(session: &Session, prefix: &str) -> Result<BTreeMap<u32, ObjectHandle>, KeyError> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Token(true),
    ];
    let handles = session
        .find_objects(&template)
        .map_err(|e| backend("listing token keys", &e))?;
    let mut keys = BTreeMap::new();
    for handle in handles {
        let attrs = session
            .get_attributes(
                handle,
                &[
                    AttributeType::Label,
                    AttributeType::KeyType,
                    AttributeType::ValueLen,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                ],
            )
            .map_err(|e| backend("reading key attributes", &e))?;
        let mut label = None;
        let (mut aes, mut len_ok, mut sensitive, mut extractable) = (false, false, false, true);
        for attr in attrs {
            match attr {
                Attribute::Label(l) => label = Some(l),
                Attribute::KeyType(t) => aes = t == KeyType::AES,
                Attribute::ValueLen(n) => len_ok = u64::from(n) == KEY_LEN as u64,
                Attribute::Sensitive(b) => sensitive = b,
                Attribute::Extractable(b) => extractable = b,
                _ => {}
            }
        }
        let Some(version) = label.and_then(|l| parse_label(prefix, &l)) else {
            continue; // some other key in the token
        };
        if !(aes && len_ok && sensitive && !extractable) {
            return Err(KeyError::Backend(format!(
                "refusing KEK object {}: must be a sensitive, non-extractable AES-256 key",
                label_for(prefix, version)
            )));
        }
        if keys.insert(version, handle).is_some() {
            return Err(KeyError::Backend(format!(
                "two KEK objects are labelled {}",
                label_for(prefix, version)
            )));
        }
    }
    if keys.len() > MAX_VERSIONS {
        return Err(KeyError::Backend(
            "token holds too many KEK versions".into(),
        ));
    }
    Ok(keys)
}

impl KeyProvider for Pkcs11Kek {
    /// The highest KEK version in the token (version 0 if the token holds none yet).
    fn active(&self) -> KekRef {
        KekRef {
            id: self.id.clone(),
            version: self.lock().keys.keys().next_back().copied().unwrap_or(0),
        }
    }

    fn wrap_dek(&self, dek: &Dek, aad: &[u8]) -> Result<(KekRef, Vec<u8>), KeyError> {
        let state = self.lock();
        let Some((&version, &handle)) = state.keys.iter().next_back() else {
            return Err(KeyError::InvalidOperation(
                "the token holds no KEK yet (rotate to create version 1)",
            ));
        };
        let mut out = vec![0u8; PKCS11_WRAPPED_DEK_LEN];
        // A random IV per wrap: one KEK wraps far fewer than 2^32 DEKs.
        OsRng.fill_bytes(&mut out[..IV_LEN]);
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&out[..IV_LEN]);
        let params = GcmParams::new(&mut iv, aad, ((TAG_LEN * 8) as u64).into())
            .map_err(|e| backend("GCM parameters", &e))?;
        let sealed = state
            .session
            .encrypt(&Mechanism::AesGcm(params), handle, dek.as_bytes())
            .map_err(|e| backend("wrapping a DEK in the token", &e))?;
        if sealed.len() != KEY_LEN + TAG_LEN {
            return Err(KeyError::WrapFailed);
        }
        out[IV_LEN..].copy_from_slice(&sealed);
        Ok((
            KekRef {
                id: self.id.clone(),
                version,
            },
            out,
        ))
    }

    fn unwrap_dek(&self, kek: &KekRef, wrapped: &[u8], aad: &[u8]) -> Result<Dek, KeyError> {
        if kek.id != self.id {
            return Err(KeyError::UnknownKek {
                id: kek.id.clone(),
                version: kek.version,
            });
        }
        let mut state = self.lock();
        if !state.keys.contains_key(&kek.version) && kek.version != 0 {
            // Maybe another process rotated since we last looked.
            state.keys = scan(&state.session, &self.id)?;
        }
        let handle = *state
            .keys
            .get(&kek.version)
            .ok_or_else(|| self.unknown(kek.version))?;
        if wrapped.len() != PKCS11_WRAPPED_DEK_LEN {
            return Err(KeyError::UnwrapFailed);
        }
        let (iv_in, sealed) = wrapped.split_at(IV_LEN);
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(iv_in);
        let params = GcmParams::new(&mut iv, aad, ((TAG_LEN * 8) as u64).into())
            .map_err(|e| backend("GCM parameters", &e))?;
        let plain = state
            .session
            .decrypt(&Mechanism::AesGcm(params), handle, sealed)
            .map(Zeroizing::new)
            .map_err(|e| match e {
                // Tag mismatch: wrong KEK, wrong AAD or altered bytes. The spec's code is
                // CKR_ENCRYPTED_DATA_INVALID; SoftHSM2 2.6 reports a failed GCM tag check as
                // CKR_GENERAL_ERROR, so that reads as UnwrapFailed too (either way no DEK).
                P11Error::Pkcs11(
                    RvError::EncryptedDataInvalid
                    | RvError::EncryptedDataLenRange
                    | RvError::GeneralError,
                    _,
                ) => KeyError::UnwrapFailed,
                // Destroyed by another process since we cached the handle.
                P11Error::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _) => {
                    self.unknown(kek.version)
                }
                other => backend("unwrapping a DEK in the token", &other),
            })?;
        if plain.len() != KEY_LEN {
            return Err(KeyError::UnwrapFailed);
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&plain);
        Ok(Dek::from_bytes(key))
    }
}

#[cfg(test)]
mod tests {
    //! Real tests against SoftHSM2 (no mocks). Each sub-case gets its own token in one temp
    //! token directory. If SoftHSM2 is missing the test FAILS (run `scripts/setup-softhsm.sh`).
    //!
    //! Test-only environment change: SoftHSM2 takes its config (and so the token directory) only
    //! from the `SOFTHSM2_CONF` environment variable, read at `C_Initialize`. The tool
    //! subprocess gets it on its `Command`; the in-process module needs `std::env::set_var`,
    //! done exactly once, before the module is loaded, from the single HSM test function below
    //! (the module is initialised once per process, so all HSM cases share that one setting and
    //! run serially inside that function). Library code never touches the environment.

    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::process::Command;
    use std::sync::Arc;

    const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
    const SO_PIN: &str = "87654321";
    const PIN: &str = "1234";
    const PREFIX: &str = "cloister-kek";

    struct Hsm {
        dir: tempfile::TempDir,
        conf: PathBuf,
        module: PathBuf,
    }

    impl Hsm {
        fn new() -> Hsm {
            let module = std::env::var_os("SOFTHSM2_MODULE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_MODULE));
            assert!(
                module.is_file(),
                "SoftHSM2 is not installed: {} is missing. Run scripts/setup-softhsm.sh \
                 (apt-get install softhsm2) or set SOFTHSM2_MODULE.",
                module.display()
            );
            let version = Command::new("softhsm2-util").arg("--version").output();
            assert!(
                matches!(&version, Ok(o) if o.status.success()),
                "softhsm2-util is not runnable ({version:?}). Run scripts/setup-softhsm.sh."
            );
            let dir = tempfile::tempdir().unwrap();
            let tokens = dir.path().join("tokens");
            std::fs::create_dir(&tokens).unwrap();
            let conf = dir.path().join("softhsm2.conf");
            std::fs::write(
                &conf,
                format!(
                    "directories.tokendir = {}\nobjectstore.backend = file\n\
                     log.level = ERROR\nslots.removable = false\n",
                    tokens.display()
                ),
            )
            .unwrap();
            // See the module comment: test-only, once, before the module is loaded.
            std::env::set_var("SOFTHSM2_CONF", &conf);
            Hsm { dir, conf, module }
        }

        /// Creates a fresh token `label` (user PIN [`PIN`]) with the SoftHSM2 tool.
        fn init_token(&self, label: &str) {
            let out = Command::new("softhsm2-util")
                .env("SOFTHSM2_CONF", &self.conf)
                .args(["--init-token", "--free", "--label", label])
                .args(["--so-pin", SO_PIN, "--pin", PIN])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "softhsm2-util --init-token failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        fn config(&self, token: &str) -> Pkcs11Config {
            Pkcs11Config {
                module: self.module.clone(),
                token_label: token.to_owned(),
                pin: Zeroizing::new(PIN.to_owned()),
                key_label_prefix: PREFIX.to_owned(),
            }
        }

        fn open(&self, token: &str) -> Pkcs11Kek {
            Pkcs11Kek::open(&self.config(token)).unwrap()
        }
    }

    fn v(version: u32) -> KekRef {
        KekRef {
            id: PREFIX.into(),
            version,
        }
    }

    fn dek(seed: u64) -> Dek {
        Dek::generate(&mut StdRng::seed_from_u64(seed))
    }

    /// One test function for every SoftHSM2 case (see the module comment for why).
    #[test]
    fn softhsm2_provider() {
        let hsm = Hsm::new();
        // SoftHSM2 reads the token directory at C_Initialize, so every token is created first.
        for token in [
            "roundtrip",
            "attributes",
            "persist",
            "refresh",
            "threads",
            "errors",
            "imported",
        ] {
            hsm.init_token(token);
        }
        wrap_unwrap_rotate_retire(&hsm);
        kek_objects_never_leave_the_token(&hsm);
        second_open_sees_the_same_versions(&hsm);
        rotation_by_another_session_is_picked_up(&hsm);
        shared_across_threads(&hsm);
        open_errors_are_clear_and_secret_free(&hsm);
        refuses_extractable_kek_objects(&hsm);
        drop(hsm.dir);
    }

    fn wrap_unwrap_rotate_retire(hsm: &Hsm) {
        let kek = hsm.open("roundtrip");
        // Empty token: no active version, wraps refused.
        assert_eq!(kek.versions(), Vec::<u32>::new());
        assert_eq!(kek.active(), v(0));
        assert!(matches!(
            kek.wrap_dek(&dek(1), b"aad"),
            Err(KeyError::InvalidOperation(_))
        ));

        assert_eq!(kek.rotate().unwrap(), 1);
        assert_eq!(kek.active(), v(1));
        let d1 = dek(1);
        let (r1, w1) = kek.wrap_dek(&d1, b"file-1").unwrap();
        assert_eq!(r1, v(1));
        assert_eq!(w1.len(), PKCS11_WRAPPED_DEK_LEN);
        assert_eq!(w1.len(), 60);
        assert_ne!(
            &w1[IV_LEN..IV_LEN + KEY_LEN],
            d1.as_bytes(),
            "DEK stored in clear"
        );
        let back = kek.unwrap_dek(&r1, &w1, b"file-1").unwrap();
        assert_eq!(back.as_bytes(), d1.as_bytes());
        // Fresh IV per wrap.
        let (_, w1b) = kek.wrap_dek(&d1, b"file-1").unwrap();
        assert_ne!(w1[..IV_LEN], w1b[..IV_LEN]);

        // Wrong AAD, flipped bits anywhere, wrong length: UnwrapFailed.
        assert!(matches!(
            kek.unwrap_dek(&r1, &w1, b"file-2"),
            Err(KeyError::UnwrapFailed)
        ));
        for i in [0, IV_LEN, IV_LEN + KEY_LEN, PKCS11_WRAPPED_DEK_LEN - 1] {
            let mut bad = w1.clone();
            bad[i] ^= 1;
            assert!(
                matches!(
                    kek.unwrap_dek(&r1, &bad, b"file-1"),
                    Err(KeyError::UnwrapFailed)
                ),
                "flipped byte {i} accepted"
            );
        }
        assert!(matches!(
            kek.unwrap_dek(&r1, &w1[..59], b"file-1"),
            Err(KeyError::UnwrapFailed)
        ));
        // Unknown version / other id: UnknownKek.
        assert!(matches!(
            kek.unwrap_dek(&v(2), &w1, b"file-1"),
            Err(KeyError::UnknownKek { version: 2, .. })
        ));
        let other = KekRef {
            id: "other".into(),
            version: 1,
        };
        assert!(matches!(
            kek.unwrap_dek(&other, &w1, b"file-1"),
            Err(KeyError::UnknownKek { .. })
        ));

        // Rotate: v2 active, v1 still unwraps; v1 bytes under v2 fail authentication.
        assert_eq!(kek.rotate().unwrap(), 2);
        assert_eq!(kek.active(), v(2));
        assert_eq!(kek.versions(), vec![1, 2]);
        let (r2, w2) = kek.wrap_dek(&dek(2), b"file-2").unwrap();
        assert_eq!(r2, v(2));
        assert_eq!(
            kek.unwrap_dek(&r1, &w1, b"file-1").unwrap().as_bytes(),
            d1.as_bytes()
        );
        assert!(matches!(
            kek.unwrap_dek(&r2, &w1, b"file-1"),
            Err(KeyError::UnwrapFailed)
        ));

        // Retire: never the active version; below 2 destroys v1.
        assert!(matches!(
            kek.retire_below(3),
            Err(KeyError::InvalidOperation(_))
        ));
        assert_eq!(kek.versions(), vec![1, 2]);
        kek.retire_below(2).unwrap();
        assert_eq!(kek.versions(), vec![2]);
        assert!(matches!(
            kek.unwrap_dek(&r1, &w1, b"file-1"),
            Err(KeyError::UnknownKek { version: 1, .. })
        ));
        assert_eq!(
            kek.unwrap_dek(&r2, &w2, b"file-2").unwrap().as_bytes(),
            dek(2).as_bytes()
        );
        // Retiring again is a no-op; rotation continues from the highest version.
        kek.retire_below(2).unwrap();
        assert_eq!(kek.rotate().unwrap(), 3);
        // And the destruction is real: a fresh session does not find v1 either.
        let again = hsm.open("roundtrip");
        assert_eq!(again.versions(), vec![2, 3]);
    }

    fn kek_objects_never_leave_the_token(hsm: &Hsm) {
        let kek = hsm.open("attributes");
        kek.rotate().unwrap();
        let state = kek.lock();
        let handle = state.keys[&1];
        let attrs = state
            .session
            .get_attributes(
                handle,
                &[
                    AttributeType::Label,
                    AttributeType::Token,
                    AttributeType::Private,
                    AttributeType::Sensitive,
                    AttributeType::AlwaysSensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                    AttributeType::Modifiable,
                    AttributeType::Encrypt,
                    AttributeType::Decrypt,
                    AttributeType::Wrap,
                    AttributeType::KeyType,
                    AttributeType::ValueLen,
                ],
            )
            .unwrap();
        let mut seen = 0;
        for attr in &attrs {
            seen += 1;
            match attr {
                Attribute::Label(l) => assert_eq!(l.as_slice(), b"cloister-kek-v1"),
                Attribute::Token(b) => assert!(*b, "CKA_TOKEN"),
                Attribute::Private(b) => assert!(*b, "CKA_PRIVATE"),
                Attribute::Sensitive(b) => assert!(*b, "CKA_SENSITIVE"),
                Attribute::AlwaysSensitive(b) => assert!(*b, "CKA_ALWAYS_SENSITIVE"),
                Attribute::Extractable(b) => assert!(!*b, "CKA_EXTRACTABLE"),
                Attribute::NeverExtractable(b) => assert!(*b, "CKA_NEVER_EXTRACTABLE"),
                Attribute::Modifiable(b) => assert!(!*b, "CKA_MODIFIABLE"),
                Attribute::Encrypt(b) => assert!(*b, "CKA_ENCRYPT"),
                Attribute::Decrypt(b) => assert!(*b, "CKA_DECRYPT"),
                Attribute::Wrap(b) => assert!(!*b, "CKA_WRAP"),
                Attribute::KeyType(t) => assert_eq!(*t, KeyType::AES),
                Attribute::ValueLen(n) => assert_eq!(u64::from(*n), 32),
                other => panic!("unexpected attribute {other:?}"),
            }
        }
        assert_eq!(seen, 13, "token did not return every attribute: {attrs:?}");
        // The key value itself is refused by the token.
        match state
            .session
            .get_attributes(handle, &[AttributeType::Value])
        {
            Err(_) => {}
            Ok(got) => assert!(
                !got.iter().any(|a| matches!(a, Attribute::Value(_))),
                "token revealed the KEK value"
            ),
        }
    }

    fn second_open_sees_the_same_versions(hsm: &Hsm) {
        let first = hsm.open("persist");
        first.rotate().unwrap();
        let (r1, w1) = first.wrap_dek(&dek(7), b"m").unwrap();
        first.rotate().unwrap();
        // A second provider (new session) while the first is open...
        let second = hsm.open("persist");
        assert_eq!(second.versions(), vec![1, 2]);
        assert_eq!(second.active(), v(2));
        assert_eq!(
            second.unwrap_dek(&r1, &w1, b"m").unwrap().as_bytes(),
            dek(7).as_bytes()
        );
        // ...and after every session is closed: the objects persist in the token directory.
        drop(first);
        drop(second);
        let third = hsm.open("persist");
        assert_eq!(third.versions(), vec![1, 2]);
        assert_eq!(
            third.unwrap_dek(&r1, &w1, b"m").unwrap().as_bytes(),
            dek(7).as_bytes()
        );
    }

    fn rotation_by_another_session_is_picked_up(hsm: &Hsm) {
        let admin = hsm.open("refresh");
        admin.rotate().unwrap();
        let server = hsm.open("refresh");
        assert_eq!(admin.rotate().unwrap(), 2);
        // The server still wraps under v1 until it refreshes...
        assert_eq!(server.active(), v(1));
        // ...but unwrapping a v2 DEK re-reads the token instead of failing.
        let (r2, w2) = admin.wrap_dek(&dek(3), b"x").unwrap();
        assert_eq!(
            server.unwrap_dek(&r2, &w2, b"x").unwrap().as_bytes(),
            dek(3).as_bytes()
        );
        assert_eq!(server.active(), v(2));
        assert_eq!(admin.rotate().unwrap(), 3);
        server.refresh().unwrap();
        assert_eq!(server.versions(), vec![1, 2, 3]);
        // Rotation re-reads too: the server's rotate makes v4, not a duplicate v3.
        assert_eq!(admin.rotate().unwrap(), 4);
        assert_eq!(server.rotate().unwrap(), 5);
    }

    fn shared_across_threads(hsm: &Hsm) {
        let kek = Arc::new(hsm.open("threads"));
        kek.rotate().unwrap();
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let kek = Arc::clone(&kek);
                std::thread::spawn(move || {
                    for i in 0..20u64 {
                        let d = dek(t * 100 + i);
                        let aad = [t as u8, i as u8];
                        let (r, w) = kek.wrap_dek(&d, &aad).unwrap();
                        let back = kek.unwrap_dek(&r, &w, &aad).unwrap();
                        assert_eq!(back.as_bytes(), d.as_bytes());
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        // Also usable as the trait object the container code takes.
        let provider: Arc<dyn KeyProvider> = kek;
        assert_eq!(provider.active(), v(1));
    }

    fn open_errors_are_clear_and_secret_free(hsm: &Hsm) {
        let mut cfg = hsm.config("errors");
        cfg.pin = Zeroizing::new("99999999".to_owned());
        match Pkcs11Kek::open(&cfg) {
            Err(KeyError::Backend(msg)) => {
                assert!(msg.contains("PinIncorrect"), "{msg}");
                assert!(!msg.contains("99999999"), "PIN leaked: {msg}");
            }
            other => panic!("wrong PIN accepted: {other:?}"),
        }
        let mut cfg = hsm.config("no-such-token");
        assert!(
            matches!(Pkcs11Kek::open(&cfg), Err(KeyError::Backend(m)) if m.contains("no-such-token"))
        );
        cfg.token_label = "errors".into();
        cfg.key_label_prefix = "bad prefix".into();
        assert!(matches!(Pkcs11Kek::open(&cfg), Err(KeyError::InvalidKeyId)));
        cfg.key_label_prefix = PREFIX.into();
        cfg.module = hsm.dir.path().join("missing.so");
        assert!(
            matches!(Pkcs11Kek::open(&cfg), Err(KeyError::Backend(m)) if m.contains("missing.so"))
        );
        assert!(!format!("{:?}", hsm.config("errors")).contains(PIN));
    }

    fn refuses_extractable_kek_objects(hsm: &Hsm) {
        let kek = hsm.open("imported");
        kek.rotate().unwrap();
        // Someone creates "v2" as an extractable key (as a plaintext import would be).
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32u64.into()),
            Attribute::Label(b"cloister-kek-v2".to_vec()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ];
        kek.lock()
            .session
            .generate_key(&Mechanism::AesKeyGen, &template)
            .unwrap();
        match Pkcs11Kek::open(&hsm.config("imported")) {
            Err(KeyError::Backend(msg)) => assert!(msg.contains("cloister-kek-v2"), "{msg}"),
            other => panic!("extractable KEK accepted: {other:?}"),
        }
        assert!(matches!(kek.refresh(), Err(KeyError::Backend(_))));
    }

    #[test]
    fn labels_parse_strictly() {
        assert_eq!(parse_label("k", b"k-v1"), Some(1));
        assert_eq!(parse_label("k", b"k-v4294967295"), Some(u32::MAX));
        for bad in [
            &b"k-v0"[..],
            b"k-v01",
            b"k-v",
            b"k-v+1",
            b"k-v1 ",
            b"k-v4294967296",
            b"k-v99999999999",
            b"kk-v1",
            b"k-1",
            b"x-v1",
        ] {
            assert_eq!(
                parse_label("k", bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(label_for(PREFIX, 12), "cloister-kek-v12");
        assert_eq!(
            parse_label(PREFIX, label_for(PREFIX, 12).as_bytes()),
            Some(12)
        );
    }

    #[test]
    fn provider_is_send_sync_and_config_debug_redacts_the_pin() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Pkcs11Kek>();
        let cfg = Pkcs11Config {
            module: DEFAULT_MODULE.into(),
            token_label: "t".into(),
            pin: Zeroizing::new("s3cret-pin".into()),
            key_label_prefix: PREFIX.into(),
        };
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("s3cret-pin") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
