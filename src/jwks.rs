//! Fetching and parsing a provider's JSON Web Key Set.
//!
//! Keys are parsed one by one: a key we cannot use (another type, an
//! encryption key, a short modulus) is skipped with a warning and never
//! costs the others. Each usable key is compiled here, once, with the
//! algorithm it is pinned to and the `Validation` that goes with it, so the
//! request path only looks a key up.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::ProviderConfig;

/// The only algorithm accepted so far; pinned per key, never read from a token.
const ALGORITHM: Algorithm = Algorithm::RS256;
const MIN_RSA_BITS: usize = 2048;
/// Larger documents are refused: no identity provider publishes that many keys.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A verified-to-be-usable key with everything needed to check a token.
pub(crate) struct VerifyingKey {
    pub(crate) kid: Option<String>,
    pub(crate) decoding: DecodingKey,
    pub(crate) validation: Validation,
}

/// One provider's usable keys, as of one fetch.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<VerifyingKey>,
    by_kid: HashMap<String, usize>,
    /// `None` until the first good fetch: the provider's routes deny until then.
    pub(crate) fetched_at: Option<SystemTime>,
}

impl KeySet {
    pub(crate) fn is_loaded(&self) -> bool {
        self.fetched_at.is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key for a token's `kid`; a token without one may only use a set
    /// holding exactly one key, so there is never a guess between keys.
    pub(crate) fn find(&self, kid: Option<&str>) -> Option<&VerifyingKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid).map(|&i| &self.keys[i]),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }

    pub(crate) fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("(no kid)"))
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum JwksError {
    #[error("request failed")]
    Http(#[from] reqwest::Error),
    #[error("answered {0}")]
    Status(http::StatusCode),
    #[error("document is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("not a JWKS document")]
    Json(#[from] serde_json::Error),
    #[error("no usable key in the set")]
    NoUsableKey,
}

/// The HTTP client for key fetches: bounded in time, and redirects may not
/// leave the host we were told to trust, nor drop from https to http.
pub(crate) fn http_client() -> reqwest::Client {
    let same_host = reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.stop();
        };
        let next = attempt.url();
        let downgrade = first.scheme() == "https" && next.scheme() != "https";
        if attempt.previous().len() > 3 || next.host_str() != first.host_str() || downgrade {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .redirect(same_host)
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the TLS backend and resolver are built in")
}

/// Fetches and parses the provider's key set.
pub(crate) async fn fetch(
    client: &reqwest::Client,
    provider: &ProviderConfig,
) -> Result<KeySet, JwksError> {
    let mut response = client
        .get(provider.jwks_url.clone())
        .header(header::ACCEPT, "application/jwk-set+json, application/json")
        .send()
        .await?;
    if !response.status().is_success() {
        return Err(JwksError::Status(response.status()));
    }
    if response
        .content_length()
        .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
    {
        return Err(JwksError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    parse(&body, provider)
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// The members of a JWK we read; anything else is ignored (RFC 7517 §4).
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

pub(crate) fn parse(body: &[u8], provider: &ProviderConfig) -> Result<KeySet, JwksError> {
    let document: Document = serde_json::from_slice(body)?;
    let mut set = KeySet::default();
    for value in document.keys {
        let kid = value
            .get("kid")
            .and_then(|k| k.as_str())
            .unwrap_or("(no kid)")
            .to_owned();
        match verifying_key(value, provider) {
            Ok(key)
                if key
                    .kid
                    .as_ref()
                    .is_some_and(|kid| set.by_kid.contains_key(kid)) =>
            {
                tracing::warn!(provider = %provider.name, kid, "duplicate kid in JWKS: the first one is kept");
            }
            Ok(key) => {
                if let Some(kid) = &key.kid {
                    set.by_kid.insert(kid.clone(), set.keys.len());
                }
                set.keys.push(key);
            }
            Err(reason) => {
                tracing::warn!(provider = %provider.name, kid, reason, "JWKS key skipped")
            }
        }
    }
    if set.keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    set.fetched_at = Some(SystemTime::now());
    Ok(set)
}

fn verifying_key(
    value: serde_json::Value,
    provider: &ProviderConfig,
) -> Result<VerifyingKey, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("malformed key: {e}"))?;
    if jwk.usage.as_deref().is_some_and(|usage| usage != "sig") {
        return Err("not a signing key (use is not \"sig\")".into());
    }
    if jwk.kty != "RSA" {
        return Err(format!("key type {:?} is not supported", jwk.kty));
    }
    if jwk.alg.as_deref().is_some_and(|alg| alg != "RS256") {
        return Err(format!(
            "algorithm {:?} is not accepted",
            jwk.alg.unwrap_or_default()
        ));
    }
    let (Some(n), Some(e)) = (jwk.n, jwk.e) else {
        return Err("RSA key without n or e".into());
    };
    let modulus = URL_SAFE_NO_PAD
        .decode(&n)
        .map_err(|_| "n is not base64url")?;
    let bits = modulus.iter().skip_while(|&&b| b == 0).count() * 8;
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA modulus of {bits} bits is under {MIN_RSA_BITS}"
        ));
    }
    let decoding =
        DecodingKey::from_rsa_components(&n, &e).map_err(|e| format!("unusable RSA key: {e}"))?;
    Ok(VerifyingKey {
        kid: jwk.kid,
        decoding,
        validation: validation(ALGORITHM, provider),
    })
}

/// What every token of this provider must satisfy beyond its signature.
fn validation(algorithm: Algorithm, provider: &ProviderConfig) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.set_issuer(&[&provider.issuer]);
    validation.set_audience(&provider.audiences);
    validation.validate_nbf = true;
    validation.leeway = provider.leeway.as_secs();
    validation
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn provider() -> ProviderConfig {
        crate::config::Config::parse(
            r#"
            [[providers]]
            name = "idp"
            issuer = "https://idp.test"
            jwks_url = "https://idp.test/jwks"
            audiences = ["api"]
            [[routes]]
            name = "r"
            path = "/"
            upstream = "http://127.0.0.1:1"
            "#,
            "test.toml",
        )
        .unwrap()
        .providers
        .remove(0)
    }

    fn with(mut jwk: serde_json::Value, member: &str, value: &str) -> serde_json::Value {
        jwk[member] = json!(value);
        jwk
    }

    fn rsa_jwk(kid: &str, bytes: usize) -> serde_json::Value {
        let mut modulus = vec![0xC5u8; bytes];
        modulus[bytes - 1] = 0x01;
        json!({"kty": "RSA", "kid": kid, "n": URL_SAFE_NO_PAD.encode(modulus), "e": "AQAB"})
    }

    #[test]
    fn skips_unusable_keys_and_keeps_the_rest() {
        let document = json!({"keys": [
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            rsa_jwk("short", 128),
            with(rsa_jwk("enc", 256), "use", "enc"),
            with(rsa_jwk("hs", 256), "alg", "HS256"),
            with(rsa_jwk("rs512", 256), "alg", "RS512"),
            with(with(rsa_jwk("sig", 256), "use", "sig"), "alg", "RS256"),
            {"kty": "RSA", "kid": "broken"},
            "not even an object",
            rsa_jwk("good", 256),
        ]});
        let set = parse(document.to_string().as_bytes(), &provider()).unwrap();
        assert_eq!(set.kids().collect::<Vec<_>>(), ["sig", "good"]);
        assert!(set.find(Some("good")).is_some());
        assert!(set.find(Some("short")).is_none());
    }

    #[test]
    fn a_kidless_token_may_use_a_lone_key() {
        let document = json!({"keys": [rsa_jwk("only", 256)]});
        let set = parse(document.to_string().as_bytes(), &provider()).unwrap();
        assert!(set.find(None).is_some());
    }

    #[test]
    fn a_kidless_token_never_guesses_between_keys() {
        let document = json!({"keys": [rsa_jwk("a", 256), rsa_jwk("b", 256)]});
        let set = parse(document.to_string().as_bytes(), &provider()).unwrap();
        assert!(set.find(None).is_none());
    }

    #[test]
    fn refuses_documents_without_usable_keys() {
        for body in [
            r#"{"keys": []}"#,
            r#"{"keys": [{"kty": "oct", "k": "AA"}]}"#,
            "[]",
            "<html>",
        ] {
            assert!(parse(body.as_bytes(), &provider()).is_err(), "{body}");
        }
    }

    fn provider_at(jwks_url: &str) -> ProviderConfig {
        ProviderConfig {
            jwks_url: jwks_url.parse().unwrap(),
            ..provider()
        }
    }

    /// An HTTP server on 127.0.0.1 answering each request head with
    /// `respond(port, head)` and closing the connection.
    async fn serve(respond: impl Fn(u16, &str) -> Vec<u8> + Send + Sync + 'static) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let respond = std::sync::Arc::new(respond);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let respond = respond.clone();
                tokio::spawn(async move {
                    let (mut buf, mut head) = (vec![0u8; 8192], Vec::new());
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let reply = respond(port, &String::from_utf8_lossy(&head));
                    let _ = stream.write_all(&reply).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn a_streamed_document_over_the_cap_is_refused() {
        let body =
            json!({"keys": [rsa_jwk("k", 256)], "pad": "x".repeat(MAX_JWKS_BYTES)}).to_string();
        let port = serve(move |_, _| {
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
            let mut reply = format!("{head}{:x}\r\n", body.len()).into_bytes();
            reply.extend_from_slice(body.as_bytes());
            reply.extend_from_slice(b"\r\n0\r\n\r\n");
            reply
        })
        .await;
        let provider = provider_at(&format!("http://127.0.0.1:{port}/jwks"));
        let result = fetch(&http_client(), &provider).await;
        assert!(
            matches!(result, Err(JwksError::TooLarge)),
            "{:?}",
            result.err()
        );
    }

    #[tokio::test]
    async fn redirects_may_not_leave_the_jwks_host() {
        let jwks = json!({"keys": [rsa_jwk("k", 256)]}).to_string();
        let port = serve(move |port, head| {
            let to = |host: &str| {
                format!("HTTP/1.1 302 Found\r\nlocation: http://{host}:{port}/jwks\r\ncontent-length: 0\r\n\r\n")
            };
            let reply = if head.starts_with("GET /same ") {
                to("127.0.0.1")
            } else if head.starts_with("GET /other ") {
                to("localhost")
            } else {
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{jwks}", jwks.len())
            };
            reply.into_bytes()
        })
        .await;
        let client = http_client();
        let at = |path: &str| provider_at(&format!("http://127.0.0.1:{port}{path}"));
        assert!(
            fetch(&client, &at("/same")).await.is_ok(),
            "a same-host redirect is followed"
        );
        assert!(
            fetch(&client, &at("/other")).await.is_err(),
            "a cross-host redirect is not"
        );
    }
}
