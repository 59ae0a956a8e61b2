//! Key sets fetched over HTTP: from `jwks_url`, or from the `jwks_uri` that
//! OpenID Connect discovery names. Each fetch is bounded in time and size,
//! follows redirects only within the same host and never from https to
//! http, and reads how long the set stays fresh from `Cache-Control` or
//! `Expires`, clamped to `[min_refresh, max_refresh]`.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::{ACCEPT, AGE, CACHE_CONTROL, DATE, EXPIRES};
use reqwest::Url;
use serde::Deserialize;

use super::at;
use crate::config::{RemoteKeys, RemoteLocation};

/// One good response.
pub(crate) struct Fetched {
    pub(crate) body: Vec<u8>,
    pub(crate) lifetime: Duration,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("request failed")]
    Http(#[from] reqwest::Error),
    #[error("{0} answered {1}")]
    Status(Url, http::StatusCode),
    #[error("{0} sent more than {1} bytes")]
    TooLarge(Url, u64),
    #[error("discovery: {0}")]
    Discovery(String),
}

pub(crate) struct Fetcher {
    client: reqwest::Client,
    remote: RemoteKeys,
    issuer: String,
    /// The `jwks_uri` discovery found, until failures make us look again.
    discovered: Option<Url>,
}

impl Fetcher {
    pub(crate) fn new(remote: &RemoteKeys, issuer: &str) -> Result<Fetcher, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(remote.fetch_timeout)
            .redirect(same_host_redirects())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &remote.ca_file {
            let pem = std::fs::read(path).map_err(|e| at(path, e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| at(path, format!("not a PEM certificate bundle: {e}")))?;
            if certs.is_empty() {
                return Err(at(path, "no PEM certificate in it"));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Fetcher { client, remote: remote.clone(), issuer: issuer.to_owned(), discovered: None })
    }

    /// Fetches the key set document.
    pub(crate) async fn fetch(&mut self) -> Result<Fetched, FetchError> {
        let url = match &self.remote.location {
            RemoteLocation::JwksUrl(url) => url.clone(),
            RemoteLocation::Discovery(configuration) => match &self.discovered {
                Some(url) => url.clone(),
                None => {
                    let url = self.discover(configuration).await?;
                    self.discovered = Some(url.clone());
                    url
                }
            },
        };
        let (body, headers) = self.get(&url, "application/jwk-set+json, application/json").await?;
        Ok(Fetched { body, lifetime: self.lifetime(&headers) })
    }

    /// Makes the next fetch run discovery again (the `jwks_uri` may have moved).
    pub(crate) fn rediscover(&mut self) {
        self.discovered = None;
    }

    async fn discover(&self, configuration: &Url) -> Result<Url, FetchError> {
        #[derive(Deserialize)]
        struct Configuration {
            issuer: String,
            jwks_uri: String,
        }
        let (body, _) = self.get(configuration, "application/json").await?;
        let document: Configuration = serde_json::from_slice(&body)
            .map_err(|e| FetchError::Discovery(format!("not an OpenID configuration: {e}")))?;
        if document.issuer != self.issuer {
            return Err(FetchError::Discovery(format!(
                "the document names issuer {:?}, not {:?}",
                document.issuer, self.issuer
            )));
        }
        let jwks_uri =
            Url::parse(&document.jwks_uri).map_err(|e| FetchError::Discovery(format!("jwks_uri is not a URL: {e}")))?;
        if is_downgrade(configuration, &jwks_uri) || !matches!(jwks_uri.scheme(), "https" | "http") {
            return Err(FetchError::Discovery(format!("jwks_uri {jwks_uri} is not https")));
        }
        Ok(jwks_uri)
    }

    async fn get(&self, url: &Url, accept: &str) -> Result<(Vec<u8>, HeaderMap), FetchError> {
        let mut response = self.client.get(url.clone()).header(ACCEPT, accept).send().await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(url.clone(), response.status()));
        }
        let limit = self.remote.max_size;
        let too_large = || FetchError::TooLarge(url.clone(), limit);
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, response.headers().clone()))
    }

    /// How long a response stays fresh: its `Cache-Control`/`Expires`,
    /// clamped, or `refresh_interval` when it says nothing.
    fn lifetime(&self, headers: &HeaderMap) -> Duration {
        match freshness(headers) {
            Some(lifetime) => lifetime.clamp(self.remote.min_refresh, self.remote.max_refresh),
            None => self.remote.refresh_interval,
        }
    }
}

/// Freshness lifetime per RFC 9111 §4.2.1: `max-age` (`no-store` and
/// `no-cache` count as zero) before `Expires` minus `Date`.
fn freshness(headers: &HeaderMap) -> Option<Duration> {
    let directives = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|directive| directive.trim().to_ascii_lowercase());
    let mut max_age = None;
    for directive in directives {
        match directive.split_once('=') {
            Some(("max-age", seconds)) => {
                let seconds = seconds.trim_matches('"').parse::<u64>().ok()?;
                max_age = Some(max_age.map_or(seconds, |age: u64| age.min(seconds)));
            }
            None if directive == "no-store" || directive == "no-cache" => max_age = Some(0),
            _ => {}
        }
    }
    if let Some(seconds) = max_age {
        // a cache on the way may have held the response for a while already
        let age = headers.get(AGE).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        return Some(Duration::from_secs(seconds.saturating_sub(age.unwrap_or(0))));
    }
    let date = |name| {
        let value = headers.get(name)?;
        Some(value.to_str().ok().and_then(|v| httpdate::parse_http_date(v).ok()))
    };
    // an Expires we cannot read means "already expired"
    let expires = date(EXPIRES)?.unwrap_or(SystemTime::UNIX_EPOCH);
    let now = date(DATE).flatten().unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(now).unwrap_or_default())
}

/// Going from `from` to `to` would lose TLS.
fn is_downgrade(from: &Url, to: &Url) -> bool {
    from.scheme() == "https" && to.scheme() != "https"
}

/// Redirects may not leave the host we were told to trust, nor drop from
/// https to http.
fn same_host_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.stop();
        };
        let next = attempt.url();
        if attempt.previous().len() > 3 || next.host_str() != first.host_str() || is_downgrade(first, next) {
            attempt.stop()
        } else {
            attempt.follow()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn reads_freshness_from_the_response() {
        let secs = |pairs: &[(&'static str, &str)]| freshness(&headers(pairs)).map(|d| d.as_secs());
        assert_eq!(secs(&[]), None);
        assert_eq!(secs(&[("cache-control", "public, max-age=600")]), Some(600));
        assert_eq!(secs(&[("cache-control", "max-age=\"60\", must-revalidate")]), Some(60));
        assert_eq!(secs(&[("cache-control", "no-cache")]), Some(0));
        assert_eq!(secs(&[("cache-control", "max-age=600"), ("age", "100")]), Some(500), "Age counts");
        assert_eq!(secs(&[("cache-control", "max-age=60"), ("age", "100")]), Some(0));
        assert_eq!(secs(&[("cache-control", "max-age=soon")]), None);
        let dated = [("date", "Sun, 22 Nov 2026 10:00:00 GMT"), ("expires", "Sun, 22 Nov 2026 10:30:00 GMT")];
        assert_eq!(secs(&dated), Some(1800));
        let both = [dated[0], dated[1], ("cache-control", "max-age=5")];
        assert_eq!(secs(&both), Some(5), "max-age wins over Expires");
        assert_eq!(secs(&[("expires", "0")]), Some(0), "an invalid Expires is already expired");
    }

    fn remote(url: &str) -> RemoteKeys {
        RemoteKeys {
            location: RemoteLocation::JwksUrl(url.parse().unwrap()),
            refresh_interval: Duration::from_secs(300),
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(5),
            max_size: 1024 * 1024,
            ca_file: None,
            max_stale: Duration::from_secs(86400),
            cache_dir: None,
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
        let body = format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
        let port = serve(move |_, _| {
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
            let mut reply = format!("{head}{:x}\r\n", body.len()).into_bytes();
            reply.extend_from_slice(body.as_bytes());
            reply.extend_from_slice(b"\r\n0\r\n\r\n");
            reply
        })
        .await;
        let mut fetcher = Fetcher::new(&remote(&format!("http://127.0.0.1:{port}/jwks")), "i").unwrap();
        let result = fetcher.fetch().await;
        assert!(matches!(result, Err(FetchError::TooLarge(..))), "{:?}", result.err());
    }

    #[tokio::test]
    async fn redirects_may_not_leave_the_host() {
        let port = serve(move |port, head| {
            let to = |host: &str| {
                format!("HTTP/1.1 302 Found\r\nlocation: http://{host}:{port}/jwks\r\ncontent-length: 0\r\n\r\n")
            };
            let reply = if head.starts_with("GET /same ") {
                to("127.0.0.1")
            } else if head.starts_with("GET /other ") {
                to("localhost")
            } else {
                "HTTP/1.1 200 OK\r\ncache-control: max-age=7200\r\ncontent-length: 11\r\n\r\n{\"keys\":[]}".into()
            };
            reply.into_bytes()
        })
        .await;
        let fetch = |path: &str| {
            let mut fetcher = Fetcher::new(&remote(&format!("http://127.0.0.1:{port}{path}")), "i").unwrap();
            async move { fetcher.fetch().await }
        };
        let followed = fetch("/same").await.expect("a same-host redirect is followed");
        assert_eq!(followed.body, b"{\"keys\":[]}");
        assert_eq!(followed.lifetime, Duration::from_secs(3600), "max-age clamped to max_refresh");
        assert!(fetch("/other").await.is_err(), "a cross-host redirect is not");
    }
}
