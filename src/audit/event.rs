//! The closed set of security-relevant events the audit log records.
//!
//! Why closed: an open "message" field is how secrets end up in logs. Every variant carries only
//! validated ids ([`super::ids`]), integers, booleans and small enums. **No variant may ever gain
//! a field for prompt or completion text, token ids, JWTs, API keys or key bytes** (design §8,
//! P8); if something must be correlated, log its id or at most its SHA-256 hex in a [`Label`].
//! A test serializes every variant and checks that no string in it is free-form text.
//!
//! No floats: scores are integers (thousandths), so the canonical encoding (see
//! [`super::record`]) never depends on float formatting.

use serde::{Deserialize, Serialize};

use super::ids::{KeyId, Label, ModelId, RequestId, TenantId};

/// Most watermark key ids one detection event may list (bounds line length).
pub const MAX_KEY_IDS: usize = 16;

/// One audit event. Serialized internally tagged: `{"type":"ServerStart","version":"0.1.0"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum AuditEvent {
    /// The server started.
    ServerStart {
        /// Cloister version.
        version: Label,
    },
    /// The server stopped cleanly.
    ServerStop {},
    /// A sealed model was verified and unsealed.
    ModelUnsealed {
        /// Model id.
        model: ModelId,
        /// KEK that unwrapped the data key.
        kek_id: KeyId,
        /// KEK version.
        kek_version: u32,
        /// Publisher key that signed the sealed file.
        publisher: KeyId,
    },
    /// Authentication failed.
    AuthFailed {
        /// Why, as a stable code.
        reason_code: AuthFailReason,
        /// The tenant, when the token named one that exists.
        tenant: Option<TenantId>,
    },
    /// A request finished (successfully or not).
    RequestCompleted {
        /// Request id.
        request_id: RequestId,
        /// Tenant.
        tenant: TenantId,
        /// Model.
        model: ModelId,
        /// Prompt length in tokens.
        prompt_tokens: u32,
        /// Completion length in tokens.
        completion_tokens: u32,
        /// Why generation stopped.
        finish_reason: FinishReason,
        /// Watermark key used, if the output was watermarked.
        watermark_key_id: Option<KeyId>,
    },
    /// A request was refused by a limit.
    LimitRejected {
        /// Request id.
        request_id: RequestId,
        /// Tenant.
        tenant: TenantId,
        /// Which limit.
        limit: LimitKind,
    },
    /// An input or output guard acted.
    GuardDecision {
        /// Request id.
        request_id: RequestId,
        /// Tenant.
        tenant: TenantId,
        /// Guard name, e.g. `pii`.
        guard: Label,
        /// What it did.
        action: GuardAction,
        /// Policy version that decided.
        policy_version: Label,
        /// Guard score in thousandths (0..=1000 by convention; integer to stay canonical).
        score_milli: u32,
    },
    /// A watermark detection was run.
    WatermarkDetect {
        /// Tenant that asked.
        tenant: TenantId,
        /// Keys tried.
        key_ids: KeyIds,
        /// Whether a watermark was found.
        detected: bool,
    },
    /// A model-extraction heuristic crossed its threshold.
    ExtractionAlarm {
        /// Tenant.
        tenant: TenantId,
        /// Signal name, e.g. `logprob_queries_per_min`.
        signal: Label,
        /// Observed value (integer units of the signal).
        value: u64,
        /// Threshold crossed.
        threshold: u64,
    },
    /// A KEK got a new version.
    KeyRotated {
        /// KEK id.
        kek_id: KeyId,
        /// New version.
        new_version: u32,
    },
    /// A sealed model's header was rewrapped under a new KEK version.
    ModelRewrapped {
        /// Model.
        model: ModelId,
        /// KEK id.
        kek_id: KeyId,
        /// Old version.
        from_version: u32,
        /// New version.
        to_version: u32,
    },
    /// Configuration was reloaded.
    ConfigReloaded {
        /// What was reloaded.
        what: ConfigPart,
    },
    /// An admin-scoped action was performed.
    AdminAction {
        /// Tenant whose admin acted.
        tenant: TenantId,
        /// Action name, e.g. `tenant.create`.
        action: Label,
    },
}

/// Stable authentication failure codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthFailReason {
    /// No credentials.
    Missing,
    /// Not parseable.
    Malformed,
    /// Signature did not verify.
    BadSignature,
    /// Signing key unknown.
    UnknownKey,
    /// Expired.
    Expired,
    /// Not yet valid.
    NotYetValid,
    /// Wrong issuer.
    WrongIssuer,
    /// Wrong audience.
    WrongAudience,
    /// Tenant unknown or disabled.
    UnknownTenant,
    /// Scope insufficient.
    InsufficientScope,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// Stop sequence or EOS.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// A guard blocked the output.
    ContentFilter,
    /// The client went away.
    Cancelled,
    /// Internal error.
    Error,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// Requests per second.
    Requests,
    /// Tokens per minute.
    Tokens,
    /// Persistent token quota.
    Quota,
    /// Bounded queue full.
    Queue,
    /// Context or `max_tokens` cap.
    Context,
}

/// What a guard did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardAction {
    /// Let through, flagged.
    Flag,
    /// Refused.
    Block,
    /// Redacted.
    Redact,
}

/// Which part of the configuration was reloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigPart {
    /// Tenants and plans.
    Tenants,
    /// JWT verification keys.
    Jwks,
    /// KEKs / keyring.
    Keys,
    /// TLS certificate.
    Tls,
    /// Guard and output policies.
    Policy,
}

/// A bounded list of key ids (at most [`MAX_KEY_IDS`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<KeyId>", into = "Vec<KeyId>")]
pub struct KeyIds(Vec<KeyId>);

/// A list of key ids was too long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} key ids, more than {MAX_KEY_IDS}")]
pub struct TooManyKeyIds(pub usize);

impl KeyIds {
    /// Wraps a list, refusing more than [`MAX_KEY_IDS`].
    pub fn new(ids: Vec<KeyId>) -> Result<Self, TooManyKeyIds> {
        if ids.len() > MAX_KEY_IDS {
            return Err(TooManyKeyIds(ids.len()));
        }
        Ok(Self(ids))
    }

    /// The ids.
    pub fn as_slice(&self) -> &[KeyId] {
        &self.0
    }
}

impl TryFrom<Vec<KeyId>> for KeyIds {
    type Error = TooManyKeyIds;
    fn try_from(v: Vec<KeyId>) -> Result<Self, TooManyKeyIds> {
        Self::new(v)
    }
}

impl From<KeyIds> for Vec<KeyId> {
    fn from(v: KeyIds) -> Self {
        v.0
    }
}

impl AuditEvent {
    /// The variant name, as written in the `type` field (a stable label for metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ServerStart { .. } => "ServerStart",
            Self::ServerStop {} => "ServerStop",
            Self::ModelUnsealed { .. } => "ModelUnsealed",
            Self::AuthFailed { .. } => "AuthFailed",
            Self::RequestCompleted { .. } => "RequestCompleted",
            Self::LimitRejected { .. } => "LimitRejected",
            Self::GuardDecision { .. } => "GuardDecision",
            Self::WatermarkDetect { .. } => "WatermarkDetect",
            Self::ExtractionAlarm { .. } => "ExtractionAlarm",
            Self::KeyRotated { .. } => "KeyRotated",
            Self::ModelRewrapped { .. } => "ModelRewrapped",
            Self::ConfigReloaded { .. } => "ConfigReloaded",
            Self::AdminAction { .. } => "AdminAction",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::ids::{check_id, IdError};

    fn long<T: TryFrom<String, Error = IdError>>(c: char) -> T {
        T::try_from(c.to_string().repeat(128)).unwrap()
    }

    /// One instance of every variant, with every string at maximum length. The exhaustive match
    /// in `variant_index` makes adding a variant without extending this list a compile error.
    fn all_variants() -> Vec<AuditEvent> {
        use AuditEvent::*;
        let (t, m, r, k, l) = (
            long::<TenantId>('t'),
            long::<ModelId>('m'),
            long::<RequestId>('r'),
            long::<KeyId>('k'),
            long::<Label>('l'),
        );
        vec![
            ServerStart { version: l.clone() },
            ServerStop {},
            ModelUnsealed {
                model: m.clone(),
                kek_id: k.clone(),
                kek_version: u32::MAX,
                publisher: k.clone(),
            },
            AuthFailed {
                reason_code: AuthFailReason::Expired,
                tenant: Some(t.clone()),
            },
            RequestCompleted {
                request_id: r.clone(),
                tenant: t.clone(),
                model: m.clone(),
                prompt_tokens: 1,
                completion_tokens: 2,
                finish_reason: FinishReason::ContentFilter,
                watermark_key_id: Some(k.clone()),
            },
            LimitRejected {
                request_id: r.clone(),
                tenant: t.clone(),
                limit: LimitKind::Quota,
            },
            GuardDecision {
                request_id: r.clone(),
                tenant: t.clone(),
                guard: l.clone(),
                action: GuardAction::Redact,
                policy_version: l.clone(),
                score_milli: 1000,
            },
            WatermarkDetect {
                tenant: t.clone(),
                key_ids: KeyIds::new(vec![k.clone(); MAX_KEY_IDS]).unwrap(),
                detected: true,
            },
            ExtractionAlarm {
                tenant: t.clone(),
                signal: l.clone(),
                value: u64::MAX,
                threshold: 1,
            },
            KeyRotated {
                kek_id: k.clone(),
                new_version: 2,
            },
            ModelRewrapped {
                model: m.clone(),
                kek_id: k.clone(),
                from_version: 1,
                to_version: 2,
            },
            ConfigReloaded {
                what: ConfigPart::Jwks,
            },
            AdminAction {
                tenant: t,
                action: l,
            },
        ]
    }

    fn variant_index(e: &AuditEvent) -> usize {
        use AuditEvent::*;
        match e {
            ServerStart { .. } => 0,
            ServerStop {} => 1,
            ModelUnsealed { .. } => 2,
            AuthFailed { .. } => 3,
            RequestCompleted { .. } => 4,
            LimitRejected { .. } => 5,
            GuardDecision { .. } => 6,
            WatermarkDetect { .. } => 7,
            ExtractionAlarm { .. } => 8,
            KeyRotated { .. } => 9,
            ModelRewrapped { .. } => 10,
            ConfigReloaded { .. } => 11,
            AdminAction { .. } => 12,
        }
    }

    fn check_strings(v: &serde_json::Value, path: &str) {
        match v {
            serde_json::Value::String(s) => {
                assert!(s.len() <= 128, "{path}: {} chars", s.len());
                assert!(check_id(s).is_ok(), "{path}: free-form text {s:?}");
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| check_strings(x, path)),
            serde_json::Value::Object(o) => o
                .iter()
                .for_each(|(k, x)| check_strings(x, &format!("{path}.{k}"))),
            serde_json::Value::Number(n) => assert!(!n.is_f64(), "{path}: float"),
            _ => {}
        }
    }

    #[test]
    fn every_variant_is_free_of_free_text_and_round_trips() {
        let all = all_variants();
        let mut seen: Vec<usize> = all.iter().map(variant_index).collect();
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..13).collect::<Vec<_>>(),
            "every variant covered exactly once"
        );
        for e in &all {
            let v = serde_json::to_value(e).unwrap();
            check_strings(&v, e.kind());
            assert_eq!(v["type"], e.kind());
            let back: AuditEvent = serde_json::from_value(v).unwrap();
            assert_eq!(&back, e);
        }
    }

    #[test]
    fn deserialization_refuses_text_and_unknown_fields() {
        for bad in [
            r#"{"type":"AuthFailed","reason_code":"expired","tenant":"a tenant"}"#,
            r#"{"type":"AuthFailed","reason_code":"because I said so","tenant":null}"#,
            r#"{"type":"ServerStop","prompt":"hello"}"#,
            r#"{"type":"AdminAction","tenant":"t","action":"x","note":"free text"}"#,
            r#"{"type":"Freeform","text":"hello"}"#,
        ] {
            assert!(
                serde_json::from_str::<AuditEvent>(bad).is_err(),
                "accepted {bad}"
            );
        }
        let too_many = format!(
            r#"{{"type":"WatermarkDetect","tenant":"t","key_ids":[{}],"detected":false}}"#,
            vec!["\"k\""; 17].join(",")
        );
        assert!(serde_json::from_str::<AuditEvent>(&too_many).is_err());
    }
}
