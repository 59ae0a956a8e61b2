//! The per-request pipeline, as a list of steps:
//! match route -> sanitize headers -> authenticate -> authorize -> inject
//! identity -> forward (streamed) -> clean the response.
//!
//! `handle` is the one outer handler: it loads the live snapshot once, runs
//! the steps, turns any refusal into its response and logs one line.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::auth::{self, AuthError, Identity};
use crate::config::{AuthMode, RouteConfig, TokenSource};
use crate::error::Rejection;
use crate::headers;
use crate::path;
use crate::state::{SharedState, Snapshot};
use crate::token::Reason;
use crate::upstream::{self, UpstreamClient};

/// A response body: the upstream's, streamed, or one the gateway wrote.
pub(crate) type ProxyBody = Either<Incoming, Full<Bytes>>;

/// What the gateway knows about the connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Connection {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
}

pub(crate) struct Proxy {
    pub(crate) state: SharedState,
    pub(crate) upstream: UpstreamClient,
}

impl Proxy {
    pub(crate) async fn handle(&self, request: Request<Incoming>, connection: Connection) -> Response<ProxyBody> {
        let started = Instant::now();
        let snapshot = self.state.load_full();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let matched = match_route(&snapshot, &request);
        let route_name = matched.as_ref().ok().map(|m| m.route.name.clone());
        let outcome = match matched {
            Ok(matched) => self.pass(&snapshot, matched, request, connection).await,
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
        matched: Matched<'_>,
        mut request: Request<Incoming>,
        connection: Connection,
    ) -> Result<Response<Incoming>, Rejection> {
        let route = matched.route;
        headers::sanitize_request(request.headers_mut(), &snapshot.config.identity_headers);
        let identity = auth::authenticate(route, request.headers(), snapshot, &self.state).await?;
        auth::authorize(route, identity.as_ref())?;
        if let Some(identity) = &identity {
            inject_identity(&mut request, route, identity)?;
        }
        if route.auth != AuthMode::Public {
            drop_credentials(request.headers_mut(), route, identity.as_ref());
        }
        let proto = if connection.tls { "https" } else { "http" };
        headers::set_forwarded(request.headers_mut(), connection.peer.ip(), proto, matched.authority.as_ref());
        let request = to_upstream(request, &matched)?;
        let mut response = self.upstream.forward(request, route.upstream_timeout).await?;
        headers::clean_response(response.headers_mut());
        Ok(response)
    }
}

/// Where a request goes, and what it was addressed to.
struct Matched<'a> {
    route: &'a RouteConfig,
    authority: Option<HeaderValue>,
    /// The canonical path, when it differs from the request's.
    canonical_path: Option<String>,
}

/// The route for a request, matched on its canonical path and host.
fn match_route<'a>(snapshot: &'a Snapshot, request: &Request<Incoming>) -> Result<Matched<'a>, Rejection> {
    let authority = authority(request)?;
    let path = path::canonicalize(request.uri().path()).map_err(Rejection::BadRequest)?;
    let host = authority.as_ref().and_then(host_name);
    let route = snapshot.config.routes.find(host.as_deref(), &path, request.method()).ok_or(Rejection::NoRoute)?;
    let canonical_path = match path {
        Cow::Owned(path) => Some(path),
        Cow::Borrowed(_) => None,
    };
    Ok(Matched { route, authority, canonical_path })
}

/// The request's authority: the HTTP/2 `:authority` or absolute-form
/// target, else the one `Host` header.
fn authority(request: &Request<Incoming>) -> Result<Option<HeaderValue>, Rejection> {
    if let Some(authority) = request.uri().authority() {
        return HeaderValue::from_str(authority.as_str())
            .map(Some)
            .map_err(|_| Rejection::BadRequest("invalid authority"));
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(Rejection::BadRequest("more than one Host header"));
    }
    Ok(host)
}

/// The host part of an authority for matching: lowercase, without port or
/// the trailing dot of a fully qualified name.
fn host_name(authority: &HeaderValue) -> Option<String> {
    let authority: http::uri::Authority = authority.to_str().ok()?.parse().ok()?;
    Some(authority.host().trim_end_matches('.').to_ascii_lowercase())
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
/// one that was matched) and the query as sent.
fn to_upstream(mut request: Request<Incoming>, matched: &Matched<'_>) -> Result<Request<Incoming>, Rejection> {
    let route = matched.route;
    let uri = request.uri();
    let path = matched.canonical_path.as_deref().unwrap_or(uri.path());
    *request.uri_mut() =
        upstream::target(&route.upstream, path, uri.query()).ok_or(Rejection::BadRequest("invalid request target"))?;
    // the pool picks HTTP/1.1 or HTTP/2 per upstream, whatever the client spoke
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    headers::join_cookies(headers);
    match (&matched.authority, route.preserve_host) {
        (Some(host), true) => headers.insert(HOST, host.clone()),
        // the client sets Host from the upstream URI
        _ => headers.remove(HOST),
    };
    Ok(request)
}

/// Shared with the server: one proxy per gateway.
pub(crate) type SharedProxy = Arc<Proxy>;
