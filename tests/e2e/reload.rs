//! Reloading without a restart: the config file and TLS certificates are
//! watched; a good change is swapped in under load without failing a
//! request, a bad one is refused while the old config keeps serving.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use portcullis::dev::{IdentityProvider, SigningKey, now};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::support::{self, AUDIENCE, ISSUER, Options, ROUTES, Stack, eventually};

const WITHIN: Duration = Duration::from_secs(5);
const WATCH: &str = "watch_interval = \"100ms\"\n";

fn watched(routes: &str) -> Options {
    Options { routes: routes.to_owned(), server: WATCH.to_owned(), ..Options::default() }
}

fn public_route(name: &str, path: &str) -> String {
    format!("\n[[routes]]\nname = \"{name}\"\npath = \"{path}\"\nupstream = \"{{upstream}}\"\nauth = \"public\"\n")
}

/// Requests `/orders` with `token` until `stop`; returns how many were
/// answered 200 and every other status seen.
async fn keep_requesting(stack: Arc<Stack>, token: String, stop: CancellationToken) -> (usize, Vec<u16>) {
    let (mut ok, mut failed) = (0, Vec::new());
    while !stop.is_cancelled() {
        match stack.get_with_token("/orders/1", &token).await.status {
            200 => ok += 1,
            status => failed.push(status),
        }
    }
    (ok, failed)
}

#[tokio::test]
async fn config_changes_are_swapped_in_under_load_without_failing_a_request() {
    let stack = Arc::new(Stack::with(watched(ROUTES)).await);
    let token = stack.token(json!({}));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    let fetches = stack.idp.fetches();
    let stop = CancellationToken::new();
    let load: Vec<_> =
        (0..4).map(|_| tokio::spawn(keep_requesting(stack.clone(), token.clone(), stop.clone()))).collect();

    // a route added
    let with_extra = format!("{ROUTES}{}", public_route("extra", "/extra"));
    assert_eq!(stack.get("/extra", &[]).await.status, 404);
    stack.write_config(&stack.render(&watched(&with_extra)));
    assert!(eventually(WITHIN, || async { stack.get("/extra", &[]).await.status == 200 }).await, "route added");

    // a bad file is refused and the running config keeps serving
    stack.write_config("[server]\nlisten = 42\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.get("/extra", &[]).await.status, 200, "a bad file replaced the running config");
    let error = stack.reloader.reload().await.expect_err("a reload of a bad file fails");
    assert!(error.to_string().contains("portcullis.toml:2: server.listen:"), "{error}");

    // the route removed
    stack.write_config(&stack.render(&watched(ROUTES)));
    assert!(eventually(WITHIN, || async { stack.get("/extra", &[]).await.status == 404 }).await, "route removed");

    // a provider added: its tokens are accepted once its keys are in
    let key = Arc::new(SigningKey::generate("second-1"));
    let second = IdentityProvider::start("https://second.test", AUDIENCE, key.clone()).await.unwrap();
    let token2 = key.sign(&json!({"iss": "https://second.test", "aud": AUDIENCE, "sub": "bob", "exp": now() + 600}));
    assert_eq!(stack.get_with_token("/orders", &token2).await.status, 401);
    let provider = format!(
        "\n[[providers]]\nname = \"second\"\nissuer = \"https://second.test\"\njwks_url = \"{}\"\naudiences = [\"{AUDIENCE}\"]\n",
        second.jwks_url()
    );
    stack.write_config(&stack.render(&watched(&format!("{ROUTES}{provider}"))));
    let accepted = || async { stack.get_with_token("/orders", &token2).await.status == 200 };
    assert!(eventually(WITHIN, accepted).await, "provider added");

    stop.cancel();
    for task in load {
        let (ok, failed) = task.await.unwrap();
        assert!(ok > 0 && failed.is_empty(), "{ok} requests passed, these failed: {failed:?}");
    }
    assert_eq!(stack.idp.fetches(), fetches, "the unchanged provider was carried over with its keys");
}

#[tokio::test]
async fn a_changed_provider_is_replaced_and_fetches_its_keys_again() {
    let stack = Stack::with(watched(ROUTES)).await;
    let token = stack.token(json!({}));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    let fetches = stack.idp.fetches();
    let options = Options { provider: "leeway = \"5s\"".into(), ..watched(ROUTES) };
    stack.write_config(&stack.render(&options));
    assert!(eventually(WITHIN, || async { stack.idp.fetches() > fetches }).await, "the new provider fetched");
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);

    let options = Options { providers: Some(other_audience()), ..watched(ROUTES) };
    stack.write_config(&stack.render(&options));
    let refused = || async { stack.get_with_token("/orders", &token).await.status == 401 };
    assert!(eventually(WITHIN, refused).await, "the provider's new audience applies");
}

#[tokio::test]
async fn a_reload_that_failed_for_a_missing_file_is_applied_once_the_file_appears() {
    let stack = Stack::with(Options { admin: true, ..watched(ROUTES) }).await;
    let (cert, key) = (stack.dir.path().join("next.crt"), stack.dir.path().join("next.key"));
    std::fs::copy(&stack.cert, &cert).unwrap();
    let server = format!("tls_cert = {cert:?}\ntls_key = {key:?}\n{WATCH}");
    let routes = format!("{ROUTES}{}", public_route("extra", "/extra"));
    stack.write_config(&stack.render(&Options { tls: false, server, admin: true, ..watched(&routes) }));
    let reloads = |result: &'static str| {
        let admin = stack.admin.unwrap();
        async move {
            let text = support::admin_get(admin, "/metrics").await.1;
            support::metric(&text, &format!("portcullis_config_reloads_total{{result=\"{result}\"}}"))
        }
    };
    assert!(eventually(WITHIN, || async { reloads("failure").await == 1.0 }).await, "the reload fails");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.get("/extra", &[]).await.status, 404, "the old config keeps serving");
    assert_eq!(reloads("failure").await, 1.0, "nothing changed, so nothing was retried");

    // the key arrives; the config file stays as it was
    std::fs::copy(&stack.private, &key).unwrap();
    let applied = || async { stack.get("/extra", &[]).await.status == 200 };
    assert!(eventually(WITHIN, applied).await, "the reload is retried once the key is there");
    assert_eq!(reloads("success").await, 1.0);
}

#[tokio::test]
async fn a_changed_provider_verifies_with_the_keys_it_had_while_its_identity_provider_is_down() {
    let stack = Stack::with(Options { admin: true, ..Options::default() }).await;
    let token = stack.token(json!({}));
    let just_expired = stack.token(json!({"exp": now() - 10}));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    assert_eq!(stack.get_with_token("/orders", &just_expired).await.status, 200, "within the 30s leeway");

    stack.idp.stop();
    stack.write_config(&stack.render(&Options {
        provider: "leeway = \"1s\"".into(),
        admin: true,
        ..Options::default()
    }));
    stack.reloader.reload().await.expect("the new config is good");
    assert_eq!(stack.get_with_token("/orders", &just_expired).await.status, 401, "the new leeway applies");
    let reply = stack.get_with_token("/orders", &token).await;
    assert_eq!(
        (reply.status, reply.upstream_header("x-user-id")),
        (200, Some(json!("alice"))),
        "the keys carried over"
    );
    let (status, body) = support::admin_get(stack.admin.unwrap(), "/readyz").await;
    assert_eq!(status, 200, "{body}");
}

fn other_audience() -> String {
    format!(
        "[[providers]]\nname = \"idp\"\nissuer = \"{ISSUER}\"\njwks_url = \"{{jwks_url}}\"\naudiences = [\"somebody-else\"]\n"
    )
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let stack = Stack::with(watched(ROUTES)).await;
    let token = stack.token(json!({}));
    let (mut body, response) = support::request_in_flight(&stack, "/orders/slow").await;

    stack.write_config(&stack.render(&watched(&public_route("only", "/public"))));
    assert!(eventually(WITHIN, || async { stack.get_with_token("/orders", &token).await.status == 404 }).await);

    body.send_data(Bytes::from_static(b"last")).await.unwrap();
    drop(body);
    let response = tokio::time::timeout(WITHIN, response).await.unwrap().unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let echoed: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echoed["headers"]["x-user-id"], "alice");
    assert_eq!(echoed["body_bytes"], 9);
}

/// A Kubernetes-style secret volume: `tls.crt` and `tls.key` link through
/// `..data`, which is swapped in one rename to a new version directory.
struct SecretVolume {
    dir: std::path::PathBuf,
    versions: usize,
}

impl SecretVolume {
    fn new(dir: &Path) -> SecretVolume {
        let dir = dir.join("secret");
        std::fs::create_dir(&dir).unwrap();
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        SecretVolume { dir, versions: 0 }
    }

    /// Publishes a new version holding `cert` and `key` (PEM).
    fn publish(&mut self, cert: &[u8], key: &[u8]) {
        self.versions += 1;
        let version = format!("..v{}", self.versions);
        std::fs::create_dir(self.dir.join(&version)).unwrap();
        std::fs::write(self.dir.join(&version).join("tls.crt"), cert).unwrap();
        std::fs::write(self.dir.join(&version).join("tls.key"), key).unwrap();
        let staged = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &staged).unwrap();
        std::fs::rename(&staged, self.dir.join("..data")).unwrap();
    }
}

/// A fresh self-signed certificate for localhost: (cert PEM, key PEM).
fn certificate() -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

/// A self-signed certificate for localhost that expired in 2021.
fn expired_certificate() -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// A self-signed certificate for localhost valid from `after` from now.
fn future_certificate(after: Duration) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + (since_epoch + after);
    let key = rcgen::KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// An HTTP/1.1 connection over TLS trusting `roots`, and the certificate
/// the gateway presented on it.
async fn connect(
    addr: std::net::SocketAddr,
    roots: &[&str],
) -> (hyper::client::conn::http1::SendRequest<Empty<Bytes>>, Vec<u8>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(support::trusting(roots)));
    let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    (sender, presented)
}

async fn get_public(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> u16 {
    let request = Request::get("/public/ping").header("host", "localhost").body(Empty::new()).unwrap();
    sender.send_request(request).await.unwrap().status().as_u16()
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// A watching stack serving the certificate in a secret volume under
/// `dir`: the volume, the stack and the certificate (PEM).
async fn serving_from_a_secret_volume(dir: &Path) -> (SecretVolume, Stack, String) {
    let mut volume = SecretVolume::new(dir);
    let (first, first_key) = certificate();
    volume.publish(first.as_bytes(), first_key.as_bytes());
    let files = format!("tls_cert = {:?}\ntls_key = {:?}\n", volume.dir.join("tls.crt"), volume.dir.join("tls.key"));
    let stack = Stack::with(Options { tls: false, server: format!("{files}{WATCH}"), ..Options::default() }).await;
    (volume, stack, first)
}

#[tokio::test]
async fn a_certificate_swapped_through_a_symlink_is_served_to_new_connections_only() {
    let dir = tempfile::tempdir().unwrap();
    let (mut volume, stack, first) = serving_from_a_secret_volume(dir.path()).await;
    let (second, second_key) = certificate();
    let roots = [first.as_str(), second.as_str()];

    let (mut old, presented) = connect(stack.addr, &roots).await;
    assert_eq!(presented, der(&first));
    assert_eq!(get_public(&mut old).await, 200);

    volume.publish(second.as_bytes(), second_key.as_bytes());
    let swapped = || async { connect(stack.addr, &roots).await.1 == der(&second) };
    assert!(eventually(WITHIN, swapped).await, "a new connection gets the new certificate");
    assert_eq!(get_public(&mut old).await, 200, "the old connection keeps working");

    // a broken certificate is refused, and so is an expired one; the last
    // good one stays
    let (expired, expired_key) = expired_certificate();
    for (cert, key) in
        [(b"not a certificate".as_slice(), second_key.as_bytes()), (expired.as_bytes(), expired_key.as_bytes())]
    {
        volume.publish(cert, key);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (mut new, presented) = connect(stack.addr, &roots).await;
        assert_eq!(presented, der(&second));
        assert_eq!(get_public(&mut new).await, 200);
    }
}

#[tokio::test]
async fn a_certificate_not_valid_yet_is_served_once_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let (mut volume, stack, first) = serving_from_a_secret_volume(dir.path()).await;
    let (next, next_key) = future_certificate(Duration::from_secs(2));
    let roots = [first.as_str(), next.as_str()];

    volume.publish(next.as_bytes(), next_key.as_bytes());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(connect(stack.addr, &roots).await.1, der(&first), "not valid yet: the old one stays");
    // no file changes from here: the failed load is retried as time passes
    let swapped = || async { connect(stack.addr, &roots).await.1 == der(&next) };
    assert!(eventually(WITHIN, swapped).await, "served once valid");
}
