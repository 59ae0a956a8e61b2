//! Upstreams over https (system roots or a private CA) and over HTTP/2.

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

use crate::support::{Options, Stack};

/// An https upstream (h1 and h2 by ALPN) whose certificate a private CA
/// issued; it answers with the HTTP version it was spoken to in. Returns
/// its URL and the CA's PEM.
async fn https_upstream() -> (String, String) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                    let seen = json!({"version": format!("{:?}", request.version()), "path": request.uri().path()});
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(seen.to_string()))))
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (url, ca.pem())
}

fn route_to(upstream: &str, extra: &str) -> Options {
    Options::routes(&format!(
        "[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"{upstream}\"\nauth = \"public\"\n{extra}\n"
    ))
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_named_ca() {
    let (url, ca) = https_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, ca).unwrap();

    let trusting =
        Stack::with(route_to(&url, &format!("upstream_ca_file = {:?}", ca_file.display().to_string()))).await;
    let reply = trusting.get("/x", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"version": "HTTP/1.1", "path": "/x"}));

    let system_roots = Stack::with(route_to(&url, "")).await;
    assert_eq!(system_roots.get("/x", &[]).await.status, 502, "a private CA is not in the system roots");

    let http2 = format!("upstream_ca_file = {:?}\nupstream_protocol = \"http2\"", ca_file.display().to_string());
    let over_h2 = Stack::with(route_to(&url, &http2)).await;
    assert_eq!(over_h2.get("/x", &[]).await.json()["version"], "HTTP/2.0");
}

#[tokio::test]
async fn cleartext_upstreams_can_speak_http2_with_prior_knowledge() {
    let stack = Stack::with(route_to("{upstream}", "upstream_protocol = \"http2\"")).await;
    let reply = stack.get("/x", &[("x-kept", "1")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["version"], "HTTP/2.0");
    assert_eq!(reply.upstream_header("x-kept"), Some(json!("1")));
    assert_eq!(reply.upstream_header("host"), None, "no Host beside :authority on HTTP/2");
    assert_eq!(reply.upstream_header("x-forwarded-host"), Some(json!(format!("localhost:{}", stack.addr.port()))));
}
