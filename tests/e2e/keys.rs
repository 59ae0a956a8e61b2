//! Key rotation without restarts, and what happens when the identity
//! provider misbehaves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::dev::{IdentityProvider, SigningKey};
use serde_json::json;

use crate::support::{AUDIENCE, ISSUER, Options, Stack, eventually};

fn refreshing_every(interval: &'static str) -> Options {
    Options { refresh_interval: interval, ..Options::default() }
}

/// Waits until the gateway has fetched the JWKS at least `count` times.
async fn fetched(stack: &Stack, count: usize) {
    let done = eventually(Duration::from_secs(10), || async { stack.idp.fetches() >= count }).await;
    assert!(done, "only {} fetches", stack.idp.fetches());
}

#[tokio::test]
async fn a_newly_published_key_is_accepted_without_restart() {
    let stack = Stack::start().await;
    assert_eq!(stack.get_with_token("/orders", &stack.token(json!({}))).await.status, 200);
    fetched(&stack, 1).await;

    let next = SigningKey::generate("k2");
    stack.idp.publish(&[&stack.key, &next]);
    let reply = stack.get_with_token("/orders", &next.sign(&stack.claims(json!({})))).await;
    assert_eq!(reply.status, 200, "the unknown kid waited for one early fetch");
    assert_eq!(reply.upstream_header("x-user-id"), Some(json!("alice")));
    assert_eq!(stack.idp.fetches(), 2);
}

#[tokio::test]
async fn a_retired_key_is_refused_after_the_next_refresh() {
    let stack = Stack::with(refreshing_every("200ms")).await;
    let old_token = stack.token(json!({}));
    assert_eq!(stack.get_with_token("/orders", &old_token).await.status, 200);

    let next = SigningKey::generate("k2");
    stack.idp.publish(&[&next]);
    let retired = eventually(Duration::from_secs(10), || async {
        stack.get_with_token("/orders", &old_token).await.status == 401
    })
    .await;
    assert!(retired, "the retired key still verifies");
    let new_token = next.sign(&stack.claims(json!({})));
    assert_eq!(stack.get_with_token("/orders", &new_token).await.status, 200);
}

#[tokio::test]
async fn bad_key_sets_never_replace_the_last_good_one() {
    let stack = Stack::with(refreshing_every("100ms")).await;
    let token = stack.token(json!({}));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    let bad_documents = [
        json!({"keys": []}),
        json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
        json!({"no": "keys"}),
        json!("not a key set"),
    ];
    for document in bad_documents {
        stack.idp.publish_document(document.clone());
        let seen = stack.idp.fetches();
        fetched(&stack, seen + 2).await;
        assert_eq!(stack.get_with_token("/orders", &token).await.status, 200, "after {document}");
    }
}

#[tokio::test]
async fn the_last_keys_keep_working_while_the_identity_provider_is_down() {
    let stack = Stack::with(refreshing_every("100ms")).await;
    let token = stack.token(json!({}));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    stack.idp.stop();
    // several refresh periods pass with the JWKS unreachable
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    // an unknown kid cannot be fetched: refused, not hung
    let stranger = SigningKey::generate("k9").sign(&stack.claims(json!({})));
    assert_eq!(stack.get_with_token("/orders", &stranger).await.status, 401);
}

#[tokio::test]
async fn a_stalled_identity_provider_never_holds_requests_for_long() {
    let stack = Stack::with(refreshing_every("100ms")).await;
    let token = stack.token(json!({}));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    stack.idp.stall(true);
    let before = stack.idp.fetches();
    fetched(&stack, before + 1).await; // a periodic fetch now hangs

    let started = Instant::now();
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(500), "a known key waited for a periodic fetch");

    let unknown = |kid: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(kid.into());
        stack.key.sign_with(&header, &stack.claims(json!({})))
    };
    let started = Instant::now();
    assert_eq!(stack.get_with_token("/orders", &unknown("new-1")).await.status, 401);
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(2500), "an unknown kid waited {waited:?}");

    let started = Instant::now();
    assert_eq!(stack.get_with_token("/orders", &unknown("new-2")).await.status, 401);
    assert!(started.elapsed() < Duration::from_millis(500), "within the cooldown, no second wait");
    assert_eq!(stack.echo.requests(), 2);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_at_most_one_fetch_per_cooldown() {
    let stack = Stack::start().await;
    assert_eq!(stack.get_with_token("/orders", &stack.token(json!({}))).await.status, 200);
    fetched(&stack, 1).await;
    let before = stack.idp.fetches();

    let stranger = SigningKey::generate("unused");
    let requests = (0..40).map(|i| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(format!("random-{i}"));
        let token = stranger.sign_with(&header, &stack.claims(json!({})));
        let stack = &stack;
        async move { stack.get_with_token("/orders", &token).await.status }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|&s| s == 401), "{statuses:?}");
    assert!(stack.idp.fetches() <= before + 1, "{} fetches for one flood", stack.idp.fetches() - before);
    assert_eq!(stack.echo.requests(), 1);
}

#[tokio::test]
async fn routes_deny_until_the_keys_are_first_loaded() {
    let key = Arc::new(SigningKey::generate("k1"));
    let idp = IdentityProvider::start(ISSUER, AUDIENCE, key.clone()).await.unwrap();
    idp.publish_document(json!({"keys": []}));
    let stack = Stack::with_idp(refreshing_every("100ms"), idp, key).await;
    let token = stack.token(json!({}));

    let reply = stack.get_with_token("/orders", &token).await;
    assert_eq!(reply.status, 503, "fail closed: no keys, no pass");
    assert_eq!(reply.json()["error"], "temporarily_unavailable");
    assert_eq!(stack.get_with_token("/maybe", &token).await.status, 503);
    assert_eq!(stack.echo.requests(), 0);
    assert_eq!(stack.get("/public", &[]).await.status, 200, "public routes need no keys");

    stack.idp.publish(&[&stack.key]);
    let recovered =
        eventually(Duration::from_secs(10), || async { stack.get_with_token("/orders", &token).await.status == 200 })
            .await;
    assert!(recovered);
}
