//! Header rules for both directions: what a client may not send, what the
//! gateway sets, and what an upstream may not send back.
//!
//! Invariant: an identity header that reaches the upstream was set by the
//! gateway from a verified token, on this request, or it is not there at all.
//! That is why hop-by-hop removal (which a client steers with `Connection`)
//! runs first and the identity headers are stripped and injected after it.

use std::borrow::Cow;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::forwarded;

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

/// Names the proxy itself manages; a claim may not be injected under them.
pub(crate) fn is_reserved(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
        || forwarded::is_forwarding(name)
        || [header::HOST, header::AUTHORIZATION, header::CONTENT_LENGTH, header::CONTENT_TYPE, header::COOKIE]
            .contains(name)
}

/// Every header name any route injects: stripped from every request, on
/// every route, whatever its letter case or copies (and its `_` spelling,
/// with every other name that has one).
#[derive(Debug, Default)]
pub(crate) struct IdentityHeaders {
    names: Vec<HeaderName>,
}

impl IdentityHeaders {
    pub(crate) fn new<'a>(names: impl IntoIterator<Item = &'a HeaderName>) -> Self {
        let mut managed = IdentityHeaders::default();
        for name in names {
            if !managed.names.contains(name) {
                managed.names.push(name.clone());
            }
        }
        managed
    }
}

/// Removes, in one pass, hop-by-hop headers (those `Connection` names
/// included), every header spelt with `_`, every identity header a client
/// sent, and the configured `strip` lists.
///
/// Many upstreams (CGI, WSGI, Rack, PHP) read `X_User_Id` as `X-User-Id`,
/// so a name with `_` could smuggle any identity, forwarding or path
/// override header past an exact-name check. As nginx does by default, no
/// such name is forwarded.
pub(crate) fn sanitize_request(headers: &mut HeaderMap, identity: &IdentityHeaders, strip: &[&[HeaderName]]) {
    let nominated = nominated_by_connection(headers);
    remove_where(headers, |name| {
        is_hop_by_hop(name, &nominated)
            || name.as_str().contains('_')
            || identity.names.contains(name)
            || strip.iter().any(|list| list.contains(name))
    });
}

/// Removes hop-by-hop headers an upstream sent back.
pub(crate) fn clean_response(headers: &mut HeaderMap) {
    let nominated = nominated_by_connection(headers);
    remove_where(headers, |name| is_hop_by_hop(name, &nominated));
}

/// Removes every header `doomed` picks. Each name present is looked at
/// once, which costs a comparison; removing a name that is not there costs
/// a hash and a probe, and most requests carry none of these.
pub(crate) fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = headers.keys().filter(|name| doomed(name)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

fn is_hop_by_hop(name: &HeaderName, nominated: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(name) || nominated.contains(name)
}

/// The header names a `Connection` header lists (RFC 9110 §7.6.1).
fn nominated_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
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
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A header map from name/value pairs, repeats kept.
    pub(crate) fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn strips_identity_headers_and_underscored_names() {
        let identity = IdentityHeaders::new(&[HeaderName::from_static("x-user-id")]);
        let mut headers =
            map(&[("X-User-Id", "a"), ("x-user-id", "b"), ("x_user_id", "c"), ("x-user_id", "d"), ("x-other", "kept")]);
        sanitize_request(&mut headers, &identity, &[]);
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
        sanitize_request(&mut headers, &IdentityHeaders::default(), &[]);
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
}
