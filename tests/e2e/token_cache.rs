//! The verified-token cache: a repeated token is verified once, and a
//! cached token is refused as soon as a fresh verification would refuse it
//! (expiry, a retired or replaced key, a changed provider config).

use std::time::Duration;

use portcullis::dev::{SigningKey, now};
use serde_json::json;

use crate::support::{Options, ROUTES, Stack, admin_get, eventually, metric};

const WITHIN: Duration = Duration::from_secs(10);

fn options(provider: &str, server: &str) -> Options {
    Options {
        admin: true,
        provider: provider.to_owned(),
        server: server.to_owned(),
        refresh_interval: "200ms",
        ..Options::default()
    }
}

/// Hits and misses of the token cache, from `/metrics`.
async fn lookups(stack: &Stack) -> (f64, f64) {
    let text = admin_get(stack.admin.unwrap(), "/metrics").await.1;
    let count = |result| metric(&text, &format!("portcullis_token_cache_lookups_total{{result=\"{result}\"}}"));
    (count("hit"), count("miss"))
}

#[tokio::test]
async fn a_repeated_token_is_verified_once_and_injects_the_same_identity() {
    let stack = Stack::with(options("", "")).await;
    let token = stack.token(json!({"sub": "bob"}));
    for _ in 0..3 {
        let reply = stack.get_with_token("/orders", &token).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.upstream_header("x-user-id"), Some(json!("bob")));
        assert_eq!(reply.upstream_header("x-user-roles"), Some(json!("admin,ops")));
    }
    assert_eq!(lookups(&stack).await, (2.0, 1.0));
    let text = admin_get(stack.admin.unwrap(), "/metrics").await.1;
    assert_eq!(metric(&text, "portcullis_token_cache_entries"), 1.0);
}

#[tokio::test]
async fn with_no_cache_every_request_is_verified() {
    let stack = Stack::with(options("", "token_cache_size = 0")).await;
    let token = stack.token(json!({}));
    for _ in 0..3 {
        assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    }
    assert_eq!(lookups(&stack).await, (0.0, 0.0));
}

#[tokio::test]
async fn a_cached_token_is_refused_once_it_expires() {
    let stack = Stack::with(options("leeway = \"0s\"", "")).await;
    let exp = now() + 2;
    let token = stack.token(json!({"exp": exp}));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    assert_eq!(lookups(&stack).await.0, 1.0, "the second request was a cache hit");
    let expired = eventually(WITHIN, || async { stack.get_with_token("/orders", &token).await.status == 401 }).await;
    assert!(expired, "an expired cached token was still accepted");
    assert!(now() >= exp, "refused before its exp");
    let reply = stack.get_with_token("/orders", &token).await;
    assert!(String::from_utf8_lossy(&reply.body).contains("expired"), "{:?}", reply.body);
}

#[tokio::test]
async fn a_token_not_yet_valid_is_accepted_once_it_is() {
    let stack = Stack::with(options("leeway = \"0s\"", "")).await;
    let token = stack.token(json!({"nbf": now() + 2}));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 401);
    let valid = eventually(WITHIN, || async { stack.get_with_token("/orders", &token).await.status == 200 }).await;
    assert!(valid, "the token never became valid");
}

#[tokio::test]
async fn a_cached_token_is_refused_once_its_key_is_retired() {
    let stack = Stack::with(options("", "")).await;
    let token = stack.token(json!({}));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    stack.idp.publish(&[&SigningKey::generate("k2")]);
    let refused = eventually(WITHIN, || async { stack.get_with_token("/orders", &token).await.status == 401 }).await;
    assert!(refused, "a token of a retired key was still accepted from the cache");
}

#[tokio::test]
async fn a_cached_token_is_refused_once_its_kid_names_another_key() {
    let stack = Stack::with(options("", "")).await;
    let token = stack.token(json!({}));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    // same kid, new material: the cached verification was made with a key
    // the provider no longer publishes
    stack.idp.publish(&[&SigningKey::generate("k1")]);
    let refused = eventually(WITHIN, || async { stack.get_with_token("/orders", &token).await.status == 401 }).await;
    assert!(refused, "a token of a replaced key was still accepted from the cache");
}

#[tokio::test]
async fn a_changed_provider_config_drops_its_cached_tokens() {
    let watch = "watch_interval = \"100ms\"";
    let stack = Stack::with(options("", watch)).await;
    let token = stack.token(json!({"aud": "other"}));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    let narrower = stack.render(&Options {
        providers: Some(format!(
            "[[providers]]\nname = \"idp\"\nissuer = \"{{issuer}}\"\njwks_url = \"{{jwks_url}}\"\naudiences = [\"{}\"]\n",
            crate::support::AUDIENCE
        )),
        routes: ROUTES.to_owned(),
        ..options("", watch)
    });
    stack.write_config(&narrower);
    let refused = eventually(WITHIN, || async { stack.get_with_token("/orders", &token).await.status == 401 }).await;
    assert!(refused, "a token for an audience no longer accepted was still accepted from the cache");
    assert_eq!(stack.get_with_token("/orders", &stack.token(json!({}))).await.status, 200);
}

#[tokio::test]
async fn a_reload_that_reads_more_claims_sees_them_in_cached_tokens() {
    let route = |extra: &str| {
        format!("[[routes]]\nname = \"orders\"\npath = \"/orders\"\nupstream = \"{{upstream}}\"\n{extra}\n")
    };
    let watch = "watch_interval = \"100ms\"";
    let initial = Options { routes: route("inject_headers = { \"x-user-id\" = \"sub\" }"), ..options("", watch) };
    let stack = Stack::with(initial).await;
    let admin = stack.token(json!({"roles": ["admin"]}));
    let viewer = stack.token(json!({"roles": ["viewer"]}));
    for token in [&admin, &viewer] {
        assert_eq!(stack.get_with_token("/orders", token).await.status, 200);
    }
    let stricter = route("require_claims = { roles = [\"admin\"] }\ninject_headers = { \"x-team\" = \"team\" }");
    stack.write_config(&stack.render(&Options { routes: stricter, ..options("", watch) }));
    let applied = eventually(WITHIN, || async { stack.get_with_token("/orders", &viewer).await.status == 403 }).await;
    assert!(applied, "the new requirement was never applied to a cached token");
    let reply = stack.get_with_token("/orders", &admin).await;
    assert_eq!(reply.status, 200, "a cached token must be judged on claims the new config reads");
}
