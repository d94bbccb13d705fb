//! Bearer-token verification: JWT compact serialization in, [`Principal`] out.
//!
//! The verifier does its own structural parsing (size, charset, three parts, strict base64url,
//! header JSON) and claim checks, and uses `jsonwebtoken` only for the signature, through
//! [`jsonwebtoken::crypto::verify`] with the algorithm pinned by the JWKS entry. Why not
//! `jsonwebtoken::decode`: it reads the clock itself, and we want `now` passed in so the check is
//! pure and tests control time; it also folds distinct failures (expired vs. wrong audience)
//! into errors we would have to re-map.
//!
//! Order matters: nothing in the payload is interpreted before the signature has been checked
//! against the key the JWKS pins for the header's `kid`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer};

use crate::auth::error::AuthError;
use crate::auth::jwks::{Jwks, MAX_KID_LEN};
use crate::auth::principal::{Principal, Scope, ScopeSet, TenantId};

/// Default clock-skew allowance for `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Default maximum token length: real access tokens are well under 2 KiB; 8 KiB bounds the work
/// an unauthenticated caller can make us do.
pub const DEFAULT_MAX_TOKEN_LEN: usize = 8 * 1024;
/// Maximum length of `sub` and `jti`: they end up in audit records.
pub const MAX_CLAIM_STR_LEN: usize = 256;

/// What a token must satisfy besides a valid signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// Required `iss`, compared exactly. An empty string matches nothing (fail closed).
    pub issuer: String,
    /// Required member of `aud`, compared exactly. An empty string matches nothing.
    pub audience: String,
    /// Clock-skew allowance in seconds for `exp`, `nbf`, `iat`.
    pub leeway_secs: u64,
    /// Tokens longer than this are refused before any parsing.
    pub max_token_len: usize,
}

impl VerifyPolicy {
    /// A policy with the default leeway and size limit.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        VerifyPolicy {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
            max_token_len: DEFAULT_MAX_TOKEN_LEN,
        }
    }
}

/// Verifies bearer tokens against one JWKS and one policy. Immutable and `Send + Sync`; on a
/// JWKS reload, build a new one and swap it in.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    jwks: Jwks,
    policy: VerifyPolicy,
}

/// The protected header members we read. Unknown members are ignored, except `crit`, which by
/// RFC 7515 §4.1.11 we must refuse since we implement no extensions. `jku`/`x5u`/`jwk` are
/// ignored: keys only ever come from the configured JWKS.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// The claims we read. Everything optional here so missing claims are reported as our own
/// errors, not as serde errors. serde rejects duplicate members, so `{"tenant":"a","tenant":"b"}`
/// cannot be read two ways.
#[derive(Deserialize)]
struct RawClaims {
    iss: Option<String>,
    aud: Option<OneOrMany>,
    sub: Option<String>,
    tenant: Option<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    iat: Option<u64>,
    jti: Option<String>,
    scope: Option<OneOrMany>,
}

/// `aud` (RFC 7519 §4.1.3) and our `scope` accept a string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// RFC 7519 NumericDate: seconds since the epoch, possibly fractional. Fractions are floored;
/// negative, non-finite or non-numeric values are refused.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(v) = n.as_u64() {
        return Ok(Some(v));
    }
    match n.as_f64() {
        // `as` saturates for floats, and the range check excludes negatives.
        Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f.floor() as u64)),
        _ => Err(serde::de::Error::custom("invalid NumericDate")),
    }
}

impl JwtVerifier {
    /// A verifier for tokens signed by keys in `jwks` and satisfying `policy`.
    pub fn new(jwks: Jwks, policy: VerifyPolicy) -> Self {
        crate::auth::ensure_crypto_provider();
        JwtVerifier { jwks, policy }
    }

    /// The JWKS this verifier trusts.
    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    /// The policy this verifier enforces.
    pub fn policy(&self) -> &VerifyPolicy {
        &self.policy
    }

    /// Verifies a bearer token (the part after `Bearer `) at time `now_unix` (Unix seconds).
    ///
    /// Pure: no clock, no I/O. Errors say what class of problem the token has, never which
    /// cryptographic check failed.
    pub fn verify(&self, bearer_token: &str, now_unix: u64) -> Result<Principal, AuthError> {
        if bearer_token.is_empty() {
            return Err(AuthError::Missing);
        }
        if bearer_token.len() > self.policy.max_token_len {
            return Err(AuthError::Malformed);
        }
        if !bearer_token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(AuthError::Malformed);
        }

        // Exactly three parts; the signature may be empty here (an unsecured JWS is
        // structurally valid) and is refused below because no key allows `alg: none`.
        let mut parts = bearer_token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        if header_b64.is_empty() || payload_b64.is_empty() {
            return Err(AuthError::Malformed);
        }
        let header_json = b64(header_b64)?;
        let payload_json = b64(payload_b64)?;
        // Decoded only to enforce canonical base64url; the backend decodes it again.
        b64(sig_b64)?;
        let header: RawHeader = parse_object(&header_json)?;

        if header.crit.is_some() {
            return Err(AuthError::Invalid);
        }
        let kid = header.kid.ok_or(AuthError::Invalid)?;
        if kid.len() > MAX_KID_LEN {
            return Err(AuthError::Invalid);
        }
        let key = self.jwks.get(&kid).ok_or(AuthError::Invalid)?;
        // The pin: the token's alg must be exactly the key's alg. This is what rules out
        // `none`, HS256-with-the-public-key and any cross-family confusion.
        if header.alg != key.alg.as_str() {
            return Err(AuthError::Invalid);
        }
        let signing_input_len = header_b64.len() + 1 + payload_b64.len();
        let signing_input = bearer_token
            .get(..signing_input_len)
            .ok_or(AuthError::Malformed)?;
        match jsonwebtoken::crypto::verify(
            sig_b64,
            signing_input.as_bytes(),
            &key.key,
            key.alg.jwt_algorithm(),
        ) {
            Ok(true) => {}
            Ok(false) | Err(_) => return Err(AuthError::Invalid),
        }

        // Signature is good: now interpret the claims.
        let claims: RawClaims = parse_object(&payload_json)?;
        self.check_claims(claims, now_unix)
    }

    fn check_claims(&self, c: RawClaims, now: u64) -> Result<Principal, AuthError> {
        let p = &self.policy;
        match c.iss {
            Some(iss) if !p.issuer.is_empty() && iss == p.issuer => {}
            _ => return Err(AuthError::WrongIssuer),
        }
        let aud_ok = !p.audience.is_empty()
            && match &c.aud {
                Some(OneOrMany::One(a)) => *a == p.audience,
                Some(OneOrMany::Many(list)) => list.contains(&p.audience),
                None => false,
            };
        if !aud_ok {
            return Err(AuthError::WrongAudience);
        }

        let exp = c.exp.ok_or(AuthError::Invalid)?;
        if now >= exp.saturating_add(p.leeway_secs) {
            return Err(AuthError::Expired);
        }
        let now_plus_leeway = now.saturating_add(p.leeway_secs);
        if c.nbf.is_some_and(|nbf| nbf > now_plus_leeway) {
            return Err(AuthError::NotYetValid);
        }
        if c.iat.is_some_and(|iat| iat > now_plus_leeway) {
            return Err(AuthError::NotYetValid);
        }

        let subject = c
            .sub
            .filter(|s| !s.is_empty() && s.len() <= MAX_CLAIM_STR_LEN)
            .ok_or(AuthError::Invalid)?;
        let tenant = c
            .tenant
            .and_then(|t| TenantId::new(t).ok())
            .ok_or(AuthError::Invalid)?;
        if c.jti
            .as_ref()
            .is_some_and(|j| j.is_empty() || j.len() > MAX_CLAIM_STR_LEN)
        {
            return Err(AuthError::Invalid);
        }
        let scopes = match &c.scope {
            None => ScopeSet::empty(),
            Some(OneOrMany::One(s)) => ScopeSet::from_space_separated(s),
            Some(OneOrMany::Many(list)) => list.iter().filter_map(|s| Scope::parse(s)).collect(),
        };

        Ok(Principal {
            tenant,
            subject,
            scopes,
            token_id: c.jti,
            expires_at: exp,
        })
    }
}

/// Strict base64url without padding (RFC 7515 §2); non-canonical trailing bits are refused.
fn b64(s: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD.decode(s).map_err(|_| AuthError::Malformed)
}

/// Parses a JSON object; arrays (which serde would map onto a struct positionally) and any
/// other JSON are refused.
fn parse_object<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, AuthError> {
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(AuthError::Malformed);
    }
    serde_json::from_slice(json).map_err(|_| AuthError::Malformed)
}

/// Maximum `Authorization` header value accepted by [`bearer_from_header`]: the default token
/// limit plus the scheme. The verifier's own policy limit still applies afterwards.
pub const MAX_AUTHORIZATION_LEN: usize = DEFAULT_MAX_TOKEN_LEN + "Bearer ".len();

/// Extracts the token from an `Authorization` header value: `Bearer <token>`, scheme
/// case-insensitive (RFC 7235 §2.1), exactly one space, no surrounding whitespace.
///
/// Empty → [`AuthError::Missing`]; any other scheme, shape or an oversized value →
/// [`AuthError::Malformed`].
pub fn bearer_from_header(value: &str) -> Result<&str, AuthError> {
    if value.is_empty() {
        return Err(AuthError::Missing);
    }
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(AuthError::Malformed);
    }
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}
