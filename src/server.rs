//! The listener: accept loop, TLS handshake, HTTP/1.1 and HTTP/2 (by ALPN,
//! or by preface on plaintext), and graceful shutdown.
//!
//! Each connection runs in its own task, handshake included, so a slow
//! client never holds up the accept loop or anyone else. hyper's timer is
//! set, so header-read timeouts actually fire.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{Config, ConfigError};
use crate::control::Control;
use crate::proxy::{Connection, Proxy, SharedProxy};
use crate::tls;
use crate::upstream::UpstreamClient;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONCURRENT_STREAMS: u32 = 100;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

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
    tls: Option<TlsAcceptor>,
    proxy: SharedProxy,
    http: Arc<auto::Builder<TokioExecutor>>,
    /// Stops the key refresh loops when the gateway is dropped.
    _background: DropGuard,
}

impl Gateway {
    /// Loads TLS material, binds the listener and starts fetching keys.
    pub async fn bind(config: &Config) -> Result<Gateway, StartError> {
        let tls = tls::server_config(config)?.map(TlsAcceptor::from);
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
        let background = CancellationToken::new();
        let (_control, state) = Control::start(config, background.clone())?;
        let proxy = Arc::new(Proxy { state, upstream: UpstreamClient::new() });
        Ok(Gateway { listener, tls, proxy, http: Arc::new(http_builder()), _background: background.drop_guard() })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then stops accepting and lets
    /// in-flight requests finish (up to 30 s).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let connection = Connection { peer, tls: self.tls.is_some() };
                        tokio::spawn(serve_connection(
                            stream, connection, self.tls.clone(), self.proxy.clone(), self.http.clone(), graceful.watcher(),
                        ));
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
        tracing::info!(connections = graceful.count(), "shutting down: draining connections");
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
        }
    }
}

fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    builder
}

async fn serve_connection(
    stream: TcpStream,
    connection: Connection,
    tls: Option<TlsAcceptor>,
    proxy: SharedProxy,
    http: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(request, connection).await) }
    });
    let result = match tls {
        None => watcher.watch(http.serve_connection_with_upgrades(TokioIo::new(stream), service)).await,
        Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => watcher.watch(http.serve_connection_with_upgrades(TokioIo::new(stream), service)).await,
            Ok(Err(error)) => {
                return tracing::debug!(peer = %connection.peer, %error, "TLS handshake failed");
            }
            Err(_) => {
                return tracing::debug!(peer = %connection.peer, "TLS handshake timed out");
            }
        },
    };
    if let Err(error) = result {
        tracing::debug!(peer = %connection.peer, %error, "connection ended with an error");
    }
}

/// Stand-alone check of what `bind` would load, without binding.
pub(crate) fn preflight(config: &Config) -> Result<(), ConfigError> {
    tls::server_config(config)?;
    crate::control::preflight(config)
}
