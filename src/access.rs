//! One access-log event and one set of metrics per request, written when
//! the response has been sent (or abandoned), so they carry the bytes sent
//! and the whole time taken; a request dropped before it had a response
//! (the client reset the stream or went away, shutdown cut the connection)
//! is written when dropped, with status 499 as nginx does. Never twice.
//! Also the request id every request carries.
//!
//! Never logged: a token, a secret, the query string (it may hold either).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use hyper::body::{Body, Frame, SizeHint};

use crate::config::RouteMode;
use crate::error::Rejection;
use crate::metrics::RouteMetrics;
use crate::state::Snapshot;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const MAX_REQUEST_ID: usize = 128;
/// nginx's "client closed request": there was no response to send.
const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => panic!("499 is a status code"),
};

/// The client's `x-request-id` when it sent exactly one sane value (up to
/// 128 characters of letters, digits and `-_.:/+=@`), else a new one.
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut sent = headers.get_all(REQUEST_ID).iter();
    match (sent.next(), sent.next()) {
        (Some(value), None) if is_sane(value.as_bytes()) => value.clone(),
        _ => new_request_id(),
    }
}

fn is_sane(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len()) && id.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

/// 128 random bits in hex: unique enough to find one request in the logs.
fn new_request_id() -> HeaderValue {
    let id = Bytes::from(format!("{:032x}", fastrand::u128(..)));
    HeaderValue::from_maybe_shared(id).expect("hex digits are a valid header value")
}

/// What the gateway decided about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow,
    Deny,
    /// A report-mode route would have denied it, and forwarded it anyway.
    WouldDeny,
    /// Allowed, but the upstream failed it.
    UpstreamError,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::WouldDeny => "would_deny",
            Decision::UpstreamError => "upstream_error",
        }
    }
}

/// Everything the access log and the metrics need about one request.
pub(crate) struct Exchange {
    started: Instant,
    snapshot: Arc<Snapshot>,
    /// Index into the route table; `None`: no route matched (yet).
    pub(crate) route: Option<usize>,
    pub(crate) request_id: HeaderValue,
    method: Method,
    /// Its path is logged; the query never is.
    uri: Uri,
    peer: SocketAddr,
    decision: Decision,
    reason: Option<&'static str>,
    detail: Option<String>,
    pub(crate) sub: Option<String>,
    upstream: Option<Duration>,
    /// Logged and counted already.
    finished: bool,
}

impl Exchange {
    pub(crate) fn begin<B>(snapshot: Arc<Snapshot>, request: &Request<B>, peer: SocketAddr) -> Exchange {
        Exchange {
            started: Instant::now(),
            snapshot,
            route: None,
            request_id: request_id(request.headers()),
            method: request.method().clone(),
            uri: request.uri().clone(),
            peer,
            decision: Decision::Allow,
            reason: None,
            detail: None,
            sub: None,
            upstream: None,
            finished: false,
        }
    }

    /// Whether the access log names the token's `sub`.
    pub(crate) fn wants_sub(&self) -> bool {
        self.snapshot.config.source.log.include_sub
    }

    fn metrics(&self) -> &RouteMetrics {
        match self.route.and_then(|index| self.snapshot.config.routes.get(index)) {
            Some(route) => &route.metrics,
            None => &self.snapshot.config.unrouted,
        }
    }

    /// Records the refusal (or, in report mode, the would-be refusal).
    pub(crate) fn refuse(&mut self, rejection: &Rejection, mode: RouteMode) {
        let code = rejection.code();
        (self.reason, self.detail) = (Some(code), Some(rejection.to_string()));
        match rejection {
            Rejection::Upstream(error) if error.is_upstream_fault() => {
                self.decision = Decision::UpstreamError;
                self.metrics().upstream_error(error.is_timeout());
            }
            _ => {
                self.decision = if mode == RouteMode::Report { Decision::WouldDeny } else { Decision::Deny };
                self.metrics().denial(code, mode);
            }
        }
    }

    pub(crate) fn upstream_answered(&mut self, after: Duration) {
        self.upstream = Some(after);
        self.metrics().upstream_duration.record(after.as_secs_f64());
    }

    /// Counts the request and writes its access-log event, the first time
    /// only.
    fn finish(&mut self, status: StatusCode, bytes: u64, completed: bool) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let metrics = self.metrics();
        metrics.request(&self.method, status);
        metrics.duration.record(elapsed.as_secs_f64());
        let route = self.route.and_then(|index| self.snapshot.config.routes.get(index));
        let millis = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        tracing::info!(
            target: "portcullis::access",
            request_id = %String::from_utf8_lossy(self.request_id.as_bytes()),
            route = route.map_or("-", |r| r.name.as_str()),
            method = %self.method,
            path = self.uri.path(),
            status = status.as_u16(),
            decision = self.decision.as_str(),
            reason = self.reason,
            detail = self.detail.as_deref(),
            sub = self.sub.as_deref(),
            upstream_ms = self.upstream.map(millis),
            duration_ms = millis(elapsed),
            bytes,
            completed,
            peer = %self.peer,
        );
    }
}

/// A request dropped before it had a response: its handler's future was
/// dropped (an HTTP/2 reset, a client gone while the upstream was slow,
/// a connection cut at the end of `shutdown_timeout`).
impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish(CLIENT_CLOSED, 0, false);
    }
}

/// A response body that finishes its `Exchange` once sent or dropped.
pub(crate) struct Logged<B: Body<Data = Bytes> + Unpin> {
    body: B,
    status: StatusCode,
    bytes: u64,
    exchange: Exchange,
}

impl<B: Body<Data = Bytes> + Unpin> Logged<B> {
    pub(crate) fn new(body: B, status: StatusCode, exchange: Exchange) -> Logged<B> {
        Logged { body, status, bytes: 0, exchange }
    }

    fn finish(&mut self, completed: bool) {
        self.exchange.finish(self.status, self.bytes, completed);
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Logged<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                self.bytes += frame.data_ref().map_or(0, |data| data.len() as u64);
                if self.body.is_end_stream() {
                    self.finish(true);
                }
            }
            Some(Err(_)) => self.finish(false),
            None => self.finish(true),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B: Body<Data = Bytes> + Unpin> Drop for Logged<B> {
    fn drop(&mut self) {
        // an empty body may never be polled; anything else was cut short.
        // Runs before the exchange's own drop, which then finds it finished.
        let completed = self.body.is_end_stream();
        self.finish(completed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_request_id_is_kept_and_anything_else_replaced() {
        let mut headers = HeaderMap::new();
        assert_eq!(request_id(&headers).len(), 32);
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123_x.y:z/1+2=3@host"));
        assert_eq!(request_id(&headers), "abc-123_x.y:z/1+2=3@host");
        for bad in ["", "has space", "quote\"", "semi;colon", &"a".repeat(129)] {
            headers.insert(REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = request_id(&headers);
            assert!(id != bad && id.len() == 32, "{bad:?} kept as {id:?}");
        }
        headers.insert(REQUEST_ID, HeaderValue::from_static("one"));
        headers.append(REQUEST_ID, HeaderValue::from_static("two"));
        assert_eq!(request_id(&headers).len(), 32, "two ids: neither is trusted");
    }
}
