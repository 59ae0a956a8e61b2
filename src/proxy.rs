//! The per-request pipeline, as a list of steps:
//! admit (method, target, authority, canonical path) -> match route ->
//! sanitize headers -> authenticate -> authorize -> inject identity ->
//! forward (streamed) -> clean the response.
//!
//! `handle` is the one outer handler: it loads the live snapshot once, runs
//! the steps, turns any refusal into its response and logs one line.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::auth::{self, AuthError, Identity};
use crate::body::RequestBody;
use crate::config::{AuthMode, ClientCertField, RouteConfig, TokenSource, UpstreamProtocol};
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

/// What the gateway knows about the connection a request came in on.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    /// The certificate the client was verified with, if it sent one.
    pub(crate) client_cert: Option<Arc<ClientCert>>,
    /// Where an upgraded connection's copying runs.
    pub(crate) upgrades: Upgrades,
}

pub(crate) struct Proxy {
    pub(crate) state: SharedState,
}

impl Proxy {
    pub(crate) async fn handle(&self, request: Request<Incoming>, connection: Connection) -> Response<ProxyBody> {
        let started = Instant::now();
        let snapshot = self.state.load_full();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let admitted = admit(&snapshot, &request, connection.tls);
        let route_name = admitted.as_ref().ok().map(|a| a.route.name.clone());
        let outcome = match admitted {
            Ok(admitted) => self.pass(&snapshot, admitted, request, &connection).await,
            Err(rejection) => Err(rejection),
        };
        let (response, denial) = match outcome {
            Ok(response) => (response.map(Either::Left), None),
            Err(rejection) => {
                let code = rejection.code();
                let detail = rejection.to_string();
                (rejection.into_response().map(Either::Right), Some((code, detail)))
            }
        };
        tracing::info!(
            target: "portcullis::access",
            route = route_name.as_deref().unwrap_or("-"),
            %method,
            path,
            status = response.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            peer = %connection.peer,
            denied = denial.as_ref().map(|(code, _)| *code),
            reason = denial.as_ref().map(|(_, detail)| detail.as_str()),
        );
        response
    }

    /// Every step after routing, in order.
    async fn pass(
        &self,
        snapshot: &Snapshot,
        admitted: Admitted<'_>,
        mut request: Request<Incoming>,
        connection: &Connection,
    ) -> Result<Response<Incoming>, Rejection> {
        let route = admitted.route;
        let server = &snapshot.config.server;
        let websocket = route.websocket && headers::is_websocket_upgrade(&request);
        refuse_oversized_body(&request, route)?;
        let headers = request.headers_mut();
        headers::sanitize_request(headers, &snapshot.config.identity_headers);
        headers::strip(headers, &server.strip_headers);
        headers::strip(headers, &route.strip_headers);
        let client_cert = connection.client_cert.as_deref();
        if route.require_client_cert && client_cert.is_none() {
            return Err(Rejection::ClientCertRequired);
        }
        inject_client_cert(request.headers_mut(), route, client_cert);
        let identity = auth::authenticate(route, request.headers(), snapshot, &self.state).await?;
        auth::authorize(route, identity.as_ref())?;
        if let Some(identity) = &identity {
            inject_identity(&mut request, route, identity)?;
        }
        if route.auth != AuthMode::Public {
            drop_credentials(request.headers_mut(), route, identity.as_ref());
        }
        let forwarding = Forwarding {
            peer: connection.peer.ip(),
            proto: if connection.tls { "https" } else { "http" },
            authority: admitted.authority.as_deref(),
            trusted_proxies: &server.trusted_proxies,
        };
        forwarded::set_forwarded(request.headers_mut(), &forwarding);
        if websocket {
            headers::restore_websocket_upgrade(request.headers_mut());
        }
        let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut request));
        let request = to_upstream(request, &admitted, server.limits.body_timeout)?;
        let mut response = route.client.forward(request, route.upstream_timeout).await?;
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
struct Admitted<'a> {
    route: &'a Route,
    /// The validated, normalised authority.
    authority: Option<String>,
    /// The canonical path, when it differs from the request's.
    canonical_path: Option<String>,
}

/// The checks a request passes before anything else, then its route.
fn admit<'a>(snapshot: &'a Snapshot, request: &Request<Incoming>, tls: bool) -> Result<Admitted<'a>, Rejection> {
    let limits = &snapshot.config.server.limits;
    request::check_method(request.method())?;
    request::check_target_size(request, limits.max_uri_size)?;
    let authority = request::authority(request, tls)?;
    let path = path::canonicalize(request.uri().path()).map_err(Rejection::BadRequest)?;
    let host = authority.as_deref().map(request::host_of);
    let route = snapshot.config.routes.find(host, &path, request.method()).ok_or(Rejection::NoRoute)?;
    let canonical_path = match path {
        Cow::Owned(path) => Some(path),
        Cow::Borrowed(_) => None,
    };
    Ok(Admitted { route, authority, canonical_path })
}

/// A declared body over the route's `max_body` is refused before anything
/// is sent upstream; a streamed one is cut off where it crosses it.
fn refuse_oversized_body(request: &Request<Incoming>, route: &RouteConfig) -> Result<(), Rejection> {
    let declared = hyper::body::Body::size_hint(request.body()).exact();
    match (route.max_body, declared) {
        (Some(limit), Some(length)) if length > limit => Err(Rejection::PayloadTooLarge(limit)),
        _ => Ok(()),
    }
}

/// Sets the route's identity headers from verified claims.
fn inject_identity(request: &mut Request<Incoming>, route: &RouteConfig, identity: &Identity) -> Result<(), Rejection> {
    let headers = request.headers_mut();
    for (name, claim) in &route.inject_headers {
        if let Some(value) = identity.claim(claim) {
            let value = headers::claim_header_value(value)
                .ok_or(Rejection::Auth(AuthError::Invalid(Reason::UnsendableClaim)))?;
            headers.insert(name.clone(), value);
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

/// Points the request at the route's upstream with the canonical path (the
/// one that was matched) and the query as sent, its body guarded.
fn to_upstream(
    request: Request<Incoming>,
    admitted: &Admitted<'_>,
    body_timeout: std::time::Duration,
) -> Result<Request<RequestBody>, Rejection> {
    let route = admitted.route;
    let (mut parts, body) = request.into_parts();
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
    Ok(Request::from_parts(parts, RequestBody::new(body, route.max_body, body_timeout)))
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
