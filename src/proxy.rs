//! The per-request pipeline, as a list of steps:
//! admit (method, target, authority, canonical path) -> match route ->
//! sanitize headers -> client certificate -> authenticate -> authorize ->
//! inject identity -> drop unverified credentials -> forwarding headers ->
//! forward (streamed) -> clean the response.
//!
//! `handle` is the one outer handler: it loads the live snapshot once, runs
//! the steps, turns any refusal into its response, and hands the response
//! body an `Exchange` that logs and counts the request once it is sent (a
//! request dropped before that logs itself, as 499).
//! `prepare` is everything up to forwarding; `portcullis explain` runs the
//! same function with a `Trace` that records each step.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;

use crate::access::{Exchange, Logged, REQUEST_ID};
use crate::auth::{self, AuthError, Identity};
use crate::body::RequestBody;
use crate::config::{AuthMode, ClientCertField, RouteConfig, RouteMode, TokenSource, UpstreamProtocol};
use crate::connection::Upgrades;
use crate::error::Rejection;
use crate::forwarded::{self, Forwarding};
use crate::headers;
use crate::path;
use crate::request;
use crate::route::Route;
use crate::state::{SharedState, Snapshot};
use crate::tls::ClientCert;
use crate::token::Reason;
use crate::upstream;

/// A response body: the upstream's, streamed, or one the gateway wrote.
pub(crate) type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Who sent a request, as far as the connection tells.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: bool,
    /// The certificate the client was verified with, if it sent one.
    pub(crate) client_cert: Option<Arc<ClientCert>>,
}

/// What the gateway knows about the connection a request came in on.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub(crate) peer: Peer,
    /// Where an upgraded connection's copying runs.
    pub(crate) upgrades: Upgrades,
}

pub(crate) struct Proxy {
    pub(crate) state: SharedState,
}

/// Records each step `prepare` takes; the request path records nothing.
pub(crate) trait Trace {
    /// `detail` is only called when the trace keeps it.
    fn step(&mut self, step: &'static str, passed: bool, detail: impl FnOnce() -> String);
}

impl Trace for () {
    #[inline(always)]
    fn step(&mut self, _: &'static str, _: bool, _: impl FnOnce() -> String) {}
}

/// What `prepare` decided, beyond the request head it rewrote.
pub(crate) struct Prepared {
    pub(crate) identity: Option<Identity>,
    /// In report mode: the refusal that was not applied.
    pub(crate) reported: Option<Rejection>,
}

impl Proxy {
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        connection: Connection,
    ) -> Response<Logged<ProxyBody>> {
        let snapshot = self.state.load_full();
        let mut exchange = Exchange::begin(snapshot.clone(), &request, connection.peer.addr);
        let outcome = match admit(&snapshot, &request, connection.peer.tls) {
            Ok(admitted) => {
                exchange.route = Some(admitted.index);
                self.pass(&snapshot, admitted, request, &connection, &mut exchange).await
            }
            Err(rejection) => Err(rejection),
        };
        let mut response = match outcome {
            Ok(response) => response.map(Either::Left),
            Err(rejection) => {
                // report mode only reports; whatever comes out here was enforced
                exchange.refuse(&rejection, RouteMode::Enforce);
                rejection.into_response().map(Either::Right)
            }
        };
        response.headers_mut().insert(REQUEST_ID, exchange.request_id.clone());
        let status = response.status();
        response.map(|body| Logged::new(body, status, exchange))
    }

    /// Every step after routing, in order.
    async fn pass(
        &self,
        snapshot: &Snapshot,
        admitted: Admitted<'_>,
        mut request: Request<Incoming>,
        connection: &Connection,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, Rejection> {
        let route = admitted.route;
        let websocket = route.websocket && headers::is_websocket_upgrade(&request);
        let prepared =
            prepare(snapshot, &self.state, &admitted, &mut request, &connection.peer, &exchange.request_id, &mut ())
                .await?;
        if let Some(rejection) = &prepared.reported {
            exchange.refuse(rejection, RouteMode::Report);
        }
        if exchange.wants_sub() {
            exchange.sub = prepared.identity.as_ref().and_then(|id| id.claim("sub")?.as_str().map(str::to_owned));
        }
        if websocket {
            headers::restore_websocket_upgrade(request.headers_mut());
        }
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        upstream_head(&mut parts, &admitted)?;
        let body = RequestBody::new(body, route.max_body, snapshot.config.server.limits.body_timeout);
        let forwarded_at = Instant::now();
        let mut response = route.client.forward(Request::from_parts(parts, body), route.upstream_timeout).await?;
        exchange.upstream_answered(forwarded_at.elapsed());
        headers::clean_response(response.headers_mut());
        if let Some(client_upgrade) = client_upgrade
            && response.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            headers::restore_websocket_upgrade(response.headers_mut());
            connection.upgrades.spawn(splice(client_upgrade, hyper::upgrade::on(&mut response)));
        }
        Ok(response)
    }
}

/// Where a request goes, and what it was addressed to.
pub(crate) struct Admitted<'a> {
    pub(crate) index: usize,
    pub(crate) route: &'a Route,
    /// The validated, normalised authority.
    pub(crate) authority: Option<String>,
    /// The canonical path, when it differs from the request's.
    pub(crate) canonical_path: Option<String>,
}

/// The checks a request passes before anything else, then its route.
pub(crate) fn admit<'a, B>(snapshot: &'a Snapshot, request: &Request<B>, tls: bool) -> Result<Admitted<'a>, Rejection> {
    let limits = &snapshot.config.server.limits;
    request::check_method(request.method())?;
    request::check_target_size(request, limits.max_uri_size)?;
    let authority = request::authority(request, tls)?;
    let path = path::canonicalize(request.uri().path()).map_err(Rejection::BadRequest)?;
    let host = authority.as_deref().map(request::host_of);
    let (index, route) = snapshot.config.routes.find(host, &path, request.method()).ok_or(Rejection::NoRoute)?;
    let canonical_path = match path {
        Cow::Owned(path) => Some(path),
        Cow::Borrowed(_) => None,
    };
    Ok(Admitted { index, route, authority, canonical_path })
}

/// Every check and header change between routing and forwarding; on
/// success, `request`'s headers are the ones the upstream will get.
pub(crate) async fn prepare<B: Body, T: Trace>(
    snapshot: &Snapshot,
    state: &SharedState,
    admitted: &Admitted<'_>,
    request: &mut Request<B>,
    peer: &Peer,
    request_id: &HeaderValue,
    trace: &mut T,
) -> Result<Prepared, Rejection> {
    let route = admitted.route;
    let server = &snapshot.config.server;
    refuse_oversized_body(request, route)?;
    let headers = request.headers_mut();
    headers::sanitize_request(
        headers,
        &snapshot.config.identity_headers,
        &[&server.strip_headers, &route.strip_headers],
    );
    let client_cert = peer.client_cert.as_deref();
    if route.require_client_cert {
        trace.step("client certificate", client_cert.is_some(), || match client_cert {
            Some(cert) => format!("presented: {}", cert.subject),
            None => "required, none presented".into(),
        });
        if client_cert.is_none() {
            return Err(Rejection::ClientCertRequired);
        }
    }
    inject_client_cert(request.headers_mut(), route, client_cert);
    let report = route.mode == RouteMode::Report;
    let mut reported = None;
    let identity = match auth::authenticate(route, request.headers(), snapshot, state).await {
        Ok(identity) => {
            trace.step("token", true, || match &identity {
                Some(identity) => format!("valid ({})", identity.summary()),
                None if route.auth == AuthMode::Public => "not checked: the route is public".into(),
                None => "none sent; the route allows anonymous requests".into(),
            });
            identity
        }
        Err(error) => {
            trace.step("token", false, || error.to_string());
            reported = Some(refusal(report, error)?);
            None
        }
    };
    if let Err(error) = auth::authorize(route, identity.as_ref()) {
        trace.step("required claims", false, || error.to_string());
        reported.get_or_insert(refusal(report, error)?);
    } else if !route.require_claims.is_empty() && identity.is_some() {
        trace.step("required claims", true, || "all held".into());
    }
    if let Some(identity) = &identity
        && let Err(error) = inject_identity(request.headers_mut(), route, identity)
    {
        trace.step("identity headers", false, || error.to_string());
        reported.get_or_insert(refusal(report, error)?);
    }
    // report mode forwards the credentials as sent, as if the gateway were not there
    if route.auth != AuthMode::Public && !report {
        drop_credentials(request.headers_mut(), route, identity.as_ref());
    }
    let forwarding = Forwarding {
        peer: peer.addr.ip(),
        proto: if peer.tls { "https" } else { "http" },
        authority: admitted.authority.as_deref(),
        trusted_proxies: &server.trusted_proxies,
    };
    forwarded::set_forwarded(request.headers_mut(), &forwarding);
    request.headers_mut().insert(REQUEST_ID, request_id.clone());
    Ok(Prepared { identity, reported })
}

/// In report mode a refusal is kept to be reported; otherwise it stands.
fn refusal(report: bool, error: AuthError) -> Result<Rejection, Rejection> {
    if report { Ok(Rejection::Auth(error)) } else { Err(Rejection::Auth(error)) }
}

/// A declared body over the route's `max_body` is refused before anything
/// is sent upstream; a streamed one is cut off where it crosses it.
fn refuse_oversized_body<B: Body>(request: &Request<B>, route: &RouteConfig) -> Result<(), Rejection> {
    let declared = request.body().size_hint().exact();
    match (route.max_body, declared) {
        (Some(limit), Some(length)) if length > limit => Err(Rejection::PayloadTooLarge(limit)),
        _ => Ok(()),
    }
}

/// Sets the route's identity headers from verified claims.
fn inject_identity(headers: &mut HeaderMap, route: &RouteConfig, identity: &Identity) -> Result<(), AuthError> {
    for (name, claim) in &route.inject_headers {
        if let Some(value) = identity.header_value(claim) {
            headers.insert(name.clone(), value.ok_or(AuthError::Invalid(Reason::UnsendableClaim))?);
        }
    }
    Ok(())
}

/// Sets the route's client-certificate headers from the verified certificate.
fn inject_client_cert(headers: &mut HeaderMap, route: &RouteConfig, cert: Option<&ClientCert>) {
    let Some(cert) = cert else {
        return;
    };
    for (name, field) in &route.inject_client_cert {
        let value = match field {
            ClientCertField::Subject => &cert.subject,
            ClientCertField::Sans => &cert.sans,
            ClientCertField::Sha256 => &cert.sha256,
        };
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name.clone(), value);
        }
    }
}

/// On a route that verifies tokens, the upstream gets no credential but the
/// verified one, and that only with `forward_token`: an `Authorization`
/// header or token cookie that was not checked never reaches it.
fn drop_credentials(headers: &mut HeaderMap, route: &RouteConfig, identity: Option<&Identity>) {
    let kept = identity.filter(|_| route.forward_token).map(|identity| &identity.source);
    if kept != Some(&TokenSource::Header) {
        headers.remove(AUTHORIZATION);
    }
    for source in &route.token_sources {
        if let TokenSource::Cookie(name) = source
            && kept != Some(source)
        {
            headers::remove_cookie(headers, name);
        }
    }
}

/// Points the request head at the route's upstream with the canonical path
/// (the one that was matched) and the query as sent.
pub(crate) fn upstream_head(parts: &mut Parts, admitted: &Admitted<'_>) -> Result<(), Rejection> {
    let route = admitted.route;
    let path = admitted.canonical_path.as_deref().unwrap_or(parts.uri.path());
    parts.uri = upstream::target(&route.upstream, path, parts.uri.query())
        .ok_or(Rejection::BadRequest("invalid request target"))?;
    // the pool picks HTTP/1.1 or HTTP/2 per upstream, whatever the client spoke
    parts.version = Version::HTTP_11;
    headers::join_cookies(&mut parts.headers);
    let host = admitted.authority.as_deref().and_then(|a| HeaderValue::from_str(a).ok());
    // an HTTP/2 upstream gets `:authority` from the URI, and a Host that
    // differed from it would make the request malformed (RFC 9113 §8.3.1)
    let http1 = route.upstream_protocol == UpstreamProtocol::Http1;
    match (host, route.preserve_host && http1) {
        (Some(host), true) => parts.headers.insert(HOST, host),
        // the client sets Host from the upstream URI
        _ => parts.headers.remove(HOST),
    };
    Ok(())
}

/// Joins the client's and the upstream's upgraded connections (a WebSocket)
/// and copies bytes both ways until either side closes.
async fn splice(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => return tracing::debug!(%error, "upgrade failed"),
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%error, "upgraded connection ended");
    }
}

/// Shared with the server: one proxy per gateway.
pub(crate) type SharedProxy = Arc<Proxy>;
