//! The per-request pipeline, as a list of steps:
//! match route -> sanitize headers -> authenticate -> authorize -> inject
//! identity -> forward (streamed) -> clean the response.
//!
//! `handle` is the one outer handler: it loads the live snapshot once, runs
//! the steps, turns any refusal into its response and logs one line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::auth::{self, Identity};
use crate::config::RouteConfig;
use crate::error::Rejection;
use crate::headers;
use crate::route;
use crate::state::{SharedState, Snapshot};
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
    pub(crate) async fn handle(
        &self,
        request: Request<Incoming>,
        connection: Connection,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let snapshot = self.state.load_full();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let matched = match_route(&snapshot, &request);
        let route_name = matched.as_ref().ok().map(|(route, _)| route.name.clone());
        let outcome = match matched {
            Ok((route, host)) => self.pass(&snapshot, route, host, request, connection).await,
            Err(rejection) => Err(rejection),
        };
        let (response, denial) = match outcome {
            Ok(response) => (response.map(Either::Left), None),
            Err(rejection) => {
                let code = rejection.code();
                let detail = rejection.to_string();
                (
                    rejection.into_response().map(Either::Right),
                    Some((code, detail)),
                )
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
        route: &RouteConfig,
        host: Option<HeaderValue>,
        mut request: Request<Incoming>,
        connection: Connection,
    ) -> Result<Response<Incoming>, Rejection> {
        headers::sanitize_request(request.headers_mut(), &snapshot.config.identity_headers);
        let identity = auth::authenticate(route, request.headers(), snapshot, &self.state).await?;
        auth::authorize(route, identity.as_ref())?;
        if let Some(identity) = &identity {
            inject_identity(&mut request, route, identity)?;
        }
        let proto = if connection.tls { "https" } else { "http" };
        headers::set_forwarded(
            request.headers_mut(),
            connection.peer.ip(),
            proto,
            host.as_ref(),
        );
        let request = to_upstream(request, route, host)?;
        let mut response = self
            .upstream
            .forward(request, route.upstream_timeout)
            .await?;
        headers::clean_response(response.headers_mut());
        Ok(response)
    }
}

/// The route for a request, and the authority it was addressed to.
fn match_route<'a>(
    snapshot: &'a Snapshot,
    request: &Request<Incoming>,
) -> Result<(&'a RouteConfig, Option<HeaderValue>), Rejection> {
    let authority = authority(request)?;
    route::check_path(request.uri().path()).map_err(Rejection::BadRequest)?;
    let host = authority.as_ref().and_then(host_name);
    let route = snapshot
        .config
        .routes
        .find(host.as_deref(), request.uri().path(), request.method())
        .ok_or(Rejection::NoRoute)?;
    Ok((route, authority))
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

/// The host part of an authority, lowercase and without port, for matching.
fn host_name(authority: &HeaderValue) -> Option<String> {
    let authority: http::uri::Authority = authority.to_str().ok()?.parse().ok()?;
    Some(authority.host().to_ascii_lowercase())
}

/// Sets the route's identity headers from verified claims; drops the token
/// unless the route forwards it.
fn inject_identity(
    request: &mut Request<Incoming>,
    route: &RouteConfig,
    identity: &Identity,
) -> Result<(), Rejection> {
    let headers = request.headers_mut();
    for (name, claim) in &route.inject_headers {
        if let Some(value) = identity.claim(claim) {
            let value = headers::claim_header_value(value).ok_or(Rejection::Auth(
                auth::AuthError::Invalid(auth::Reason::UnsendableClaim),
            ))?;
            headers.insert(name.clone(), value);
        }
    }
    if !route.forward_token {
        headers.remove(AUTHORIZATION);
    }
    Ok(())
}

/// Points the request at the route's upstream, keeping the path and query
/// exactly as matched and the client's `Host`.
fn to_upstream(
    mut request: Request<Incoming>,
    route: &RouteConfig,
    host: Option<HeaderValue>,
) -> Result<Request<Incoming>, Rejection> {
    let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    *request.uri_mut() = upstream::target(&route.upstream, path_and_query)
        .ok_or(Rejection::BadRequest("invalid request target"))?;
    // the pool picks HTTP/1.1 or HTTP/2 per upstream, whatever the client spoke
    *request.version_mut() = Version::HTTP_11;
    if let Some(host) = host {
        request.headers_mut().insert(HOST, host);
    }
    Ok(request)
}

/// Shared with the server: one proxy per gateway.
pub(crate) type SharedProxy = Arc<Proxy>;
