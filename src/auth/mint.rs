//! A development token issuer (Ed25519 / EdDSA).
//!
//! Production tokens come from the operator's identity provider; this exists so a developer can
//! run Cloister without one (`cloister dev-token ...`) and so tests exercise the real verifier
//! end to end. It signs with `ed25519-dalek` directly rather than through `jsonwebtoken`, which
//! keeps the private key in exactly one zeroize-on-drop place and makes the tests an interop
//! check between two independent implementations.
//!
//! The private key never appears in `Debug` output, errors or the JWKS; it leaves this type only
//! through [`DevIssuer::to_pkcs8_pem`], as a `Zeroizing<String>`.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer as _, SigningKey};
use rand::{CryptoRng, RngCore};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::auth::error::AuthError;
use crate::auth::jwks::{SigningAlg, MAX_KID_LEN};
use crate::auth::principal::{ScopeSet, TenantId};
use crate::auth::verifier::MAX_CLAIM_STR_LEN;

/// Longest lifetime a dev token may have: dev tokens are for a session at a desk, not for
/// deployment.
pub const MAX_DEV_TTL_SECS: u64 = 7 * 24 * 3600;

/// An Ed25519 signing key with its `kid`.
pub struct DevIssuer {
    kid: String,
    /// Zeroized on drop (ed25519-dalek `zeroize` feature).
    signing: SigningKey,
}

/// What to put into a dev token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintRequest {
    /// `iss`; must equal the verifier policy's issuer.
    pub issuer: String,
    /// `aud`; must equal the verifier policy's audience.
    pub audience: String,
    /// `sub`.
    pub subject: String,
    /// `tenant`.
    pub tenant: TenantId,
    /// `scope` (space-separated on the wire).
    pub scopes: ScopeSet,
    /// Lifetime: `exp = now_unix + ttl_secs`; 1..=[`MAX_DEV_TTL_SECS`].
    pub ttl_secs: u64,
    /// Issue time (`iat` and `nbf`); passed in, never read from a clock here.
    pub now_unix: u64,
}

#[derive(Serialize)]
struct MintHeader<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

#[derive(Serialize)]
struct MintClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    tenant: &'a str,
    scope: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
}

impl DevIssuer {
    /// Generates a fresh key from `rng` (use `rand::rngs::OsRng`).
    pub fn generate<R: RngCore + CryptoRng>(
        rng: &mut R,
        kid: impl Into<String>,
    ) -> Result<Self, AuthError> {
        let kid = check_kid(kid.into())?;
        Ok(DevIssuer {
            kid,
            signing: SigningKey::generate(rng),
        })
    }

    /// Loads a key from PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, Ed25519).
    pub fn from_pkcs8_pem(kid: impl Into<String>, pem: &str) -> Result<Self, AuthError> {
        let kid = check_kid(kid.into())?;
        let signing = SigningKey::from_pkcs8_pem(pem)
            .map_err(|_| AuthError::SigningFailed("not an Ed25519 PKCS#8 PEM key".into()))?;
        Ok(DevIssuer { kid, signing })
    }

    /// Exports the private key as PKCS#8 PEM, in a buffer that is wiped on drop.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, AuthError> {
        self.signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| AuthError::SigningFailed("PKCS#8 encoding failed".into()))
    }

    /// The key id put into every token header and the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (OKP/Ed25519, `alg: EdDSA`, `use: sig`).
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.signing.verifying_key().as_bytes()),
            "kid": self.kid,
            "alg": SigningAlg::EdDSA.as_str(),
            "use": "sig",
        })
    }

    /// A JWKS document holding just this issuer's public key, ready for the verifier.
    pub fn jwks_json(&self) -> String {
        serde_json::json!({ "keys": [self.public_jwk()] }).to_string()
    }

    /// Signs a token for `req`, with a fresh random `jti`.
    pub fn mint(&self, req: MintRequest) -> Result<String, AuthError> {
        let bad = |why: &str| Err(AuthError::SigningFailed(why.to_owned()));
        if req.issuer.is_empty() || req.audience.is_empty() {
            return bad("issuer and audience must be non-empty");
        }
        if req.subject.is_empty() || req.subject.len() > MAX_CLAIM_STR_LEN {
            return bad("subject must be 1..=256 bytes");
        }
        if req.ttl_secs == 0 || req.ttl_secs > MAX_DEV_TTL_SECS {
            return bad("ttl_secs out of range");
        }
        let Some(exp) = req.now_unix.checked_add(req.ttl_secs) else {
            return bad("exp overflows");
        };

        let mut jti = [0u8; 16];
        rand::rngs::OsRng
            .try_fill_bytes(&mut jti)
            .map_err(|_| AuthError::SigningFailed("no randomness for jti".into()))?;

        let header = MintHeader {
            alg: SigningAlg::EdDSA.as_str(),
            typ: "JWT",
            kid: &self.kid,
        };
        let claims = MintClaims {
            iss: &req.issuer,
            aud: &req.audience,
            sub: &req.subject,
            tenant: req.tenant.as_str(),
            scope: req.scopes.to_space_separated(),
            iat: req.now_unix,
            nbf: req.now_unix,
            exp,
            jti: URL_SAFE_NO_PAD.encode(jti),
        };
        let header_json = serde_json::to_vec(&header)
            .map_err(|_| AuthError::SigningFailed("header encoding".into()))?;
        let claims_json = serde_json::to_vec(&claims)
            .map_err(|_| AuthError::SigningFailed("claims encoding".into()))?;

        let mut token = URL_SAFE_NO_PAD.encode(header_json);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims_json));
        let signature = self.signing.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        Ok(token)
    }
}

impl fmt::Debug for DevIssuer {
    /// Public parts only; the private key is never formatted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevIssuer")
            .field("kid", &self.kid)
            .field("alg", &SigningAlg::EdDSA.as_str())
            .field(
                "public_x",
                &URL_SAFE_NO_PAD.encode(self.signing.verifying_key().as_bytes()),
            )
            .field("private_key", &"[redacted]")
            .finish()
    }
}

fn check_kid(kid: String) -> Result<String, AuthError> {
    if kid.is_empty() || kid.len() > MAX_KID_LEN || !kid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::SigningFailed(format!(
            "kid must be 1..={MAX_KID_LEN} printable ASCII bytes"
        )));
    }
    Ok(kid)
}
