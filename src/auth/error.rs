//! The one error type of the auth layer.
//!
//! Every variant maps to exactly one HTTP status ([`AuthError::http_status`]) and one stable
//! metric label ([`AuthError::code`]), so the HTTP layer can convert it in a single place.
//!
//! Display strings are what a client may see. They never contain the token, claims values or key
//! material, and they do not say *which* cryptographic check failed: a bad signature, an unknown
//! `kid` and a header `alg` that does not match the key all read "invalid token", so the server
//! is not an oracle for someone probing the verifier.

use crate::auth::principal::Scope;

/// Why a request could not be authenticated or authorised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credentials were presented (no header, or an empty one).
    #[error("missing bearer token")]
    Missing,
    /// The credentials are not structurally a JWT: wrong scheme, not three base64url parts,
    /// undecodable JSON, oversized.
    #[error("malformed bearer token")]
    Malformed,
    /// The token is well formed but not acceptable: bad signature, unknown or missing `kid`,
    /// header `alg` not the key's pinned algorithm, missing or invalid required claims.
    #[error("invalid token")]
    Invalid,
    /// `exp` is in the past, beyond the configured leeway.
    #[error("token expired")]
    Expired,
    /// `nbf` (or `iat`) is in the future, beyond the configured leeway.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("token issuer not accepted")]
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    #[error("token audience not accepted")]
    WrongAudience,
    /// The caller is authenticated but lacks the scope the operation needs.
    #[error("insufficient scope: {} required", .0.as_str())]
    InsufficientScope(Scope),
    /// The JWKS document (operator configuration) was refused. The string names the key id and
    /// the reason, never key material. Not a client error.
    #[error("bad JWKS: {0}")]
    BadJwks(String),
    /// The dev issuer could not produce a token (bad request parameters or a key problem).
    /// Only reachable from the dev minting path, never from verification.
    #[error("token signing failed: {0}")]
    SigningFailed(String),
}

impl AuthError {
    /// The HTTP status this error should produce.
    ///
    /// 401 for every authentication failure (RFC 6750 `invalid_token`), 403 for a valid caller
    /// without the needed scope (RFC 6750 `insufficient_scope`), 500 for server-side
    /// configuration or signing problems, which are never the client's fault.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Missing
            | Self::Malformed
            | Self::Invalid
            | Self::Expired
            | Self::NotYetValid
            | Self::WrongIssuer
            | Self::WrongAudience => 401,
            Self::InsufficientScope(_) => 403,
            Self::BadJwks(_) | Self::SigningFailed(_) => 500,
        }
    }

    /// A stable, low-cardinality label for metrics and logs. Never changes once released.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "auth_missing",
            Self::Malformed => "auth_malformed",
            Self::Invalid => "auth_invalid",
            Self::Expired => "auth_expired",
            Self::NotYetValid => "auth_not_yet_valid",
            Self::WrongIssuer => "auth_wrong_issuer",
            Self::WrongAudience => "auth_wrong_audience",
            Self::InsufficientScope(_) => "auth_insufficient_scope",
            Self::BadJwks(_) => "auth_bad_jwks",
            Self::SigningFailed(_) => "auth_signing_failed",
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes() {
        assert_eq!(AuthError::Expired.http_status(), 401);
        assert_eq!(AuthError::Missing.http_status(), 401);
        assert_eq!(
            AuthError::InsufficientScope(Scope::Admin).http_status(),
            403
        );
        assert_eq!(AuthError::BadJwks("x".into()).http_status(), 500);
        assert_eq!(AuthError::Invalid.code(), "auth_invalid");
        assert_eq!(
            AuthError::InsufficientScope(Scope::UsageRead).to_string(),
            "insufficient scope: usage:read required"
        );
    }
}
