//! The admin listener: plaintext, on its own port, never on the public one.
//!
//! `/healthz` (alive), `/readyz` (config loaded, keys usable, not shutting
//! down), `/metrics` (Prometheus text) and `/config` (the running config,
//! redacted, with its hash). Reads the live snapshot like a request does.
//! `POST /revocations` (see `revocation::api`) is the one endpoint that changes
//! anything, and the one that asks for a credential.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{AuthMode, RouteMode};
use crate::connection::Slots;
use crate::metrics::Metrics;
use crate::state::{SharedState, Snapshot};

const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin endpoints read.
pub(crate) struct Admin {
    pub(crate) state: SharedState,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) slots: Arc<Slots>,
    /// Cancelled when shutdown begins: from then on, not ready.
    pub(crate) draining: CancellationToken,
}

impl Admin {
    /// Serves `listener` until `stop`.
    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = stop.cancelled() => return,
            };
            let (admin, stop) = (self.clone(), stop.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.respond(request).await) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(HEAD_TIMEOUT);
                tokio::select! {
                    _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    }

    async fn respond(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() == "/revocations" {
            return crate::revocation::api::answer(&self.state.load_full(), request).await;
        }
        if request.method() != Method::GET {
            let mut response = json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "method_not_allowed"}));
            response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
            return response;
        }
        match request.uri().path() {
            "/healthz" => json_response(StatusCode::OK, &json!({"status": "alive"})),
            "/readyz" => {
                let (ready, body) = self.readiness();
                let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                json_response(status, &body)
            }
            "/metrics" => {
                let text = self.metrics.render(&self.state.load(), self.slots.open());
                let mut response = Response::new(Full::new(Bytes::from(text)));
                let content_type = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
                response.headers_mut().insert(CONTENT_TYPE, content_type);
                response
            }
            "/config" => {
                let config = &self.state.load().config.source;
                let body = json!({"file": config.origin, "sha256": config.sha256, "config": config.redacted()});
                json_response(StatusCode::OK, &body)
            }
            _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
        }
    }

    /// Ready when not shutting down and every provider an enforcing route
    /// verifies with has keys that verify: loaded, and not past
    /// `max_stale`. Keys past their freshness but within `max_stale` are
    /// still ready (and shown as stale): an identity provider outage must
    /// not take every replica out of service at once. Nor must one whose
    /// routes are all in report mode, which forward whatever the keys say.
    fn readiness(&self) -> (bool, Value) {
        let snapshot = self.state.load();
        let now = SystemTime::now();
        let mut providers = serde_json::Map::new();
        let mut ready = true;
        for (index, (provider, keys)) in snapshot.config.providers.iter().zip(&snapshot.keys).enumerate() {
            let Usage { used, enforced } = usage(&snapshot, index);
            let usable = keys.is_usable(now);
            ready &= usable || !enforced;
            let age = keys.freshness.map(|f| now.duration_since(f.fetched_at).unwrap_or_default().as_secs());
            let stale = keys.freshness.and_then(|f| f.expires_at).is_some_and(|expires| now > expires);
            let reason = match (keys.is_loaded(), usable) {
                (false, _) => Some("keys not loaded yet"),
                (true, false) => Some("keys older than max_stale"),
                (true, true) => None,
            };
            providers.insert(
                provider.config.name.clone(),
                json!({"ready": usable, "used_by_routes": used, "decides_readiness": enforced, "keys": keys.len(), "age_seconds": age, "stale": stale, "reason": reason}),
            );
        }
        let draining = self.draining.is_cancelled();
        let body = json!({
            "ready": ready && !draining,
            "reason": if draining { Some("shutting down") } else if !ready { Some("a provider's keys are not usable") } else { None },
            "config_sha256": snapshot.config.source.sha256,
            "providers": providers,
            "revocation": snapshot.config.revocations.as_ref().map(|list| {
                let (entries, age) = list.status();
                let stale = age.is_none_or(|age| age > list.config.max_staleness);
                json!({"entries": entries, "age_seconds": age.map(|age| age.as_secs_f64()), "stale": stale})
            }),
        });
        (ready && !draining, body)
    }
}

/// GETs `url` (plain HTTP), for health checks in images without curl:
/// the status, or why there is none.
pub async fn probe(url: &str, timeout: Duration) -> Result<StatusCode, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    match tokio::time::timeout(timeout, client.get(uri)).await {
        Ok(Ok(response)) => Ok(response.status()),
        Ok(Err(error)) => Err(format!("{url}: {}", crate::error::chain(&error))),
        Err(_) => Err(format!("{url}: no answer within {timeout:?}")),
    }
}

/// How the routes use a provider.
struct Usage {
    /// Some route verifies tokens with it.
    used: bool,
    /// Some route in enforce mode does: its keys decide readiness.
    enforced: bool,
}

fn usage(snapshot: &Snapshot, index: usize) -> Usage {
    let users = snapshot.config.source.routes.iter().filter(|route| {
        route.auth != AuthMode::Public && route.providers.as_ref().is_none_or(|allowed| allowed.contains(&index))
    });
    users.fold(Usage { used: false, enforced: false }, |usage, route| Usage {
        used: true,
        enforced: usage.enforced || route.mode == RouteMode::Enforce,
    })
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
