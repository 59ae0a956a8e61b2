//! The request body as it goes upstream: streamed frame by frame, never
//! held, with the limits a proxy owes its upstreams.
//!
//! It ends the request with an error when the body grows past the route's
//! `max_body`, or when the client sends nothing for `body_timeout` (a slow
//! client must not hold an upstream connection open forever), and it drops
//! request trailers, which are never forwarded.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the request body sent nothing for {0:?}")]
    Stalled(Duration),
    #[error("reading the request body failed")]
    Client(#[from] hyper::Error),
}

pub(crate) struct RequestBody {
    inner: Incoming,
    limit: Option<u64>,
    received: u64,
    stall: Duration,
    /// Started on the first poll, so time spent connecting upstream is not
    /// counted against the client.
    quiet_since: Option<Pin<Box<Sleep>>>,
}

impl RequestBody {
    pub(crate) fn new(inner: Incoming, limit: Option<u64>, stall: Duration) -> RequestBody {
        RequestBody { inner, limit, received: 0, stall, quiet_since: None }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let stall = this.stall;
        let quiet_since = this.quiet_since.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    quiet_since.as_mut().reset(Instant::now() + stall);
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers are never forwarded
                    };
                    this.received += data.len() as u64;
                    if let Some(limit) = this.limit.filter(|limit| this.received > *limit) {
                        return Poll::Ready(Some(Err(BodyError::TooLarge(limit))));
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    return match quiet_since.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Stalled(this.stall)))),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
