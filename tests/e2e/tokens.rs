//! Which tokens pass, which do not, and that a refused one never reaches
//! the upstream.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis::dev::{SigningKey, now};
use serde_json::json;

use crate::support::{ISSUER, Reply, Stack, forge};

/// Sends `token` to a protected route and checks it got a 401
/// `invalid_token` without the upstream seeing anything.
async fn assert_refused(stack: &Stack, token: &str, why: &str) -> Reply {
    let before = stack.echo.requests();
    let reply = stack.get_with_token("/orders/1", token).await;
    assert_eq!(reply.status, 401, "{why}: {}", String::from_utf8_lossy(&reply.body));
    assert!(
        reply.header("www-authenticate").starts_with("Bearer ")
            && reply.header("www-authenticate").contains("error=\"invalid_token\""),
        "{why}: {}",
        reply.header("www-authenticate")
    );
    assert_eq!(reply.header("content-type"), "application/problem+json", "{why}");
    assert_eq!(reply.json()["error"], "invalid_token", "{why}");
    let body = String::from_utf8_lossy(&reply.body);
    assert!(token.len() < 4 || !body.contains(token), "{why}: the body echoes the token");
    assert_eq!(stack.echo.requests(), before, "{why}: the upstream was reached");
    reply
}

#[tokio::test]
async fn a_valid_token_passes_and_its_identity_reaches_the_upstream() {
    let stack = Stack::start().await;
    let reply = stack.get_with_token("/orders/42?expand=items", &stack.token(json!({}))).await;
    assert_eq!(reply.status, 200);
    let seen = reply.json();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/orders/42?expand=items");
    assert_eq!(seen["headers"]["x-user-id"], "alice");
    assert_eq!(seen["headers"]["x-user-roles"], "admin,ops");
    assert!(seen["headers"].get("authorization").is_none(), "the token is not forwarded by default");
    assert_eq!(stack.echo.requests(), 1);
}

#[tokio::test]
async fn a_request_without_a_token_gets_a_bearer_challenge() {
    let stack = Stack::start().await;
    let reply = stack.get("/orders", &[]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), "Bearer realm=\"portcullis\"");
    assert_eq!(reply.header("content-type"), "application/problem+json");
    assert_eq!(reply.json()["status"], 401);
    assert_eq!(reply.json().get("error"), None, "RFC 6750: no error code without credentials");
    for other in ["Basic YWxpY2U6c2VjcmV0", "Token abc", "Bearerabc"] {
        let reply = stack.get("/orders", &[("authorization", other)]).await;
        assert_eq!(reply.status, 401, "{other}");
        assert_eq!(reply.header("www-authenticate"), "Bearer realm=\"portcullis\"");
        assert_eq!(reply.json()["detail"], "only Bearer tokens are accepted");
    }
    assert_eq!(stack.echo.requests(), 0);
}

#[tokio::test]
async fn clock_skew_within_the_leeway_is_tolerated() {
    let stack = Stack::start().await;
    for changes in [json!({"exp": now() - 10}), json!({"nbf": now() + 10})] {
        let reply = stack.get_with_token("/orders", &stack.token(changes.clone())).await;
        assert_eq!(reply.status, 200, "{changes}");
    }
}

#[tokio::test]
async fn tokens_that_fail_a_claim_check_are_refused() {
    let stack = Stack::start().await;
    let cases = [
        (json!({"exp": now() - 3600}), "has expired"),
        (json!({"exp": now() - 60}), "has expired"),
        (json!({"exp": null}), "lacks a required claim"),
        (json!({"exp": "soon"}), "wrong type"),
        (json!({"nbf": now() + 3600}), "not valid yet"),
        (json!({"iat": now() + 3600}), "issued in the future"),
        (json!({"iat": "yesterday"}), "wrong type"),
        (json!({"sub": 42}), "wrong type"),
        (json!({"jti": ["a"]}), "wrong type"),
        (json!({"aud": "payments"}), "not meant for this audience"),
        (json!({"aud": ["payments", "billing"]}), "not meant for this audience"),
        (json!({"aud": null}), "lacks a required claim"),
        (json!({"aud": 7}), "wrong type"),
        (json!({"aud": ["orders", 7]}), "wrong type"),
        (json!({"aud": {"orders": true}}), "wrong type"),
        (json!({"iss": "https://evil.test"}), "not a configured provider"),
        (json!({"iss": null}), "lacks a required claim"),
        (json!({"iss": ["https://idp.test"]}), "wrong type"),
        (json!({"iss": 1}), "wrong type"),
    ];
    for (changes, description) in cases {
        let why = format!("{changes} ({description})");
        let reply = assert_refused(&stack, &stack.token(changes), &why).await;
        assert!(reply.json()["error_description"].as_str().unwrap().contains(description), "{why}");
        assert!(reply.header("www-authenticate").contains(description), "{why}");
    }
}

#[tokio::test]
async fn audiences_match_any_listed_one() {
    let stack = Stack::start().await;
    for aud in [json!("orders"), json!(["billing", "orders"]), json!("other")] {
        let reply = stack.get_with_token("/orders", &stack.token(json!({"aud": aud}))).await;
        assert_eq!(reply.status, 200, "aud {aud}");
    }
}

#[tokio::test]
async fn forged_and_malformed_tokens_are_refused() {
    let stack = Stack::start().await;
    let claims = stack.claims(json!({}));
    let valid = stack.token(json!({}));
    let (head, rest) = valid.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();

    // signed by someone else's key that claims the published kid
    let impostor = SigningKey::generate("k1");
    assert_refused(&stack, &impostor.sign(&claims), "another key, same kid").await;

    // the signature of one token on another's payload
    let other_payload = stack.token(json!({"sub": "root"}));
    let other_payload = other_payload.split('.').nth(1).unwrap();
    assert_refused(&stack, &format!("{head}.{other_payload}.{signature}"), "swapped payload").await;

    // a flipped signature byte
    let mut flipped = signature.to_owned().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    assert_refused(&stack, &format!("{head}.{payload}.{flipped}"), "bad signature").await;

    // alg: none, with and without a signature
    let none = json!({"alg": "none", "typ": "JWT", "kid": "k1"});
    assert_refused(&stack, &forge(none.clone(), &claims, ""), "alg none").await;
    assert_refused(&stack, &forge(none, &claims, signature), "alg none with a signature").await;

    // HS256 signed with the public key as the HMAC secret
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let secret = EncodingKey::from_secret(stack.key.public_pem().unwrap().as_bytes());
    let hs256 = jsonwebtoken::encode(&header, &claims, &secret).unwrap();
    assert_refused(&stack, &hs256, "HS256 with the public key").await;
    let secret = EncodingKey::from_secret(stack.key.jwk()["n"].as_str().unwrap().as_bytes());
    assert_refused(&stack, &jsonwebtoken::encode(&header, &claims, &secret).unwrap(), "HS256 with n").await;

    // RS512 by the right key: the key is pinned to RS256
    let rs256 = stack.key.sign(&claims);
    let relabelled = forge(json!({"alg": "RS512", "kid": "k1"}), &claims, rs256.split('.').nth(2).unwrap());
    assert_refused(&stack, &relabelled, "alg relabelled").await;

    for garbage in ["", "not-a-jwt", "a.b.c", "a.b", "....", "eyJhbGciOiJSUzI1NiJ9.e30.", "\u{1F600}"] {
        assert_refused(&stack, garbage, &format!("garbage {garbage:?}")).await;
    }
    let big = stack.token(json!({"padding": "x".repeat(9000)}));
    assert_refused(&stack, &big, "over 8 KiB").await;
}

#[tokio::test]
async fn an_unknown_kid_is_refused() {
    let stack = Stack::start().await;
    let stranger = SigningKey::generate("not-published");
    assert_refused(&stack, &stranger.sign(&stack.claims(json!({}))), "unknown kid").await;
    let kidless = forge(json!({"alg": "RS256"}), &stack.claims(json!({})), "AAAA");
    assert_refused(&stack, &kidless, "no kid, bad signature").await;
}

#[tokio::test]
async fn a_token_without_kid_may_only_use_a_lone_key() {
    let stack = Stack::start().await;
    let kidless = stack.key.sign_with(&Header::new(Algorithm::RS256), &stack.claims(json!({})));
    assert_eq!(stack.get_with_token("/orders", &kidless).await.status, 200);

    let second = SigningKey::generate("k2");
    stack.idp.publish(&[&stack.key, &second]);
    // the new key is picked up by the early fetch an unknown kid triggers
    let reply = stack.get_with_token("/orders", &second.sign(&stack.claims(json!({})))).await;
    assert_eq!(reply.status, 200);
    let before = stack.echo.requests();
    let reply = stack.get_with_token("/orders", &kidless).await;
    assert_eq!(reply.status, 401, "with two keys, a token without kid is never guessed");
    assert_eq!(stack.echo.requests(), before);
}

#[tokio::test]
async fn the_authorization_scheme_is_case_insensitive_and_must_be_unique() {
    let stack = Stack::start().await;
    let token = stack.token(json!({}));
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let reply = stack.get("/orders", &[("authorization", &format!("{scheme} {token}"))]).await;
        assert_eq!(reply.status, 200, "{scheme}");
    }
    let twice = [("authorization", format!("Bearer {token}")), ("authorization", format!("Bearer {token}"))];
    let headers: Vec<(&str, &str)> = twice.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let reply = stack.get("/orders", &headers).await;
    assert_eq!(reply.status, 400);
    assert_eq!(stack.echo.requests(), 3);
}

#[tokio::test]
async fn a_missing_required_claim_is_forbidden() {
    let stack = Stack::start().await;
    for roles in [json!(["ops"]), json!([]), json!(null), json!("administrator"), json!({"admin": true})] {
        let reply = stack.get_with_token("/admin/users", &stack.token(json!({"roles": roles}))).await;
        assert_eq!(reply.status, 403, "roles {roles}");
        assert!(reply.header("www-authenticate").contains("error=\"insufficient_scope\""));
        assert_eq!(reply.json()["error"], "insufficient_scope");
    }
    assert_eq!(stack.echo.requests(), 0);
    let reply = stack.get_with_token("/admin/users", &stack.token(json!({"roles": ["admin"]}))).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn optional_routes_pass_anonymous_requests_but_not_bad_tokens() {
    let stack = Stack::start().await;
    let anonymous = stack.get("/maybe", &[("x-user-id", "mallory")]).await;
    assert_eq!(anonymous.status, 200);
    assert_eq!(anonymous.upstream_header("x-user-id"), None);

    let known = stack.get_with_token("/maybe", &stack.token(json!({}))).await;
    assert_eq!(known.upstream_header("x-user-id"), Some(json!("alice")));

    let expired = stack.token(json!({"exp": now() - 3600}));
    assert_refused_on(&stack, "/maybe", &expired).await;
    // a bad credential is refused, not passed on as anonymous
    assert_refused_on(&stack, "/maybe", "").await;
    for header in [format!("Bearer\t{expired}"), format!("Token {expired}"), "Basic YTpi".into()] {
        let before = stack.echo.requests();
        let reply = stack.get("/maybe", &[("authorization", &header)]).await;
        assert_eq!(reply.status, 401, "{header}");
        assert_eq!(stack.echo.requests(), before, "{header}");
    }
}

async fn assert_refused_on(stack: &Stack, path: &str, token: &str) {
    let before = stack.echo.requests();
    let reply = stack.get_with_token(path, token).await;
    assert_eq!(reply.status, 401);
    assert_eq!(stack.echo.requests(), before);
}

#[tokio::test]
async fn public_routes_do_not_look_at_tokens() {
    let stack = Stack::start().await;
    let reply = stack.get("/public/x", &[("authorization", "Bearer garbage")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream_header("authorization"), Some(json!("Bearer garbage")));
}

#[tokio::test]
async fn tokens_from_an_unknown_issuer_are_refused() {
    let stack = Stack::start().await;
    let claims = stack.claims(json!({"iss": format!("{ISSUER}/")}));
    assert_refused(&stack, &stack.key.sign(&claims), "issuer with a trailing slash").await;
}
