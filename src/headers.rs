//! Header rules for both directions: what a client may not send, what the
//! gateway sets, and what an upstream may not send back.
//!
//! Invariant: an identity header that reaches the upstream was set by the
//! gateway from a verified token, on this request, or it is not there at all.
//! That is why hop-by-hop removal (which a client steers with `Connection`)
//! runs first and the identity headers are stripped and injected after it.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

/// Headers that describe one connection, never to be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Names the proxy itself manages; a claim may not be injected under them.
pub(crate) fn is_reserved(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
        || [
            header::HOST,
            header::AUTHORIZATION,
            header::CONTENT_LENGTH,
            header::CONTENT_TYPE,
            header::COOKIE,
            header::FORWARDED,
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
        ]
        .contains(name)
}

/// Every header name any route injects: stripped from every request, on
/// every route, whatever its letter case, copies or `_` spelling.
#[derive(Debug, Default)]
pub(crate) struct IdentityHeaders {
    names: Vec<HeaderName>,
    /// The same names as text, to catch `x_user_id` for `x-user-id`.
    dashed: HashSet<String>,
}

impl IdentityHeaders {
    pub(crate) fn new<'a>(names: impl IntoIterator<Item = &'a HeaderName>) -> Self {
        let mut managed = IdentityHeaders::default();
        for name in names {
            if !managed.names.contains(name) {
                managed.names.push(name.clone());
                managed.dashed.insert(name.as_str().to_owned());
            }
        }
        managed
    }

    fn strip(&self, headers: &mut HeaderMap) {
        for name in &self.names {
            headers.remove(name);
        }
        if self.dashed.is_empty() {
            return;
        }
        let spoofed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().contains('_'))
            .filter(|name| self.dashed.contains(&name.as_str().replace('_', "-")))
            .cloned()
            .collect();
        for name in spoofed {
            headers.remove(name);
        }
    }
}

/// Removes hop-by-hop headers, then every identity header a client sent.
pub(crate) fn sanitize_request(headers: &mut HeaderMap, identity: &IdentityHeaders) {
    remove_hop_by_hop(headers);
    identity.strip(headers);
}

/// Removes hop-by-hop headers an upstream sent back.
pub(crate) fn clean_response(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let nominated: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in nominated.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Renders a claim as a header value: strings as they are, numbers in
/// decimal, arrays of strings joined with `,`, anything else as compact JSON.
pub(crate) fn claim_header_value(value: &Value) -> Option<HeaderValue> {
    let text: Cow<'_, str> = match value {
        Value::String(text) => Cow::Borrowed(text),
        Value::Number(number) => Cow::Owned(number.to_string()),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            Cow::Owned(items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
        }
        other => Cow::Owned(other.to_string()),
    };
    HeaderValue::from_bytes(text.as_bytes()).ok()
}

/// Joins several `Cookie` fields into one, as HTTP/1.1 upstreams expect
/// (HTTP/2 clients may send one field per cookie, RFC 9113 §8.2.3).
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers.get_all(header::COOKIE).iter().map(HeaderValue::as_bytes).collect();
    if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, value);
    }
}

/// Removes cookie `name` from the request's `Cookie` header(s), keeping
/// the others.
pub(crate) fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(key, _)| key != name))
        .collect();
    let joined = kept.join("; ");
    headers.remove(header::COOKIE);
    if let Ok(value) = HeaderValue::from_str(&joined)
        && !joined.is_empty()
    {
        headers.insert(header::COOKIE, value);
    }
}

pub(crate) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// Headers some frameworks read as the path to serve: never from a client.
const PATH_OVERRIDES: [HeaderName; 2] =
    [HeaderName::from_static("x-original-url"), HeaderName::from_static("x-rewrite-url")];

/// Who the client is, as the upstream will be told.
pub(crate) struct Forwarding<'a> {
    pub(crate) peer: IpAddr,
    pub(crate) proto: &'static str,
    /// The validated, normalised authority.
    pub(crate) authority: Option<&'a str>,
    pub(crate) trusted_proxies: &'a [IpNet],
}

/// Rebuilds `X-Forwarded-For`, `-Proto`, `-Host` and `X-Real-IP` from the
/// connection. A client's own are dropped, unless the peer is a trusted
/// proxy: then its `X-Forwarded-*` stand and the peer is appended to the
/// `X-Forwarded-For` chain. `Forwarded` and path overrides never pass.
pub(crate) fn set_forwarded(headers: &mut HeaderMap, forwarding: &Forwarding<'_>) {
    let Forwarding { peer, proto, authority, trusted_proxies } = forwarding;
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let from_proxy = trusted(peer);
    headers.remove(header::FORWARDED);
    headers.remove(X_REAL_IP);
    for name in &PATH_OVERRIDES {
        headers.remove(name);
    }
    let mut chain: Vec<String> = Vec::new();
    if from_proxy {
        chain = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|entry| entry.trim().to_owned())
            .filter(|entry| !entry.is_empty())
            .collect();
    } else {
        let spoofed: Vec<HeaderName> =
            headers.keys().filter(|name| name.as_str().starts_with("x-forwarded-")).cloned().collect();
        for name in spoofed {
            headers.remove(name);
        }
    }
    chain.push(peer.to_string());
    // the client is the nearest hop that is not one of our proxies
    let client = chain
        .iter()
        .rev()
        .find(|entry| entry.parse::<IpAddr>().map_or(true, |ip| !trusted(&ip)))
        .or(chain.first())
        .cloned()
        .unwrap_or_default();
    let mut set = |name: HeaderName, value: &str, keep_existing: bool| {
        if keep_existing && headers.contains_key(&name) {
            return;
        }
        match HeaderValue::from_str(value) {
            Ok(value) => drop(headers.insert(name, value)),
            Err(_) => drop(headers.remove(name)),
        }
    };
    set(X_FORWARDED_FOR, &chain.join(", "), false);
    set(X_REAL_IP, &client, false);
    set(X_FORWARDED_PROTO, proto, from_proxy);
    match authority {
        Some(authority) => set(X_FORWARDED_HOST, authority, from_proxy),
        None if !from_proxy => drop(headers.remove(X_FORWARDED_HOST)),
        None => {}
    }
}

/// Removes the configured extra headers.
pub(crate) fn strip(headers: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        headers.remove(name);
    }
}

/// A WebSocket opening handshake (RFC 6455 §4.1): the one upgrade passed on.
pub(crate) fn is_websocket_upgrade<B>(request: &http::Request<B>) -> bool {
    let headers = request.headers();
    let has_token = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|part| part.trim().eq_ignore_ascii_case(token))
    };
    request.method() == http::Method::GET
        && request.version() == http::Version::HTTP_11
        && has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
}

/// Puts back the two hop-by-hop headers a WebSocket upgrade needs.
pub(crate) fn restore_websocket_upgrade(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn strips_identity_headers_in_every_spelling() {
        let identity = IdentityHeaders::new(&[HeaderName::from_static("x-user-id")]);
        let mut headers =
            map(&[("X-User-Id", "a"), ("x-user-id", "b"), ("x_user_id", "c"), ("x-user_id", "d"), ("x-other", "kept")]);
        sanitize_request(&mut headers, &identity);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-other"], "kept");
    }

    #[test]
    fn removes_headers_nominated_by_connection() {
        let mut headers = map(&[
            ("connection", "close, X-Secret"),
            ("connection", "x-also"),
            ("x-secret", "1"),
            ("x-also", "1"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "1"),
        ]);
        sanitize_request(&mut headers, &IdentityHeaders::default());
        assert_eq!(headers.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn renders_claims_as_header_values() {
        let render = |v: Value| claim_header_value(&v).map(|h| h.to_str().unwrap().to_owned());
        assert_eq!(render(json!("alice")).as_deref(), Some("alice"));
        assert_eq!(render(json!(42)).as_deref(), Some("42"));
        assert_eq!(render(json!(["admin", "ops"])).as_deref(), Some("admin,ops"));
        assert_eq!(render(json!([1, "a"])).as_deref(), Some("[1,\"a\"]"));
        assert_eq!(render(json!({"a": true})).as_deref(), Some("{\"a\":true}"));
        assert_eq!(render(json!("evil\r\nx-admin: 1")), None);
        assert_eq!(render(json!("nul\0")), None);
    }

    #[test]
    fn removes_one_cookie_and_keeps_the_others() {
        let mut headers = map(&[("cookie", "a=1; session=tok"), ("cookie", "b=2")]);
        remove_cookie(&mut headers, "session");
        assert_eq!(headers["cookie"], "a=1; b=2");
        let mut headers = map(&[("cookie", "session=tok")]);
        remove_cookie(&mut headers, "session");
        assert!(headers.get("cookie").is_none());
    }

    #[test]
    fn joins_cookie_fields() {
        let mut headers = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookies(&mut headers);
        assert_eq!(headers.get_all("cookie").iter().count(), 1);
        assert_eq!(headers["cookie"], "a=1; b=2; c=3");
    }

    fn forward(headers: &mut HeaderMap, peer: &str, trusted: &[&str]) {
        let trusted: Vec<IpNet> = trusted.iter().map(|n| n.parse().unwrap()).collect();
        let forwarding = Forwarding {
            peer: peer.parse().unwrap(),
            proto: "https",
            authority: Some("api.example.com"),
            trusted_proxies: &trusted,
        };
        set_forwarded(headers, &forwarding);
    }

    #[test]
    fn forwarding_headers_from_clients_are_rebuilt() {
        let mut headers = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-prefix", "/admin"),
            ("x-real-ip", "10.0.0.1"),
            ("forwarded", "for=1.2.3.4"),
            ("x-original-url", "/admin"),
        ]);
        forward(&mut headers, "192.0.2.7", &[]);
        assert_eq!(headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(headers["x-real-ip"], "192.0.2.7");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "api.example.com");
        for gone in ["x-forwarded-prefix", "forwarded", "x-original-url"] {
            assert!(headers.get(gone).is_none(), "{gone}");
        }
    }

    #[test]
    fn trusted_proxies_are_appended_to() {
        let mut headers = map(&[
            ("x-forwarded-for", "203.0.113.9, 10.0.0.2"),
            ("x-forwarded-for", "10.0.0.3"),
            ("x-forwarded-proto", "http"),
            ("x-original-url", "/admin"),
        ]);
        forward(&mut headers, "10.0.0.4", &["10.0.0.0/8"]);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 10.0.0.2, 10.0.0.3, 10.0.0.4");
        assert_eq!(headers["x-real-ip"], "203.0.113.9", "the nearest untrusted hop");
        assert_eq!(headers["x-forwarded-proto"], "http", "the proxy's word stands");
        assert!(headers.get("x-original-url").is_none());
    }
}
