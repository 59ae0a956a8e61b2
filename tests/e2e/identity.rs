//! Identity headers reach the upstream only as the gateway set them.

use serde_json::{Value, json};

use crate::support::{Options, Stack};

/// The echo's JSON body out of a raw HTTP/1.1 response.
fn echoed(raw: &str) -> Value {
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let body = raw.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {raw}"))
}

/// Spoofed copies of every injected header, in mixed case, duplicated and
/// spelt with `_`.
const SPOOFED: [&str; 7] = [
    "X-User-Id: mallory",
    "x-user-id: mallory2",
    "X-USER-ID: mallory3",
    "x_user_id: mallory4",
    "X-User_Id: mallory5",
    "X-User-Roles: admin",
    "x_user_roles: admin",
];

async fn send_spoofed(stack: &Stack, path: &str, token: Option<&str>) -> Value {
    let host = format!("Host: localhost:{}", stack.addr.port());
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut head = vec![format!("GET {path} HTTP/1.1"), host, "Connection: close".to_owned()];
    head.extend(SPOOFED.iter().map(|h| h.to_string()));
    head.extend(auth);
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    echoed(&stack.raw(&head).await)
}

#[tokio::test]
async fn spoofed_identity_headers_are_replaced_on_protected_routes() {
    let stack = Stack::start().await;
    let seen = send_spoofed(&stack, "/orders", Some(&stack.token(json!({})))).await;
    let headers = seen["headers"].as_object().unwrap();
    assert_eq!(headers["x-user-id"], "alice", "exactly one, the verified one");
    assert_eq!(headers["x-user-roles"], "admin,ops");
    assert!(!headers.keys().any(|name| name.contains('_')), "{headers:?}");
}

#[tokio::test]
async fn spoofed_identity_headers_are_removed_on_public_routes() {
    let stack = Stack::start().await;
    let seen = send_spoofed(&stack, "/public", None).await;
    let headers = seen["headers"].as_object().unwrap();
    let leaked: Vec<&String> = headers.keys().filter(|n| n.starts_with("x-user") || n.starts_with("x_user")).collect();
    assert!(leaked.is_empty(), "{leaked:?}");
}

#[tokio::test]
async fn spoofed_headers_another_route_injects_are_removed_too() {
    // /admin injects only x-user-id, /orders also x-user-roles: both are
    // stripped everywhere
    let stack = Stack::start().await;
    let seen = send_spoofed(&stack, "/admin", Some(&stack.token(json!({})))).await;
    assert_eq!(seen["headers"]["x-user-id"], "alice");
    assert!(seen["headers"].get("x-user-roles").is_none());
}

#[tokio::test]
async fn connection_cannot_remove_an_injected_header() {
    let stack = Stack::start().await;
    let token = stack.token(json!({}));
    let host = format!("Host: localhost:{}", stack.addr.port());
    let auth = format!("Authorization: Bearer {token}");
    let raw = stack
        .raw(&[
            "GET /orders HTTP/1.1",
            &host,
            &auth,
            "Connection: close, X-User-Id, x-user-roles, X-Forwarded-For",
            "X-Custom-Hop: 1",
            "Keep-Alive: timeout=5",
        ])
        .await;
    let seen = echoed(&raw);
    assert_eq!(seen["headers"]["x-user-id"], "alice");
    assert_eq!(seen["headers"]["x-user-roles"], "admin,ops");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert!(seen["headers"].get("connection").is_none());
    assert!(seen["headers"].get("keep-alive").is_none());
}

#[tokio::test]
async fn connection_nominated_headers_are_not_forwarded() {
    let stack = Stack::start().await;
    let reply =
        stack.get("/public", &[("connection", "x-hop"), ("x-hop", "1"), ("x-kept", "1"), ("te", "trailers")]).await;
    assert_eq!(reply.upstream_header("x-hop"), None);
    assert_eq!(reply.upstream_header("te"), None);
    assert_eq!(reply.upstream_header("x-kept"), Some(json!("1")));
}

#[tokio::test]
async fn claims_are_rendered_by_type() {
    let routes = r#"
[[routes]]
name = "all"
path = "/"
upstream = "{upstream}"
inject_headers = { "x-sub" = "sub", "x-n" = "level", "x-groups" = "groups", "x-obj" = "org", "x-mixed" = "mixed", "x-nested" = "org.name", "x-absent" = "nope" }
"#;
    let stack = Stack::with(Options { routes: routes.into(), ..Options::default() }).await;
    let token = stack.token(json!({
        "level": 3,
        "groups": ["a", "b"],
        "org": {"name": "acme"},
        "mixed": ["a", 1],
    }));
    let reply = stack.get_with_token("/", &token).await;
    assert_eq!(reply.status, 200);
    let seen = reply.json()["headers"].clone();
    assert_eq!(seen["x-sub"], "alice");
    assert_eq!(seen["x-n"], "3");
    assert_eq!(seen["x-groups"], "a,b");
    assert_eq!(seen["x-obj"], r#"{"name":"acme"}"#);
    assert_eq!(seen["x-mixed"], r#"["a",1]"#);
    assert_eq!(seen["x-nested"], "acme");
    assert!(seen.get("x-absent").is_none());
}

#[tokio::test]
async fn a_claim_that_cannot_be_a_header_is_refused() {
    let stack = Stack::start().await;
    for sub in ["alice\r\nx-admin: true", "alice\nx", "nul\0byte"] {
        let reply = stack.get_with_token("/orders", &stack.token(json!({"sub": sub}))).await;
        assert_eq!(reply.status, 401, "{sub:?}");
        assert_eq!(reply.json()["error"], "invalid_token");
    }
    assert_eq!(stack.echo.requests(), 0);
    let reply = stack.get_with_token("/orders", &stack.token(json!({"sub": "zoë"}))).await;
    assert_eq!(reply.status, 200, "UTF-8 travels as obs-text");
}

#[tokio::test]
async fn the_token_is_forwarded_only_when_the_route_asks() {
    let routes = r#"
[[routes]]
name = "keeps"
path = "/keeps"
upstream = "{upstream}"
forward_token = true
"#;
    let stack = Stack::with(Options { routes: routes.into(), ..Options::default() }).await;
    let token = stack.token(json!({}));
    let reply = stack.get_with_token("/keeps", &token).await;
    assert_eq!(reply.upstream_header("authorization"), Some(json!(format!("Bearer {token}"))));
}
