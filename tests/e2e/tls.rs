//! Certificates by SNI, and client certificates: verified, required per
//! route, and passed on as headers.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;

use crate::support::{self, Options, Stack};

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

/// A self-signed certificate for `names`; returns (cert path, key path, cert PEM).
fn certificate(dir: &Path, file: &str, names: &[&str]) -> (String, String, String) {
    let certified =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let pem = certified.cert.pem();
    let cert = write(dir, &format!("{file}.crt"), &pem);
    let key = write(dir, &format!("{file}.key"), &certified.signing_key.serialize_pem());
    (cert, key, pem)
}

/// A TLS handshake naming `name`, trusting `roots`; true if it succeeds.
async fn handshake(stack: &Stack, name: &str, roots: &[&str]) -> bool {
    let tcp = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(support::trusting(roots)));
    connector.connect(ServerName::try_from(name.to_owned()).unwrap(), tcp).await.is_ok()
}

#[tokio::test]
async fn certificates_are_chosen_by_the_name_a_client_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key, a_pem) = certificate(dir.path(), "a", &["a.test"]);
    let (b_cert, b_key, b_pem) = certificate(dir.path(), "b", &["*.b.test"]);
    let server = format!(
        "[[server.certificates]]\ntls_cert = {a_cert:?}\ntls_key = {a_key:?}\nnames = [\"a.test\"]\n\
         [[server.certificates]]\ntls_cert = {b_cert:?}\ntls_key = {b_key:?}\nnames = [\"*.b.test\"]\n"
    );
    let stack = Stack::with(Options { server, ..Options::default() }).await;
    let default_pem = std::fs::read_to_string(&stack.cert).unwrap();
    let roots = [a_pem.as_str(), b_pem.as_str(), default_pem.as_str()];
    assert!(handshake(&stack, "a.test", &roots).await, "exact name");
    assert!(handshake(&stack, "A.TEST", &roots).await, "names are case-insensitive");
    assert!(handshake(&stack, "x.b.test", &roots).await, "wildcard");
    assert!(handshake(&stack, "localhost", &roots).await, "unknown names get the default");
    // the default certificate does not name these, so the client refuses it
    assert!(!handshake(&stack, "y.x.b.test", &roots).await, "a wildcard covers one label only");
    assert!(!handshake(&stack, "c.test", &roots).await);
}

/// A CA, and a client certificate it issued with a DNS and a URI name.
struct ClientPki {
    ca_pem: String,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: String,
}

fn client_pki() -> ClientPki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Test Client CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["client.test".to_owned()]).unwrap();
    params.subject_alt_names.push(SanType::URI("spiffe://test/orders".try_into().unwrap()));
    params.distinguished_name.push(DnType::CommonName, "orders-service");
    let cert = params.signed_by(&key, &ca).unwrap();
    ClientPki { ca_pem: ca.pem(), client_chain: vec![cert.der().clone()], client_key: key.serialize_pem() }
}

/// An HTTP/1.1 client that presents `identity` (chain, key PEM) if given.
fn client(
    root: &Path,
    identity: Option<(&[CertificateDer<'static>], &str)>,
) -> Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(root).unwrap()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.to_vec(), PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only().enable_http1().build();
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn mtls_stack(pki: &ClientPki, client_auth: &str) -> (Stack, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "client-ca.pem", &pki.ca_pem);
    let server = format!("client_ca = {ca:?}\nclient_auth = \"{client_auth}\"\n");
    let routes = r#"
[[routes]]
name = "mtls"
path = "/mtls"
upstream = "{upstream}"
auth = "public"
require_client_cert = true
inject_client_cert = { "x-client-subject" = "subject", "x-client-sans" = "sans", "x-client-sha256" = "sha256" }

[[routes]]
name = "open"
path = "/"
upstream = "{upstream}"
auth = "public"
inject_client_cert = { "x-client-subject" = "subject" }
"#;
    (Stack::with(Options { server, ..Options::routes(routes) }).await, dir)
}

async fn get(
    client: &Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>,
    url: String,
    headers: &[(&str, &str)],
) -> support::Reply {
    let mut request = Request::get(url).version(Version::HTTP_11);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    support::send(client, request.body(Full::new(Bytes::new())).unwrap()).await
}

#[tokio::test]
async fn client_certificates_are_verified_required_and_passed_on() {
    let pki = client_pki();
    let (stack, _dir) = mtls_stack(&pki, "optional").await;
    let with_cert = client(&stack.cert, Some((&pki.client_chain, &pki.client_key)));
    let reply = get(&with_cert, stack.url("/mtls"), &[("x-client-subject", "CN=admin")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream_header("x-client-subject"), Some(json!("CN=orders-service")));
    assert_eq!(reply.upstream_header("x-client-sans"), Some(json!("DNS:client.test,URI:spiffe://test/orders")));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &pki.client_chain[0]);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(reply.upstream_header("x-client-sha256"), Some(json!(hex)));

    let without = client(&stack.cert, None);
    let reply = get(&without, stack.url("/mtls"), &[]).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["error"], "client_cert_required");
    let reply =
        get(&without, stack.url("/open"), &[("x-client-subject", "CN=admin"), ("X_Client_Subject", "CN=admin")]).await;
    assert_eq!(reply.status, 200, "optional: no certificate is fine on other routes");
    assert_eq!(reply.upstream_header("x-client-subject"), None, "a spoofed subject never passes");
    assert_eq!(reply.upstream_header("x_client_subject"), None);
    assert_eq!(stack.echo.requests(), 2);
}

#[tokio::test]
async fn required_client_certificates_are_checked_in_the_handshake() {
    let pki = client_pki();
    let (stack, _dir) = mtls_stack(&pki, "required").await;
    let with_cert = client(&stack.cert, Some((&pki.client_chain, &pki.client_key)));
    assert_eq!(get(&with_cert, stack.url("/open"), &[]).await.status, 200);

    let request = || Request::get(stack.url("/open")).body(Full::new(Bytes::new())).unwrap();
    assert!(client(&stack.cert, None).request(request()).await.is_err(), "no certificate, no connection");
    let stranger = client_pki();
    let impostor = client(&stack.cert, Some((&stranger.client_chain, &stranger.client_key)));
    assert!(impostor.request(request()).await.is_err(), "a certificate from another CA");
    assert_eq!(stack.echo.requests(), 1);
}
