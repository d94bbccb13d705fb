//! Who is calling, proven: the output of token verification.
//!
//! A [`Principal`] only comes out of [`JwtVerifier::verify`](crate::auth::JwtVerifier::verify)
//! (or a test), so holding one means the token was checked. Handlers ask it for the scope they
//! need with [`Principal::require`] instead of inspecting strings.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::auth::error::AuthError;

/// A permission a token can grant. Unknown scope strings in a token are ignored (an identity
/// provider may issue scopes for other services in the same token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Run completions (`inference`).
    Inference,
    /// Read one's own usage and quota (`usage:read`).
    UsageRead,
    /// Operator endpoints (`admin`).
    Admin,
    /// Run the watermark detector (`watermark:detect`).
    WatermarkDetect,
}

impl Scope {
    /// Every scope, in a stable order.
    pub const ALL: [Scope; 4] = [
        Scope::Inference,
        Scope::UsageRead,
        Scope::Admin,
        Scope::WatermarkDetect,
    ];

    /// The wire name of the scope (as in the `scope` claim).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Inference => "inference",
            Scope::UsageRead => "usage:read",
            Scope::Admin => "admin",
            Scope::WatermarkDetect => "watermark:detect",
        }
    }

    /// Parses a wire name; `None` for scopes Cloister does not know. Exact, case-sensitive match
    /// (RFC 6749 §3.3: scope tokens are case-sensitive).
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Inference => 1,
            Scope::UsageRead => 1 << 1,
            Scope::Admin => 1 << 2,
            Scope::WatermarkDetect => 1 << 3,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of [`Scope`]s. A bitset: `Copy`, allocation-free, cheap to check per request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ScopeSet(u8);

impl ScopeSet {
    /// The empty set.
    pub const fn empty() -> Self {
        ScopeSet(0)
    }

    /// Whether `scope` is in the set.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Adds `scope` to the set.
    pub fn insert(&mut self, scope: Scope) {
        self.0 |= scope.bit();
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes in the set, in [`Scope::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// Parses an RFC 8693 / RFC 6749 `scope` string (space-separated). Unknown scopes are
    /// ignored; repeated spaces are tolerated.
    pub fn from_space_separated(s: &str) -> Self {
        s.split(' ').filter_map(Scope::parse).collect()
    }

    /// The space-separated wire form, as minted into the `scope` claim.
    pub fn to_space_separated(self) -> String {
        self.iter().map(Scope::as_str).collect::<Vec<_>>().join(" ")
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut set = ScopeSet::empty();
        for scope in iter {
            set.insert(scope);
        }
        set
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Scope::as_str))
            .finish()
    }
}

/// Maximum length of a tenant id: bounded because it becomes a metric label, a ledger key and a
/// log field.
pub const MAX_TENANT_ID_LEN: usize = 64;

/// A tenant identifier: 1..=64 characters of `[a-z0-9_-]`.
///
/// Deliberately narrow: it is used as a key in the quota ledger, in metric labels and in paths,
/// so no case folding, Unicode look-alikes, separators or whitespace can make two spellings of
/// one tenant (or one spelling of two).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

/// A string that is not a valid [`TenantId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tenant id (expected 1..=64 chars of [a-z0-9_-])")]
pub struct InvalidTenantId;

impl TenantId {
    /// Validates and wraps a tenant id.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidTenantId> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= MAX_TENANT_ID_LEN
            && s.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
        if ok {
            Ok(TenantId(s))
        } else {
            Err(InvalidTenantId)
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidTenantId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        TenantId::new(s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}

impl std::str::FromStr for TenantId {
    type Err = InvalidTenantId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TenantId::new(s)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

/// An authenticated caller, built only from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant the caller acts for (`tenant` claim); all isolation keys off this.
    pub tenant: TenantId,
    /// The caller within the tenant (`sub` claim); for audit, never for authorisation.
    pub subject: String,
    /// The Cloister scopes granted (`scope` claim; unknown scopes dropped).
    pub scopes: ScopeSet,
    /// The token id (`jti` claim), when present; for audit and future revocation.
    pub token_id: Option<String>,
    /// `exp`, in Unix seconds: long-lived streams may stop when the token does.
    pub expires_at: u64,
}

impl Principal {
    /// Succeeds when the caller holds `scope`, otherwise [`AuthError::InsufficientScope`] (403).
    pub fn require(&self, scope: Scope) -> Result<(), AuthError> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(AuthError::InsufficientScope(scope))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn scope_parsing_ignores_unknown() {
        let set = ScopeSet::from_space_separated("inference  openid usage:read Admin admin");
        assert!(set.contains(Scope::Inference));
        assert!(set.contains(Scope::UsageRead));
        assert!(set.contains(Scope::Admin));
        assert!(!set.contains(Scope::WatermarkDetect));
        assert_eq!(set.to_space_separated(), "inference usage:read admin");
        assert!(ScopeSet::from_space_separated("").is_empty());
    }

    #[test]
    fn tenant_id_validation() {
        assert!(TenantId::new("acme-corp_1").is_ok());
        assert!(TenantId::new("a".repeat(64)).is_ok());
        for bad in ["", "Acme", "a b", "a.b", "ténant", "a/b"] {
            assert!(TenantId::new(bad).is_err(), "{bad:?}");
        }
        assert!(TenantId::new("a".repeat(65)).is_err());
        let t: TenantId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(t.as_str(), "acme");
        assert!(serde_json::from_str::<TenantId>("\"ACME\"").is_err());
    }
}
