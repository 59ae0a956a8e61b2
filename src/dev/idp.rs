//! A stand-in identity provider: RSA signing keys made at start, a JWKS
//! served over HTTP on loopback, and a `/token` endpoint that mints tokens.
//! Dev mode runs one; the tests run one each, and rotate its keys.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{json_response, serve_http};

/// An RS256 signing key and its public JWK.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
    public_pem: String,
}

impl SigningKey {
    /// A fresh RSA-2048 key.
    pub fn generate(kid: &str) -> SigningKey {
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("aws-lc-rs generates RSA-2048 keys");
        let private = pair.as_der().expect("a generated key serializes");
        let private = pem::encode(&pem::Pem::new("PRIVATE KEY", private.as_ref()));
        let encoding =
            EncodingKey::from_rsa_pem(private.as_bytes()).expect("a generated key is valid PEM");
        let public = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let spki: PublicKeyX509Der<'static> =
            pair.public_key().as_der().expect("a public key serializes");
        SigningKey {
            kid: kid.to_owned(),
            encoding,
            jwk: json!({
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(&public.n),
                "e": URL_SAFE_NO_PAD.encode(&public.e),
            }),
            public_pem: pem::encode(&pem::Pem::new("PUBLIC KEY", spki.as_ref())),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK, as a JWKS lists it.
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// The public key as SPKI PEM (what an attacker would try as an HMAC secret).
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// Signs `claims` as an RS256 JWT whose header names this key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        self.sign_with(&header, claims)
    }

    /// Signs `claims` under any header (tests forge some).
    pub fn sign_with(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).expect("signing with a valid key")
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    document: Mutex<Value>,
    fetches: AtomicUsize,
    stalled: AtomicBool,
}

impl IdentityProvider {
    /// Serves on `listener`, publishing `signer`'s key; tokens from
    /// `/token` carry `issuer` and `audience`.
    pub fn serve(
        listener: TcpListener,
        issuer: &str,
        audience: &str,
        signer: Arc<SigningKey>,
    ) -> IdentityProvider {
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Arc::new(Shared {
            document: Mutex::new(json!({"keys": [signer.jwk()]})),
            minter: Minter {
                issuer: issuer.to_owned(),
                audience: audience.to_owned(),
                signer,
            },
            fetches: AtomicUsize::new(0),
            stalled: AtomicBool::new(false),
        });
        let stop = CancellationToken::new();
        let handler_state = shared.clone();
        let handler = move |request| respond(handler_state.clone(), request);
        tokio::spawn(serve_http(listener, stop.clone(), handler));
        IdentityProvider { addr, shared, stop }
    }

    /// Binds a free loopback port and serves there.
    pub async fn start(
        issuer: &str,
        audience: &str,
        signer: Arc<SigningKey>,
    ) -> std::io::Result<IdentityProvider> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Ok(IdentityProvider::serve(listener, issuer, audience, signer))
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
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
            let document = shared
                .document
                .lock()
                .map(|d| d.clone())
                .unwrap_or_default();
            json_response(StatusCode::OK, &document)
        }
        "/token" => {
            let query = request.uri().query().unwrap_or_default();
            let token = shared.minter.token_for_query(query);
            let mut response = Response::new(Full::new(Bytes::from(token)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
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
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        };
        let sub = param("sub").filter(|s| !s.is_empty()).unwrap_or("alice");
        let roles: Vec<&str> = param("roles")
            .map(|r| r.split(',').filter(|r| !r.is_empty()).collect())
            .unwrap_or_default();
        self.token(sub, &roles, Duration::from_secs(3600))
    }
}
