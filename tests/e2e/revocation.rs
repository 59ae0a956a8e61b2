//! Revocation with the `file` backend, the admin API and the CLI: a revoked
//! token is refused (401, reason `revoked`) before it reaches the upstream,
//! a cached one as soon as the list has it, and a list that cannot be read
//! keeps its last good copy until `max_staleness`, then fails as configured.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use portcullis::dev::now;
use serde_json::{Value, json};

use crate::support::{Options, ROUTES, Stack, admin_get, admin_post, eventually, metric};

const WITHIN: Duration = Duration::from_secs(10);
const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// The provider opts in; the list is `revoked.toml` in the stack's directory
/// (written before the gateway starts when `initial` is given).
fn options(dir: &Path, initial: Option<&str>, extra: &str) -> Options {
    let list = dir.join("revoked.toml");
    if let Some(text) = initial {
        std::fs::write(&list, text).unwrap();
    }
    Options {
        provider: "revocation = true".into(),
        tables: format!(
            "[revocation]\nbackend = \"file\"\nfile = {:?}\nresync_interval = \"100ms\"\n{extra}\n",
            list.display().to_string()
        ),
        ..Options::default()
    }
}

/// A stack whose list file sits in a directory made before it, so the file
/// can be written before the gateway reads it.
async fn stack(initial: Option<&str>, extra: &str, admin_token: Option<&str>) -> (Stack, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path(), initial, extra);
    if let Some(token) = admin_token {
        let file = dir.path().join("admin.token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        options
            .tables
            .push_str(&format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n", file.display().to_string()));
    }
    (Stack::with(options).await, dir)
}

fn list_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("revoked.toml")
}

/// Replaces the list file in one rename, as the gateway itself does.
fn write_list(dir: &tempfile::TempDir, text: &str) {
    let staged = dir.path().join("revoked.toml.new");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, list_path(dir)).unwrap();
}

async fn status(stack: &Stack, token: &str) -> u16 {
    stack.get_with_token("/orders", token).await.status
}

#[tokio::test]
async fn a_revoked_jti_is_refused_before_the_upstream_and_counted() {
    let exp = now() + 3600;
    let (stack, _dir) = stack(Some(&format!("[[revoked]]\njti = \"stolen\"\nexp = {exp}\n")), "", None).await;
    let reply = stack.get_with_token("/orders", &stack.token(json!({"jti": "stolen", "exp": exp}))).await;
    assert_eq!(reply.status, 401);
    assert!(reply.header("www-authenticate").contains("error=\"invalid_token\""), "{:?}", reply.headers);
    assert_eq!(reply.json()["error_description"], "the token has been revoked");
    assert_eq!(stack.echo.requests(), 0, "a revoked token reached the upstream");
    let other = stack.get_with_token("/orders", &stack.token(json!({"jti": "other"}))).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.upstream_header("x-user-id"), Some(json!("alice")));
    assert_eq!(status(&stack, &stack.token(json!({}))).await, 200, "a token without jti is not on a jti list");
}

#[tokio::test]
async fn a_sub_cutoff_refuses_tokens_issued_before_it_and_tokens_without_iat() {
    let cutoff = now() - 5;
    let (stack, _dir) = stack(Some(&format!("[[revoked]]\nsub = \"alice\"\nbefore = {cutoff}\n")), "", None).await;
    assert_eq!(status(&stack, &stack.token(json!({"iat": cutoff - 60}))).await, 401);
    assert_eq!(status(&stack, &stack.token(json!({"iat": null}))).await, 401, "no iat under a cut-off");
    assert_eq!(status(&stack, &stack.token(json!({"iat": cutoff}))).await, 200, "issued at the cut-off");
    assert_eq!(status(&stack, &stack.token(json!({"sub": "bob", "iat": cutoff - 60}))).await, 200);
}

#[tokio::test]
async fn a_cached_token_is_refused_as_soon_as_the_file_lists_it() {
    let (stack, dir) = stack(None, "", None).await;
    let exp = now() + 3600;
    let token = stack.token(json!({"jti": "j1", "exp": exp}));
    assert_eq!(status(&stack, &token).await, 200);
    assert_eq!(status(&stack, &token).await, 200, "now cached");
    write_list(&dir, &format!("[[revoked]]\njti = \"j1\"\nexp = {exp}\n"));
    let refused = eventually(WITHIN, || async { status(&stack, &token).await == 401 }).await;
    assert!(refused, "a cached token stayed accepted after its revocation");
}

#[tokio::test]
async fn a_bad_file_keeps_the_last_good_list_until_max_staleness() {
    let exp = now() + 3600;
    let good = format!("[[revoked]]\njti = \"j1\"\nexp = {exp}\n");
    let (stack, dir) = stack(Some(&good), "max_staleness = \"1500ms\"", None).await;
    let revoked = stack.token(json!({"jti": "j1", "exp": exp}));
    let fine = stack.token(json!({"jti": "j2"}));
    write_list(&dir, "[[revoked]]\njti = \"j3\"\n");
    for _ in 0..5 {
        assert_eq!(status(&stack, &revoked).await, 401, "the last good list was dropped");
        assert_eq!(status(&stack, &fine).await, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // fail_mode = "closed" (the default): a stale list refuses what it cannot vouch for
    let unavailable = eventually(WITHIN, || async { status(&stack, &fine).await == 503 }).await;
    assert!(unavailable, "a stale list still accepted tokens in closed mode");
    let reply = stack.get_with_token("/orders", &fine).await;
    assert!(reply.json()["detail"].as_str().unwrap().contains("revocation list is unavailable"), "{:?}", reply.body);
    assert_eq!(status(&stack, &revoked).await, 401, "what the stale list holds is still refused as revoked");
    write_list(&dir, &good);
    let back = eventually(WITHIN, || async { status(&stack, &fine).await == 200 }).await;
    assert!(back, "a good file again did not make the list fresh");
    assert_eq!(status(&stack, &revoked).await, 401);
}

#[tokio::test]
async fn fail_mode_open_accepts_while_the_list_is_stale() {
    let (stack, dir) = stack(Some(""), "max_staleness = \"300ms\"\nfail_mode = \"open\"", None).await;
    write_list(&dir, "not toml at all [");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(status(&stack, &stack.token(json!({}))).await, 200);
}

#[tokio::test]
async fn a_route_can_require_revocation_for_every_provider() {
    let dir = tempfile::tempdir().unwrap();
    let exp = now() + 3600;
    let mut options = options(dir.path(), Some(&format!("[[revoked]]\njti = \"j1\"\nexp = {exp}\n")), "");
    options.provider = String::new();
    options.routes =
        "[[routes]]\nname = \"checked\"\npath = \"/orders\"\nupstream = \"{upstream}\"\nrevocation = true\n\
                      [[routes]]\nname = \"unchecked\"\npath = \"/other\"\nupstream = \"{upstream}\"\n"
            .into();
    let stack = Stack::with(options).await;
    let token = stack.token(json!({"jti": "j1", "exp": exp}));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 401);
    assert_eq!(stack.get_with_token("/other", &token).await.status, 200, "neither the route nor the provider asks");
}

async fn post(stack: &Stack, authorization: Option<&str>, body: &str) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = authorization.map(|value| ("authorization", value)).into_iter().collect();
    let (status, body) = admin_post(stack.admin.unwrap(), "/revocations", &headers, body).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_admin_api_demands_the_token_and_revokes_at_once() {
    let (stack, dir) = stack(None, "", Some("s3cret")).await;
    let exp = now() + 3600;
    let token = stack.token(json!({"jti": "j1", "exp": exp}));
    assert_eq!(status(&stack, &token).await, 200);
    let entry = json!({"jti": "j1", "exp": exp}).to_string();
    for authorization in [None, Some("Bearer wrong"), Some("Bearer s3cret2"), Some("Basic czNjcmV0")] {
        let (code, body) = post(&stack, authorization, &entry).await;
        assert_eq!(code, 401, "{authorization:?}: {body}");
    }
    assert_eq!(status(&stack, &token).await, 200, "a refused write revoked nothing");
    assert_eq!(post(&stack, Some("Bearer s3cret"), "{\"jti\": ").await.0, 400);
    assert_eq!(post(&stack, Some("Bearer s3cret"), "{\"jti\": \"j1\"}").await.0, 400, "no exp");
    let (code, body) = post(&stack, Some("Bearer s3cret"), &entry).await;
    assert_eq!((code, &body["revoked"]), (200, &json!({"jti": "j1", "exp": exp})));
    assert_eq!(status(&stack, &token).await, 401, "revoked on this gateway before the answer");
    let file = std::fs::read_to_string(list_path(&dir)).unwrap();
    assert!(file.contains("jti = \"j1\""), "{file}");
    let (code, _) = post(&stack, Some("Bearer s3cret"), &json!({"sub": "alice"}).to_string()).await;
    assert_eq!(code, 200);
    assert_eq!(status(&stack, &stack.token(json!({"iat": now() - 5}))).await, 401);
    let metrics = admin_get(stack.admin.unwrap(), "/metrics").await.1;
    let series = r#"portcullis_denials_total{route="orders",reason="revoked",mode="enforce"}"#;
    assert!(metric(&metrics, series) >= 2.0, "{metrics}");
    assert_eq!(metric(&metrics, "portcullis_revocation_entries"), 2.0, "{metrics}");
    assert!(metric(&metrics, "portcullis_revocation_seconds_since_sync") < 5.0, "{metrics}");
    let (_, ready) = admin_get(stack.admin.unwrap(), "/readyz").await;
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(ready["revocation"]["entries"], 2, "{ready}");
}

#[tokio::test]
async fn without_a_token_file_there_is_no_revocation_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path(), None, "");
    options.admin = true;
    let stack = Stack::with(options).await;
    let (code, _) = admin_post(stack.admin.unwrap(), "/revocations", &[], "{}").await;
    assert_eq!(code, 404);
    let (code, _) = crate::support::admin_request(stack.admin.unwrap(), Method::GET, "/healthz").await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn the_cli_writes_to_the_list_a_running_gateway_reads() {
    let (stack, _dir) = stack(None, "", None).await;
    let exp = now() + 3600;
    let token = stack.token(json!({"jti": "j9", "exp": exp}));
    assert_eq!(status(&stack, &token).await, 200);
    let config = stack.config_path.display().to_string();
    let run = |args: Vec<String>| async move {
        let run = tokio::process::Command::new(BIN).args(&args).env("RUST_LOG", "warn").output();
        tokio::time::timeout(Duration::from_secs(30), run).await.unwrap().unwrap()
    };
    let exp = exp.to_string();
    let output = run(vec!["revoke".into(), "--config".into(), config.clone(), "--jti".into(), "j9".into()]).await;
    assert_eq!(output.status.code(), Some(2), "no exp: {}", String::from_utf8_lossy(&output.stderr));
    let output =
        run(vec!["revoke".into(), "--config".into(), config.clone(), "--jti".into(), "j9".into(), "--exp".into(), exp])
            .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("revoked: {\"jti\":\"j9\""));
    let refused = eventually(WITHIN, || async { status(&stack, &token).await == 401 }).await;
    assert!(refused, "the gateway never read what the CLI wrote");
    let output = run(vec!["revoke".into(), "--config".into(), config, "--sub".into(), "alice".into()]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let refused =
        eventually(WITHIN, || async { status(&stack, &stack.token(json!({"iat": now() - 5}))).await == 401 }).await;
    assert!(refused, "a sub cut-off from the CLI was not applied");
}

#[tokio::test]
async fn a_reload_that_adds_a_list_checks_tokens_cached_before_it() {
    let watch = "watch_interval = \"100ms\"";
    let stack = Stack::with(Options { server: watch.into(), ..Options::default() }).await;
    let exp = now() + 3600;
    let token = stack.token(json!({"jti": "j1", "exp": exp}));
    assert_eq!(status(&stack, &token).await, 200);
    assert_eq!(status(&stack, &token).await, 200, "now cached, without the claims a list needs");
    let dir = tempfile::tempdir().unwrap();
    let mut with_list = options(dir.path(), Some(&format!("[[revoked]]\njti = \"j1\"\nexp = {exp}\n")), "");
    // the provider and the claims routes read stay as they were, so the
    // cached verification still stands: only the list is new
    with_list.provider = String::new();
    with_list.routes = ROUTES.replace("name = \"orders\"\n", "name = \"orders\"\nrevocation = true\n");
    stack.write_config(&stack.render(&Options { server: watch.into(), ..with_list }));
    let refused = eventually(WITHIN, || async { status(&stack, &token).await == 401 }).await;
    assert!(refused, "a token cached before the list existed was never checked against it");
    assert_eq!(status(&stack, &stack.token(json!({"jti": "j2"}))).await, 200);
}

#[tokio::test]
async fn a_list_file_that_vanishes_is_a_failed_read_not_an_empty_list() {
    let exp = now() + 3600;
    let good = format!("[[revoked]]\njti = \"j1\"\nexp = {exp}\n");
    let (stack, dir) = stack(Some(&good), "max_staleness = \"1500ms\"", None).await;
    let revoked = stack.token(json!({"jti": "j1", "exp": exp}));
    let fine = stack.token(json!({"jti": "j2"}));
    std::fs::remove_file(list_path(&dir)).unwrap();
    for _ in 0..5 {
        assert_eq!(status(&stack, &revoked).await, 401, "a vanished file un-revoked a token");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unavailable = eventually(WITHIN, || async { status(&stack, &fine).await == 503 }).await;
    assert!(unavailable, "a vanished file kept the list fresh in closed mode");
    assert_eq!(status(&stack, &revoked).await, 401);
}

#[tokio::test]
async fn the_admin_api_refuses_an_entry_that_has_already_expired() {
    let (stack, dir) = stack(None, "", Some("s3cret")).await;
    let past = json!({"jti": "gone", "exp": now() - 3600}).to_string();
    let (code, body) = post(&stack, Some("Bearer s3cret"), &past).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("already expired"), "{body}");
    assert!(!list_path(&dir).exists(), "nothing was written");
}
