//! Prometheus metrics, served at `/_proxy/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name, or `-` when none matched. Bounded by the config.
    pub route: String,
    /// Status code.
    pub status: u16,
    /// The proxy's own error code, or empty when the upstream answered.
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// Every metric the proxy keeps.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    /// Time to upstream response headers.
    pub upstream_seconds: Histogram,
    pub reloads: Family<OutcomeLabels, Counter>,
    /// 1 when the last reload attempt failed (the old config is serving).
    pub reload_failed: Gauge,
    pub in_flight: Gauge,
    /// Accepted connections not yet closed (at most `limits.max_connections`).
    pub open_connections: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("atomgit_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let upstream_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let reloads = Family::<OutcomeLabels, Counter>::default();
        let reload_failed = Gauge::default();
        let in_flight = Gauge::default();
        let open_connections = Gauge::default();
        registry.register(
            "requests",
            "Requests answered, by route, status and proxy error code",
            requests.clone(),
        );
        registry.register(
            "upstream_response_seconds",
            "Time until the upstream's response headers",
            upstream_seconds.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reload attempts by outcome",
            reloads.clone(),
        );
        registry.register(
            "config_last_reload_failed",
            "1 when the last reload failed and the previous config still serves",
            reload_failed.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests being handled",
            in_flight.clone(),
        );
        registry.register(
            "open_connections",
            "Inbound connections open",
            open_connections.clone(),
        );
        Metrics {
            registry,
            requests,
            upstream_seconds,
            reloads,
            reload_failed,
            in_flight,
            open_connections,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
