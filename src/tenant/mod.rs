//! Tenants and their plans, as the request path sees them (pure: no I/O).
//!
//! The registry is built from the configuration and swapped whole on reload; each entry keeps
//! the per-tenant counter of admitted-but-unfinished requests that enforces `max_queued`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::config::TenantConfig;
use crate::limits::Plan;

/// One tenant: id, plan and its live in-flight counter.
#[derive(Debug)]
pub struct Tenant {
    pub id: String,
    pub plan_name: String,
    pub plan: Plan,
    in_flight: AtomicU32,
}

impl Tenant {
    pub fn new(id: impl Into<String>, plan_name: impl Into<String>, plan: Plan) -> Self {
        Tenant {
            id: id.into(),
            plan_name: plan_name.into(),
            plan,
            in_flight: AtomicU32::new(0),
        }
    }

    /// Takes one of the tenant's `max_queued` slots, or `None` when all are taken. The slot is
    /// returned when the [`QueueSlot`] is dropped, whatever way the request ends.
    pub fn try_enter(self: &Arc<Self>) -> Option<QueueSlot> {
        let max = self.plan.max_queued;
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| QueueSlot {
                tenant: Arc::clone(self),
            })
    }

    /// Requests of this tenant admitted and not yet finished.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// Proof that a request holds one of its tenant's queue slots.
#[derive(Debug)]
pub struct QueueSlot {
    tenant: Arc<Tenant>,
}

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.tenant.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// All configured tenants by id.
#[derive(Debug, Default)]
pub struct TenantRegistry {
    tenants: HashMap<String, Arc<Tenant>>,
}

impl TenantRegistry {
    pub fn from_config(tenants: &[TenantConfig]) -> Self {
        TenantRegistry {
            tenants: tenants
                .iter()
                .map(|t| {
                    (
                        t.id.clone(),
                        Arc::new(Tenant::new(&t.id, &t.plan_name, t.plan.clone())),
                    )
                })
                .collect(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn plan(max_queued: u32) -> Plan {
        Plan {
            requests_per_second: NonZeroU32::MIN,
            request_burst: None,
            tokens_per_minute: NonZeroU32::MIN,
            token_burst: None,
            quota_tokens_per_day: None,
            quota_tokens_per_month: None,
            max_context_tokens: 1,
            max_tokens: 1,
            max_queued,
            kv_pool_bytes: None,
            allowed_models: vec![],
            confidence: Default::default(),
            watermark: true,
            extraction: Default::default(),
            guard: Default::default(),
        }
    }

    #[test]
    fn queue_slots_are_bounded_and_returned_on_drop() {
        let t = Arc::new(Tenant::new("a", "p", plan(2)));
        let s1 = t.try_enter().expect("slot 1");
        let _s2 = t.try_enter().expect("slot 2");
        assert!(t.try_enter().is_none(), "third request must be refused");
        drop(s1);
        assert_eq!(t.in_flight(), 1);
        assert!(t.try_enter().is_some());
    }

    #[test]
    fn tenants_do_not_share_slots() {
        let a = Arc::new(Tenant::new("a", "p", plan(1)));
        let b = Arc::new(Tenant::new("b", "p", plan(1)));
        let _held = a.try_enter().expect("a");
        assert!(a.try_enter().is_none());
        assert!(b.try_enter().is_some(), "another tenant is unaffected");
    }
}
