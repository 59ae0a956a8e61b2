//! Prometheus metrics, served by the admin listener.
//!
//! Each gateway has its own recorder (no global one, so tests can run many
//! gateways in one process). The request path touches only handles it
//! already holds: a counter is an atomic add, a histogram sample a
//! lock-free push, and a series is registered the first time it is used
//! (then cached in a `OnceLock`), so `/metrics` shows what happened rather
//! than hundreds of zeros. Gauges about keys and connections are computed
//! when scraped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use metrics::{Counter, Histogram, Key, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio_util::sync::CancellationToken;

use crate::config::RouteMode;
use crate::keys::KeySet;
use crate::state::Snapshot;

const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Request latencies, in seconds: 100 µs to 30 s.
const LATENCY_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0];

/// `method` label values; anything else is `other`, so clients cannot
/// grow the series without bound.
const METHODS: [Method; 7] =
    [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS];
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const MODES: [RouteMode; 2] = [RouteMode::Enforce, RouteMode::Report];
/// Room for every `Rejection::code`; a code beyond it is counted as `other`.
const MAX_REASONS: usize = 48;

const FAMILIES: [(&str, Kind, &str); 18] = [
    ("portcullis_requests_total", Kind::Counter, "Requests answered, by route, method and status class"),
    (
        "portcullis_denials_total",
        Kind::Counter,
        "Requests refused (or, in report mode, that would be), by route and reason",
    ),
    ("portcullis_upstream_errors_total", Kind::Counter, "Requests the upstream failed, by route and error"),
    ("portcullis_request_duration_seconds", Kind::Histogram, "Time from request to the end of the response"),
    ("portcullis_upstream_duration_seconds", Kind::Histogram, "Time from forwarding to the upstream's response head"),
    ("portcullis_jwks_fetches_total", Kind::Counter, "Key set fetches, by provider and result"),
    (
        "portcullis_jwks_refetches_total",
        Kind::Counter,
        "Early fetches for unknown kids: forced, or throttled (denied at once)",
    ),
    ("portcullis_jwks_seconds_since_fetch", Kind::Gauge, "Age of the provider's keys (since the last good load)"),
    ("portcullis_jwks_keys", Kind::Gauge, "Keys in the provider's current set"),
    ("portcullis_jwks_usable", Kind::Gauge, "1 when the provider's keys can verify (loaded, not past max_stale)"),
    ("portcullis_config_reloads_total", Kind::Counter, "Config reloads, by result"),
    ("portcullis_certificate_reloads_total", Kind::Counter, "TLS certificate reloads, by result"),
    ("portcullis_open_connections", Kind::Gauge, "Client connections open now"),
    (
        "portcullis_token_cache_lookups_total",
        Kind::Counter,
        "Tokens found verified in the cache (hit) or verified afresh (miss)",
    ),
    ("portcullis_token_cache_entries", Kind::Gauge, "Verified tokens in the cache"),
    ("portcullis_revocation_entries", Kind::Gauge, "Entries in the local copy of the revocation list"),
    (
        "portcullis_revocation_seconds_since_sync",
        Kind::Gauge,
        "Age of the local copy of the revocation list (since the last full read of its backend)",
    ),
    ("portcullis_build_info", Kind::Gauge, "Always 1; the version is a label"),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The gauges each provider has, set when scraped.
const PROVIDER_GAUGES: [&str; 3] =
    ["portcullis_jwks_seconds_since_fetch", "portcullis_jwks_keys", "portcullis_jwks_usable"];

/// One gateway's metrics.
pub(crate) struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    pub(crate) config_reloads: Outcomes,
    pub(crate) certificate_reloads: Outcomes,
    /// The providers whose gauges the last scrape set. The exporter cannot
    /// drop a series, so those of a provider a reload removed are set to
    /// NaN rather than left showing its last, healthy-looking values.
    shown_providers: Mutex<Vec<String>>,
    /// The last scrape set the revocation list's gauges (NaN once a reload
    /// removed the list, like a removed provider's).
    shown_revocation: AtomicBool,
}

/// A success and a failure counter.
pub(crate) struct Outcomes {
    success: Counter,
    failure: Counter,
}

impl Outcomes {
    pub(crate) fn record(&self, ok: bool) {
        if ok { self.success.increment(1) } else { self.failure.increment(1) }
    }
}

const METADATA: Metadata<'static> = Metadata::new("portcullis", Level::INFO, None);

impl Metrics {
    pub(crate) fn new() -> Arc<Metrics> {
        let recorder =
            PrometheusBuilder::new().set_buckets(&LATENCY_BUCKETS).expect("the buckets are not empty").build_recorder();
        for (name, kind, help) in FAMILIES {
            let unit = name.ends_with("_seconds").then_some(Unit::Seconds);
            match kind {
                Kind::Counter => recorder.describe_counter(name.into(), unit, help.into()),
                Kind::Gauge => recorder.describe_gauge(name.into(), unit, help.into()),
                Kind::Histogram => recorder.describe_histogram(name.into(), unit, help.into()),
            }
        }
        let handle = recorder.handle();
        let outcomes = |name: &'static str| Outcomes {
            success: register_counter(&recorder, name, [("result", "success".into())]),
            failure: register_counter(&recorder, name, [("result", "failure".into())]),
        };
        let metrics = Metrics {
            config_reloads: outcomes("portcullis_config_reloads_total"),
            certificate_reloads: outcomes("portcullis_certificate_reloads_total"),
            recorder,
            handle,
            shown_providers: Mutex::default(),
            shown_revocation: AtomicBool::new(false),
        };
        metrics.gauge("portcullis_build_info", vec![Label::new("version", env!("CARGO_PKG_VERSION"))]).set(1.0);
        Arc::new(metrics)
    }

    pub(crate) fn route(self: &Arc<Self>, name: &str) -> RouteMetrics {
        let histogram = |family: &'static str| {
            self.recorder
                .register_histogram(&Key::from_parts(family, vec![Label::new("route", name.to_owned())]), &METADATA)
        };
        RouteMetrics {
            metrics: self.clone(),
            route: SharedString::from(name.to_owned()),
            requests: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            denials: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            upstream_errors: std::array::from_fn(|_| OnceLock::new()),
            duration: histogram("portcullis_request_duration_seconds"),
            upstream_duration: histogram("portcullis_upstream_duration_seconds"),
        }
    }

    /// Hit and miss counters of the token cache.
    pub(crate) fn token_cache(&self) -> (Counter, Counter) {
        let counter = |result: &'static str| {
            register_counter(&self.recorder, "portcullis_token_cache_lookups_total", [("result", result.into())])
        };
        (counter("hit"), counter("miss"))
    }

    pub(crate) fn provider(self: &Arc<Self>, name: &str) -> ProviderMetrics {
        let counter = |family: &'static str, label: &'static str, value: &'static str| {
            register_counter(&self.recorder, family, [("provider", name.to_owned().into()), (label, value.into())])
        };
        ProviderMetrics {
            fetch_success: counter("portcullis_jwks_fetches_total", "result", "success"),
            fetch_failure: counter("portcullis_jwks_fetches_total", "result", "failure"),
            refetch_forced: counter("portcullis_jwks_refetches_total", "outcome", "forced"),
            refetch_throttled: counter("portcullis_jwks_refetches_total", "outcome", "throttled"),
        }
    }

    /// The text exposition, with the scrape-time gauges brought up to date.
    pub(crate) fn render(&self, snapshot: &Snapshot, open_connections: usize) -> String {
        let providers = snapshot.config.providers.iter().map(|provider| provider.config.name.as_str());
        self.provider_gauges(providers.zip(snapshot.keys.iter().map(|keys| &**keys)));
        self.gauge("portcullis_open_connections", Vec::new()).set(open_connections as f64);
        self.gauge("portcullis_token_cache_entries", Vec::new()).set(snapshot.config.tokens.len() as f64);
        let revocation = snapshot.config.revocations.as_ref().map(|list| list.status());
        let shown_before = self.shown_revocation.swap(revocation.is_some(), Ordering::Relaxed);
        if revocation.is_some() || shown_before {
            // never synced: as old as can be, so an age alert fires
            let (entries, age) = revocation.map_or((f64::NAN, f64::NAN), |(entries, age)| {
                (entries as f64, age.map_or(f64::INFINITY, |age| age.as_secs_f64()))
            });
            self.gauge("portcullis_revocation_entries", Vec::new()).set(entries);
            self.gauge("portcullis_revocation_seconds_since_sync", Vec::new()).set(age);
        }
        self.handle.render()
    }

    /// Sets each provider's gauges, and NaN for those no longer there.
    fn provider_gauges<'a>(&self, providers: impl Iterator<Item = (&'a str, &'a KeySet)>) {
        let labels = |name: &str| vec![Label::new("provider", name.to_owned())];
        let now = SystemTime::now();
        let mut shown = Vec::new();
        for (name, keys) in providers {
            let age = keys.freshness.map(|f| now.duration_since(f.fetched_at).unwrap_or(Duration::ZERO));
            // never loaded: as old as can be, so an age alert fires
            let values = [
                age.map_or(f64::INFINITY, |a| a.as_secs_f64()),
                keys.len() as f64,
                if keys.is_usable(now) { 1.0 } else { 0.0 },
            ];
            for (family, value) in PROVIDER_GAUGES.into_iter().zip(values) {
                self.gauge(family, labels(name)).set(value);
            }
            shown.push(name.to_owned());
        }
        let mut last = self.shown_providers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for gone in last.iter().filter(|name| !shown.contains(name)) {
            for family in PROVIDER_GAUGES {
                self.gauge(family, labels(gone)).set(f64::NAN);
            }
        }
        *last = shown;
    }

    /// Folds histogram samples into their buckets every few seconds until
    /// `stop`, so memory stays flat between scrapes (or without any).
    pub(crate) async fn keep_up(self: Arc<Self>, stop: CancellationToken) {
        let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = upkeep.tick() => self.handle.run_upkeep(),
                () = stop.cancelled() => return,
            }
        }
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> metrics::Gauge {
        self.recorder.register_gauge(&Key::from_parts(name, labels), &METADATA)
    }
}

fn register_counter<const N: usize>(
    recorder: &PrometheusRecorder,
    name: &'static str,
    labels: [(&'static str, SharedString); N],
) -> Counter {
    let labels: Vec<Label> = labels.into_iter().map(|(key, value)| Label::new(key, value)).collect();
    recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
}

/// One route's series (and the unrouted requests', as route `-`).
pub(crate) struct RouteMetrics {
    metrics: Arc<Metrics>,
    route: SharedString,
    requests: [[OnceLock<Counter>; STATUS_CLASSES.len()]; METHODS.len() + 1],
    denials: [[OnceLock<Counter>; MAX_REASONS + 1]; MODES.len()],
    upstream_errors: [OnceLock<Counter>; 2],
    pub(crate) duration: Histogram,
    pub(crate) upstream_duration: Histogram,
}

impl RouteMetrics {
    pub(crate) fn request(&self, method: &Method, status: StatusCode) {
        let method = METHODS.iter().position(|m| m == method).unwrap_or(METHODS.len());
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[method][class]
            .get_or_init(|| {
                let method = METHODS.get(method).map_or("other", Method::as_str);
                self.counter(
                    "portcullis_requests_total",
                    [("method", method.to_owned().into()), ("status", STATUS_CLASSES[class].into())],
                )
            })
            .increment(1);
    }

    /// A refusal for `reason` (a `Rejection::code`).
    pub(crate) fn denial(&self, reason: &'static str, mode: RouteMode) {
        let at = DENIAL_REASONS.iter().position(|r| *r == reason).unwrap_or(MAX_REASONS);
        let reason = DENIAL_REASONS.get(at).copied().unwrap_or("other");
        let mode_at = MODES.iter().position(|m| *m == mode).unwrap_or(0);
        self.denials[mode_at][at]
            .get_or_init(|| {
                self.counter("portcullis_denials_total", [("reason", reason.into()), ("mode", mode.as_str().into())])
            })
            .increment(1);
    }

    pub(crate) fn upstream_error(&self, timeout: bool) {
        let error = if timeout { "timeout" } else { "unreachable" };
        self.upstream_errors[timeout as usize]
            .get_or_init(|| self.counter("portcullis_upstream_errors_total", [("error", error.into())]))
            .increment(1);
    }

    fn counter<const N: usize>(&self, name: &'static str, labels: [(&'static str, SharedString); N]) -> Counter {
        let route = [("route", self.route.clone())];
        let labels: Vec<Label> = route.into_iter().chain(labels).map(|(key, value)| Label::new(key, value)).collect();
        self.metrics.recorder.register_counter(&Key::from_parts(name, labels), &METADATA)
    }
}

/// One provider's counters.
pub(crate) struct ProviderMetrics {
    fetch_success: Counter,
    fetch_failure: Counter,
    pub(crate) refetch_forced: Counter,
    pub(crate) refetch_throttled: Counter,
}

impl ProviderMetrics {
    pub(crate) fn fetched(&self, ok: bool) {
        if ok { self.fetch_success.increment(1) } else { self.fetch_failure.increment(1) }
    }
}

/// Every reason a request can be refused for, as `Rejection::code` names it.
pub(crate) const DENIAL_REASONS: &[&str] = &[
    "no_route",
    "bad_request",
    "method_not_allowed",
    "client_cert_required",
    "body_too_large",
    "uri_too_long",
    "missing_token",
    "ambiguous_credentials",
    "unsupported_scheme",
    "keys_unavailable",
    "keys_stale",
    "insufficient_claims",
    "body_stalled",
    "body_aborted",
    "malformed",
    "too_large",
    "encrypted",
    "unsupported_header",
    "duplicate_member",
    "wrong_typ",
    "unknown_issuer",
    "issuer_not_allowed",
    "unknown_kid",
    "bad_algorithm",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "too_long_lived",
    "wrong_audience",
    "missing_claim",
    "bad_claim_type",
    "unsendable_claim",
    "revoked",
    "revocation_unavailable",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_appear_once_used_and_keep_counting() {
        let metrics = Metrics::new();
        let route = metrics.route("orders");
        route.request(&Method::GET, StatusCode::OK);
        route.request(&Method::GET, StatusCode::NO_CONTENT);
        route.request(&Method::from_bytes(b"PURGE").unwrap(), StatusCode::NOT_FOUND);
        route.denial("expired", RouteMode::Enforce);
        route.denial("made_up", RouteMode::Report);
        // a reload makes new handles for the same series
        metrics.route("orders").request(&Method::GET, StatusCode::OK);
        let text = metrics.handle.render();
        for line in [
            r#"portcullis_requests_total{route="orders",method="GET",status="2xx"} 3"#,
            r#"portcullis_requests_total{route="orders",method="other",status="4xx"} 1"#,
            r#"portcullis_denials_total{route="orders",reason="expired",mode="enforce"} 1"#,
            r#"portcullis_denials_total{route="orders",reason="other",mode="report"} 1"#,
            r#"portcullis_build_info{version="#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains(r#"method="POST""#), "unused series are not shown");
        assert!(DENIAL_REASONS.len() <= MAX_REASONS);
    }

    #[test]
    fn the_gauges_of_a_removed_provider_turn_nan() {
        let metrics = Metrics::new();
        let keys = KeySet::default();
        metrics.provider_gauges([("kept", &keys), ("removed", &keys)].into_iter());
        metrics.provider_gauges([("kept", &keys)].into_iter());
        let text = metrics.handle.render();
        assert!(text.contains(r#"portcullis_jwks_keys{provider="kept"} 0"#), "{text}");
        for family in PROVIDER_GAUGES {
            assert!(text.contains(&format!(r#"{family}{{provider="removed"}} NaN"#)), "{family} in\n{text}");
        }
        metrics.provider_gauges([("kept", &keys), ("removed", &keys)].into_iter());
        assert!(metrics.handle.render().contains(r#"portcullis_jwks_usable{provider="removed"} 0"#), "back");
    }
}
