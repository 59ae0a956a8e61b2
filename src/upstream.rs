//! The pooled client that carries requests to upstreams.
//!
//! One client per kind of upstream (its CA and protocol), shared by every
//! route of that kind, so connections are reused across requests and
//! routes. Bodies stream through in both directions; the request body goes
//! through `RequestBody`, which enforces the route's limits.

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{BodyError, RequestBody};
use crate::config::{Upstream, UpstreamProtocol};
use crate::error;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("the request body sent nothing for {0:?}")]
    BodyStalled(Duration),
    #[error("the client aborted the request body")]
    BodyAborted,
}

impl UpstreamError {
    /// The upstream's failure, not the client's (a body it sent wrong).
    pub(crate) fn is_upstream_fault(&self) -> bool {
        matches!(self, UpstreamError::Unreachable(_) | UpstreamError::Timeout(_))
    }

    pub(crate) fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::Timeout(_))
    }

    /// Tells the client's own faults (found while streaming its body) from
    /// the upstream's.
    fn from_client_error(error: &hyper_util::client::legacy::Error) -> UpstreamError {
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            if let Some(body) = cause.downcast_ref::<BodyError>() {
                return match body {
                    BodyError::TooLarge(limit) => UpstreamError::BodyTooLarge(*limit),
                    BodyError::Stalled(after) => UpstreamError::BodyStalled(*after),
                    BodyError::Client(_) => UpstreamError::BodyAborted,
                };
            }
            source = cause.source();
        }
        UpstreamError::Unreachable(error::chain(error))
    }
}

pub(crate) struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, RequestBody>,
}

impl UpstreamClient {
    /// A pooled client speaking `protocol`, trusting `ca_file` alone for
    /// https upstreams when given, else the system's roots.
    pub(crate) fn new(ca_file: Option<&Path>, protocol: UpstreamProtocol) -> Result<UpstreamClient, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_client_config(ca_file)?).https_or_http();
        let connector = match protocol {
            UpstreamProtocol::Http1 => https.enable_http1().wrap_connector(http),
            UpstreamProtocol::Http2 => https.enable_http2().wrap_connector(http),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(protocol == UpstreamProtocol::Http2)
            .build(connector);
        Ok(UpstreamClient { client })
    }

    /// Sends `request` and waits for the response head at most `timeout`.
    pub(crate) async fn forward(
        &self,
        request: Request<RequestBody>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(UpstreamError::from_client_error(&error)),
            Err(_) => Err(UpstreamError::Timeout(timeout)),
        }
    }
}

/// The upstream URI for a request: base URL + path + query as sent.
pub(crate) fn target(upstream: &Upstream, path: &str, query: Option<&str>) -> Option<Uri> {
    let mut path_and_query =
        String::with_capacity(upstream.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1));
    path_and_query.push_str(&upstream.base_path);
    path_and_query.push_str(path);
    if let Some(query) = query {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(PathAndQuery::try_from(path_and_query).ok()?)
        .build()
        .ok()
}

/// The roots for `https://` upstreams, through the one crypto provider.
fn tls_client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions");
    if let Some(path) = ca_file {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no PEM certificate in it", path.display()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        return Ok(builder.with_root_certificates(roots).with_no_client_auth());
    }
    match builder.clone().with_native_roots() {
        Ok(roots) => Ok(roots.with_no_client_auth()),
        Err(error) => {
            tracing::warn!(%error, "no system CA certificates: https upstreams cannot be verified");
            Ok(builder.with_root_certificates(rustls::RootCertStore::empty()).with_no_client_auth())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_path_and_query_to_the_base() {
        let upstream = |base: &str| Upstream {
            scheme: http::uri::Scheme::HTTP,
            authority: "orders:8080".parse().unwrap(),
            base_path: base.to_owned(),
        };
        let with_query = target(&upstream(""), "/orders/1", Some("x=1")).unwrap();
        assert_eq!(with_query, "http://orders:8080/orders/1?x=1");
        let with_base = target(&upstream("/api"), "/orders", None).unwrap();
        assert_eq!(with_base, "http://orders:8080/api/orders");
        let empty_query = target(&upstream(""), "/", Some("")).unwrap();
        assert_eq!(empty_query, "http://orders:8080/?");
    }
}
