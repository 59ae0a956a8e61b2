//! Who the client is, as the upstream is told: `X-Forwarded-For`,
//! `-Proto`, `-Host` and `X-Real-IP`, rebuilt from the connection.
//!
//! A client's own forwarding headers are believed only when the peer is one
//! of `server.trusted_proxies` (a load balancer in front); then the peer is
//! appended to the `X-Forwarded-For` chain and the real client is the
//! nearest hop that is not a trusted proxy. `Forwarded` and the path
//! overrides some frameworks obey (`X-Original-URL`, `X-Rewrite-URL`)
//! never pass: the gateway does not write `Forwarded`, so a client's would
//! contradict what it does write.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::headers;

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

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

/// Rebuilds the forwarding headers from the connection.
pub(crate) fn set_forwarded(headers: &mut HeaderMap, forwarding: &Forwarding<'_>) {
    let Forwarding { peer, proto, authority, trusted_proxies } = forwarding;
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let from_proxy = trusted(peer);
    headers::remove_where(headers, |name| {
        *name == header::FORWARDED
            || *name == X_REAL_IP
            || PATH_OVERRIDES.contains(name)
            || (!from_proxy && name.as_str().starts_with("x-forwarded-"))
    });
    let peer = peer.to_string();
    let (chain, client) = if from_proxy {
        let mut chain: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .collect();
        chain.push(&peer);
        // the client is the nearest hop that is not one of our proxies
        let client = chain.iter().rev().find(|entry| entry.parse::<IpAddr>().map_or(true, |ip| !trusted(&ip)));
        let client = client.or(chain.first()).map_or_else(String::new, |client| client.to_string());
        (chain.join(", "), client)
    } else {
        (peer.clone(), peer)
    };
    let mut set = |name: HeaderName, value: Result<HeaderValue, _>, keep_existing: bool| {
        if keep_existing && headers.contains_key(&name) {
            return;
        }
        match value {
            Ok(value) => drop(headers.insert(name, value)),
            Err(_) => drop(headers.remove(name)),
        }
    };
    set(X_FORWARDED_FOR, HeaderValue::from_str(&chain), false);
    set(X_REAL_IP, HeaderValue::from_str(&client), false);
    set(X_FORWARDED_PROTO, Ok(HeaderValue::from_static(proto)), from_proxy);
    match authority {
        Some(authority) => set(X_FORWARDED_HOST, HeaderValue::from_str(authority), from_proxy),
        None if !from_proxy => drop(headers.remove(X_FORWARDED_HOST)),
        None => {}
    }
}

/// Headers only the gateway may set: a claim is never injected under them.
pub(crate) fn is_forwarding(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-forwarded-")
        || *name == X_REAL_IP
        || *name == header::FORWARDED
        || PATH_OVERRIDES.contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::tests::map;

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
