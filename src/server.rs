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
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, Limits};
use crate::connection::{Activity, Timed, Tracked, Upgrades};
use crate::control::Control;
use crate::proxy::{Connection, Proxy, SharedProxy};
use crate::tls::{self, ClientCert};

const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
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
    connections: Arc<Semaphore>,
    /// Stops the key refresh loops when the gateway is dropped.
    _background: DropGuard,
}

/// What every connection task needs.
struct Shared {
    tls: Option<TlsAcceptor>,
    proxy: SharedProxy,
    http: auto::Builder<TokioExecutor>,
    limits: Limits,
}

impl Gateway {
    /// Loads TLS material, binds the listener and starts fetching keys.
    pub async fn bind(config: &Config) -> Result<Gateway, StartError> {
        let tls = tls::server_config(config)?.map(TlsAcceptor::from);
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
        let background = CancellationToken::new();
        let (_control, state) = Control::start(config, background.clone())?;
        let limits = config.server.limits.clone();
        let shared = Shared { tls, proxy: Arc::new(Proxy { state }), http: http_builder(&limits), limits };
        Ok(Gateway {
            listener,
            connections: Arc::new(Semaphore::new(shared.limits.max_connections)),
            shared: Arc::new(shared),
            _background: background.drop_guard(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then stops accepting and lets
    /// in-flight requests finish (up to 30 s).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let tasks = TaskTracker::new();
        let closing = CancellationToken::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                            tracing::warn!(%peer, "max_connections reached: connection closed");
                            continue;
                        };
                        let accepted = Accepted { peer, slot: Arc::new(permit), tasks: tasks.clone(), closing: closing.clone() };
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
        tracing::info!(connections = tasks.len(), "shutting down: draining connections");
        closing.cancel();
        tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await.is_err() {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
        }
    }
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

/// A connection just accepted, and what it answers to.
struct Accepted {
    peer: SocketAddr,
    /// Its `max_connections` slot, held by whatever serves it.
    slot: Arc<OwnedSemaphorePermit>,
    tasks: TaskTracker,
    closing: CancellationToken,
}

async fn serve_connection(stream: TcpStream, accepted: Accepted, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = &shared.tls else {
        return serve_http(stream, false, None, accepted, &shared).await;
    };
    let peer = accepted.peer;
    match tokio::time::timeout(shared.limits.tls_handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let session = stream.get_ref().1;
            let http2 = session.alpn_protocol() == Some(b"h2");
            let client_cert = tls::client_cert(session).map(Arc::new);
            serve_http(stream, http2, client_cert, accepted, &shared).await
        }
        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// Serves HTTP on an established connection until it ends, goes idle for
/// `idle_timeout`, or the gateway shuts down (then in-flight requests finish).
async fn serve_http<IO>(io: IO, http2: bool, client_cert: Option<Arc<ClientCert>>, accepted: Accepted, shared: &Shared)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Accepted { peer, slot, tasks, closing } = accepted;
    let activity = Activity::new(http2);
    let limits = &shared.limits;
    let upgrades = Upgrades { tasks, slot, activity: activity.clone(), idle_timeout: limits.idle_timeout };
    let connection = Connection { peer, tls: shared.tls.is_some(), client_cert, upgrades };
    let io = TokioIo::new(Timed::new(io, activity.clone(), limits.header_read_timeout));
    let proxy = shared.proxy.clone();
    let requests = activity.clone();
    let service = service_fn(move |request| {
        let (proxy, in_flight) = (proxy.clone(), requests.request());
        let (activity, connection) = (requests.clone(), connection.clone());
        async move {
            let response = proxy.handle(request, connection).await;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                activity.upgraded();
            }
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
        }
    });
    let served = shared.http.serve_connection_with_upgrades(io, service);
    tokio::pin!(served);
    let mut idle_check = tokio::time::interval(limits.idle_timeout / 4);
    let mut closing_down = false;
    let result = loop {
        tokio::select! {
            result = served.as_mut() => break result,
            () = closing.cancelled(), if !closing_down => {
                closing_down = true;
                served.as_mut().graceful_shutdown();
            }
            _ = idle_check.tick(), if !closing_down => {
                if activity.idle_for(limits.idle_timeout) {
                    closing_down = true;
                    served.as_mut().graceful_shutdown();
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// Stand-alone check of what `bind` would load, without binding.
pub(crate) fn preflight(config: &Config) -> Result<(), ConfigError> {
    tls::server_config(config)?;
    crate::control::preflight(config)
}
