//! The operator's JWKS: public verification keys, each pinned to exactly one algorithm.
//!
//! Why pinning per key: the classic JWT attacks (`alg: none`, and HS256 "signed" with the
//! public key as the HMAC secret) work by letting the *token* choose the algorithm. Here the
//! algorithm comes from the JWKS entry (`alg`, which is mandatory) and the verifier refuses any
//! token whose header `alg` differs, so the token never chooses. Symmetric (`oct`) keys and
//! HS*/`none` algorithms are refused when the JWKS is parsed, so there is no HMAC path at all.
//!
//! Parsing is strict and reports every problem at once (one [`AuthError::BadJwks`] listing each
//! refused key), so an operator fixing a JWKS sees all mistakes in one go. A JWKS that contains
//! private key parameters is refused outright: it means the wrong file was deployed.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::auth::error::AuthError;

/// Upper bound on the JWKS document size; it is operator input, but bounded anyway.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Upper bound on the number of keys in one JWKS.
pub const MAX_JWKS_KEYS: usize = 64;
/// Upper bound on a `kid`, which also bounds work per request (header parsing).
pub const MAX_KID_LEN: usize = 256;
/// Smallest RSA modulus accepted (NIST SP 800-131A; RFC 7518 §3.3 requires ≥ 2048).
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted: the RustCrypto `rsa` backend refuses larger keys at verify time,
/// so a larger key would load but never verify anything. Refusing it at parse time is clearer.
pub const MAX_RSA_BITS: usize = 4096;

/// JWK members that only a private key has (RFC 7518 §6). Their presence means a private key
/// was published.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

/// The asymmetric signature algorithms Cloister accepts. Deliberately closed: no HS*, no `none`,
/// no PS*/ES384 until someone needs them (each is one more thing to get right).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigningAlg {
    /// Ed25519 (`kty: OKP`, `crv: Ed25519`).
    EdDSA,
    /// ECDSA P-256 with SHA-256 (`kty: EC`, `crv: P-256`).
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (`kty: RSA`, 2048..=4096 bits).
    RS256,
}

impl SigningAlg {
    /// The JOSE name, compared byte-for-byte with a token header's `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::EdDSA => "EdDSA",
            SigningAlg::ES256 => "ES256",
            SigningAlg::RS256 => "RS256",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "EdDSA" => Some(SigningAlg::EdDSA),
            "ES256" => Some(SigningAlg::ES256),
            "RS256" => Some(SigningAlg::RS256),
            _ => None,
        }
    }

    pub(crate) fn jwt_algorithm(self) -> Algorithm {
        match self {
            SigningAlg::EdDSA => Algorithm::EdDSA,
            SigningAlg::ES256 => Algorithm::ES256,
            SigningAlg::RS256 => Algorithm::RS256,
        }
    }
}

/// One verification key with the only algorithm it may be used with.
#[derive(Clone)]
pub(crate) struct PinnedKey {
    pub(crate) alg: SigningAlg,
    pub(crate) key: DecodingKey,
}

/// A parsed, validated JWKS: `kid` → pinned public key. Several kids at once, so the identity
/// provider can rotate its signing key while tokens signed by the old one are still valid.
///
/// Immutable; a reload builds a new `Jwks` (and a new verifier) and swaps it in.
#[derive(Clone)]
pub struct Jwks {
    keys: BTreeMap<String, PinnedKey>,
}

/// The raw JSON shape, before validation. Every member is optional here so that each missing
/// one is reported by name instead of as a serde error.
#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    key_use: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

impl Jwks {
    /// Parses and validates a JWKS document (RFC 7517 `{"keys": [...]}`).
    ///
    /// Every key must have a unique `kid` and an `alg` of `EdDSA`, `ES256` or `RS256` that
    /// matches its key type; anything else refuses the whole document (a partly loaded JWKS
    /// would make failures depend on which key an IdP happens to use).
    pub fn from_json(bytes: &[u8]) -> Result<Self, AuthError> {
        crate::auth::ensure_crypto_provider();
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(AuthError::BadJwks(format!(
                "document larger than {MAX_JWKS_BYTES} bytes"
            )));
        }
        let set: RawJwkSet = serde_json::from_slice(bytes)
            .map_err(|e| AuthError::BadJwks(format!("not a JWKS document: {e}")))?;
        if set.keys.is_empty() {
            return Err(AuthError::BadJwks("no keys".into()));
        }
        if set.keys.len() > MAX_JWKS_KEYS {
            return Err(AuthError::BadJwks(format!(
                "more than {MAX_JWKS_KEYS} keys"
            )));
        }

        let mut keys = BTreeMap::new();
        let mut problems = Vec::new();
        for (index, value) in set.keys.into_iter().enumerate() {
            match parse_key(value) {
                Ok((kid, pinned)) => match keys.entry(kid) {
                    Entry::Occupied(e) => {
                        problems.push(format!("key {index} (kid {:?}): duplicate kid", e.key()));
                    }
                    Entry::Vacant(e) => {
                        e.insert(pinned);
                    }
                },
                Err((kid, why)) => match kid {
                    Some(kid) => problems.push(format!("key {index} (kid {kid:?}): {why}")),
                    None => problems.push(format!("key {index}: {why}")),
                },
            }
        }
        if problems.is_empty() {
            Ok(Jwks { keys })
        } else {
            Err(AuthError::BadJwks(problems.join("; ")))
        }
    }

    /// The key ids, sorted.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The algorithm pinned to `kid`, if the kid is present.
    pub fn alg_of(&self, kid: &str) -> Option<SigningAlg> {
        self.keys.get(kid).map(|k| k.alg)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false for a successfully parsed JWKS (empty ones are refused); here for clippy
    /// and for completeness.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&PinnedKey> {
        self.keys.get(kid)
    }
}

impl fmt::Debug for Jwks {
    /// Kids and algorithms only: public keys are not secret, but they are noise in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.keys.iter().map(|(kid, k)| (kid, k.alg.as_str())))
            .finish()
    }
}

type KeyProblem = (Option<String>, String);

fn parse_key(value: serde_json::Value) -> Result<(String, PinnedKey), KeyProblem> {
    let serde_json::Value::Object(map) = &value else {
        return Err((None, "not a JSON object".into()));
    };
    // Read the kid first (leniently) so every later problem can name the key.
    let kid_hint = map
        .get("kid")
        .and_then(|v| v.as_str())
        .filter(|s| s.len() <= MAX_KID_LEN)
        .map(str::to_owned);
    let fail = |why: &str| (kid_hint.clone(), why.to_owned());

    if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| map.contains_key(**m)) {
        return Err(fail(&format!(
            "contains private/secret member {member:?}; publish public keys only"
        )));
    }
    let raw: RawJwk =
        serde_json::from_value(value).map_err(|e| fail(&format!("bad member type: {e}")))?;

    let kid = raw.kid.ok_or_else(|| fail("missing kid"))?;
    if kid.is_empty() || kid.len() > MAX_KID_LEN {
        return Err(fail(&format!("kid must be 1..={MAX_KID_LEN} bytes")));
    }
    let kty = raw.kty.ok_or_else(|| fail("missing kty"))?;
    if kty == "oct" {
        return Err(fail("symmetric (oct) keys are refused"));
    }
    let alg_name = raw
        .alg
        .ok_or_else(|| fail("missing alg (algorithm must be pinned)"))?;
    let alg = SigningAlg::parse(&alg_name).ok_or_else(|| {
        fail(&format!(
            "alg {alg_name:?} refused (only EdDSA, ES256, RS256)"
        ))
    })?;
    if let Some(key_use) = &raw.key_use {
        if key_use != "sig" {
            return Err(fail("use must be \"sig\""));
        }
    }
    if let Some(ops) = &raw.key_ops {
        if !ops.iter().any(|op| op == "verify") {
            return Err(fail("key_ops does not include \"verify\""));
        }
    }

    let key = match alg {
        SigningAlg::EdDSA => {
            expect_kty_crv(&kty, "OKP", raw.crv.as_deref(), "Ed25519").map_err(|w| fail(&w))?;
            let x = raw.x.ok_or_else(|| fail("missing x"))?;
            let bytes = decode_exact(&x, 32).map_err(|w| fail(&format!("x: {w}")))?;
            // Decompress here: jsonwebtoken's Ed25519 verifier slices the key without a length
            // check, and an invalid or small-order point should fail at load, not per request.
            let mut arr = [0u8; 32];
            arr.copy_from_slice(&bytes);
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&arr)
                .map_err(|_| fail("x is not a valid Ed25519 point"))?;
            if vk.is_weak() {
                return Err(fail("x is a small-order (weak) Ed25519 point"));
            }
            DecodingKey::from_ed_components(&x).map_err(|_| fail("bad x"))?
        }
        SigningAlg::ES256 => {
            expect_kty_crv(&kty, "EC", raw.crv.as_deref(), "P-256").map_err(|w| fail(&w))?;
            let x = raw.x.ok_or_else(|| fail("missing x"))?;
            let y = raw.y.ok_or_else(|| fail("missing y"))?;
            decode_exact(&x, 32).map_err(|w| fail(&format!("x: {w}")))?;
            decode_exact(&y, 32).map_err(|w| fail(&format!("y: {w}")))?;
            DecodingKey::from_ec_components(&x, &y).map_err(|_| fail("bad x/y"))?
        }
        SigningAlg::RS256 => {
            if kty != "RSA" {
                return Err(fail(&format!("kty {kty:?} does not match alg RS256")));
            }
            let n = raw.n.ok_or_else(|| fail("missing n"))?;
            let e = raw.e.ok_or_else(|| fail("missing e"))?;
            let n_bytes = decode_b64(&n).map_err(|w| fail(&format!("n: {w}")))?;
            let e_bytes = decode_b64(&e).map_err(|w| fail(&format!("e: {w}")))?;
            let bits = bit_len(&n_bytes);
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(fail(&format!(
                    "RSA modulus is {bits} bits; need {MIN_RSA_BITS}..={MAX_RSA_BITS}"
                )));
            }
            let e_val = be_to_u64(&e_bytes).ok_or_else(|| fail("e too large"))?;
            if e_val < 3 || e_val % 2 == 0 || e_val > (1 << 33) - 1 {
                return Err(fail("e must be odd and in 3..2^33"));
            }
            DecodingKey::from_rsa_components(&n, &e).map_err(|_| fail("bad n/e"))?
        }
    };

    // Ask the crypto backend to build a verifier from the key once: it parses the point / key
    // eagerly and errors on an invalid one. A wrong signature is `Ok(false)`, which is expected.
    jsonwebtoken::crypto::verify("", b"", &key, alg.jwt_algorithm())
        .map_err(|_| fail("key refused by the crypto backend"))?;

    Ok((kid, PinnedKey { alg, key }))
}

fn expect_kty_crv(
    kty: &str,
    want_kty: &str,
    crv: Option<&str>,
    want_crv: &str,
) -> Result<(), String> {
    if kty != want_kty {
        return Err(format!(
            "kty {kty:?} does not match alg (need {want_kty:?})"
        ));
    }
    match crv {
        Some(c) if c == want_crv => Ok(()),
        Some(c) => Err(format!("crv {c:?} does not match alg (need {want_crv:?})")),
        None => Err("missing crv".into()),
    }
}

fn decode_b64(s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "not unpadded base64url".to_owned())
}

fn decode_exact(s: &str, len: usize) -> Result<Vec<u8>, String> {
    let bytes = decode_b64(s)?;
    if bytes.len() == len {
        Ok(bytes)
    } else {
        Err(format!("expected {len} bytes, got {}", bytes.len()))
    }
}

fn bit_len(be: &[u8]) -> usize {
    match be.iter().position(|&b| b != 0) {
        None => 0,
        Some(i) => (be.len() - i - 1) * 8 + (8 - be[i].leading_zeros() as usize),
    }
}

fn be_to_u64(be: &[u8]) -> Option<u64> {
    let start = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    let digits = &be[start..];
    if digits.len() > 8 {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
    )
}
