//! One audit record, its canonical encoding and its hash.
//!
//! Canonical encoding: compact `serde_json` of [`Record`] with the fields in declaration order
//! (`seq`, `time_unix_ms`, `prev_hash`, `event`), the event internally tagged with `type` first
//! and then its fields in declaration order. No floats exist anywhere in the schema and every
//! string is a validated id (no escapes needed), so the encoding is a function of the value. On
//! disk a record is exactly these bytes followed by `\n`. The verifier re-encodes every parsed
//! record and refuses the line unless the bytes are identical, so whitespace, key order,
//! duplicate keys or unknown fields cannot be used to make two different files hash alike.
//!
//! `hash = SHA-256("cloister-audit/record/v1\n" ‖ canonical bytes)` (without the newline). The
//! domain prefix keeps record hashes from ever colliding with any other SHA-256 use in Cloister.
//! Each record stores the previous record's hash; the first record of a log stores 32 zero bytes
//! ([`GENESIS_HASH`]) and has `seq` 0.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::event::AuditEvent;

/// Domain separator for record hashes.
pub const RECORD_DOMAIN: &[u8] = b"cloister-audit/record/v1\n";

/// `prev_hash` of the first record of a fresh log.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// A 32-byte SHA-256 value; hex in JSON.
pub type Hash = [u8; 32];

/// One hash-chained audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Position in the log, from 0, without gaps.
    pub seq: u64,
    /// Wall-clock time supplied by the caller (the core reads no clock).
    pub time_unix_ms: u64,
    /// Hash of the previous record, or [`GENESIS_HASH`].
    #[serde(with = "hex32")]
    pub prev_hash: Hash,
    /// What happened.
    pub event: AuditEvent,
}

impl Record {
    /// The canonical bytes (without the trailing newline).
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// The canonical line: canonical bytes plus `\n`.
    pub fn to_line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut v = self.canonical_bytes()?;
        v.push(b'\n');
        Ok(v)
    }
}

/// Hash of a record given its canonical bytes.
pub fn record_hash(canonical: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(RECORD_DOMAIN);
    h.update(canonical);
    h.finalize().into()
}

/// Serde helper: `[u8; 32]` as 64 lowercase hex characters.
pub(crate) mod hex32 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = <&str>::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(D::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ids::Label;

    #[test]
    fn canonical_form_is_fixed() {
        let r = Record {
            seq: 7,
            time_unix_ms: 1_700_000_000_000,
            prev_hash: [0xab; 32],
            event: AuditEvent::ServerStart {
                version: Label::new("0.1.0").unwrap(),
            },
        };
        let line = String::from_utf8(r.to_line().unwrap()).unwrap();
        assert_eq!(
            line,
            format!(
                "{{\"seq\":7,\"time_unix_ms\":1700000000000,\"prev_hash\":\"{}\",\"event\":{{\"type\":\"ServerStart\",\"version\":\"0.1.0\"}}}}\n",
                "ab".repeat(32)
            )
        );
        let back: Record = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(back, r);
        assert_ne!(record_hash(&r.canonical_bytes().unwrap()), [0; 32]);
    }
}
