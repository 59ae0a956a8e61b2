//! What a request must be before it is routed: an uppercase method that
//! is not CONNECT or TRACE, a target of bounded length, and exactly one
//! authority that every part of the request agrees on.
//!
//! hyper accepts a missing or duplicated `Host`, an absolute-form target
//! naming another host, and an HTTP/2 `:authority` that differs from a
//! `host` header. Any of them could route a request by one name and serve
//! it by another, so each is refused here, and routing and
//! `X-Forwarded-Host` use the one validated, normalised authority.

use http::header::HOST;
use http::uri::Authority;
use http::{Method, Request, Version};

use crate::error::Rejection;

/// The methods a 405 says are allowed.
pub(crate) const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Refuses CONNECT and TRACE (405) and methods that are not uppercase tokens.
pub(crate) fn check_method(method: &Method) -> Result<(), Rejection> {
    if *method == Method::CONNECT || *method == Method::TRACE {
        return Err(Rejection::MethodNotAllowed);
    }
    let uppercase = method.as_str().bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
    if !uppercase {
        return Err(Rejection::BadRequest("the method must be an uppercase token"));
    }
    Ok(())
}

/// Refuses a path and query longer than `max` bytes (414).
pub(crate) fn check_target_size<B>(request: &Request<B>, max: usize) -> Result<(), Rejection> {
    match request.uri().path_and_query() {
        Some(target) if target.as_str().len() > max => Err(Rejection::UriTooLong),
        _ => Ok(()),
    }
}

/// The one authority the request is addressed to, normalised: lowercase,
/// no trailing dot, no default port. `None` only for an HTTP/1.0 request
/// that names no host.
pub(crate) fn authority<B>(request: &Request<B>, tls: bool) -> Result<Option<String>, Rejection> {
    let mut hosts = request.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection::BadRequest("more than one Host header"));
    }
    let host = host
        .map(|value| value.to_str().ok().and_then(|text| normalise(text, tls)))
        .map(|host| host.ok_or(Rejection::BadRequest("the Host header is not a host")))
        .transpose()?;
    let target = request
        .uri()
        .authority()
        .map(|authority| normalise(authority.as_str(), tls).ok_or(Rejection::BadRequest("the authority is not a host")))
        .transpose()?;
    let http2 = request.version() == Version::HTTP_2;
    match (target, host) {
        (Some(target), Some(host)) if target != host => Err(Rejection::BadRequest(if http2 {
            "the :authority and the Host header name different hosts"
        } else {
            "the request target and the Host header name different hosts"
        })),
        (Some(_), None) if request.version() == Version::HTTP_11 => Err(Rejection::BadRequest("no Host header")),
        (Some(authority), _) | (None, Some(authority)) => Ok(Some(authority)),
        (None, None) if request.version() <= Version::HTTP_10 => Ok(None),
        (None, None) => Err(Rejection::BadRequest("no Host header")),
    }
}

/// The host part of a normalised authority.
pub(crate) fn host_of(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(colon) if !authority[colon..].contains(']') => &authority[..colon],
        _ => authority,
    }
}

fn normalise(text: &str, tls: bool) -> Option<String> {
    if let Some(authority) = normalise_plain(text, tls) {
        return Some(authority);
    }
    let authority: Authority = text.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    let default_port = if tls { 443 } else { 80 };
    match authority.port_u16() {
        Some(port) if port != default_port => Some(format!("{host}:{port}")),
        _ => Some(host),
    }
}

/// The common case without parsing: a lowercase DNS name with no
/// trailing dot, and a port or none. Anything else takes the full path.
fn normalise_plain(text: &str, tls: bool) -> Option<String> {
    let (host, port) = match text.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    let plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-';
    if host.is_empty() || host.ends_with('.') || !host.bytes().all(plain) {
        return None;
    }
    let default_port = if tls { 443 } else { 80 };
    match port {
        None => Some(host.to_owned()),
        Some(port) if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) => None,
        Some(port) => match port.parse::<u16>().ok()? {
            port if port == default_port => Some(host.to_owned()),
            port => Some(format!("{host}:{port}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::builder().version(version).uri(uri);
        for host in hosts {
            builder = builder.header(HOST, *host);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn normalises_authorities() {
        assert_eq!(normalise("API.Example.com.:443", true).as_deref(), Some("api.example.com"));
        assert_eq!(normalise("api.example.com:8443", true).as_deref(), Some("api.example.com:8443"));
        assert_eq!(normalise("api.example.com:80", false).as_deref(), Some("api.example.com"));
        assert_eq!(normalise("[::1]:443", true).as_deref(), Some("[::1]"));
        assert_eq!(normalise("user@host", true), None);
        for text in [
            "a.test",
            "a.test:443",
            "a.test:8443",
            "a.test:0443",
            "a.test:",
            "a.test:99999",
            "A.test",
            "a.test.",
            "a..b",
        ] {
            let full = normalise(text, true);
            assert!(normalise_plain(text, true).is_none_or(|plain| Some(plain) == full), "{text}");
        }
        assert_eq!(host_of("[::1]:8443"), "[::1]");
        assert_eq!(host_of("[::1]"), "[::1]");
        assert_eq!(host_of("a.test:8443"), "a.test");
    }

    #[test]
    fn one_authority_or_none() {
        let ok = |r: Request<()>| authority(&r, true).map_err(|e| e.to_string());
        assert_eq!(ok(request(Version::HTTP_11, "/x", &["A.test:443"])), Ok(Some("a.test".into())));
        assert!(ok(request(Version::HTTP_11, "/x", &[])).is_err(), "HTTP/1.1 needs Host");
        assert_eq!(ok(request(Version::HTTP_10, "/x", &[])), Ok(None));
        assert!(ok(request(Version::HTTP_11, "/x", &["a.test", "b.test"])).is_err());
        assert!(ok(request(Version::HTTP_11, "https://b.test/x", &["a.test"])).is_err());
        assert_eq!(ok(request(Version::HTTP_11, "https://a.test:443/x", &["A.TEST"])), Ok(Some("a.test".into())));
        assert!(ok(request(Version::HTTP_11, "https://a.test/x", &[])).is_err());
        assert_eq!(ok(request(Version::HTTP_2, "https://a.test/x", &[])), Ok(Some("a.test".into())));
        assert!(ok(request(Version::HTTP_2, "https://a.test/x", &["b.test"])).is_err());
    }

    #[test]
    fn methods_are_uppercase_and_not_tunnels() {
        for good in ["GET", "PROPFIND", "M-SEARCH"] {
            assert!(check_method(&Method::from_bytes(good.as_bytes()).unwrap()).is_ok(), "{good}");
        }
        for bad in ["get", "Get", "CONNECT", "TRACE"] {
            assert!(check_method(&Method::from_bytes(bad.as_bytes()).unwrap()).is_err(), "{bad}");
        }
    }
}
