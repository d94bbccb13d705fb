//! Tenant authentication: JWT bearer tokens verified against the operator's JWKS.
//!
//! Flow: `Authorization` header → [`bearer_from_header`] → [`JwtVerifier::verify`] →
//! [`Principal`] → [`Principal::require`] per endpoint. The output is a proof value: handlers
//! take a `Principal`, so an unauthenticated path cannot reach them by accident.
//!
//! Security choices, and why:
//! - **Algorithms are pinned per key** by the JWKS entry's mandatory `alg`, never chosen by the
//!   token. `alg: none`, HS256 signed with the public key, and cross-family confusion are
//!   impossible by construction; symmetric keys are refused when the JWKS is parsed.
//! - **Pure**: `now` is a parameter; no clock, file, network or async. Loading the JWKS file
//!   and reloading it on change belong to the caller, which builds a new [`Jwks`] and swaps in
//!   a new [`JwtVerifier`].
//! - **Not an oracle**: every signature-side failure is the same [`AuthError::Invalid`]; error
//!   text never contains the token or key material.
//! - [`DevIssuer`] mints EdDSA tokens for development and tests; its key is zeroized on drop
//!   and never printed.
//!
//! `jsonwebtoken` 11 chooses its crypto backend at run time through a process-wide
//! `CryptoProvider`; [`ensure_crypto_provider`] installs the RustCrypto one, once, and is
//! called from the constructors here so no caller has to remember it.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod error;
pub mod jwks;
pub mod mint;
pub mod principal;
pub mod verifier;

#[cfg(test)]
mod tests;

pub use error::AuthError;
pub use jwks::{Jwks, SigningAlg};
pub use mint::{DevIssuer, MintRequest};
pub use principal::{InvalidTenantId, Principal, Scope, ScopeSet, TenantId};
pub use verifier::{bearer_from_header, JwtVerifier, VerifyPolicy};

/// Installs `jsonwebtoken`'s RustCrypto provider as the process default, once.
///
/// `jsonwebtoken` 11 would pick it automatically when only `rust_crypto` is enabled, but if any
/// other crate in the build enables its `aws_lc_rs` feature too, automatic selection gives a
/// provider that panics on first use. Installing explicitly avoids that. If some other code
/// already installed a provider, that one stays (it is a complete provider too).
pub fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _already_installed = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
        );
    });
}
