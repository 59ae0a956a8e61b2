//! The binary as an operator runs it: JSON access logs, `SIGHUP` reloads,
//! and `explain` answering "why did I get 401".

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use portcullis::dev::{EchoUpstream, SigningKey, now};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStderr, Command};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const SECRET: &[u8] = b"an-hs256-secret-of-32-bytes-or-more";

/// A config verifying HS256 tokens from a secret file (nothing to fetch),
/// routing `/orders` to `upstream`.
fn config(upstream: &str, extra_routes: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
tls_cert = "server.crt"
tls_key = "server.key"
watch_interval = "0s"

[log]
format = "json"
include_sub = true

[[providers]]
name = "local"
issuer = "https://issuer.test"
secret_file = "secret.key"
algorithms = ["HS256"]
audiences = ["orders"]

[[routes]]
name = "orders"
path = "/orders"
upstream = "{upstream}"
require_claims = {{ roles = ["admin"] }}
inject_headers = {{ "x-user-id" = "sub" }}
{extra_routes}"#
    )
}

fn workdir(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    portcullis::dev::write_self_signed_certificate(dir.path()).unwrap();
    std::fs::write(dir.path().join("secret.key"), SECRET).unwrap();
    std::fs::write(dir.path().join("portcullis.toml"), config).unwrap();
    dir
}

fn token(claims: Value) -> String {
    let mut all =
        json!({"iss": "https://issuer.test", "aud": "orders", "sub": "alice", "roles": ["admin"], "exp": now() + 600});
    for (name, value) in claims.as_object().unwrap() {
        all[name] = value.clone();
    }
    SigningKey::from_secret(Algorithm::HS256, SECRET).sign(&all)
}

/// The next stderr line (JSON) that `wanted` accepts, within 10 s.
async fn next_event(lines: &mut Lines<BufReader<ChildStderr>>, wanted: impl Fn(&Value) -> bool) -> Value {
    let find = async {
        while let Ok(Some(line)) = lines.next_line().await {
            let event: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
            if wanted(&event) {
                return event;
            }
        }
        panic!("stderr ended");
    };
    tokio::time::timeout(Duration::from_secs(10), find).await.expect("the log event comes")
}

async fn curl(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", "server.crt"])
        .args(args)
        .current_dir(dir)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn access_logs_are_json_events_and_sighup_reloads() {
    let echo = EchoUpstream::start().await.unwrap();
    let dir = workdir(&config(&echo.url(), ""));
    let mut child = Command::new(BIN)
        .args(["run", "--config", "portcullis.toml"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = next_event(&mut lines, |e| e["message"] == "listening").await;
    let port = listening["addr"].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
    let url = |path: &str| format!("https://localhost:{port}{path}");

    let good = token(json!({}));
    let bearer = format!("Authorization: Bearer {good}");
    let status =
        curl(dir.path(), &["-H", &bearer, "-H", "x-request-id: req-7", &url("/orders/1?api_key=hidden")]).await;
    assert_eq!(status, "200");
    let event = next_event(&mut lines, |e| e["target"] == "portcullis::access").await;
    let text = event.to_string();
    for (field, expected) in [
        ("request_id", json!("req-7")),
        ("route", json!("orders")),
        ("method", json!("GET")),
        ("path", json!("/orders/1")),
        ("status", json!(200)),
        ("decision", json!("allow")),
        ("sub", json!("alice")),
        ("completed", json!(true)),
    ] {
        assert_eq!(event[field], expected, "{field} in {text}");
    }
    assert!(event["bytes"].as_u64().unwrap() > 0 && event["duration_ms"].as_f64().is_some(), "{text}");
    assert!(event["upstream_ms"].as_f64().unwrap() <= event["duration_ms"].as_f64().unwrap(), "{text}");
    assert!(!text.contains(&good) && !text.contains("hidden"), "a token or the query was logged: {text}");

    let expired = token(json!({"exp": 1}));
    assert_eq!(curl(dir.path(), &["-H", &format!("Authorization: Bearer {expired}"), &url("/orders")]).await, "401");
    let event = next_event(&mut lines, |e| e["target"] == "portcullis::access").await;
    assert_eq!((event["decision"].as_str(), event["reason"].as_str()), (Some("deny"), Some("expired")), "{event}");
    assert!(!event.to_string().contains(&expired));

    // SIGHUP: the file changed (watching is off), and a signal applies it
    assert_eq!(curl(dir.path(), &[&url("/extra")]).await, "404");
    let extra = "[[routes]]\nname = \"extra\"\npath = \"/extra\"\nupstream = \"{upstream}\"\nauth = \"public\"\n";
    std::fs::write(dir.path().join("portcullis.toml"), config(&echo.url(), &extra.replace("{upstream}", &echo.url())))
        .unwrap();
    let pid = child.id().unwrap().to_string();
    Command::new("kill").args(["-HUP", &pid]).status().await.unwrap();
    next_event(&mut lines, |e| e["message"] == "config reloaded").await;
    assert_eq!(curl(dir.path(), &[&url("/extra")]).await, "200");

    Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(status.success());
}

async fn explain(dir: &Path, args: &[&str]) -> (i32, String) {
    let output = Command::new(BIN)
        .args(["explain", "--config", "portcullis.toml", "--offline"])
        .args(args)
        .current_dir(dir)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap(), text)
}

#[tokio::test]
async fn explain_says_why_a_request_is_allowed_or_denied() {
    let dir = workdir(&config("http://orders.internal:8080", ""));
    let (code, text) =
        explain(dir.path(), &["GET", "https://api.test/orders/7?x=1", "--token", &token(json!({}))]).await;
    assert_eq!(code, 0, "{text}");
    for expected in [
        "orders: */orders: matches",
        "pass token: valid (iss https://issuer.test, sub alice",
        "pass required claims",
        "decision: ALLOW",
        "GET http://orders.internal:8080/orders/7?x=1",
        "x-user-id: alice    <- set by the gateway",
        "(removed: authorization)",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from\n{text}");
    }

    let (code, text) = explain(
        dir.path(),
        &["GET", "https://api.test/orders", "-H", "X-User-Id: mallory", "--token", &token(json!({"roles": ["ops"]}))],
    )
    .await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAIL required claims: claim \"roles\" must include \"admin\""), "{text}");
    assert!(text.contains("decision: DENY 403 insufficient_claims"), "{text}");

    let (code, text) =
        explain(dir.path(), &["GET", "https://api.test/orders", "--token", &token(json!({"exp": 1}))]).await;
    assert_eq!(code, 1);
    assert!(text.contains("FAIL token: the token has expired") && text.contains("DENY 401"), "{text}");

    let (code, text) = explain(dir.path(), &["POST", "https://api.test/billing"]).await;
    assert_eq!(code, 1);
    assert!(text.contains("orders: */orders: no (path /billing is not /orders)"), "{text}");
    assert!(text.contains("decision: DENY 404 no_route"), "{text}");

    let (code, text) = explain(dir.path(), &["GET", "not a url"]).await;
    assert_eq!(code, 2, "{text}");
}
