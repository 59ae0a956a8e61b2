//! A whole stack per test, in-process on 127.0.0.1 ephemeral ports: an
//! identity provider serving a real JWKS, an echo upstream that reports
//! what it received, and the gateway in front with a certificate made now.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis::dev::{EchoUpstream, IdentityProvider, SigningKey, now};
use portcullis::{Config, Gateway, Reloader};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, DropGuard};

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "orders";

/// The routes most tests use; `{upstream}` is the echo server.
pub const ROUTES: &str = r#"
[[routes]]
name = "orders"
path = "/orders"
upstream = "{upstream}"
auth = "required"
inject_headers = { "x-user-id" = "sub", "x-user-roles" = "roles" }

[[routes]]
name = "admin"
path = "/admin"
upstream = "{upstream}"
auth = "required"
require_claims = { roles = ["admin"] }
inject_headers = { "x-user-id" = "sub" }

[[routes]]
name = "maybe"
path = "/maybe"
upstream = "{upstream}"
auth = "optional"
inject_headers = { "x-user-id" = "sub" }

[[routes]]
name = "public"
path = "/public"
upstream = "{upstream}"
auth = "public"
"#;

/// What to change from the defaults.
pub struct Options {
    pub routes: String,
    pub refresh_interval: &'static str,
    pub refetch_cooldown: &'static str,
    /// More keys for the default `[[providers]]` entry.
    pub provider: String,
    /// Replaces the whole providers part; `{jwks_url}` and `{issuer}` are
    /// the identity provider's.
    pub providers: Option<String>,
    /// More keys for `[server]`.
    pub server: String,
    pub tls: bool,
    /// An admin listener on a free port.
    pub admin: bool,
    /// More tables, after the routes (`[revocation]`, say).
    pub tables: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            routes: ROUTES.to_owned(),
            refresh_interval: "1h",
            refetch_cooldown: "10s",
            provider: String::new(),
            providers: None,
            server: String::new(),
            tls: true,
            admin: false,
            tables: String::new(),
        }
    }
}

impl Options {
    pub fn routes(routes: &str) -> Options {
        Options { routes: routes.to_owned(), ..Options::default() }
    }

    pub fn provider(extra: &str) -> Options {
        Options { provider: extra.to_owned(), ..Options::default() }
    }

    pub fn providers(providers: &str) -> Options {
        Options { providers: Some(providers.to_owned()), ..Options::default() }
    }

    /// The whole config text: `[server]` on `listen` with `tls`'s files,
    /// then providers and routes for `idp` and `upstream`.
    fn render(&self, listen: &str, tls: (&PathBuf, &PathBuf), idp: &IdentityProvider, upstream: &str) -> String {
        let (cert, key) = tls;
        let tls = if self.tls { format!("tls_cert = {cert:?}\ntls_key = {key:?}\n") } else { String::new() };
        let admin = if self.admin { "[admin]\nlisten = \"127.0.0.1:0\"\n" } else { "" };
        format!("[server]\nlisten = \"{listen}\"\n{tls}\n{}\n{admin}{}", self.server, self.text(idp, upstream))
    }

    /// The config text for `idp` and `upstream`, without `[server]`.
    fn text(&self, idp: &IdentityProvider, upstream: &str) -> String {
        let providers = match &self.providers {
            Some(providers) => providers.clone(),
            None => format!(
                r#"
[[providers]]
name = "idp"
issuer = "{{issuer}}"
jwks_url = "{{jwks_url}}"
audiences = ["{AUDIENCE}", "other"]
refresh_interval = "{}"
refetch_cooldown = "{}"
{}
"#,
                self.refresh_interval, self.refetch_cooldown, self.provider
            ),
        };
        let providers = providers.replace("{jwks_url}", &idp.jwks_url()).replace("{issuer}", idp.issuer());
        format!("{providers}\n{}\n{}", self.routes.replace("{upstream}", upstream), self.tables)
    }
}

pub struct Stack {
    pub addr: SocketAddr,
    pub idp: IdentityProvider,
    pub key: Arc<SigningKey>,
    pub echo: EchoUpstream,
    pub cert: PathBuf,
    /// The TLS key of `cert`.
    pub private: PathBuf,
    /// The config file the gateway was started from (and watches).
    pub config_path: PathBuf,
    pub reloader: Reloader,
    /// Cancel to shut the gateway down; `served` then ends.
    pub stop: CancellationToken,
    pub served: tokio::task::JoinHandle<()>,
    /// The admin listener's address, when `Options::admin` asked for one.
    pub admin: Option<SocketAddr>,
    tls: bool,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    pub dir: tempfile::TempDir,
    _stop: DropGuard,
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::with(Options::default()).await
    }

    pub async fn with(options: Options) -> Stack {
        let key = Arc::new(SigningKey::generate("k1"));
        let idp = IdentityProvider::start(ISSUER, AUDIENCE, key.clone()).await.unwrap();
        Stack::with_idp(options, idp, key).await
    }

    /// A stack around an identity provider the test has prepared.
    pub async fn with_idp(options: Options, idp: IdentityProvider, key: Arc<SigningKey>) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let (cert, private) = portcullis::dev::write_self_signed_certificate(dir.path()).unwrap();
        let echo = EchoUpstream::start().await.unwrap();
        let text = options.render("127.0.0.1:0", (&cert, &private), &idp, &echo.url());
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, &text).unwrap();
        let config = Config::load(&config_path).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let gateway = Gateway::bind(&config).await.unwrap_or_else(|e| panic!("{e}"));
        let addr = gateway.local_addr();
        let reloader = gateway.reloader();
        let admin = gateway.admin_addr();
        let stop = CancellationToken::new();
        let served = tokio::spawn(gateway.serve(stop.clone().cancelled_owned()));
        let client = client(&cert, Version::HTTP_11);
        Stack {
            addr,
            idp,
            key,
            echo,
            cert,
            private,
            config_path,
            reloader,
            stop: stop.clone(),
            served,
            admin,
            tls: options.tls,
            client,
            dir,
            _stop: stop.drop_guard(),
        }
    }

    /// The config text `options` make for this stack (same address, TLS
    /// files, identity provider and upstream).
    pub fn render(&self, options: &Options) -> String {
        options.render(&self.addr.to_string(), (&self.cert, &self.private), &self.idp, &self.echo.url())
    }

    /// Replaces the config file in one step (write, then rename), as
    /// editors and config management do.
    pub fn write_config(&self, text: &str) {
        let staged = self.dir.path().join("portcullis.toml.new");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, &self.config_path).unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://localhost:{}{path}", self.addr.port())
    }

    /// Claims that pass every check; `changes` overrides or (with null) removes some.
    pub fn claims(&self, changes: Value) -> Value {
        let mut claims = json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "roles": ["admin", "ops"],
            "iat": now(),
            "exp": now() + 3600,
        });
        for (name, value) in changes.as_object().unwrap() {
            match value {
                Value::Null => claims.as_object_mut().unwrap().remove(name),
                value => claims.as_object_mut().unwrap().insert(name.clone(), value.clone()),
            };
        }
        claims
    }

    /// A valid token, changed as asked, signed with the published key.
    pub fn token(&self, changes: Value) -> String {
        self.key.sign(&self.claims(changes))
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers, Bytes::new()).await
    }

    pub async fn get_with_token(&self, path: &str, token: &str) -> Reply {
        self.get(path, &[("authorization", &format!("Bearer {token}"))]).await
    }

    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> Reply {
        let mut request = Request::builder().method(method).uri(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        send(&self.client, request.body(Full::new(body)).unwrap()).await
    }

    /// Writes `head` (CRLF line ends added) over TLS, as a client would
    /// send it byte for byte, and returns the whole raw response.
    pub async fn raw(&self, head: &[&str]) -> String {
        let mut text = head.join("\r\n");
        text.push_str("\r\n\r\n");
        self.raw_bytes(text.as_bytes()).await
    }

    /// Sends exactly `bytes` over TLS and returns all the gateway answers
    /// until it closes the connection (or 5 s pass).
    pub async fn raw_bytes(&self, bytes: &[u8]) -> String {
        let mut tls = self.connect().await;
        tls.write_all(bytes).await.unwrap();
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut response)).await;
        String::from_utf8_lossy(&response).into_owned()
    }

    /// A TLS connection to the gateway speaking HTTP/1.1, for raw tests.
    pub async fn connect(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        tls_connect(&self.cert, tcp).await.unwrap()
    }

    /// The `Host` header for raw requests.
    pub fn host(&self) -> String {
        format!("Host: localhost:{}", self.addr.port())
    }
}

pub struct Reply {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header as the echo upstream received it (a list if sent more than once).
    pub fn upstream_header(&self, name: &str) -> Option<Value> {
        self.json()["headers"].get(name).cloned()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

pub fn client<B>(root: &PathBuf, version: Version) -> Client<HttpsConnector<HttpConnector>, B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_config(root)).https_or_http();
    let connector =
        if version == Version::HTTP_2 { builder.enable_http2().build() } else { builder.enable_http1().build() };
    Client::builder(TokioExecutor::new()).http2_only(version == Version::HTTP_2).build(connector)
}

pub async fn send(client: &Client<HttpsConnector<HttpConnector>, Full<Bytes>>, request: Request<Full<Bytes>>) -> Reply {
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("the gateway answers in time")
        .expect("the gateway answers");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn tls_config(root: &PathBuf) -> rustls::ClientConfig {
    trusting(&[&std::fs::read_to_string(root).unwrap()])
}

/// A TLS client config trusting only the PEM certificates in `roots`.
pub fn trusting(roots: &[&str]) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        store.add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth()
}

/// A request in flight: a POST to `path` with a valid token whose body has
/// begun and is finished (or dropped) by the caller, and its response.
pub async fn request_in_flight(
    stack: &Stack,
    path: &str,
) -> (
    http_body_util::channel::Sender<Bytes>,
    tokio::task::JoinHandle<Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>>,
) {
    let client = client::<http_body_util::channel::Channel<Bytes>>(&stack.cert, Version::HTTP_11);
    let (mut body, request_body) = http_body_util::channel::Channel::<Bytes>::new(1);
    let token = stack.token(json!({}));
    let request =
        Request::post(stack.url(path)).header("authorization", format!("Bearer {token}")).body(request_body).unwrap();
    let response = tokio::spawn(client.request(request));
    body.send_data(Bytes::from_static(b"first")).await.unwrap();
    // the gateway has it once the upstream is being sent to
    tokio::time::sleep(Duration::from_millis(200)).await;
    (body, response)
}

/// A TLS handshake over `tcp`, offering HTTP/1.1.
pub async fn tls_connect(
    root: &PathBuf,
    tcp: TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_connector(root).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// A raw HTTP/2 connection (the h2 crate, which sends what it is given).
pub async fn h2_connect(stack: &Stack) -> h2::client::SendRequest<Bytes> {
    let mut config = tls_config(&stack.cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(stack.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// A TLS connector for raw HTTP/1.1 bytes.
fn tls_connector(root: &PathBuf) -> tokio_rustls::TlsConnector {
    let mut config = tls_config(root);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Polls `check` until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Builds a token by hand: any header, any payload, any signature.
pub fn forge(header: Value, claims: &Value, signature: &str) -> String {
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.{signature}", b64(&header), b64(claims))
}

/// A plaintext request to the admin listener: status and body.
pub async fn admin_request(addr: SocketAddr, method: Method, path: &str) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = Request::builder().method(method).uri(format!("http://{addr}{path}")).body(Empty::new()).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(request)).await.unwrap().unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A POST to the admin listener with `headers` and a body: status and body.
pub async fn admin_post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder().method(Method::POST).uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request)).await.unwrap().unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    admin_request(addr, Method::GET, path).await
}

/// The value of one series in a Prometheus text exposition (0 if absent).
pub fn metric(exposition: &str, series: &str) -> f64 {
    exposition.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// What the gateway logs on this thread (a `#[tokio::test]` runs the whole
/// stack on one), as JSON events, until the guard is dropped.
#[derive(Clone, Default)]
pub struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// The access-log events so far.
    pub fn access(&self) -> Vec<Value> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        let events = text.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok());
        events.filter(|event| event["target"] == "portcullis::access").collect()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
