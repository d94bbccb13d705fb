//! Validated identifier types: the only string type an audit event may carry.
//!
//! Why: the audit log must never hold prompts, completions, tokens, JWTs or key bytes (design §8,
//! promise P8). The cheapest way to guarantee that is to make free text unrepresentable: every
//! string in an [`AuditEvent`](super::AuditEvent) is one of these types, which accept only
//! `[A-Za-z0-9._:@-]`, 1 to [`MAX_ID_LEN`] bytes. No spaces, quotes, newlines or base64 padding
//! (`+`, `/`, `=`), so a sentence, a JWT or a PEM block cannot be smuggled in by mistake. A SHA-256
//! hex digest (64 chars) still fits, which is the most the design allows ("hashes at most").

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest identifier, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string was empty.
    #[error("identifier is empty")]
    Empty,
    /// The string was longer than [`MAX_ID_LEN`].
    #[error("identifier is {0} bytes, more than {MAX_ID_LEN}")]
    TooLong(usize),
    /// The string held a character outside `[A-Za-z0-9._:@-]`.
    #[error("identifier holds a character outside [A-Za-z0-9._:@-] at byte {0}")]
    BadChar(usize),
}

/// Checks the identifier rules; shared by every id type.
pub fn check_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(s.len()));
    }
    match s
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-')))
    {
        Some(at) => Err(IdError::BadChar(at)),
        None => Ok(()),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses an identifier, refusing anything outside `[A-Za-z0-9._:@-]{1,128}`.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_id(&s)?;
                Ok(Self(s))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// A tenant id.
    TenantId
);
id_type!(
    /// A model id (the name clients use).
    ModelId
);
id_type!(
    /// A request id (as returned to the client).
    RequestId
);
id_type!(
    /// A key id: KEK, publisher key, watermark key or audit signing key. Never key material.
    KeyId
);
id_type!(
    /// The id of one audit log (the checkpoint "origin", e.g. `cloister:prod-eu-1`).
    LogId
);
id_type!(
    /// A short machine label: software or policy version, guard name, alarm signal, admin action.
    Label
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ids_and_rejects_text() {
        assert!(TenantId::new("acme-corp_1.eu:prod@x").is_ok());
        assert_eq!(TenantId::new(""), Err(IdError::Empty));
        assert_eq!(TenantId::new("a b"), Err(IdError::BadChar(1)));
        assert_eq!(Label::new("x".repeat(129)), Err(IdError::TooLong(129)));
        assert!(Label::new("x".repeat(128)).is_ok());
        for bad in [
            "eyJ0eXAi.x/y",
            "a=b",
            "line\nbreak",
            "quote\"",
            "ümlaut",
            "k+ey",
        ] {
            assert!(KeyId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn deserialization_validates() {
        assert!(serde_json::from_str::<ModelId>("\"smollm2\"").is_ok());
        assert!(serde_json::from_str::<ModelId>("\"ignore all previous\"").is_err());
    }
}
