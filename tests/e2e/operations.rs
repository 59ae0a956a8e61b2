//! The admin listener (health, readiness, metrics, config), report mode and
//! request ids, as an operator sees them.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use portcullis::dev::{IdentityProvider, SigningKey};
use serde_json::{Value, json};

use crate::support::{self, AUDIENCE, ISSUER, Options, ROUTES, Stack, admin_get, admin_request, eventually};

const WITHIN: Duration = Duration::from_secs(5);

async fn readyz(stack: &Stack) -> (u16, Value) {
    let (status, body) = admin_get(stack.admin.unwrap(), "/readyz").await;
    (status, serde_json::from_str(&body).unwrap())
}

fn with_admin(options: Options) -> Options {
    Options { admin: true, ..options }
}

#[tokio::test]
async fn the_admin_listener_serves_health_and_the_running_config() {
    let stack = Stack::with(with_admin(Options::default())).await;
    let admin = stack.admin.unwrap();
    assert_eq!(admin_get(admin, "/healthz").await.0, 200);

    let (status, body) = admin_get(admin, "/config").await;
    assert_eq!(status, 200);
    let config: Value = serde_json::from_str(&body).unwrap();
    let file = std::fs::read(&stack.config_path).unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &file);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(config["sha256"], hex);
    assert_eq!(config["config"]["routes"][0]["name"], "orders");
    assert_eq!(config["config"]["providers"][0]["jwks_url"], stack.idp.jwks_url());
    assert!(config["config"]["server"].get("max_headers").is_none(), "unset keys are left out: {body}");

    assert_eq!(admin_get(admin, "/nothing").await.0, 404);
    assert_eq!(admin_request(admin, Method::POST, "/healthz").await.0, 405);
    assert_eq!(stack.get("/healthz", &[]).await.status, 404, "the public listener has no admin paths");
}

/// One provider every route uses and one no route uses, whose keys never load.
fn used_and_unused(refresh_interval: &str) -> Options {
    let providers = format!(
        "[[providers]]\nname = \"idp\"\nissuer = \"{ISSUER}\"\njwks_url = \"{{jwks_url}}\"\naudiences = [\"{AUDIENCE}\"]\n\
         refresh_interval = \"{refresh_interval}\"\nmax_stale = \"300ms\"\n\
         [[providers]]\nname = \"unused\"\nissuer = \"https://unused.test\"\njwks_url = \"http://127.0.0.1:1/jwks\"\n\
         audiences = [\"x\"]\n"
    );
    let routes =
        "[[routes]]\nname = \"orders\"\npath = \"/orders\"\nupstream = \"{upstream}\"\nproviders = [\"idp\"]\n";
    with_admin(Options { providers: Some(providers), routes: routes.into(), ..Options::default() })
}

#[tokio::test]
async fn readiness_follows_the_keys_of_the_providers_routes_use() {
    let key = Arc::new(SigningKey::generate("k1"));
    let idp = IdentityProvider::start(ISSUER, AUDIENCE, key.clone()).await.unwrap();
    idp.respond_with(http::StatusCode::SERVICE_UNAVAILABLE);
    let stack = Stack::with_idp(used_and_unused("100ms"), idp, key).await;
    let (status, body) = readyz(&stack).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["providers"]["idp"]["reason"], "keys not loaded yet");

    stack.idp.respond_with(http::StatusCode::OK);
    assert!(eventually(WITHIN, || async { readyz(&stack).await.0 == 200 }).await, "ready once keys load");
    let (_, body) = readyz(&stack).await;
    assert_eq!(body["providers"]["idp"]["ready"], true);
    assert_eq!(body["providers"]["unused"]["ready"], false, "{body}");
    assert_eq!(body["providers"]["unused"]["used_by_routes"], false);

    stack.idp.stop();
    assert!(eventually(WITHIN, || async { readyz(&stack).await.0 == 503 }).await, "not ready past max_stale");
    let (_, body) = readyz(&stack).await;
    assert_eq!(body["providers"]["idp"]["reason"], "keys older than max_stale");
}

#[tokio::test]
async fn a_provider_only_report_mode_routes_use_does_not_decide_readiness() {
    let key = Arc::new(SigningKey::generate("k1"));
    let idp = IdentityProvider::start(ISSUER, AUDIENCE, key.clone()).await.unwrap();
    idp.respond_with(http::StatusCode::SERVICE_UNAVAILABLE);
    let stack = Stack::with_idp(shadow_route(), idp, key).await;
    let (status, body) = readyz(&stack).await;
    assert_eq!(status, 200, "report mode forwards anyway: {body}");
    let idp = &body["providers"]["idp"];
    assert_eq!((idp["ready"].as_bool(), idp["reason"].as_str()), (Some(false), Some("keys not loaded yet")), "{body}");
    assert_eq!((idp["used_by_routes"].as_bool(), idp["decides_readiness"].as_bool()), (Some(true), Some(false)));
    assert_eq!(stack.get("/shadow", &[]).await.status, 200, "and it does forward");
}

#[tokio::test]
async fn readiness_ends_when_shutdown_begins() {
    let stack = Stack::with(with_admin(Options::default())).await;
    let _token = stack.token(json!({}));
    assert!(eventually(WITHIN, || async { readyz(&stack).await.0 == 200 }).await);
    // a request in flight keeps the gateway draining
    let (body, response) = support::request_in_flight(&stack, "/orders").await;
    stack.stop.cancel();
    let (status, body_json) = readyz(&stack).await;
    assert_eq!((status, body_json["reason"].as_str()), (503, Some("shutting down")));
    drop(body);
    assert_eq!(tokio::time::timeout(WITHIN, response).await.unwrap().unwrap().unwrap().status(), 200);
}

/// The value of the series that `series` starts (name and labels).
fn value(metrics: &str, series: &str) -> f64 {
    let line =
        metrics.lines().find(|line| line.starts_with(series)).unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn metrics_cover_requests_denials_upstreams_keys_and_reloads() {
    let routes = format!(
        "{ROUTES}\n[[routes]]\nname = \"down\"\npath = \"/down\"\nupstream = \"http://127.0.0.1:1\"\nauth = \"public\"\n"
    );
    let options = with_admin(Options { routes, server: "watch_interval = \"100ms\"".into(), ..Options::default() });
    let stack = Stack::with(options).await;
    let admin = stack.admin.unwrap();
    let other = SigningKey::generate("k9");
    let token = |changes| stack.token(changes);
    let cases = [
        ("/orders", Some(token(json!({}))), 200),
        ("/orders", None, 401),
        ("/orders", Some(token(json!({"exp": 1}))), 401),
        ("/orders", Some(token(json!({"aud": "elsewhere"}))), 401),
        ("/orders", Some(other.sign(&stack.claims(json!({})))), 401),
        ("/orders", Some(other.sign(&stack.claims(json!({"sub": "again"})))), 401),
        ("/admin", Some(token(json!({"roles": ["ops"]}))), 403),
        ("/down", None, 502),
        ("/nowhere", None, 404),
    ];
    for (path, token, status) in cases {
        let reply = match &token {
            Some(token) => stack.get_with_token(path, token).await,
            None => stack.get(path, &[]).await,
        };
        assert_eq!(reply.status, status, "{path}");
    }
    stack.reloader.reload().await.expect("the file is good");
    let good = std::fs::read_to_string(&stack.config_path).unwrap();
    stack.write_config("[[routes]]\n");
    assert!(stack.reloader.reload().await.is_err());
    stack.write_config(&good);
    let (cert, key) = {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    };
    std::fs::write(&stack.private, key).unwrap();
    std::fs::write(&stack.cert, cert).unwrap();

    let reloaded = || async {
        let text = admin_get(admin, "/metrics").await.1;
        text.contains(r#"portcullis_certificate_reloads_total{result="success"} 1"#)
    };
    assert!(eventually(WITHIN, reloaded).await, "the certificate reload is counted");
    let text = admin_get(admin, "/metrics").await.1;
    let expect = [
        (r#"portcullis_requests_total{route="orders",method="GET",status="2xx"}"#, 1.0),
        (r#"portcullis_requests_total{route="orders",method="GET",status="4xx"}"#, 5.0),
        (r#"portcullis_requests_total{route="-",method="GET",status="4xx"}"#, 1.0),
        (r#"portcullis_denials_total{route="orders",reason="missing_token",mode="enforce"}"#, 1.0),
        (r#"portcullis_denials_total{route="orders",reason="expired",mode="enforce"}"#, 1.0),
        (r#"portcullis_denials_total{route="orders",reason="wrong_audience",mode="enforce"}"#, 1.0),
        (r#"portcullis_denials_total{route="orders",reason="unknown_kid",mode="enforce"}"#, 2.0),
        (r#"portcullis_denials_total{route="admin",reason="insufficient_claims",mode="enforce"}"#, 1.0),
        (r#"portcullis_denials_total{route="-",reason="no_route",mode="enforce"}"#, 1.0),
        (r#"portcullis_upstream_errors_total{route="down",error="unreachable"}"#, 1.0),
        (r#"portcullis_request_duration_seconds_count{route="orders"}"#, 6.0),
        (r#"portcullis_upstream_duration_seconds_count{route="orders"}"#, 1.0),
        (r#"portcullis_jwks_fetches_total{provider="idp",result="success"}"#, 2.0),
        (r#"portcullis_jwks_refetches_total{provider="idp",outcome="forced"}"#, 1.0),
        (r#"portcullis_jwks_refetches_total{provider="idp",outcome="throttled"}"#, 1.0),
        (r#"portcullis_jwks_keys{provider="idp"}"#, 1.0),
        (r#"portcullis_jwks_usable{provider="idp"}"#, 1.0),
        (r#"portcullis_config_reloads_total{result="success"}"#, 1.0),
        (r#"portcullis_config_reloads_total{result="failure"}"#, 1.0),
        (r#"portcullis_certificate_reloads_total{result="success"}"#, 1.0),
        ("portcullis_build_info{", 1.0),
    ];
    for (series, at_least) in expect {
        assert!(value(&text, series) >= at_least, "{series} below {at_least} in\n{text}");
    }
    assert!(value(&text, r#"portcullis_jwks_seconds_since_fetch{provider="idp"}"#) < 60.0);
    assert!(value(&text, "portcullis_open_connections") >= 0.0);
    assert!(text.contains(r#"portcullis_request_duration_seconds_bucket{route="orders",le="0.001"}"#), "{text}");
}

/// A route `name` on `/name` to an upstream that accepts connections and
/// never answers; the listener tells when a request got that far.
async fn silent_route(name: &str) -> (String, tokio::net::TcpListener) {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    let route =
        format!("[[routes]]\nname = \"{name}\"\npath = \"/{name}\"\nupstream = \"http://{addr}\"\nauth = \"public\"\n");
    (route, upstream)
}

#[tokio::test]
async fn a_request_dropped_before_its_response_is_logged_and_counted_as_499() {
    let (http1, http1_upstream) = silent_route("slow1").await;
    let (http2, http2_upstream) = silent_route("slow2").await;
    let (logs, _logging) = support::Logs::capture();
    let stack = Stack::with(with_admin(Options::routes(&format!("{http1}{http2}")))).await;
    let admin = stack.admin.unwrap();
    let count = |route: &'static str| async move {
        let text = admin_get(admin, "/metrics").await.1;
        let series = format!(r#"portcullis_requests_total{{route="{route}",method="GET",status="4xx"}}"#);
        (support::metric(&text, &series), text)
    };

    // HTTP/1.1: the client closes the connection while the upstream is slow
    let mut client = stack.connect().await;
    let head = format!("GET /slow1 HTTP/1.1\r\n{}\r\n\r\n", stack.host());
    tokio::io::AsyncWriteExt::write_all(&mut client, head.as_bytes()).await.unwrap();
    let _held = tokio::time::timeout(WITHIN, http1_upstream.accept()).await.expect("forwarded").unwrap();
    drop(client);
    assert!(eventually(WITHIN, || async { count("slow1").await.0 == 1.0 }).await, "{}", count("slow1").await.1);

    // HTTP/2: the client resets the stream
    let mut client = support::h2_connect(&stack).await.ready().await.unwrap();
    let (response, stream) = client.send_request(Request::get(stack.url("/slow2")).body(()).unwrap(), true).unwrap();
    let _held = tokio::time::timeout(WITHIN, http2_upstream.accept()).await.expect("forwarded").unwrap();
    drop((response, stream));
    assert!(eventually(WITHIN, || async { count("slow2").await.0 == 1.0 }).await, "{}", count("slow2").await.1);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = admin_get(admin, "/metrics").await.1;
    for route in ["slow1", "slow2"] {
        let series = format!(r#"portcullis_request_duration_seconds_count{{route="{route}"}}"#);
        assert_eq!(support::metric(&text, &series), 1.0, "counted once: {text}");
        let events: Vec<Value> = logs.access().into_iter().filter(|event| event["fields"]["route"] == route).collect();
        let [event] = events.as_slice() else { panic!("logged once: {events:?}") };
        let fields = &event["fields"];
        assert_eq!(
            (&fields["status"], &fields["completed"], &fields["bytes"]),
            (&json!(499), &json!(false), &json!(0)),
            "{event}"
        );
        assert_eq!(fields["path"], format!("/{route}"), "{event}");
    }
}

fn shadow_route() -> Options {
    let routes = r#"
[[routes]]
name = "shadow"
path = "/shadow"
upstream = "{upstream}"
mode = "report"
require_claims = { roles = ["admin"] }
inject_headers = { "x-user-id" = "sub" }
"#;
    with_admin(Options::routes(routes))
}

#[tokio::test]
async fn report_mode_forwards_what_it_would_deny_and_counts_it() {
    let stack = Stack::with(shadow_route()).await;
    let no_token = stack.get("/shadow", &[("x-user-id", "mallory")]).await;
    assert_eq!(no_token.status, 200);
    assert_eq!(no_token.upstream_header("x-user-id"), None, "a spoofed identity is still stripped");

    let expired = stack.token(json!({"exp": 1}));
    let reply = stack.get_with_token("/shadow", &expired).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream_header("x-user-id"), None, "no identity from an invalid token");
    assert_eq!(reply.upstream_header("authorization"), Some(json!(format!("Bearer {expired}"))));

    let ops = stack.get_with_token("/shadow", &stack.token(json!({"roles": ["ops"]}))).await;
    assert_eq!((ops.status, ops.upstream_header("x-user-id")), (200, Some(json!("alice"))), "a valid token's identity");
    let admin = stack.get_with_token("/shadow", &stack.token(json!({}))).await;
    assert_eq!((admin.status, admin.upstream_header("x-user-id")), (200, Some(json!("alice"))));

    let text = admin_get(stack.admin.unwrap(), "/metrics").await.1;
    for (reason, count) in [("missing_token", 1.0), ("expired", 1.0), ("insufficient_claims", 1.0)] {
        let series = format!(r#"portcullis_denials_total{{route="shadow",reason="{reason}",mode="report"}}"#);
        assert_eq!(value(&text, &series), count, "{series}");
    }
    assert!(!text.contains(r#"mode="enforce""#), "nothing was enforced:\n{text}");
    assert_eq!(value(&text, r#"portcullis_requests_total{route="shadow",method="GET",status="2xx"}"#), 4.0);
}

#[tokio::test]
async fn request_ids_are_kept_when_sane_made_otherwise_and_sent_both_ways() {
    let stack = Stack::start().await;
    let token = stack.token(json!({}));
    let bearer = format!("Bearer {token}");
    let made = stack.get("/orders", &[("authorization", &bearer)]).await;
    let id = made.header("x-request-id").to_owned();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(made.upstream_header("x-request-id"), Some(json!(id)));

    let kept = stack.get("/orders", &[("authorization", &bearer), ("x-request-id", "req-42")]).await;
    assert_eq!((kept.header("x-request-id"), kept.upstream_header("x-request-id")), ("req-42", Some(json!("req-42"))));

    let replaced = stack.get("/orders", &[("authorization", &bearer), ("x-request-id", "not sane!")]).await;
    assert_eq!(replaced.header("x-request-id").len(), 32);

    let denied = stack.get("/orders", &[("x-request-id", "req-43")]).await;
    assert_eq!((denied.status, denied.header("x-request-id")), (401, "req-43"), "denials carry it too");

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let trace = [("authorization", bearer.as_str()), ("traceparent", traceparent), ("tracestate", "congo=t61rcWkgMzE")];
    let traced = stack.get("/orders", &trace).await;
    assert_eq!(traced.upstream_header("traceparent"), Some(json!(traceparent)));
    assert_eq!(traced.upstream_header("tracestate"), Some(json!("congo=t61rcWkgMzE")));
}
