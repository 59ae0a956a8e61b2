//! Key rotation without restarts, and what happens when the identity
//! provider misbehaves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::dev::{IdentityProvider, SigningKey};
use serde_json::json;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::Full;

use crate::support::{self, AUDIENCE, ISSUER, Options, Stack, eventually};

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
    let client = support::client::<Full<Bytes>>(&stack.cert, Version::HTTP_2);
    let requests = (0..500).map(|i| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(format!("random-{i}"));
        let token = stranger.sign_with(&header, &stack.claims(json!({})));
        let request = Request::get(stack.url("/orders"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let client = &client;
        async move { support::send(client, request).await.status }
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

/// A name, and how to make the identity provider behave so.
type Misbehaviour<'a> = (&'static str, Box<dyn Fn() + 'a>);

#[tokio::test]
async fn misbehaving_identity_providers_never_cost_the_last_good_keys() {
    // long enough to read 50 MiB, were the size cap not there
    let options = Options { refresh_interval: "100ms", ..Options::provider("fetch_timeout = \"3s\"") };
    let stack = Stack::with(options).await;
    let token = stack.token(json!({}));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    let idp = &stack.idp;
    // every document below offers a new key: were it accepted, the new
    // key's token would pass
    let next = Arc::new(SigningKey::generate("k2"));
    let next_token = next.sign(&stack.claims(json!({})));
    let both = json!({"keys": [stack.key.jwk(), next.jwk()]});
    // a host that would serve the new key, were redirects to it followed
    let other = IdentityProvider::start(ISSUER, AUDIENCE, next.clone()).await.unwrap();
    let elsewhere = format!("http://localhost:{}/.well-known/jwks.json", other.addr().port());
    // each ends by publishing the document with the new key, so a fetch sees
    // either the old document or the misbehaviour
    let misbehaviours: [Misbehaviour; 5] = [
        ("500", Box::new(|| idp.respond_with(StatusCode::INTERNAL_SERVER_ERROR))),
        ("404", Box::new(|| idp.respond_with(StatusCode::NOT_FOUND))),
        ("slow", Box::new(|| idp.delay(Duration::from_secs(10)))),
        ("50 MiB", Box::new(|| idp.publish_document(json!({"keys": both["keys"], "pad": "x".repeat(50 << 20)})))),
        (
            "redirecting elsewhere",
            Box::new(|| {
                idp.respond_with(StatusCode::FOUND);
                idp.add_header("location", &elsewhere);
            }),
        ),
    ];
    for (name, misbehave) in misbehaviours {
        misbehave();
        if name != "50 MiB" {
            idp.publish_document(both.clone());
        }
        // two attempts have started, so one has finished
        let seen = idp.fetches();
        fetched(&stack, seen + 2).await;
        assert_eq!(stack.get_with_token("/orders", &token).await.status, 200, "while the JWKS is {name}");
        assert_eq!(stack.get_with_token("/orders", &next_token).await.status, 401, "{name} was accepted");
        // the old document first, then good behaviour
        idp.publish(&[&stack.key]);
        idp.respond_with(StatusCode::OK);
        idp.delay(Duration::ZERO);
    }
    assert_eq!(other.fetches(), 0, "the redirect was followed");
    idp.publish(&[&stack.key, &next]);
    let recovered = eventually(Duration::from_secs(5), || async {
        stack.get_with_token("/orders", &next_token).await.status == 200
    });
    assert!(recovered.await, "a well-behaved JWKS is picked up again");
}

#[tokio::test]
async fn rotation_causes_no_false_refusals() {
    let stack = Stack::with(refreshing_every("200ms")).await;
    let next = Arc::new(SigningKey::generate("k2"));
    let signer = std::sync::Mutex::new(stack.key.clone());
    let refused = std::sync::atomic::AtomicUsize::new(0);
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let traffic = async {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let key = signer.lock().unwrap().clone();
            let status = stack.get_with_token("/orders", &key.sign(&stack.claims(json!({})))).await.status;
            sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if status != 200 {
                refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    };
    let rotation = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stack.idp.publish(&[&stack.key, &next]); // 1. publish the new key
        tokio::time::sleep(Duration::from_millis(500)).await;
        *signer.lock().unwrap() = next.clone(); // 2. sign with it
        tokio::time::sleep(Duration::from_millis(500)).await;
        stack.idp.publish(&[&next]); // 3. retire the old one
    };
    tokio::join!(traffic, rotation);
    assert!(sent.into_inner() > 10);
    assert_eq!(refused.into_inner(), 0, "a valid token was refused during rotation");
    let old = stack.key.sign(&stack.claims(json!({})));
    let retired =
        eventually(Duration::from_secs(5), || async { stack.get_with_token("/orders", &old).await.status == 401 });
    assert!(retired.await, "the retired key still verifies");
}

/// A stack whose identity provider sends `cache_control` from the start.
async fn stack_with_cache_control(options: Options, cache_control: &str) -> Stack {
    let key = Arc::new(SigningKey::generate("k1"));
    let idp = IdentityProvider::start(ISSUER, AUDIENCE, key.clone()).await.unwrap();
    idp.add_header("cache-control", cache_control);
    Stack::with_idp(options, idp, key).await
}

#[tokio::test]
async fn cache_control_decides_when_keys_are_fetched_again() {
    // max-age=0 is clamped up to min_refresh: fetched every 200 ms
    let stack = stack_with_cache_control(Options::provider("min_refresh = \"200ms\""), "public, max-age=0").await;
    assert_eq!(stack.get_with_token("/orders", &stack.token(json!({}))).await.status, 200);
    fetched(&stack, 5).await;

    // max-age=3600 beats a refresh_interval of 100 ms, which applies only
    // when the response says nothing
    let stack = stack_with_cache_control(refreshing_every("100ms"), "max-age=3600").await;
    assert_eq!(stack.get_with_token("/orders", &stack.token(json!({}))).await.status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.idp.fetches(), 1, "fetched again despite max-age=3600");
}

#[tokio::test]
async fn keys_stop_verifying_max_stale_after_they_expire() {
    let options = Options { refresh_interval: "100ms", ..Options::provider("max_stale = \"300ms\"") };
    let stack = Stack::with(options).await;
    let token = stack.token(json!({}));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
    stack.idp.stop();
    let stale =
        eventually(Duration::from_secs(5), || async { stack.get_with_token("/orders", &token).await.status == 503 });
    assert!(stale.await, "stale keys still verify");
    let before = stack.echo.requests();
    let reply = stack.get_with_token("/orders", &token).await;
    assert_eq!(reply.json()["error"], "temporarily_unavailable");
    assert_eq!(stack.echo.requests(), before, "a refused request never reaches the upstream");
}

#[tokio::test]
async fn a_restart_during_an_outage_verifies_with_cached_keys() {
    let cache = tempfile::tempdir().unwrap();
    let provider = format!("cache_dir = {:?}", cache.path().display().to_string());
    let first = Stack::with(Options::provider(&provider)).await;
    let token = first.token(json!({}));
    assert_eq!(first.get_with_token("/orders", &token).await.status, 200);
    let jwks_url = first.idp.jwks_url();
    let key = first.key.clone();
    drop(first); // the gateway and its identity provider both go away

    // a new gateway, configured for the same (now unreachable) JWKS URL
    let providers = format!(
        "[[providers]]\nname = \"idp\"\nissuer = \"{ISSUER}\"\njwks_url = \"{jwks_url}\"\naudiences = [\"orders\"]\n{provider}\n"
    );
    let second = Stack::with(Options::providers(&providers)).await;
    assert_eq!(second.get_with_token("/orders", &token).await.status, 200, "verified with the cached keys");
    let stranger = SigningKey::generate("k2").sign(&second.claims(json!({})));
    assert_eq!(second.get_with_token("/orders", &stranger).await.status, 401);
    drop(key);
}

#[tokio::test]
async fn an_unknown_kid_is_not_fetched_for_again_soon() {
    let stack = Stack::with(Options { refetch_cooldown: "100ms", ..Options::default() }).await;
    assert_eq!(stack.get_with_token("/orders", &stack.token(json!({}))).await.status, 200);
    fetched(&stack, 1).await;
    let stranger = SigningKey::generate("gone").sign(&stack.claims(json!({})));
    assert_eq!(stack.get_with_token("/orders", &stranger).await.status, 401);
    let after_first = stack.idp.fetches();
    assert_eq!(after_first, 2, "one early fetch for a new kid");
    tokio::time::sleep(Duration::from_millis(300)).await; // the cooldown is over
    assert_eq!(stack.get_with_token("/orders", &stranger).await.status, 401);
    assert_eq!(stack.idp.fetches(), after_first, "a kid just found missing is not fetched for again");
    let another = SigningKey::generate("new").sign(&stack.claims(json!({})));
    assert_eq!(stack.get_with_token("/orders", &another).await.status, 401);
    assert_eq!(stack.idp.fetches(), after_first + 1, "another kid may still ask");
}

#[tokio::test]
async fn discovery_runs_again_when_the_jwks_keeps_failing() {
    let first = Arc::new(SigningKey::generate("k1"));
    let idp = IdentityProvider::start_with_url_issuer(AUDIENCE, first.clone()).await.unwrap();
    let providers = "[[providers]]\nname = \"oidc\"\nissuer = \"{issuer}\"\ndiscovery = true\naudiences = [\"orders\"]\nrefresh_interval = \"100ms\"\n";
    let stack = Stack::with_idp(Options::providers(providers), idp, first.clone()).await;
    let claims = json!({"iss": stack.idp.issuer(), "aud": AUDIENCE, "exp": portcullis::dev::now() + 600});
    assert_eq!(stack.get_with_token("/orders", &first.sign(&claims)).await.status, 200);

    // the keys move to another server, and the old JWKS URL starts failing
    let moved = Arc::new(SigningKey::generate("k2"));
    let elsewhere = IdentityProvider::start(ISSUER, AUDIENCE, moved.clone()).await.unwrap();
    stack.idp.advertise_jwks_uri(&elsewhere.jwks_url());
    stack.idp.respond_with(StatusCode::INTERNAL_SERVER_ERROR);
    let rediscovered = eventually(Duration::from_secs(10), || async {
        stack.get_with_token("/orders", &moved.sign(&claims)).await.status == 200
    });
    assert!(rediscovered.await, "the new jwks_uri was never fetched");
    assert!(stack.idp.fetches() >= 4, "three failures come first");
}

#[tokio::test]
async fn keys_are_fetched_again_before_they_expire() {
    // fresh for 1 s and not a moment longer: a refresh at expiry, or after,
    // would leave requests without keys
    let key = Arc::new(SigningKey::generate("k1"));
    let idp = IdentityProvider::start(ISSUER, AUDIENCE, key.clone()).await.unwrap();
    idp.add_header("cache-control", "max-age=1");
    let options = Options::provider("min_refresh = \"1s\"\nmax_stale = \"0s\"");
    let stack = Stack::with_idp(options, idp, key).await;
    let token = stack.token(json!({}));
    let deadline = Instant::now() + Duration::from_millis(3500);
    let mut refused = 0;
    while Instant::now() < deadline {
        if stack.get_with_token("/orders", &token).await.status != 200 {
            refused += 1;
        }
    }
    assert_eq!(refused, 0, "requests found the keys expired");
    assert!(stack.idp.fetches() >= 4, "{} fetches in 3.5 s", stack.idp.fetches());
}

#[tokio::test]
async fn failed_fetches_are_retried_with_growing_delays() {
    let key = Arc::new(SigningKey::generate("k1"));
    let idp = IdentityProvider::start(ISSUER, AUDIENCE, key.clone()).await.unwrap();
    idp.respond_with(StatusCode::SERVICE_UNAVAILABLE);
    let stack = Stack::with_idp(refreshing_every("10s"), idp, key).await;
    // retries after about 1 s, 2 s, 4 s (each in its upper half, at random):
    // three fetches by 3.2 s, where retrying every refresh_interval would
    // make one and retrying at once dozens
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let fetches = stack.idp.fetches();
    assert!((2..=4).contains(&fetches), "{fetches} fetches in 3.2 s");
}
