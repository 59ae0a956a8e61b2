//! `portcullis explain`: why a request would be allowed or denied.
//!
//! It builds the request as a client would send it and runs the gateway's
//! own steps on it (`admit`, `prepare`, `upstream_head`), recording each,
//! so the answer cannot drift from what the gateway does. Keys come from
//! the identity provider as they would when serving, or, `--offline`, only
//! from local files and `cache_dir`.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Empty;
use tokio_util::sync::CancellationToken;

use crate::access;
use crate::config::{AuthMode, Config, KeySource};
use crate::control::Control;
use crate::error::Rejection;
use crate::metrics::Metrics;
use crate::proxy::{self, Admitted, Peer, Trace};
use crate::request;
use crate::route::Mismatch;
use crate::state::{SharedState, Snapshot};

/// The request to explain.
pub struct Question {
    pub method: String,
    /// `https://host/path?query`, or a path alone: then the `Host` is the
    /// first route's host, or `localhost` when it names none (unless a
    /// `Host` header is given).
    pub url: String,
    /// `Name: value` lines.
    pub headers: Vec<String>,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Use local and cached keys only; fetch nothing.
    pub offline: bool,
}

pub struct Answer {
    pub allowed: bool,
    pub text: String,
}

/// Where explained requests come from, for the forwarding headers.
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// How long `explain` waits for a Redis revocation list's first read (one
/// connect and a SCAN, each bounded at 5 s on the sync side).
const REVOCATION_SYNC_WAIT: Duration = Duration::from_secs(6);

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    #[error("{0}")]
    Request(String),
}

pub async fn explain(config: &Config, question: &Question) -> Result<Answer, ExplainError> {
    let (request, tls) = build_request(config, question)?;
    let config = Arc::new(config.clone());
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let state: SharedState = if question.offline {
        Control::offline(config)?
    } else {
        let (control, state) = Control::start(config.clone(), stop, Metrics::new())?;
        let wait = config.providers.iter().filter_map(|p| match &p.source {
            KeySource::Remote(remote) => Some(remote.fetch_timeout),
            _ => None,
        });
        let wait = wait.max().unwrap_or_default() + Duration::from_secs(1);
        let _ = tokio::time::timeout(wait, control.first_fetches()).await;
        // a Redis revocation list is empty (and stale) until its first sync
        let _ = tokio::time::timeout(REVOCATION_SYNC_WAIT, control.first_revocation_sync()).await;
        state
    };
    let snapshot = state.load_full();
    let mut out = String::new();
    let allowed = decide(&snapshot, &state, request, tls, question.offline, &mut out).await;
    Ok(Answer { allowed, text: out })
}

/// The request as a client would send it, and whether it came over TLS.
fn build_request(config: &Config, question: &Question) -> Result<(Request<Empty<Bytes>>, bool), ExplainError> {
    let bad = |what: String| ExplainError::Request(what);
    let method = Method::from_bytes(question.method.as_bytes())
        .map_err(|_| bad(format!("{:?} is not a method", question.method)))?;
    let url: Uri = question.url.parse().map_err(|e| bad(format!("{:?} is not a URL: {e}", question.url)))?;
    let tls = url.scheme_str() != Some("http");
    let target = url.path_and_query().map_or("/", |pq| pq.as_str());
    let mut builder = Request::builder().method(method).uri(target);
    if let Some(authority) = url.authority() {
        builder = builder.header(HOST, authority.as_str());
    }
    for line in &question.headers {
        let (name, value) = line.split_once(':').ok_or_else(|| bad(format!("{line:?} is not \"Name: value\"")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| bad(format!("{name:?} is not a header name")))?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| bad(format!("{value:?} is not a header value")))?;
        builder = builder.header(name, value);
    }
    if let Some(token) = &question.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| bad("the token has characters a header cannot carry".into()))?;
        builder = builder.header(AUTHORIZATION, value);
    }
    // a client always names a host, and HTTP/1.1 and HTTP/2 requests
    // without one are refused, so a bare path gets one
    if builder.headers_ref().is_some_and(|headers| !headers.contains_key(HOST)) {
        let host = config.routes.first().and_then(|route| route.host.as_deref()).unwrap_or("localhost");
        let host = HeaderValue::from_str(host).map_err(|_| bad(format!("{host:?} is not a host")))?;
        builder = builder.header(HOST, host);
    }
    let request = builder.body(Empty::new()).map_err(|e| bad(e.to_string()))?;
    Ok((request, tls))
}

/// The recorded steps.
#[derive(Default)]
struct Steps(Vec<(&'static str, bool, String)>);

impl Trace for Steps {
    fn step(&mut self, step: &'static str, passed: bool, detail: impl FnOnce() -> String) {
        self.0.push((step, passed, detail()));
    }
}

/// Writes the explanation of `request` to `out`; true when it is allowed.
async fn decide(
    snapshot: &Snapshot,
    state: &SharedState,
    mut request: Request<Empty<Bytes>>,
    tls: bool,
    offline: bool,
    out: &mut String,
) -> bool {
    let host = request.headers().get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("(none)").to_owned();
    let _ = writeln!(
        out,
        "request: {} {} (host {host}, {})",
        request.method(),
        request.uri(),
        if tls { "https" } else { "http" }
    );
    if offline {
        let _ = writeln!(out, "keys: offline (local files and cache_dir only)");
    }
    let admitted = match proxy::admit(snapshot, &request, tls) {
        Ok(admitted) => admitted,
        Err(rejection) => {
            explain_routes(snapshot, &request, tls, out);
            return deny(out, &rejection);
        }
    };
    explain_routes(snapshot, &request, tls, out);
    let route = admitted.route;
    let _ = writeln!(
        out,
        "route: {} -> {} (auth {}, mode {})",
        route.name,
        route.upstream,
        route.auth.as_str(),
        route.mode.as_str()
    );
    let before = request.headers().clone();
    let peer = Peer { addr: SocketAddr::new(PEER, 0), tls, client_cert: None };
    let request_id = access::request_id(request.headers());
    let mut steps = Steps::default();
    let prepared = proxy::prepare(snapshot, state, &admitted, &mut request, &peer, &request_id, &mut steps).await;
    let _ = writeln!(out, "checks:");
    if steps.0.is_empty() {
        let _ = writeln!(
            out,
            "  (none: {})",
            if route.auth == AuthMode::Public { "the route is public" } else { "nothing to check" }
        );
    }
    for (step, passed, detail) in &steps.0 {
        let _ = writeln!(out, "  {} {step}: {detail}", if *passed { "pass" } else { "FAIL" });
    }
    match prepared {
        Err(rejection) => deny(out, &rejection),
        Ok(prepared) => {
            if let Some(rejection) = &prepared.reported {
                let _ = writeln!(out, "report mode: would deny ({}), forwarded anyway", rejection.code());
            }
            allow(out, request, &admitted, &before)
        }
    }
}

/// Lists the routes in match order up to the one that matched, each with
/// why it did or did not.
fn explain_routes(snapshot: &Snapshot, request: &Request<Empty<Bytes>>, tls: bool, out: &mut String) {
    let authority = request::authority(request, tls).ok().flatten();
    let host = authority.as_deref().map(request::host_of);
    let path = crate::path::canonicalize(request.uri().path()).unwrap_or_default();
    let _ = writeln!(out, "routes, most specific first:");
    for (route, mismatch) in snapshot.config.routes.explain(host, &path, request.method()) {
        let place = format!("{}{}", route.host.as_deref().unwrap_or("*"), route.path);
        let why = match mismatch {
            None => {
                let _ = writeln!(out, "  {}: {place}: matches", route.name);
                return;
            }
            Some(Mismatch::Host) => format!("host is {}", host.unwrap_or("(none)")),
            Some(Mismatch::Path) => format!("path {path} is not {}", route.path),
            Some(Mismatch::Method) => format!("method {} not in its methods", request.method()),
        };
        let _ = writeln!(out, "  {}: {place}: no ({why})", route.name);
    }
    let _ = writeln!(out, "  (no route matched)");
}

fn deny(out: &mut String, rejection: &Rejection) -> bool {
    let response = rejection.response_parts();
    let _ = writeln!(out, "decision: DENY {} {} ({})", response.0.as_u16(), rejection.code(), rejection);
    let _ = writeln!(out, "the client would get: {}", response.1);
    false
}

fn allow(out: &mut String, request: Request<Empty<Bytes>>, admitted: &Admitted<'_>, before: &http::HeaderMap) -> bool {
    let (mut parts, _) = request.into_parts();
    if let Err(rejection) = proxy::upstream_head(&mut parts, admitted) {
        return deny(out, &rejection);
    }
    let _ = writeln!(out, "decision: ALLOW");
    let _ = writeln!(out, "the upstream would receive:");
    let _ = writeln!(out, "  {} {}", parts.method, parts.uri);
    for (name, value) in &parts.headers {
        let changed = before.get_all(name).iter().all(|old| old != value);
        let value =
            if name == AUTHORIZATION { "Bearer (the verified token)" } else { value.to_str().unwrap_or("(binary)") };
        let _ = writeln!(out, "  {name}: {value}{}", if changed { "    <- set by the gateway" } else { "" });
    }
    for name in before.keys().filter(|name| !parts.headers.contains_key(*name)) {
        let _ = writeln!(out, "  (removed: {name})");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(url: &str, headers: &[&str]) -> Question {
        let headers = headers.iter().map(|h| h.to_string()).collect();
        Question { method: "GET".into(), url: url.into(), headers, token: None, offline: true }
    }

    async fn ask(routes: &str, question: Question) -> Answer {
        let providers = "[[providers]]\nname = \"idp\"\nissuer = \"https://idp.test\"\n\
                         jwks_url = \"https://idp.test/jwks\"\naudiences = [\"api\"]\n";
        let config = Config::parse(&format!("{providers}{routes}"), "t.toml").unwrap();
        explain(&config, &question).await.unwrap()
    }

    fn route(name: &str, host: Option<&str>) -> String {
        let host = host.map_or(String::new(), |host| format!("host = \"{host}\"\n"));
        format!("[[routes]]\nname = \"{name}\"\n{host}path = \"/orders\"\nupstream = \"http://u\"\nauth = \"public\"\n")
    }

    #[tokio::test]
    async fn a_bare_path_is_routed_with_a_host() {
        let answer = ask(&route("any", None), question("/orders", &[])).await;
        assert!(answer.allowed, "{}", answer.text);
        assert!(answer.text.contains("(host localhost, https)"), "{}", answer.text);

        let routes = format!("{}{}", route("api", Some("api.test")), route("other", Some("other.test")));
        let answer = ask(&routes, question("/orders", &[])).await;
        assert!(answer.allowed && answer.text.contains("api: api.test/orders: matches"), "{}", answer.text);

        let answer = ask(&routes, question("/orders", &["Host: other.test"])).await;
        assert!(answer.allowed && answer.text.contains("other: other.test/orders: matches"), "{}", answer.text);
    }
}
