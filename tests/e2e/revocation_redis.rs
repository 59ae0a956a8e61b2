//! Revocation through Redis, with a real `redis-server` per test (on a free
//! port, its data in a temporary directory): two gateways share one list, a
//! revocation made on one is seen by the other within a second, entries
//! expire with their tokens, and a Redis restart never lets a revoked token
//! through.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::dev::{IdentityProvider, now};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::support::{AUDIENCE, ISSUER, Options, Stack, admin_get, admin_post, eventually};

const WITHIN: Duration = Duration::from_secs(10);
const ADMIN_TOKEN: &str = "s3cret";

/// A `redis-server` of this test's own; killed when dropped.
struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    async fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = RedisServer { port, dir: tempfile::tempdir().unwrap(), child: None };
        server.run().await;
        server
    }

    /// Starts the server on its port and directory (an append-only file,
    /// synced on every write, so a restart keeps every entry).
    async fn run(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.path().display().to_string();
        let args = ["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"];
        let spawned = Command::new("redis-server")
            .args(args)
            .args(["--appendfsync", "always", "--dir", &dir])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server is not installed: `apt-get install redis-server` (.ci/run does it)")
            }
            Err(error) => panic!("redis-server did not start: {error}"),
        };
        self.child = Some(child);
        let up = eventually(WITHIN, || async { self.ping().await }).await;
        assert!(up, "redis-server never answered on port {}", self.port);
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?.get_multiplexed_async_connection().await
    }

    async fn ping(&self) -> bool {
        let Ok(mut connection) = self.connection().await else {
            return false;
        };
        redis::cmd("PING").query_async::<String>(&mut connection).await.is_ok()
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &mut redis::Cmd) -> T {
        command.query_async(&mut self.connection().await.unwrap()).await.unwrap()
    }
}

/// A gateway whose provider opts in, with an admin listener that takes
/// revocations, on `redis`; `extra` goes into `[revocation]`.
async fn gateway(
    redis: &RedisServer,
    idp: IdentityProvider,
    key: Arc<portcullis::dev::SigningKey>,
    extra: &str,
) -> Stack {
    let token_file = redis.dir.path().join("admin.token");
    std::fs::write(&token_file, ADMIN_TOKEN).unwrap();
    let options = Options {
        provider: "revocation = true\nleeway = \"0s\"".into(),
        tables: format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n\n[revocation]\nbackend = \"redis\"\nurl = {:?}\n\
             key_prefix = \"test:\"\nresync_interval = \"200ms\"\nmax_staleness = \"1s\"\n{extra}\n",
            token_file.display().to_string(),
            redis.url()
        ),
        ..Options::default()
    };
    let stack = Stack::with_idp(options, idp, key).await;
    let synced =
        eventually(WITHIN, || async { stack.get_with_token("/orders", &stack.token(json!({}))).await.status == 200 })
            .await;
    assert!(synced, "the gateway never synced its revocation list");
    stack
}

/// Two gateways that accept the same tokens and share `redis`.
async fn pair(redis: &RedisServer) -> (Stack, Stack) {
    let key = Arc::new(portcullis::dev::SigningKey::generate("k1"));
    let idp = |key| IdentityProvider::start(ISSUER, AUDIENCE, key);
    let a = gateway(redis, idp(key.clone()).await.unwrap(), key.clone(), "").await;
    let b = gateway(redis, idp(key.clone()).await.unwrap(), key, "").await;
    (a, b)
}

async fn revoke(stack: &Stack, entry: Value) -> (u16, String) {
    let authorization = format!("Bearer {ADMIN_TOKEN}");
    admin_post(stack.admin.unwrap(), "/revocations", &[("authorization", &authorization)], &entry.to_string()).await
}

async fn status(stack: &Stack, token: &str) -> u16 {
    stack.get_with_token("/orders", token).await.status
}

#[tokio::test]
async fn a_jti_revoked_on_one_gateway_is_refused_by_the_other_within_a_second() {
    let redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    let exp = now() + 3600;
    let token = a.token(json!({"jti": "stolen", "exp": exp}));
    assert_eq!(status(&a, &token).await, 200);
    assert_eq!(status(&b, &token).await, 200, "and cached there");
    let (code, body) = revoke(&a, json!({"jti": "stolen", "exp": exp})).await;
    assert_eq!(code, 200, "{body}");
    let revoked_at = Instant::now();
    assert_eq!(status(&a, &token).await, 401);
    let refused = eventually(Duration::from_secs(1), || async { status(&b, &token).await == 401 }).await;
    assert!(refused, "gateway B still accepted the token {:?} after A revoked it", revoked_at.elapsed());
    let key: String = redis.query(redis::cmd("GET").arg("test:jti:stolen")).await;
    assert_eq!(key, exp.to_string(), "the documented key format");
    assert_eq!(status(&b, &a.token(json!({"jti": "other"}))).await, 200);
    // `explain` reads the same list before it answers
    let config = b.config_path.display().to_string();
    let url = b.url("/orders");
    let explain = |token: String| {
        let args = ["explain", "--config", &config, "GET", &url, "--token", &token].map(str::to_owned);
        async move { Command::new(env!("CARGO_BIN_EXE_portcullis")).args(args).output().await.unwrap() }
    };
    let output = explain(token).await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("the token has been revoked"), "{text}");
    assert_eq!(explain(a.token(json!({"jti": "other"}))).await.status.code(), Some(0));
}

#[tokio::test]
async fn a_sub_cutoff_and_keys_written_straight_to_redis_are_applied() {
    let redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    let old = a.token(json!({"iat": now() - 10}));
    assert_eq!(status(&b, &old).await, 200);
    let (code, body) = revoke(&a, json!({"sub": "alice", "before": now() - 1})).await;
    assert_eq!(code, 200, "{body}");
    let refused = eventually(Duration::from_secs(1), || async { status(&b, &old).await == 401 }).await;
    assert!(refused, "a sub cut-off did not reach gateway B");
    assert_eq!(status(&b, &a.token(json!({}))).await, 200, "a token issued after the cut-off");
    assert_eq!(status(&b, &a.token(json!({"sub": "bob", "iat": now() - 10}))).await, 200);
    let ttl: i64 = redis.query(redis::cmd("TTL").arg("test:sub:alice")).await;
    assert!(ttl > 23 * 3600 && ttl <= 24 * 3600 + 300, "max_token_lifetime (and a leeway) after before: {ttl}");
    // an issuer writing the key itself, with no message: the next resync has it
    let exp = now() + 600;
    let _: () = redis.query(redis::cmd("SET").arg("test:sid:s1").arg(exp).arg("EX").arg(600)).await;
    let session = a.token(json!({"sid": "s1", "sub": "carol"}));
    let refused = eventually(WITHIN, || async { status(&b, &session).await == 401 }).await;
    assert!(refused, "a key written straight to Redis was never read");
}

#[tokio::test]
async fn entries_expire_with_their_tokens() {
    let redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    // entries outlive their token by the largest leeway a provider may
    // have (5 minutes): a token that expired 298 s ago has 2 s left
    let exp = now() - 298;
    let (code, body) = revoke(&a, json!({"jti": "short", "exp": exp})).await;
    assert_eq!(code, 200, "{body}");
    let ttl: i64 = redis.query(redis::cmd("TTL").arg("test:jti:short")).await;
    assert!((1..=2).contains(&ttl), "the key lives as long as the token, and 5 minutes: {ttl}");
    let entries = |stack: &Stack| {
        let admin = stack.admin.unwrap();
        async move {
            serde_json::from_str::<Value>(&admin_get(admin, "/readyz").await.1).unwrap()["revocation"]["entries"]
                .clone()
        }
    };
    assert!(eventually(WITHIN, || async { entries(&b).await == 1 }).await, "B never had the entry");
    let gone = eventually(WITHIN, || async {
        let exists: i64 = redis.query(redis::cmd("EXISTS").arg("test:jti:short")).await;
        exists == 0 && entries(&a).await == 0 && entries(&b).await == 0
    })
    .await;
    assert!(gone, "the entry outlived its token");
    assert!(now() >= exp + 300, "dropped before the token and its leeway expired");
}

#[tokio::test]
async fn a_redis_restart_never_lets_a_revoked_token_through_in_closed_mode() {
    let mut redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    let exp = now() + 3600;
    let revoked = a.token(json!({"jti": "r1", "exp": exp}));
    let fine = a.token(json!({"jti": "f1", "exp": exp}));
    assert_eq!(revoke(&a, json!({"jti": "r1", "exp": exp})).await.0, 200);
    assert!(eventually(Duration::from_secs(1), || async { status(&b, &revoked).await == 401 }).await);
    redis.stop().await;
    // the local copy keeps serving, then (max_staleness 1s, closed) refuses
    // what it cannot vouch for; the revoked token is never accepted
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen_unavailable = false;
    while Instant::now() < deadline {
        for stack in [&a, &b] {
            assert_eq!(status(stack, &revoked).await, 401, "a revoked token while Redis is down");
            seen_unavailable |= status(stack, &fine).await == 503;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_unavailable, "a list stale past max_staleness still accepted tokens in closed mode");
    let (code, _) = revoke(&a, json!({"jti": "f1", "exp": exp})).await;
    assert_eq!(code, 503, "a write with Redis down is refused, not lost quietly");
    redis.run().await;
    let back = eventually(WITHIN, || async {
        assert_ne!(status(&a, &revoked).await, 200, "a revoked token after the restart");
        status(&b, &fine).await == 200 && status(&a, &fine).await == 200
    })
    .await;
    assert!(back, "the gateways never resynced after Redis came back");
    assert_eq!(status(&b, &revoked).await, 401, "the entry survived the restart");
    assert_eq!(revoke(&b, json!({"jti": "f1", "exp": exp})).await.0, 200);
    assert!(eventually(Duration::from_secs(1), || async { status(&a, &fine).await == 401 }).await);
}

#[tokio::test]
async fn keys_revoke_by_their_presence_and_a_store_that_loses_them_unrevokes_nothing() {
    let redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    // the usual hand-written denylist entry: a key whose value is not a time
    let _: () = redis.query(redis::cmd("SET").arg("test:jti:stolen").arg(1).arg("EX").arg(600)).await;
    let stolen = a.token(json!({"jti": "stolen"}));
    for gateway in [&a, &b] {
        let refused = eventually(WITHIN, || async { status(gateway, &stolen).await == 401 }).await;
        assert!(refused, "a key whose value is not the token's exp did not revoke it");
    }
    let (code, body) = revoke(&a, json!({"sub": "alice", "before": now() - 1})).await;
    assert_eq!(code, 200, "{body}");
    let old = a.token(json!({"iat": now() - 10}));
    for gateway in [&a, &b] {
        let refused = eventually(WITHIN, || async { status(gateway, &old).await == 401 }).await;
        assert!(refused, "the cut-off never reached a gateway");
    }
    // Redis loses everything (a restart without persistence, a flush):
    // several resyncs later, both gateways still refuse both tokens
    let _: () = redis.query(&mut redis::cmd("FLUSHALL")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for gateway in [&a, &b] {
        let (s1, s2) = (status(gateway, &stolen).await, status(gateway, &old).await);
        assert_eq!((s1, s2), (401, 401), "a lost entry un-revoked a token");
    }
    assert_eq!(status(&b, &a.token(json!({}))).await, 200);
}

#[tokio::test]
async fn a_late_write_never_moves_a_cutoff_back() {
    let redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    let later = now() - 1;
    assert_eq!(revoke(&a, json!({"sub": "alice", "before": later})).await.0, 200);
    // a retried or reordered write of an older logout
    assert_eq!(revoke(&b, json!({"sub": "alice", "before": later - 600})).await.0, 200);
    let held: u64 = redis.query(redis::cmd("GET").arg("test:sub:alice")).await;
    assert_eq!(held, later, "Redis kept the later cut-off");
    let between = a.token(json!({"iat": later - 300}));
    for gateway in [&a, &b] {
        let refused = eventually(WITHIN, || async { status(gateway, &between).await == 401 }).await;
        assert!(refused, "a token issued between the two cut-offs was accepted");
    }
}
