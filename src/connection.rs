//! One client connection's timekeeping: how long a request head may take
//! to arrive, and when an idle connection is closed.
//!
//! hyper's own header timer starts whenever a connection waits for a head,
//! so it cannot tell a slow head from an idle keep-alive connection. Here
//! the head clock starts at the first byte of a request and stops when the
//! request reaches the proxy (`header_read_timeout`); a connection with no
//! request in flight and no traffic is closed after `idle_timeout`. HTTP/2
//! and upgraded connections are left to the idle clock: their frames are
//! not heads.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// What the connection's IO and its requests share.
pub(crate) struct Activity {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last byte read or written.
    last: AtomicU64,
    /// Requests whose responses are not finished.
    in_flight: AtomicUsize,
    /// Requests that reached the proxy, ever.
    started: AtomicU64,
    /// HTTP/2, or upgraded (a WebSocket): no request heads to time.
    no_heads: AtomicBool,
}

impl Activity {
    pub(crate) fn new(http2: bool) -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            no_heads: AtomicBool::new(http2),
        })
    }

    fn touch(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Marks a request as in flight until the returned guard is dropped
    /// (with the response body).
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        self.touch();
        InFlight(self.clone())
    }

    /// The connection was upgraded: what follows are not HTTP requests.
    pub(crate) fn upgraded(&self) {
        self.no_heads.store(true, Ordering::Release);
    }

    /// No request in flight and no traffic for `idle`.
    pub(crate) fn idle_for(&self, idle: Duration) -> bool {
        let quiet = self.epoch.elapsed().saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)));
        self.in_flight.load(Ordering::Acquire) == 0 && quiet >= idle
    }
}

/// Keeps an upgraded connection (a WebSocket) as accountable as any other:
/// it holds its connection's `max_connections` slot, is waited for at
/// shutdown, and is closed after `idle_timeout` without traffic.
#[derive(Clone)]
pub(crate) struct Upgrades {
    pub(crate) tasks: TaskTracker,
    pub(crate) slot: Arc<OwnedSemaphorePermit>,
    pub(crate) activity: Arc<Activity>,
    pub(crate) idle_timeout: Duration,
}

impl std::fmt::Debug for Upgrades {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upgrades")
    }
}

impl Upgrades {
    /// Runs `splice` (the copying between client and upstream) until it
    /// ends or the connection goes idle.
    pub(crate) fn spawn(&self, splice: impl Future<Output = ()> + Send + 'static) {
        let (slot, activity, idle) = (self.slot.clone(), self.activity.clone(), self.idle_timeout);
        self.tasks.spawn(async move {
            let _slot = slot;
            let mut check = tokio::time::interval(idle / 4);
            let idle_out = async {
                loop {
                    check.tick().await;
                    if activity.idle_for(idle) {
                        return;
                    }
                }
            };
            tokio::select! {
                () = splice => {}
                () = idle_out => tracing::debug!("upgraded connection idle: closed"),
            }
        });
    }
}

/// A request in flight; dropping it ends the request.
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it is done.
pub(crate) struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub(crate) fn new(body: B, in_flight: InFlight) -> Tracked<B> {
        Tracked { body, _in_flight: in_flight }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's IO, timing request heads and recording traffic.
pub(crate) struct Timed<IO> {
    io: IO,
    activity: Arc<Activity>,
    head_timeout: Duration,
    /// Set while an HTTP/1 request head is arriving: its deadline, and how
    /// many requests had started when it began.
    head: Option<(Pin<Box<Sleep>>, u64)>,
    first_read: bool,
}

impl<IO> Timed<IO> {
    pub(crate) fn new(io: IO, activity: Arc<Activity>, head_timeout: Duration) -> Timed<IO> {
        Timed { io, activity, head_timeout, head: None, first_read: true }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Timed<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let started = this.activity.started.load(Ordering::Acquire);
        if this.head.as_ref().is_some_and(|(_, at)| started > *at) {
            this.head = None; // the head arrived: the request is the proxy's now
        }
        if let Some((deadline, _)) = &mut this.head
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head read timeout")));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if matches!(result, Poll::Ready(Ok(()))) && !read.is_empty() {
            this.activity.touch();
            if std::mem::take(&mut this.first_read) && read.starts_with(&HTTP2_PREFACE[..read.len().min(14)]) {
                this.activity.no_heads.store(true, Ordering::Release);
            }
            let idle = this.activity.in_flight.load(Ordering::Acquire) == 0;
            if idle && this.head.is_none() && !this.activity.no_heads.load(Ordering::Acquire) {
                let mut deadline = Box::pin(tokio::time::sleep(this.head_timeout));
                // registers the waker, so a silent client still times out
                let _ = deadline.as_mut().poll(cx);
                this.head = Some((deadline, started));
            }
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Timed<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.activity.touch();
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.activity.touch();
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
