//! The `portcullis` binary: `check`, `run` and `dev`, as a user runs them.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

async fn portcullis(args: &[&str], dir: &Path) -> Output {
    let run = Command::new(BIN).args(args).current_dir(dir).env("RUST_LOG", "warn").output();
    tokio::time::timeout(Duration::from_secs(30), run).await.expect("exits in time").unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"
tls_cert = "certs/server.crt"
tls_key = "certs/server.key"

[[providers]]
name = "idp"
issuer = "https://idp.example.com"
jwks_url = "https://idp.example.com/.well-known/jwks.json"
audiences = ["orders"]

[[routes]]
name = "orders"
path = "/orders"
host = "api.example.com"
methods = ["GET", "POST"]
upstream = "http://orders:8080"
require_claims = { roles = ["admin"] }
inject_headers = { "x-user-id" = "sub" }
"#;

/// A working directory with `certs/server.{crt,key}` and the config `text`.
fn workdir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    portcullis::dev::write_self_signed_certificate(&certs).unwrap();
    std::fs::write(dir.path().join("portcullis.toml"), text).unwrap();
    dir
}

#[tokio::test]
async fn check_accepts_a_good_file_and_prints_its_routes() {
    let dir = workdir(GOOD);
    let output = portcullis(&["check", "--config", "portcullis.toml"], dir.path()).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("portcullis.toml: ok"), "{stdout}");
    assert!(stdout.contains("route orders: GET,POST api.example.com/orders -> http://orders:8080"), "{stdout}");
    assert!(stdout.contains("require roles=[admin]") && stdout.contains("x-user-id <- sub"), "{stdout}");
}

#[tokio::test]
async fn the_shipped_configs_pass_check() {
    let example = std::fs::read_to_string(Path::new(ROOT).join("config/portcullis.example.toml")).unwrap();
    let dir = workdir(&example);
    let output = portcullis(&["check", "--config", "portcullis.toml"], dir.path()).await;
    assert!(output.status.success(), "example: {}", text(&output.stderr));

    let output = portcullis(&["check", "--config", "config/dev.toml"], Path::new(ROOT)).await;
    assert!(output.status.success(), "dev: {}", text(&output.stderr));
}

#[tokio::test]
async fn check_names_the_file_key_line_and_reason_of_an_error() {
    let cases = [
        (GOOD.replace("upstream =", "upstreams ="), ":18: routes[0].upstreams: unknown field `upstreams`"),
        (GOOD.replace("\"127.0.0.1:0\"", "8443"), ":3: server.listen: invalid type: integer `8443`"),
        (GOOD.replace("tls_key = \"certs/server.key\"", ""), ": server.tls_key: tls_cert is set"),
        (
            GOOD.replace("http://orders:8080", "orders:8080"),
            ":18: routes[0].upstream: \"orders:8080\" must start with http",
        ),
        (GOOD.replace("audiences = [\"orders\"]", ""), ":7: providers[0].audiences: list the audiences"),
        (GOOD.replace("path = \"/orders\"", "path = \"orders\""), ":15: routes[0].path:"),
        (GOOD.replace("[[providers]]", "refresh = 1\n[[providers]]"), "unknown field `refresh`"),
        (
            GOOD.replace("audiences = [\"orders\"]", "audiences = [\"orders\"]\nrefresh_interval = \"soon\""),
            ":12: providers[0].refresh_interval:",
        ),
        (
            GOOD.replace("\"x-user-id\" = \"sub\"", "\"x-user-id\" = \"sub\", \"Host\" = \"sub\""),
            "routes[0].inject_headers.Host",
        ),
        (GOOD.replace("certs/server.crt", "certs/missing.crt"), "server.tls_cert: certs/missing.crt"),
        (GOOD.replace("certs/server.key", "certs/server.crt"), "server.tls_key: certs/server.crt"),
        ("[[routes]\n".to_owned(), ":1:"),
    ];
    for (config, expected) in cases {
        let dir = workdir(&config);
        let output = portcullis(&["check", "--config", "portcullis.toml"], dir.path()).await;
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "accepted:\n{config}");
        assert!(stderr.starts_with("error: portcullis.toml"), "{stderr}");
        assert!(stderr.contains(expected), "wanted {expected:?} in {stderr}");
    }
}

#[tokio::test]
async fn check_warns_about_keys_fetched_over_plain_http() {
    let dir = workdir(&GOOD.replace("https://idp.example.com/.well-known", "http://idp.example.com/.well-known"));
    let output = portcullis(&["check", "--config", "portcullis.toml"], dir.path()).await;
    assert!(output.status.success());
    assert!(text(&output.stderr).contains("JWKS is fetched over plain http"), "{}", text(&output.stderr));

    let dir = workdir(&GOOD.replace("https://idp.example.com/.well-known", "http://127.0.0.1:9/.well-known"));
    let output = portcullis(&["check", "--config", "portcullis.toml"], dir.path()).await;
    assert!(output.status.success());
    assert!(!text(&output.stderr).contains("plain http"), "loopback needs no warning");
}

#[tokio::test]
async fn a_secret_comes_from_the_environment() {
    let config = r#"
[[providers]]
name = "django"
issuer = "https://django.test"
secret_env = "PORTCULLIS_TEST_SECRET"
audiences = ["api"]

[[routes]]
name = "r"
path = "/"
upstream = "http://127.0.0.1:1"
"#;
    let dir = workdir(config);
    let check = |secret: Option<&str>| {
        let mut command = Command::new(BIN);
        command.args(["check", "--config", "portcullis.toml"]).current_dir(dir.path()).env("RUST_LOG", "warn");
        match secret {
            Some(secret) => command.env("PORTCULLIS_TEST_SECRET", secret),
            None => command.env_remove("PORTCULLIS_TEST_SECRET"),
        };
        async move { command.output().await.unwrap() }
    };
    let output = check(Some(&"k".repeat(32))).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("keys from secret in $PORTCULLIS_TEST_SECRET, algorithms [HS256]"));
    let output = check(Some("short")).await;
    assert!(text(&output.stderr).contains("providers[0].secret_env: $PORTCULLIS_TEST_SECRET: a secret of 5 bytes"));
    let output = check(None).await;
    assert!(text(&output.stderr).contains("$PORTCULLIS_TEST_SECRET is not set"), "{}", text(&output.stderr));
}

#[tokio::test]
async fn a_missing_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let output = portcullis(&["check"], dir.path()).await;
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("config/portcullis.toml: cannot read"), "{}", text(&output.stderr));
    let output = portcullis(&["run", "--config", "nope.toml"], dir.path()).await;
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("nope.toml: cannot read"));
}

/// Reads the child's `stream` line by line until `done` says enough.
async fn read_lines(stream: impl tokio::io::AsyncRead + Unpin, mut done: impl FnMut(&[String]) -> bool) -> Vec<String> {
    let mut lines = BufReader::new(stream).lines();
    let mut seen = Vec::new();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line);
            if done(&seen) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), read).await;
    seen
}

async fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().unwrap().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("stops on SIGTERM").unwrap()
}

#[tokio::test]
async fn run_serves_the_config_and_stops_on_sigterm() {
    let dir = workdir(GOOD);
    let mut child = Command::new(BIN)
        .args(["run", "--config", "portcullis.toml"])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = read_lines(child.stderr.take().unwrap(), |seen| seen.iter().any(|l| l.contains("listening"))).await;
    let listening = lines.iter().find(|l| l.contains("listening")).expect("a listening line");
    let addr = listening.split("addr=").nth(1).unwrap().split_whitespace().next().unwrap();
    let curl = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-k", "-H", "Host: api.example.com"])
        .arg(format!("https://{addr}/orders"))
        .output()
        .await
        .unwrap();
    assert_eq!(text(&curl.stdout), "401", "{lines:?} {}", text(&curl.stderr));
    assert!(terminate(&mut child).await.success());
}

#[tokio::test]
async fn dev_mode_prints_commands_that_work() {
    let mut child = Command::new(BIN)
        .args(["dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines =
        read_lines(child.stdout.take().unwrap(), |seen| seen.iter().filter(|l| l.starts_with("curl ")).count() == 7)
            .await;
    let export = lines.iter().find(|l| l.starts_with("export TOKEN=")).expect("an export TOKEN line");
    let commands: Vec<&String> = lines.iter().filter(|l| l.starts_with("curl -si")).collect();
    assert_eq!(commands.len(), 6, "{lines:#?}");

    let mut expected =
        vec![("401", None), ("200", Some("\"x-user-id\":\"alice\"")), ("200", Some("\"x-user-id\":\"alice\""))];
    expected.extend([
        ("200", Some("/admin/stats")),
        ("403", Some("insufficient_scope")),
        ("200", Some("/public/ping")),
    ]);
    for (command, (status, body)) in commands.iter().zip(expected) {
        let script = format!("{export}\n{command}");
        let output = Command::new("bash").args(["-c", &script]).output().await.unwrap();
        let response = text(&output.stdout);
        let status_line = response.lines().next().unwrap_or_default();
        assert!(status_line.contains(&format!(" {status}")), "{command}\n{response}");
        if let Some(body) = body {
            assert!(response.contains(body), "{command}\n{response}");
        }
        assert!(!response.contains("mallory"), "{response}");
    }
    let run = |line: &String| {
        let script = format!("{export}\n{line}");
        async move { Command::new("bash").args(["-c", &script]).output().await.unwrap() }
    };
    let readyz = lines.iter().find(|l| l.contains("/readyz")).expect("a readyz line");
    assert!(text(&run(readyz).await.stdout).contains("\"ready\":true"), "{readyz}");
    let explain = lines.iter().find(|l| l.contains(" explain ")).expect("an explain line");
    let output = run(explain).await;
    let answer = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{explain}\n{answer}{}", text(&output.stderr));
    assert!(answer.contains("FAIL required claims") && answer.contains("DENY 403"), "{answer}");
    assert!(terminate(&mut child).await.success());
}
