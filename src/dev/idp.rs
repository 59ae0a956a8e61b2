//! A stand-in identity provider: RSA signing keys made at start, a JWKS
//! served over HTTP on loopback, and a `/token` endpoint that mints tokens.
//! Dev mode runs one; the tests run one each, and rotate its keys.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{json_response, serve_http};

/// A signing key of any JOSE algorithm, with its public JWK.
pub struct SigningKey {
    kid: Option<String>,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    public_pem: Option<String>,
}

impl SigningKey {
    /// A fresh RSA-2048 key for RS256.
    pub fn generate(kid: &str) -> SigningKey {
        SigningKey::generate_for(Algorithm::RS256, kid)
    }

    /// A fresh key for `algorithm`: RSA-2048 for RS*/PS*, P-256 or P-384
    /// for ES256/384, Ed25519 for EdDSA, 48 random bytes for HS*.
    pub fn generate_for(algorithm: Algorithm, kid: &str) -> SigningKey {
        let (encoding, public_der) = match algorithm.family() {
            AlgorithmFamily::Rsa => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("aws-lc-rs generates RSA keys");
                let private = pair.as_der().expect("a generated key serializes");
                let private = pem::encode(&pem::Pem::new("PRIVATE KEY", private.as_ref()));
                let encoding = EncodingKey::from_rsa_pem(private.as_bytes()).expect("a generated key is valid");
                let public: PublicKeyX509Der<'static> = pair.public_key().as_der().expect("serializes");
                (encoding, Some(public.as_ref().to_vec()))
            }
            AlgorithmFamily::Ec => {
                let curve = if algorithm == Algorithm::ES384 {
                    &ECDSA_P384_SHA384_FIXED_SIGNING
                } else {
                    &ECDSA_P256_SHA256_FIXED_SIGNING
                };
                let pair = EcdsaKeyPair::generate(curve).expect("aws-lc-rs generates EC keys");
                let private = pair.to_pkcs8v1().expect("a generated key serializes");
                let public: PublicKeyX509Der<'static> = pair.public_key().as_der().expect("serializes");
                (EncodingKey::from_ec_der(private.as_ref()), Some(public.as_ref().to_vec()))
            }
            AlgorithmFamily::Ed => {
                let pair = Ed25519KeyPair::generate().expect("aws-lc-rs generates Ed25519 keys");
                let private = pair.to_pkcs8v1().expect("a generated key serializes");
                let public: PublicKeyX509Der<'static> = pair.public_key().as_der().expect("serializes");
                (EncodingKey::from_ed_der(private.as_ref()), Some(public.as_ref().to_vec()))
            }
            AlgorithmFamily::Hmac => {
                let secret: Vec<u8> = std::iter::repeat_with(|| fastrand::alphanumeric() as u8).take(48).collect();
                (EncodingKey::from_secret(&secret), None)
            }
        };
        SigningKey::with(Some(kid), algorithm, encoding, public_der)
    }

    /// An HMAC key from a shared secret; its tokens carry no `kid`, as
    /// Django REST framework's simplejwt makes them.
    pub fn from_secret(algorithm: Algorithm, secret: &[u8]) -> SigningKey {
        SigningKey::with(None, algorithm, EncodingKey::from_secret(secret), None)
    }

    fn with(kid: Option<&str>, algorithm: Algorithm, encoding: EncodingKey, public_der: Option<Vec<u8>>) -> SigningKey {
        let jwk = Jwk::from_encoding_key(&encoding, algorithm).expect("a generated key has a JWK");
        let mut jwk = serde_json::to_value(jwk).expect("a JWK serializes");
        jwk["use"] = json!("sig");
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        SigningKey {
            kid: kid.map(str::to_owned),
            algorithm,
            encoding,
            jwk,
            public_pem: public_der.map(|der| pem::encode(&pem::Pem::new("PUBLIC KEY", der))),
        }
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The key as a JWK, as a JWKS lists it (for HS* keys: with the secret).
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// The public key as SPKI PEM; `None` for HMAC keys.
    pub fn public_pem(&self) -> Option<&str> {
        self.public_pem.as_deref()
    }

    /// Signs `claims` with this key's algorithm, naming its `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = self.kid.clone();
        self.sign_with(&header, claims)
    }

    /// Signs a header and payload given as raw JSON text, byte for byte
    /// (tests forge what serializers would never write).
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding, self.algorithm)
            .expect("signing with a valid key");
        format!("{message}.{signature}")
    }

    /// Signs `claims` under any header (tests forge some).
    pub fn sign_with(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).expect("signing with a valid key")
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A running identity provider.
pub struct IdentityProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

/// What the server task and the handle share.
struct Shared {
    minter: Minter,
    jwks_url: String,
    document: Mutex<Value>,
    fetches: AtomicUsize,
    stalled: AtomicBool,
    /// What discovery names as `jwks_uri`, when not our own.
    advertised_jwks_uri: Mutex<Option<String>>,
    /// How the JWKS endpoint misbehaves, when a test asks it to.
    status: AtomicU16,
    delay_ms: AtomicU64,
    headers: Mutex<Vec<(HeaderName, HeaderValue)>>,
}

impl IdentityProvider {
    /// Serves on `listener`, publishing `signer`'s key; tokens from
    /// `/token` carry `issuer` and `audience`.
    pub fn serve(listener: TcpListener, issuer: &str, audience: &str, signer: Arc<SigningKey>) -> IdentityProvider {
        IdentityProvider::serve_at(listener, None, issuer, audience, signer)
    }

    /// Like `serve`, for clients that reach it at `public_url` (say, a
    /// container name) rather than at the address it listens on.
    pub fn serve_at(
        listener: TcpListener,
        public_url: Option<&str>,
        issuer: &str,
        audience: &str,
        signer: Arc<SigningKey>,
    ) -> IdentityProvider {
        let addr = listener.local_addr().expect("a bound listener has an address");
        let shared = Arc::new(Shared {
            document: Mutex::new(json!({"keys": [signer.jwk()]})),
            minter: Minter { issuer: issuer.to_owned(), audience: audience.to_owned(), signer },
            jwks_url: format!("{}/.well-known/jwks.json", public_url.unwrap_or(&format!("http://{addr}"))),
            fetches: AtomicUsize::new(0),
            stalled: AtomicBool::new(false),
            advertised_jwks_uri: Mutex::default(),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            headers: Mutex::default(),
        });
        let stop = CancellationToken::new();
        let handler_state = shared.clone();
        let handler = move |request| respond(handler_state.clone(), request);
        tokio::spawn(serve_http(listener, stop.clone(), handler));
        IdentityProvider { addr, shared, stop }
    }

    /// Binds a free loopback port and serves there.
    pub async fn start(issuer: &str, audience: &str, signer: Arc<SigningKey>) -> std::io::Result<IdentityProvider> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Ok(IdentityProvider::serve(listener, issuer, audience, signer))
    }

    /// Binds a free loopback port and serves there with its own URL as
    /// issuer, as OpenID Connect discovery requires.
    pub async fn start_with_url_issuer(audience: &str, signer: Arc<SigningKey>) -> std::io::Result<IdentityProvider> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let issuer = format!("http://{}", listener.local_addr()?);
        Ok(IdentityProvider::serve(listener, &issuer, audience, signer))
    }

    pub fn jwks_url(&self) -> String {
        self.shared.jwks_url.clone()
    }

    pub fn issuer(&self) -> &str {
        &self.shared.minter.issuer
    }

    /// Discovery names `url` as the `jwks_uri` from now on (the set moved).
    pub fn advertise_jwks_uri(&self, url: &str) {
        if let Ok(mut advertised) = self.shared.advertised_jwks_uri.lock() {
            *advertised = Some(url.to_owned());
        }
    }

    /// The JWKS endpoint answers with `status` from now on.
    pub fn respond_with(&self, status: StatusCode) {
        self.shared.status.store(status.as_u16(), Ordering::SeqCst);
    }

    /// The JWKS endpoint answers only after `delay` from now on.
    pub fn delay(&self, delay: Duration) {
        self.shared.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Adds a header to the JWKS endpoint's answers (`Cache-Control`, say).
    pub fn add_header(&self, name: &str, value: &str) {
        let header = (HeaderName::try_from(name), HeaderValue::try_from(value));
        if let ((Ok(name), Ok(value)), Ok(mut headers)) = (header, self.shared.headers.lock()) {
            headers.push((name, value));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the served JWKS with these keys.
    pub fn publish(&self, keys: &[&SigningKey]) {
        self.publish_document(json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}));
    }

    /// Replaces the served JWKS document with anything at all.
    pub fn publish_document(&self, document: Value) {
        if let Ok(mut current) = self.shared.document.lock() {
            *current = document;
        }
    }

    /// While stalled, JWKS requests are accepted and never answered.
    pub fn stall(&self, stalled: bool) {
        self.shared.stalled.store(stalled, Ordering::SeqCst);
    }

    /// How many times the JWKS was asked for.
    pub fn fetches(&self) -> usize {
        self.shared.fetches.load(Ordering::SeqCst)
    }

    /// A token for `sub` with `roles`, valid for `lifetime`.
    pub fn token(&self, sub: &str, roles: &[&str], lifetime: Duration) -> String {
        self.shared.minter.token(sub, roles, lifetime)
    }

    /// Stops serving and drops every open connection.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn respond(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/.well-known/jwks.json" => {
            shared.fetches.fetch_add(1, Ordering::SeqCst);
            if shared.stalled.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            // everything is decided on arrival, so a test's change applies
            // to whole requests, never half of one
            let delay = Duration::from_millis(shared.delay_ms.load(Ordering::SeqCst));
            let status = StatusCode::from_u16(shared.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
            let document = shared.document.lock().map(|d| d.clone()).unwrap_or_default();
            let mut response = json_response(status, &document);
            for (name, value) in shared.headers.lock().map(|h| h.clone()).unwrap_or_default() {
                response.headers_mut().append(name, value);
            }
            tokio::time::sleep(delay).await;
            response
        }
        "/.well-known/openid-configuration" => {
            let advertised = shared.advertised_jwks_uri.lock().ok().and_then(|a| a.clone());
            let jwks_uri = advertised.unwrap_or_else(|| shared.jwks_url.clone());
            json_response(StatusCode::OK, &json!({"issuer": shared.minter.issuer, "jwks_uri": jwks_uri}))
        }
        "/token" => {
            let query = request.uri().query().unwrap_or_default();
            let token = shared.minter.token_for_query(query);
            let mut response = Response::new(Full::new(Bytes::from(token)));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            response
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"})),
    }
}

struct Minter {
    issuer: String,
    audience: String,
    signer: Arc<SigningKey>,
}

impl Minter {
    fn token(&self, sub: &str, roles: &[&str], lifetime: Duration) -> String {
        let now = now();
        self.signer.sign(&json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "roles": roles,
            "iat": now,
            "exp": now + lifetime.as_secs(),
        }))
    }

    /// `/token?sub=bob&roles=a,b`: a one-hour token; no roles unless asked.
    fn token_for_query(&self, query: &str) -> String {
        let param = |name: &str| query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='));
        let sub = param("sub").filter(|s| !s.is_empty()).unwrap_or("alice");
        let roles: Vec<&str> =
            param("roles").map(|r| r.split(',').filter(|r| !r.is_empty()).collect()).unwrap_or_default();
        self.token(sub, &roles, Duration::from_secs(3600))
    }
}
