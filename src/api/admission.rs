//! Admission: the tenant's queue slot, request and token rate limits, and the durable quota
//! reservation — in that order, each undone if a later one refuses. What is reserved is the
//! worst case (prompt + `max_tokens`); when the sequence ends the actual usage is committed and
//! the rest refunded, so neither a rate limit nor a quota can be overshot by a stream.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::api::error::ApiError;
use crate::audit::{self, AuditEvent, AuditSink};
use crate::engine::{FinishHook, FinishReason, TokenUsage};
use crate::limits::{RateError, RateInfo, RateLimits};
use crate::metrics::{Metrics, TokenLabels};
use crate::store::{Ledger, LedgerError, Reservation};
use crate::tenant::{QueueSlot, Tenant};

/// The pieces admission needs, shared by all handlers.
#[derive(Clone)]
pub struct Gate {
    pub rates: Arc<RateLimits>,
    pub ledger: Arc<dyn Ledger>,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<AuditSink>,
    /// The served model's id, for audit records.
    pub model_id: String,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("rates", &self.rates)
            .finish_non_exhaustive()
    }
}

/// Rate-limit state reported on successful responses.
#[derive(Clone, Copy, Debug)]
pub struct RateHeaders {
    pub requests: RateInfo,
    pub tokens: RateInfo,
}

/// A request that passed admission. Settling it (through the engine's [`FinishHook`], or on
/// drop if it never reached the engine) commits usage and refunds the unused reservation.
#[derive(Debug)]
pub struct Admitted {
    pub request_id: String,
    pub rate: RateHeaders,
    settle: Option<Settlement>,
}

#[derive(Debug)]
struct Settlement {
    request_id: String,
    watermark_key_id: Option<String>,
    gate: Gate,
    tenant: Arc<Tenant>,
    reservation: Reservation,
    reserved: u32,
    _slot: QueueSlot,
    runtime: tokio::runtime::Handle,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn rate_error(gate: &Gate, tenant: &str, e: RateError) -> ApiError {
    let limit = match &e {
        RateError::Denied(d) if d.kind == crate::limits::LimitKind::Tokens => {
            audit::LimitKind::Tokens
        }
        RateError::InsufficientCapacity { .. } => audit::LimitKind::Context,
        _ => audit::LimitKind::Requests,
    };
    gate.audit_rejection(tenant, limit);
    let err = match e {
        RateError::Denied(d) => ApiError::RateLimited(d),
        RateError::InsufficientCapacity {
            kind,
            requested,
            capacity,
        } => ApiError::RequestTooLarge {
            kind: kind.as_str(),
            requested,
            capacity,
        },
        RateError::UnknownTenant(_) => ApiError::UnknownTenant,
    };
    gate.metrics
        .reject(tenant, err.code().unwrap_or("rejected"));
    err
}

impl Gate {
    fn audit_rejection(&self, tenant: &str, limit: audit::LimitKind) {
        if let (Ok(tenant), Ok(request_id)) = (
            audit::TenantId::new(tenant),
            audit::RequestId::new(hex::encode(rand::random::<[u8; 12]>())),
        ) {
            self.audit.record_in_background(AuditEvent::LimitRejected {
                request_id,
                tenant,
                limit,
            });
        }
    }

    /// Admits one request of `tenant` that may use up to `tokens` (prompt + `max_tokens`).
    /// Counts one request against the tenant's request rate (for endpoints that run no
    /// generation, e.g. watermark detection).
    pub fn check_request(&self, tenant: &Tenant) -> Result<RateInfo, ApiError> {
        let id = tenant.id.as_str();
        self.rates
            .check_request(id)
            .map_err(|e| rate_error(self, id, e))
    }

    pub async fn admit(&self, tenant: &Arc<Tenant>, tokens: usize) -> Result<Admitted, ApiError> {
        let id = tenant.id.as_str();
        let slot = tenant.try_enter().ok_or_else(|| {
            self.audit_rejection(id, audit::LimitKind::Queue);
            self.metrics.reject(id, "tenant_queue_full");
            ApiError::TenantQueueFull
        })?;
        let requests = self
            .rates
            .check_request(id)
            .map_err(|e| rate_error(self, id, e))?;
        let reserved = u32::try_from(tokens).unwrap_or(u32::MAX);
        let tokens_info = self
            .rates
            .reserve_tokens(id, reserved)
            .map_err(|e| rate_error(self, id, e))?;
        let request_id = hex::encode(rand::random::<[u8; 12]>());
        let ledger = Arc::clone(&self.ledger);
        let (t, rid) = (id.to_string(), request_id.clone());
        let reserved_result = tokio::task::spawn_blocking(move || {
            ledger.reserve(&t, &rid, u64::from(reserved), now_unix())
        })
        .await
        .map_err(|_| ApiError::Internal)?;
        let reservation = match reserved_result {
            Ok(r) => r,
            Err(e) => {
                let _ = self.rates.refund_tokens(id, reserved);
                return Err(match e {
                    LedgerError::QuotaExceeded {
                        period,
                        limit,
                        reset_at,
                        ..
                    } => {
                        self.audit_rejection(id, audit::LimitKind::Quota);
                        self.metrics.reject(id, "insufficient_quota");
                        ApiError::QuotaExceeded {
                            period: period.as_str(),
                            limit,
                            reset_at,
                        }
                    }
                    other => {
                        tracing::error!(error = %other, "quota ledger failed");
                        ApiError::Internal
                    }
                });
            }
        };
        self.metrics
            .in_flight
            .get_or_create(&Metrics::tenant(id))
            .inc();
        Ok(Admitted {
            request_id: request_id.clone(),
            rate: RateHeaders {
                requests,
                tokens: tokens_info,
            },
            settle: Some(Settlement {
                request_id: request_id.clone(),
                watermark_key_id: None,
                gate: self.clone(),
                tenant: Arc::clone(tenant),
                reservation,
                reserved,
                _slot: slot,
                runtime: tokio::runtime::Handle::current(),
            }),
        })
    }
}

impl Admitted {
    /// Records which watermark key the completion carries (for the audit record).
    pub fn with_watermark(mut self, key_id: Option<String>) -> Self {
        if let Some(s) = self.settle.as_mut() {
            s.watermark_key_id = key_id;
        }
        self
    }

    /// Hands settlement to the engine: it runs when the sequence ends, however it ends.
    pub fn into_finish_hook(mut self) -> Box<dyn FinishHook> {
        Box::new(FinishSettlement(self.settle.take()))
    }
}

struct FinishSettlement(Option<Settlement>);

impl FinishHook for FinishSettlement {
    fn finish(mut self: Box<Self>, usage: TokenUsage) {
        if let Some(s) = self.0.take() {
            s.settle(Some(usage));
        }
    }
}

impl Drop for FinishSettlement {
    fn drop(&mut self) {
        // The engine dropped the job without reporting (it stopped): charge the worst case.
        if let Some(s) = self.0.take() {
            s.settle(None);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        // Admitted but never handed to the engine (e.g. its queue was full): nothing was used.
        if let Some(s) = self.settle.take() {
            s.settle(Some(TokenUsage {
                prompt_tokens: 0,
                completion_tokens: 0,
                finish: None,
            }));
        }
    }
}

impl Settlement {
    /// The `RequestCompleted` record, built here but appended off the calling thread.
    fn completion_event(&self, usage: Option<TokenUsage>) -> Option<AuditEvent> {
        let ids = (
            audit::RequestId::new(self.request_id.clone()),
            audit::TenantId::new(self.tenant.id.clone()),
            audit::ModelId::new(self.gate.model_id.clone()),
        );
        let (Ok(request_id), Ok(tenant), Ok(model)) = ids else {
            return None;
        };
        let finish_reason = match usage.and_then(|u| u.finish) {
            Some(FinishReason::Stop) => audit::FinishReason::Stop,
            Some(FinishReason::Length) => audit::FinishReason::Length,
            None if usage.is_some() => audit::FinishReason::Cancelled,
            None => audit::FinishReason::Error,
        };
        let u = usage.unwrap_or(TokenUsage {
            prompt_tokens: 0,
            completion_tokens: 0,
            finish: None,
        });
        Some(AuditEvent::RequestCompleted {
            request_id,
            tenant,
            model,
            prompt_tokens: u32::try_from(u.prompt_tokens).unwrap_or(u32::MAX),
            completion_tokens: u32::try_from(u.completion_tokens).unwrap_or(u32::MAX),
            finish_reason,
            watermark_key_id: self
                .watermark_key_id
                .as_ref()
                .and_then(|id| audit::KeyId::new(id.clone()).ok()),
        })
    }

    /// Commits `usage` (or the whole reservation when unknown) and refunds the rest.
    fn settle(self, usage: Option<TokenUsage>) {
        let used = usage.map_or(u64::from(self.reserved), |u| {
            (u.prompt_tokens + u.completion_tokens) as u64
        });
        let used = used.min(u64::from(self.reserved));
        let tenant = self.tenant.id.clone();
        let refund = self.reserved - used as u32;
        if refund > 0 {
            let _ = self.gate.rates.refund_tokens(&tenant, refund);
        }
        if let Some(u) = usage {
            for (kind, n) in [
                ("prompt", u.prompt_tokens),
                ("completion", u.completion_tokens),
            ] {
                self.gate
                    .metrics
                    .tokens
                    .get_or_create(&TokenLabels {
                        tenant: tenant.clone(),
                        kind,
                    })
                    .inc_by(n as u64);
            }
        }
        self.gate
            .metrics
            .in_flight
            .get_or_create(&Metrics::tenant(&tenant))
            .dec();
        let event = self.completion_event(usage);
        let audit = Arc::clone(&self.gate.audit);
        let ledger = Arc::clone(&self.gate.ledger);
        let reservation = self.reservation;
        // The queue slot is released when this closure (which owns it) finishes.
        let slot = self._slot;
        // Both the audit append (an fdatasync per record by default) and the ledger commit
        // wait on the disk, so neither may run here: this is called on the engine thread,
        // which decodes for every tenant (`FinishHook` must not block), or on an async worker.
        // The record is appended before the commit, so a settled ledger implies its record.
        self.runtime.spawn_blocking(move || {
            if let Some(event) = event {
                audit.record(event);
            }
            let result = if used == 0 {
                ledger.release(&reservation)
            } else {
                ledger.commit(&reservation, used)
            };
            if let Err(e) = result {
                tracing::error!(error = %e, tenant = %tenant, "committing usage failed");
            }
            drop(slot);
        });
    }
}
