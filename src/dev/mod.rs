//! `portcullis dev`: a self-contained demo on loopback, like `vault server -dev`.
//!
//! It starts an identity provider and an echo upstream in-process, makes a
//! TLS certificate, and runs the gateway on `config/dev.toml` (embedded),
//! an ordinary config file in which it only fills in those addresses. So
//! what a user sees here is what the same config does in production. The
//! tests use the same identity provider and upstream.

mod echo;
mod idp;

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use echo::EchoUpstream;
pub use idp::{IdentityProvider, SigningKey, now};

use crate::config::Config;
use crate::server::{Gateway, StartError};

/// The dev config, as shipped in `config/dev.toml`.
pub const DEV_CONFIG: &str = include_str!("../../config/dev.toml");
const DEV_CONFIG_ORIGIN: &str = "config/dev.toml (embedded)";

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("dev mode listens on loopback only, not {0}")]
    NotLoopback(SocketAddr),
    #[error("dev setup failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the demo until `shutdown` completes. `listen` overrides the dev
/// config's address (tests pass `127.0.0.1:0`).
pub async fn run(
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DevError> {
    let dir = tempfile::Builder::new().prefix("portcullis-dev-").tempdir()?;
    let (cert, key) = write_self_signed_certificate(dir.path())?;
    let echo = EchoUpstream::start().await?;
    let idp_listener = TcpListener::bind("127.0.0.1:0").await?;
    let jwks_url = format!("http://{}/.well-known/jwks.json", idp_listener.local_addr()?);

    let text = Config::rewrite(DEV_CONFIG, DEV_CONFIG_ORIGIN, |file| {
        if let Some(listen) = listen {
            file.server.listen = Some(listen.to_string());
        }
        if let (Some(admin), Some(listen)) = (&mut file.admin, admin_listen) {
            admin.listen = listen.to_string();
        }
        file.server.tls_cert = Some(cert.clone());
        file.server.tls_key = Some(key.clone());
        for provider in &mut file.providers {
            provider.jwks_url = Some(jwks_url.clone());
        }
        for route in &mut file.routes {
            route.upstream = echo.url();
        }
    })
    .map_err(StartError::from)?;
    // an ordinary config file from here on: watched, reloadable, explainable
    let config_path = dir.path().join("portcullis.toml");
    std::fs::write(
        &config_path,
        format!("# portcullis dev: {DEV_CONFIG_ORIGIN} with the addresses made at start\n{text}"),
    )?;
    let config = Config::load(&config_path).map_err(StartError::from)?;
    let addresses = std::iter::once(config.server.listen).chain(config.admin.as_ref().map(|admin| admin.listen));
    if let Some(exposed) = addresses.into_iter().find(|addr| !addr.ip().is_loopback()) {
        return Err(DevError::NotLoopback(exposed));
    }
    let provider = &config.providers[0];
    let idp = IdentityProvider::serve(
        idp_listener,
        &provider.issuer,
        &provider.audiences[0],
        Arc::new(SigningKey::generate("dev-key-1")),
    );
    let gateway = Gateway::bind(&config).await?;
    let base = format!("https://{}", gateway.local_addr());
    let made = Made { base, cert, config: config_path, admin: gateway.admin_addr() };
    print_instructions(&made, &idp, &echo)?;
    gateway.serve(shutdown).await;
    Ok(())
}

/// `portcullis demo idp`: an identity provider for demos (compose), not
/// for production: it mints a token for whoever asks at `/token`.
pub async fn demo_idp(
    listen: SocketAddr,
    issuer: &str,
    audience: &str,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let public_url = issuer.starts_with("http").then(|| issuer.trim_end_matches('/'));
    let signer = Arc::new(SigningKey::generate("demo-key-1"));
    let idp = IdentityProvider::serve_at(listener, public_url, issuer, audience, signer);
    tracing::info!(addr = %idp.addr(), issuer, jwks_url = %idp.jwks_url(), "demo identity provider: GET /token?sub=alice&roles=admin");
    shutdown.await;
    Ok(())
}

/// `portcullis demo echo`: an upstream that answers with the request it got.
pub async fn demo_echo(listen: SocketAddr, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let echo = EchoUpstream::serve(TcpListener::bind(listen).await?)?;
    tracing::info!(url = %echo.url(), "demo echo upstream");
    shutdown.await;
    Ok(())
}

/// What dev mode made at start.
struct Made {
    /// The gateway's `https://` address.
    base: String,
    cert: PathBuf,
    config: PathBuf,
    admin: Option<SocketAddr>,
}

fn print_instructions(made: &Made, idp: &IdentityProvider, echo: &EchoUpstream) -> std::io::Result<()> {
    let base = &made.base;
    let token = idp.token("alice", &["admin"], Duration::from_secs(3600));
    let curl = format!("curl -si --cacert {}", made.cert.display());
    let bearer = "-H \"Authorization: Bearer $TOKEN\"";
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# Portcullis dev mode: gateway {base}, identity provider http://{}, echo upstream {}",
        idp.addr(),
        echo.url()
    )?;
    writeln!(out, "# Paste these lines into a shell (Ctrl-C here stops the gateway):")?;
    writeln!(out, "export TOKEN={token}")?;
    writeln!(out, "{curl} {base}/api/hello    # 401: no token")?;
    writeln!(out, "{curl} {bearer} {base}/api/hello    # 200: the echo shows x-user-id: alice")?;
    writeln!(
        out,
        "{curl} {bearer} -H \"X-User-Id: mallory\" {base}/api/hello    # 200: a spoofed X-User-Id is replaced by alice"
    )?;
    writeln!(out, "{curl} {bearer} {base}/admin/stats    # 200: alice has the admin role")?;
    writeln!(
        out,
        "{curl} -H \"Authorization: Bearer $(curl -s 'http://{}/token?sub=bob')\" {base}/admin/stats    # 403: bob lacks it",
        idp.addr()
    )?;
    writeln!(out, "{curl} {base}/public/ping    # 200: a public route, no token needed")?;
    let exe = std::env::current_exe().map_or_else(|_| "portcullis".into(), |exe| exe.display().to_string());
    let config = made.config.display();
    writeln!(
        out,
        "{exe} explain --config {config} GET {base}/admin/stats --token \"$(curl -s 'http://{}/token?sub=bob')\"    # why bob gets 403",
        idp.addr()
    )?;
    if let Some(admin) = made.admin {
        writeln!(out, "curl -s http://{admin}/readyz    # the admin listener: also /healthz, /metrics, /config")?;
    }
    out.flush()
}

/// Writes a fresh self-signed certificate for `localhost` and `127.0.0.1`
/// into `dir`, returning the certificate and key paths.
pub fn write_self_signed_certificate(dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let certified = rcgen::generate_simple_self_signed(names).map_err(std::io::Error::other)?;
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    Ok((cert, key))
}

/// A plain HTTP server for the dev services, stopped (connections too) by `stop`.
async fn serve_http<F, Fut>(listener: TcpListener, stop: CancellationToken, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            () = stop.cancelled() => return,
        };
        let (handler, stop) = (handler.clone(), stop.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = handler(request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            tokio::select! {
                _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
