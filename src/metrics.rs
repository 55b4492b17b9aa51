//! Prometheus metrics, served at `/_proxy/metrics`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Labels of one request. Built on every request, so nothing here
/// allocates: the route name is the route's own `Arc<str>` and the error
/// code a `&'static str` from the typed error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name, or `-` when none matched. Bounded by the config.
    pub route: RouteLabel,
    /// Status code.
    pub status: u16,
    /// The proxy's own error code, or empty when the upstream answered.
    pub error: &'static str,
}

/// A route name as a label value: a reference-counted `str`, so a label set
/// is made without copying the name.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteLabel(pub std::sync::Arc<str>);

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(&self.0)
    }
}

/// The label of requests no route took.
pub fn no_route_label() -> RouteLabel {
    static NONE: std::sync::OnceLock<std::sync::Arc<str>> = std::sync::OnceLock::new();
    RouteLabel(NONE.get_or_init(|| "-".into()).clone())
}

/// A request counter this thread used lately, with what it counts. The
/// route's `Arc` is held, so its address cannot be reused for another name
/// while the entry lives.
struct RecentCounter {
    metrics: u64,
    route: Option<Arc<str>>,
    status: u16,
    error: &'static str,
    counter: Counter,
}

/// Enough for a worker's usual mix of routes and statuses; older entries
/// make room (a miss only costs the family lookup).
const RECENT_COUNTERS_KEPT: usize = 8;

thread_local! {
    static RECENT_COUNTERS: std::cell::RefCell<Vec<RecentCounter>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A number no other metrics instance of this process has: per-thread
/// caches of metric handles ([`kept`]) tell instances apart by it (tests
/// run several proxies, each with its own registry, on one thread).
pub(crate) fn instance_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The entry of a thread's recently used metric handles that `is` picks,
/// else `make`'s, put in place of the oldest once `most` are kept.
/// `Family::get_or_create` hashes the labels under a lock, a visible share
/// of a small request's CPU; a handle is shared, so keeping the few a
/// worker used last spares that on nearly every request.
pub(crate) fn kept<T>(
    recent: &mut Vec<T>,
    most: usize,
    is: impl Fn(&T) -> bool,
    make: impl FnOnce() -> T,
) -> &mut T {
    let at = match recent.iter().position(is) {
        Some(at) => at,
        None => {
            if recent.len() == most {
                recent.remove(0);
            }
            recent.push(make());
            recent.len() - 1
        }
    };
    &mut recent[at]
}

/// Labels of a per-app metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    /// The app's name (`default` for the `app:` shorthand).
    pub app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// Every metric the proxy keeps.
pub struct Metrics {
    /// Tells this instance's counters apart in [`RECENT_COUNTERS`].
    id: u64,
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
    /// Requests resent with a fresh token after the platform refused theirs.
    pub token_retries: Counter,
    /// The platform's clock minus ours, per app, once a refused JWT showed it.
    pub clock_offset: Family<AppLabels, Gauge>,
    /// The platform's budget per credential, quota refusals and waits, the cache.
    pub quota: crate::quota::metrics::QuotaMetrics,
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
        let token_retries = Counter::default();
        let clock_offset = Family::<AppLabels, Gauge>::default();
        registry.register(
            "clock_offset_seconds",
            "The platform's clock minus this machine's, per app, as learned from a refused app JWT",
            clock_offset.clone(),
        );
        registry.register(
            "token_retries",
            "Requests resent once with a fresh token after the platform answered 401",
            token_retries.clone(),
        );
        registry.register(
            "store_errors",
            "Failed operations on the shared store (Redis), by operation",
            crate::store::store_errors().clone(),
        );
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
        let quota = crate::quota::metrics::QuotaMetrics::register(&mut registry);
        Metrics {
            id: instance_id(),
            quota,
            registry,
            requests,
            upstream_seconds,
            reloads,
            reload_failed,
            in_flight,
            open_connections,
            token_retries,
            clock_offset,
        }
    }
}

impl Metrics {
    /// Counts a request, with a counter this thread kept (see [`kept`]);
    /// found by pointer comparison.
    fn count_request(&self, route: Option<&Arc<str>>, status: u16, error: &'static str) {
        RECENT_COUNTERS.with_borrow_mut(|recent| {
            let is = |r: &RecentCounter| {
                r.metrics == self.id
                    && r.status == status
                    && std::ptr::eq(r.error, error)
                    && match (&r.route, route) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    }
            };
            let make = || {
                let labels = RequestLabels {
                    route: route.cloned().map_or_else(no_route_label, RouteLabel),
                    status,
                    error,
                };
                RecentCounter {
                    metrics: self.id,
                    route: route.cloned(),
                    status,
                    error,
                    counter: self.requests.get_or_create(&labels).clone(),
                }
            };
            kept(recent, RECENT_COUNTERS_KEPT, is, make).counter.inc();
        })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One request's bookkeeping: the in-flight gauge, the request counter and
/// the debug access log. Done on `Drop`, because a caller that hangs up
/// drops the request's future at whatever `.await` it was in, and the gauge
/// must still come down and the request still be counted (as 499, nginx's
/// "client closed request").
pub struct Observed<'a> {
    metrics: &'a Metrics,
    /// Method, path and start for the access log, kept only when it will be
    /// written: the path only, as a query may carry secrets.
    access: Option<(http::Method, String, tokio::time::Instant)>,
    /// The route taken, once one is.
    pub route: Option<std::sync::Arc<str>>,
    /// Status and proxy error code, once the response is made.
    outcome: Option<(u16, &'static str)>,
}

impl<'a> Observed<'a> {
    pub fn start(metrics: &'a Metrics, method: &http::Method, path: &str) -> Self {
        metrics.in_flight.inc();
        Observed {
            metrics,
            access: tracing::enabled!(tracing::Level::DEBUG)
                .then(|| (method.clone(), path.to_owned(), tokio::time::Instant::now())),
            route: None,
            outcome: None,
        }
    }

    /// Records the response about to be sent.
    pub fn finish<B>(&mut self, resp: &http::Response<B>) {
        let error = resp
            .extensions()
            .get::<crate::error::ErrorCode>()
            .map_or("", |c| c.0);
        self.outcome = Some((resp.status().as_u16(), error));
    }
}

impl Drop for Observed<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        let (status, error) = self.outcome.unwrap_or((499, ""));
        self.metrics
            .count_request(self.route.as_ref(), status, error);
        if let Some((method, path, started)) = &self.access {
            tracing::debug!(
                %method,
                path = ?path,
                route = self.route.as_deref().unwrap_or("-"),
                status,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "request"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(metrics: &Metrics, route: Option<&Arc<str>>, status: u16, error: &'static str) {
        let mut observed = Observed::start(metrics, &http::Method::GET, "/x");
        observed.route = route.cloned();
        observed.outcome = Some((status, error));
    }

    #[test]
    fn counters_kept_per_thread_count_under_their_own_labels() {
        let (one, two) = (Metrics::default(), Metrics::default());
        let orgs: Arc<str> = "orgs".into();
        // Another route of the same name (as after a reload) is the same label.
        let orgs_again: Arc<str> = "orgs".into();
        for _ in 0..3 {
            count(&one, Some(&orgs), 200, "");
        }
        count(&one, Some(&orgs_again), 200, "");
        count(&one, None, 404, "no_route");
        count(&two, Some(&orgs), 200, "");
        // More label sets than the thread keeps: the oldest make room.
        for status in 500..520 {
            count(&one, Some(&orgs), status, "");
        }
        count(&one, Some(&orgs), 200, "");
        let text = one.encode();
        assert!(
            text.contains(r#"atomgit_proxy_requests_total{route="orgs",status="200",error=""} 5"#),
            "{text}"
        );
        assert!(text.contains(r#"{route="-",status="404",error="no_route"} 1"#));
        assert!(text.contains(r#"{route="orgs",status="519",error=""} 1"#));
        assert!(
            two.encode()
                .contains(r#"atomgit_proxy_requests_total{route="orgs",status="200",error=""} 1"#)
        );
    }
}
