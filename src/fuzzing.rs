//! Entry points for the fuzz targets in `fuzz/`: arbitrary bytes through
//! token parsing and claim checks, the path canonicaliser, and the header
//! sanitiser, with the properties they promise as assertions. Not an API;
//! it exists so the fuzzer reaches crate-private code without it being made
//! public.

use std::sync::OnceLock;

use jsonwebtoken::Algorithm;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::claim_of;
use crate::forwarded::{Forwarding, is_forwarding, set_forwarded};
use crate::headers::{IdentityHeaders, claim_header_value, sanitize_request};
use crate::keys::{self, Freshness, KeySet};
use crate::path;
use crate::token::{self, ClaimRules};

/// Runs one input through everything a token meets before it is trusted.
/// It may return early; it must never panic or hang.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(jwt) = token::parse(text) else {
        return;
    };
    let rules = rules();
    let _ = jwt.issuer();
    let _ = jwt.check_type(&rules);
    let _ = token::check_claims(&jwt.claims, &rules, 1_800_000_000.0);
    if let Some(key) = key_set().find(jwt.kid.as_deref()) {
        let _ = key.verify(&jwt);
    }
    for name in ["sub", "roles", "realm_access.roles", "scope"] {
        if let Some(value) = claim_of(&jwt.claims, name) {
            let _ = claim_header_value(value);
        }
    }
}

/// The path canonicaliser: what it accepts comes out canonical, and
/// canonicalising again changes nothing.
pub fn path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(canonical) = path::canonicalize(text) else {
        return;
    };
    assert!(canonical.starts_with('/'), "{text:?} -> {canonical:?}");
    assert!(!canonical.contains("//"), "{text:?} -> {canonical:?}");
    assert!(!canonical.contains('\\'), "{text:?} -> {canonical:?}");
    assert!(!canonical.split('/').any(|s| s == "." || s == ".."), "{text:?} -> {canonical:?}");
    let again = path::canonicalize(&canonical);
    assert_eq!(again.as_deref(), Ok(&*canonical), "not idempotent: {text:?}");
}

/// The header sanitiser and the forwarding rebuild: no identity header the
/// gateway manages survives, nor any name spelt with `_`, a hop-by-hop
/// header or one `Connection` names; and from an untrusted peer, every
/// forwarding header is the gateway's. Input: lines of `name: value`.
pub fn headers(data: &[u8]) {
    let managed = [HeaderName::from_static("x-user-id"), HeaderName::from_static("x-user-roles")];
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    let nominated: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    sanitize_request(&mut headers, &IdentityHeaders::new(&managed), &[]);
    let peer = std::net::IpAddr::from([192, 0, 2, 1]);
    let forwarding = Forwarding { peer, proto: "https", authority: Some("api.test"), trusted_proxies: &[] };
    set_forwarded(&mut headers, &forwarding);
    for (name, value) in &headers {
        assert!(!managed.contains(name) && !name.as_str().contains('_'), "{name} survived");
        assert!(!nominated.iter().any(|n| n == name.as_str()) || is_forwarding(name), "{name} was named by Connection");
        assert!(name != http::header::CONNECTION && name != http::header::UPGRADE && name != "keep-alive");
        let ours = [
            ("x-forwarded-for", "192.0.2.1"),
            ("x-real-ip", "192.0.2.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.test"),
        ];
        if is_forwarding(name) {
            assert!(
                ours.contains(&(name.as_str(), value.to_str().unwrap_or_default())),
                "{name}: {value:?} came from the client"
            );
        }
    }
}

fn rules() -> ClaimRules {
    ClaimRules {
        audiences: vec!["api".into()],
        leeway: 30.0,
        max_token_age: Some(3600.0),
        required_typ: Some(token::media_type("at+jwt")),
    }
}

/// One HMAC key (kid "hs") and one EC key (kid "ec"), built once.
fn key_set() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let document = br#"{"keys": [
            {"kty": "oct", "kid": "hs", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
            {"kty": "EC", "kid": "ec", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let algorithms = [Algorithm::HS256, Algorithm::ES256];
        keys::build_set(document, &algorithms, true, Freshness::local()).expect("the fuzz keys are valid")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    /// A stable stand-in for the fuzzer in CI: thousands of mutations of a
    /// well-formed token, none of which may panic.
    #[test]
    fn mutated_tokens_never_panic() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"hs","typ":"at+jwt"}"#);
        let claims = URL_SAFE_NO_PAD.encode(
            r#"{"iss":"i","aud":["api"],"exp":1800000100,"iat":1800000000,"sub":"a","realm_access":{"roles":["x"]}}"#,
        );
        let seed = format!("{header}.{claims}.c2lnbmF0dXJl");
        let mut rng = fastrand::Rng::with_seed(7);
        token(seed.as_bytes());
        for _ in 0..20_000 {
            let mut bytes = seed.clone().into_bytes();
            for _ in 0..rng.usize(1..4) {
                match rng.u8(0..4) {
                    0 => {
                        let i = rng.usize(..bytes.len());
                        bytes[i] = rng.u8(..);
                    }
                    1 => bytes.truncate(rng.usize(..bytes.len())),
                    2 => {
                        let i = rng.usize(..=bytes.len());
                        bytes.insert(i, b".=%\\\"{}[]"[rng.usize(..9)]);
                    }
                    _ => {
                        let i = rng.usize(..bytes.len());
                        let tail = bytes[i..].to_vec();
                        bytes.extend_from_slice(&tail);
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
            token(&bytes);
        }
    }

    #[test]
    fn mutated_paths_and_headers_keep_their_promises() {
        let mut rng = fastrand::Rng::with_seed(11);
        let pieces = ["/", "//", ".", "..", "%2e", "%2F", "%61", "%c3%a9", "a", "B", ";", "\\", "%", "%0", "~", "%7E"];
        for _ in 0..20_000 {
            let path: String = (0..rng.usize(1..12)).map(|_| pieces[rng.usize(..pieces.len())]).collect();
            super::path(path.as_bytes());
        }
        let names = [
            "x-user-id",
            "X_User_Id",
            "x-user_roles",
            "connection",
            "keep-alive",
            "x-other",
            "te",
            "upgrade",
            "x-forwarded-for",
            "X_Forwarded_For",
            "x-real-ip",
            "forwarded",
            "x-original-url",
            "x-forwarded-prefix",
        ];
        for _ in 0..5_000 {
            let lines: Vec<String> = (0..rng.usize(1..8))
                .map(|_| {
                    let name = names[rng.usize(..names.len())];
                    let value = if name == "connection" { names[rng.usize(..names.len())] } else { "v" };
                    format!("{name}: {value}")
                })
                .collect();
            headers(lines.join("\n").as_bytes());
        }
    }
}
