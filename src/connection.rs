//! One client connection's timekeeping: how long a request head may take
//! to arrive, and when an idle connection is closed.
//!
//! hyper's own header timer starts whenever a connection waits for a head,
//! so it cannot tell a slow head from an idle keep-alive connection. Here
//! the head clock starts at the first byte of a request and stops when the
//! request reaches the proxy (`header_read_timeout`); a connection with no
//! request in flight and none for `idle_timeout` is closed, however many
//! PINGs it sends; a write that makes no progress for `body_timeout` (a
//! client that stopped reading) ends the connection. HTTP/2 and upgraded
//! connections have no heads to time; an upgraded one is idle when no byte
//! moves.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the connection's IO and its requests share.
pub(crate) struct Activity {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last byte read or written.
    last_io: AtomicU64,
    /// Milliseconds after `epoch` a request last started or ended.
    last_request: AtomicU64,
    /// Requests whose responses are not finished.
    in_flight: AtomicUsize,
    /// Requests that reached the proxy, ever.
    started: AtomicU64,
    /// HTTP/2 (by ALPN or preface), or upgraded: no request heads to time.
    no_heads: AtomicBool,
    upgraded: AtomicBool,
}

impl Activity {
    pub(crate) fn new(http2: bool) -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_io: AtomicU64::new(0),
            last_request: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            no_heads: AtomicBool::new(http2),
            upgraded: AtomicBool::new(false),
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn touch_io(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    fn touch_request(&self) {
        self.last_request.store(self.now(), Ordering::Relaxed);
    }

    /// Marks a request as in flight until the returned guard is dropped
    /// (with the response body).
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        self.touch_request();
        InFlight(self.clone())
    }

    /// The connection was upgraded: what follows are not HTTP requests.
    pub(crate) fn upgraded(&self) {
        self.no_heads.store(true, Ordering::Release);
        self.upgraded.store(true, Ordering::Release);
    }

    /// Idle for `idle`: an HTTP connection with no request in flight and
    /// none started or finished since (PINGs and other frames do not count);
    /// an upgraded one without a byte either way.
    pub(crate) fn idle_for(&self, idle: Duration) -> bool {
        let since = |last: &AtomicU64| Duration::from_millis(self.now().saturating_sub(last.load(Ordering::Relaxed)));
        if self.upgraded.load(Ordering::Acquire) {
            return since(&self.last_io) >= idle;
        }
        self.in_flight.load(Ordering::Acquire) == 0 && since(&self.last_request) >= idle
    }
}

/// The connection limits: `max_connections` in all, and optionally
/// `max_connections_per_client` from one address.
pub(crate) struct Slots {
    max: usize,
    total: Arc<Semaphore>,
    per_client: Option<(usize, Mutex<HashMap<IpAddr, usize>>)>,
}

/// One connection's place; given back when dropped.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    client: Option<(Arc<Slots>, IpAddr)>,
}

impl Slots {
    pub(crate) fn new(max: usize, per_client: Option<usize>) -> Arc<Slots> {
        let per_client = per_client.map(|n| (n, Mutex::default()));
        Arc::new(Slots { max, total: Arc::new(Semaphore::new(max)), per_client })
    }

    /// Connections holding a place now.
    pub(crate) fn open(&self) -> usize {
        self.max - self.total.available_permits()
    }

    /// A place for a connection from `peer`, if there is one.
    pub(crate) fn take(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let permit = self.total.clone().try_acquire_owned().ok()?;
        let Some((max, counts)) = &self.per_client else {
            return Some(Slot { _permit: permit, client: None });
        };
        let mut counts = counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(peer).or_insert(0);
        if *count >= *max {
            return None;
        }
        *count += 1;
        Some(Slot { _permit: permit, client: Some((self.clone(), peer)) })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some((slots, peer)) = &self.client else {
            return;
        };
        if let Some((_, counts)) = &slots.per_client {
            let mut counts = counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(count) = counts.get_mut(peer) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(peer);
                }
            }
        }
    }
}

/// Keeps an upgraded connection (a WebSocket) as accountable as any other:
/// it holds its connection's `max_connections` slot, is waited for at
/// shutdown, and is closed after `idle_timeout` without traffic.
#[derive(Clone)]
pub(crate) struct Upgrades {
    pub(crate) tasks: TaskTracker,
    pub(crate) slot: Arc<Slot>,
    pub(crate) activity: Arc<Activity>,
    pub(crate) idle_timeout: Duration,
    /// Cancelled when the shutdown grace is over.
    pub(crate) killing: CancellationToken,
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
        let killing = self.killing.clone();
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
                () = killing.cancelled() => {}
            }
        });
    }
}

/// A request in flight; dropping it ends the request.
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch_request();
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

/// The connection's IO, timing request heads and stalled writes, and
/// recording traffic.
pub(crate) struct Timed<IO> {
    io: IO,
    activity: Arc<Activity>,
    head_timeout: Duration,
    /// Set while an HTTP/1 request head is arriving: its deadline, and how
    /// many requests had started when it began.
    head: Option<(Pin<Box<Sleep>>, u64)>,
    /// How much of the HTTP/2 preface the first bytes matched; `None` once
    /// decided.
    preface: Option<usize>,
    write_timeout: Duration,
    /// Set while a write cannot proceed (a client that does not read).
    write_stall: Option<Pin<Box<Sleep>>>,
}

impl<IO> Timed<IO> {
    pub(crate) fn new(io: IO, activity: Arc<Activity>, head_timeout: Duration, write_timeout: Duration) -> Timed<IO> {
        let preface = (!activity.no_heads.load(Ordering::Acquire)).then_some(0);
        Timed { io, activity, head_timeout, head: None, preface, write_timeout, write_stall: None }
    }

    /// Follows the first bytes: only the whole HTTP/2 preface, not a prefix
    /// of it (a `P` could begin `POST`), makes this an HTTP/2 connection.
    fn watch_preface(&mut self, read: &[u8]) {
        let Some(matched) = self.preface else {
            return;
        };
        let expected = &HTTP2_PREFACE[matched..];
        let n = read.len().min(expected.len());
        self.preface = if read[..n] != expected[..n] {
            None
        } else if matched + n == HTTP2_PREFACE.len() {
            self.activity.no_heads.store(true, Ordering::Release);
            self.head = None;
            None
        } else {
            Some(matched + n)
        };
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
            this.activity.touch_io();
            let idle = this.activity.in_flight.load(Ordering::Acquire) == 0;
            if idle && this.head.is_none() && !this.activity.no_heads.load(Ordering::Acquire) {
                let mut deadline = Box::pin(tokio::time::sleep(this.head_timeout));
                // registers the waker, so a silent client still times out
                let _ = deadline.as_mut().poll(cx);
                this.head = Some((deadline, started));
            }
            if this.preface.is_some() {
                let read = read.to_vec(); // the first bytes only
                this.watch_preface(&read);
            }
        }
        result
    }
}

impl<IO: AsyncWrite + Unpin> Timed<IO> {
    /// Ends the connection when a write has made no progress for
    /// `write_timeout`: a client that stops reading must not hold its slot
    /// and an upstream connection forever.
    fn guard_write(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match result {
            Poll::Pending => {
                let timeout = self.write_timeout;
                let stall = self.write_stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if stall.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")));
                }
                Poll::Pending
            }
            ready => {
                self.write_stall = None;
                self.activity.touch_io();
                ready
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Timed<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, data);
        self.guard_write(cx, result)
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
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.guard_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
