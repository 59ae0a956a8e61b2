//! The listener: accept loop, TLS handshake, HTTP/1.1 and HTTP/2 (by ALPN,
//! or by preface on plaintext), limits, and graceful shutdown.
//!
//! Each connection runs in its own task, handshake included, so a slow
//! client never holds up the accept loop or anyone else. Beyond
//! `max_connections`, new connections are closed at once rather than let
//! memory grow. hyper's timer is set, so its timeouts actually fire.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::StatusCode;
use hyper::body::{Body, Incoming};
use hyper::rt::bounds::Http2ServerConnExec;
use hyper::rt::{Read, Write};
use hyper::service::{HttpService, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::config::{Config, ConfigError, Limits};
use crate::connection::{Activity, Slot, Slots, Timed, Tracked, Upgrades};
use crate::control::Control;
use crate::metrics::Metrics;
use crate::proxy::{Connection, Peer, Proxy, SharedProxy};
use crate::reload::Reloader;
use crate::tls::{self, ClientCert};

/// Reset streams an HTTP/2 client may cause before it is cut off.
const MAX_PENDING_RESETS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A gateway bound to its address, with its key refresh loops running.
pub struct Gateway {
    listener: TcpListener,
    shared: Arc<Shared>,
    slots: Arc<Slots>,
    reloader: Reloader,
    metrics: Arc<Metrics>,
    admin: Option<(TcpListener, Arc<Admin>)>,
    /// Cancelled when shutdown begins (the admin listener reports not ready).
    draining: CancellationToken,
    /// Stops the key refresh loops and the file watcher when the gateway is dropped.
    background: CancellationToken,
    _background: DropGuard,
}

/// What every connection task needs.
struct Shared {
    /// Replaced by reloads; a connection keeps the one it was accepted with.
    serving: Arc<ArcSwap<Serving>>,
    proxy: SharedProxy,
}

/// How new connections are served: TLS and the HTTP settings.
pub(crate) struct Serving {
    tls: Option<TlsAcceptor>,
    /// HTTP/1.1 (with upgrades) or HTTP/2, told apart by the preface.
    http: auto::Builder<TokioExecutor>,
    /// HTTP/2 only, for connections whose ALPN chose it.
    http2: auto::Builder<TokioExecutor>,
    limits: Limits,
}

impl Serving {
    /// Loads every TLS file `config` names.
    pub(crate) fn new(config: &Config) -> Result<Serving, ConfigError> {
        let tls = tls::server_config(config)?.map(TlsAcceptor::from);
        let limits = config.server.limits.clone();
        let http = http_builder(&limits);
        Ok(Serving { tls, http2: http.clone().http2_only(), http, limits })
    }
}

impl Gateway {
    /// Loads TLS material, binds the listener and starts fetching keys.
    pub async fn bind(config: &Config) -> Result<Gateway, StartError> {
        let serving = Arc::new(ArcSwap::from_pointee(Serving::new(config)?));
        let listener = bind(config.server.listen).await?;
        let admin_listener = match &config.admin {
            Some(admin) => Some(bind(admin.listen).await?),
            None => None,
        };
        let background = CancellationToken::new();
        let metrics = Metrics::new();
        let (control, state) = Control::start(Arc::new(config.clone()), background.clone(), metrics.clone())?;
        let reloader = Reloader::new(config, control, serving.clone(), metrics.clone());
        let limits = &config.server.limits;
        let slots = Slots::new(limits.max_connections, limits.max_connections_per_client);
        let draining = CancellationToken::new();
        let admin = Arc::new(Admin {
            state: state.clone(),
            metrics: metrics.clone(),
            slots: slots.clone(),
            draining: draining.clone(),
        });
        Ok(Gateway {
            listener,
            slots,
            shared: Arc::new(Shared { serving, proxy: Arc::new(Proxy { state }) }),
            reloader,
            metrics,
            admin: admin_listener.map(|listener| (listener, admin)),
            draining,
            background: background.clone(),
            _background: background.drop_guard(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Where the admin listener is, if the config has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(listener, _)| listener.local_addr().expect("a bound listener has an address"))
    }

    /// Reloads the config on demand (`SIGHUP`); it also watches its files
    /// while serving.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting and lets
    /// in-flight requests finish (up to `server.shutdown_timeout`).
    pub async fn serve(mut self, shutdown: impl Future<Output = ()>) {
        tokio::spawn(self.reloader.clone().watch(self.background.clone()));
        tokio::spawn(self.metrics.clone().keep_up(self.background.clone()));
        let admin_stop = CancellationToken::new();
        let _admin_stop = admin_stop.clone().drop_guard();
        if let Some((listener, admin)) = self.admin.take() {
            tokio::spawn(admin.serve(listener, admin_stop));
        }
        let tasks = TaskTracker::new();
        let closing = CancellationToken::new();
        let killing = CancellationToken::new();
        let mut refused = Refused::default();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Some(slot) = self.slots.take(peer.ip()) else {
                            refused.count(peer);
                            continue;
                        };
                        let accepted = Accepted {
                            peer,
                            slot: Arc::new(slot),
                            tasks: tasks.clone(),
                            closing: closing.clone(),
                            killing: killing.clone(),
                        };
                        tasks.spawn(serve_connection(stream, accepted, self.shared.clone()));
                    }
                    Err(error) => {
                        // out of file descriptors, usually: back off instead of spinning
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        self.draining.cancel();
        let grace = self.shared.proxy.state.load().config.server.lifecycle.shutdown_timeout;
        tracing::info!(connections = tasks.len(), "shutting down: draining connections");
        closing.cancel();
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!(connections = tasks.len(), "connections still open after {grace:?}; closing them");
            killing.cancel();
            tasks.wait().await;
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's clock runs while waiting for any head, idle time included;
        // `Timed` keeps the tighter clock for a head that has begun
        .header_read_timeout(limits.idle_timeout.max(limits.header_read_timeout))
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_size);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_size as u32)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_PENDING_RESETS);
    builder
}

/// Connections refused for the limits, logged at most once a second.
#[derive(Default)]
struct Refused {
    since_logged: u64,
    logged_at: Option<tokio::time::Instant>,
}

impl Refused {
    fn count(&mut self, peer: SocketAddr) {
        self.since_logged += 1;
        let now = tokio::time::Instant::now();
        if self.logged_at.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            tracing::warn!(%peer, refused = self.since_logged, "connection limit reached: new connections closed");
            (self.since_logged, self.logged_at) = (0, Some(now));
        }
    }
}

/// A connection just accepted, and what it answers to.
struct Accepted {
    peer: SocketAddr,
    /// Its place under the connection limits, held by whatever serves it.
    slot: Arc<Slot>,
    tasks: TaskTracker,
    /// Finish what is in flight, take nothing new.
    closing: CancellationToken,
    /// Drop everything now (the shutdown grace is over).
    killing: CancellationToken,
}

/// What a connection speaks, as far as TLS has decided it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    /// Plaintext: whichever the client starts with.
    Either,
}

/// Each path is boxed, so a plaintext connection's task is not sized for a
/// TLS one's state (a task is as big as its largest path, for its whole
/// life, and idle keep-alive connections are most of them).
async fn serve_connection(stream: TcpStream, accepted: Accepted, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let serving = shared.serving.load_full();
    let proxy = &shared.proxy;
    let Some(acceptor) = &serving.tls else {
        return Box::pin(serve_http(stream, Protocol::Either, None, accepted, &serving, proxy)).await;
    };
    let peer = accepted.peer;
    match tokio::time::timeout(serving.limits.tls_handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let session = stream.get_ref().1;
            let protocol = if session.alpn_protocol() == Some(b"h2") { Protocol::Http2 } else { Protocol::Http1 };
            let client_cert = tls::client_cert(session).map(Arc::new);
            Box::pin(serve_http(stream, protocol, client_cert, accepted, &serving, proxy)).await
        }
        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Serves HTTP on an established connection until it ends, goes idle for
/// `idle_timeout`, or the gateway shuts down (then in-flight requests finish).
async fn serve_http<IO>(
    io: IO,
    protocol: Protocol,
    client_cert: Option<Arc<ClientCert>>,
    accepted: Accepted,
    serving: &Serving,
    proxy: &SharedProxy,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Accepted { peer, slot, tasks, closing, killing } = accepted;
    let activity = Activity::new(protocol == Protocol::Http2);
    let limits = &serving.limits;
    let upgrades = Upgrades {
        tasks,
        slot,
        activity: activity.clone(),
        idle_timeout: limits.idle_timeout,
        killing: killing.clone(),
    };
    let connection = Connection { peer: Peer { addr: peer, tls: serving.tls.is_some(), client_cert }, upgrades };
    let io = TokioIo::new(Timed::new(io, activity.clone(), limits.header_read_timeout, limits.body_timeout));
    let proxy = proxy.clone();
    let requests = activity.clone();
    let service = service_fn(move |request| {
        let (proxy, in_flight) = (proxy.clone(), requests.request());
        let (activity, connection) = (requests.clone(), connection.clone());
        async move {
            // boxed per request: hyper keeps a box the size of this future
            // for the whole life of every connection, idle ones included
            let response = Box::pin(proxy.handle(request, connection)).await;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                activity.upgraded();
            }
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
        }
    });
    // over TLS, ALPN decided: a client that named h2 cannot speak HTTP/1
    let result = match protocol {
        Protocol::Http2 => {
            let served = serving.http2.serve_connection(io, service);
            drive(served, &activity, limits.idle_timeout, closing, killing).await
        }
        Protocol::Http1 | Protocol::Either => {
            let served = serving.http.serve_connection_with_upgrades(io, service);
            drive(served, &activity, limits.idle_timeout, closing, killing).await
        }
    };
    if let Some(Err(error)) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A served connection that can be asked to finish gracefully: hyper's
/// HTTP/2-only and auto-detecting connections are different types.
trait Served: Future<Output = Result<(), BoxError>> {
    fn finish(self: Pin<&mut Self>);
}

impl<I, S, B> Served for auto::Connection<'_, I, S, TokioExecutor>
where
    Self: Future<Output = Result<(), BoxError>>,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    I: Read + Write + Unpin + 'static,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> Served for auto::UpgradeableConnection<'_, I, S, TokioExecutor>
where
    Self: Future<Output = Result<(), BoxError>>,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
    I: Read + Write + Unpin + Send + 'static,
    TokioExecutor: Http2ServerConnExec<S::Future, B>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs a connection until it ends, finishing it gracefully when it goes
/// idle or the gateway shuts down, and dropping it when the grace is over
/// (`None`).
async fn drive<C: Served>(
    served: C,
    activity: &Activity,
    idle_timeout: Duration,
    closing: CancellationToken,
    killing: CancellationToken,
) -> Option<Result<(), BoxError>> {
    tokio::pin!(served);
    let mut idle_check = tokio::time::interval(idle_timeout / 4);
    let mut finishing = false;
    loop {
        tokio::select! {
            result = served.as_mut() => return Some(result),
            () = killing.cancelled() => return None,
            () = closing.cancelled(), if !finishing => {
                finishing = true;
                served.as_mut().finish();
            }
            _ = idle_check.tick(), if !finishing => {
                if activity.idle_for(idle_timeout) {
                    finishing = true;
                    served.as_mut().finish();
                }
            }
        }
    }
}

/// Stand-alone check of what `bind` would load, without binding.
pub(crate) fn preflight(config: &Config) -> Result<(), ConfigError> {
    tls::server_config(config)?;
    crate::control::preflight(config)
}
