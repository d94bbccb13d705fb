//! Prometheus metrics, labelled per tenant. Served only to callers with the `admin` scope:
//! per-tenant numbers are other tenants' business otherwise.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub tenant: String,
    pub endpoint: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub tenant: String,
    /// `prompt` or `completion`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExtractionLabels {
    pub tenant: String,
    /// `logprob_volume` or `near_duplicates`.
    pub signal: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardLabels {
    pub tenant: String,
    /// `prompt_flagged`, `prompt_blocked`, `pii_flagged`, `pii_redacted`.
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    pub tenant: String,
    /// The stable error code of the refusal (`rate_limit_exceeded`, `insufficient_quota`, ...).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    pub tenant: String,
}

type HistogramFamily = Family<TenantLabel, Histogram, fn() -> Histogram>;

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub tokens: Family<TokenLabels, Counter>,
    pub rejections: Family<RejectionLabels, Counter>,
    pub ttft: HistogramFamily,
    pub inter_token: HistogramFamily,
    pub in_flight: Family<TenantLabel, Gauge>,
    pub kv_tokens: Family<TenantLabel, Gauge>,
    pub kv_blocks: Family<TenantLabel, Gauge>,
    pub extraction_alarms: Family<ExtractionLabels, Counter>,
    pub guard_events: Family<GuardLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cloister");
        let requests = Family::<RequestLabels, Counter>::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        let rejections = Family::<RejectionLabels, Counter>::default();
        let ttft: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let inter_token: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let in_flight = Family::<TenantLabel, Gauge>::default();
        let kv_tokens = Family::<TenantLabel, Gauge>::default();
        let kv_blocks = Family::<TenantLabel, Gauge>::default();
        let extraction_alarms = Family::<ExtractionLabels, Counter>::default();
        let guard_events = Family::<GuardLabels, Counter>::default();
        registry.register(
            "guard_events",
            "Content-guard decisions by tenant and event",
            guard_events.clone(),
        );
        registry.register(
            "extraction_alarms",
            "Model-extraction alarms by tenant and signal",
            extraction_alarms.clone(),
        );
        registry.register(
            "requests",
            "Completed API requests by tenant, endpoint and status",
            requests.clone(),
        );
        registry.register(
            "tokens",
            "Tokens processed (prompt, completion)",
            tokens.clone(),
        );
        registry.register(
            "rejections",
            "Requests refused by a limit, by reason",
            rejections.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from admission to the first token",
            ttft.clone(),
        );
        registry.register(
            "inter_token_seconds",
            "Time between streamed pieces of text",
            inter_token.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Admitted requests not yet finished (queue depth)",
            in_flight.clone(),
        );
        registry.register(
            "kv_tokens_in_use",
            "Positions held in KV caches",
            kv_tokens.clone(),
        );
        registry.register(
            "kv_blocks_in_use",
            "KV cache blocks held from the tenant's pool",
            kv_blocks.clone(),
        );
        Metrics {
            registry,
            requests,
            tokens,
            rejections,
            ttft,
            inter_token,
            in_flight,
            kv_tokens,
            kv_blocks,
            extraction_alarms,
            guard_events,
        }
    }

    pub fn tenant(tenant: &str) -> TenantLabel {
        TenantLabel {
            tenant: tenant.to_string(),
        }
    }

    pub fn guard(&self, tenant: &str, event: &'static str) {
        self.guard_events
            .get_or_create(&GuardLabels {
                tenant: tenant.to_string(),
                event,
            })
            .inc();
    }

    pub fn reject(&self, tenant: &str, reason: &'static str) {
        self.rejections
            .get_or_create(&RejectionLabels {
                tenant: tenant.to_string(),
                reason,
            })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_series() {
        let m = Metrics::new();
        m.reject("acme", "rate_limit_exceeded");
        m.tokens
            .get_or_create(&TokenLabels {
                tenant: "demo".into(),
                kind: "prompt",
            })
            .inc_by(7);
        m.ttft.get_or_create(&Metrics::tenant("demo")).observe(0.02);
        let text = m.render();
        assert!(
            text.contains(
                r#"cloister_rejections_total{tenant="acme",reason="rate_limit_exceeded"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"cloister_tokens_total{tenant="demo",kind="prompt"} 7"#),
            "{text}"
        );
        assert!(
            text.contains("cloister_time_to_first_token_seconds_bucket"),
            "{text}"
        );
    }
}
