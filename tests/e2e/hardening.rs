//! What a client can send to confuse routing, smuggle a request or starve
//! the gateway, written byte for byte on a raw connection (no client
//! library to tidy it up), each checked for its status and for exactly what
//! the upstream saw.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Options, Stack, eventually};

/// `/public` is public, `/orders` and `/admin` need a token; no `/` route.
async fn stack() -> Stack {
    Stack::start().await
}

/// The status code of the first response in `raw`.
fn status(raw: &str) -> u16 {
    raw.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("no response: {raw:?}"))
}

/// How many responses `raw` holds.
fn responses(raw: &str) -> usize {
    raw.matches("HTTP/1.1 ").count()
}

fn body(raw: &str) -> Value {
    let body = raw.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

#[tokio::test]
async fn both_framings_mean_chunked_and_a_closed_connection() {
    // RFC 9112 §6.3: Transfer-Encoding wins, Content-Length is dropped, and
    // the connection closes after the response, so whatever the two
    // framings disagree about is never read as a next request
    let stack = stack().await;
    let host = stack.host();
    let smuggled = format!("GET /orders HTTP/1.1\r\n{host}\r\n\r\n");
    let cases = [
        (
            format!(
                "POST /public HTTP/1.1\r\n{host}\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            0,
        ),
        (
            format!(
                "POST /public HTTP/1.1\r\n{host}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n1\r\nZ\r\n0\r\n\r\n{smuggled}"
            ),
            1,
        ),
    ];
    for (request, body_bytes) in cases {
        let before = stack.echo.requests();
        let raw = stack.raw_bytes(request.as_bytes()).await;
        assert_eq!(status(&raw), 200, "{raw:?}");
        assert_eq!(responses(&raw), 1, "the smuggled request was read: {raw:?}");
        assert!(raw.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{raw:?}");
        assert_eq!(body(&raw)["body_bytes"], body_bytes);
        assert!(body(&raw)["headers"].get("content-length").is_none(), "the losing framing was forwarded");
        assert_eq!(stack.echo.requests(), before + 1);
    }
}

#[tokio::test]
async fn malformed_framing_and_fields_are_refused() {
    let stack = stack().await;
    let host = stack.host();
    let cases = [
        format!("POST /public HTTP/1.1\r\n{host}\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        format!("POST /public HTTP/1.1\r\n{host}\r\nContent-Length: -1\r\n\r\n"),
        format!("POST /public HTTP/1.1\r\n{host}\r\nContent-Length: 1e3\r\n\r\n"),
        format!("POST /public HTTP/1.1\r\n{host}\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
        format!("POST /public HTTP/1.1\r\n{host}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        format!("POST /public HTTP/1.0\r\n{host}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        // obs-fold, bare CR, NUL, a space in a name
        format!("GET /public HTTP/1.1\r\n{host}\r\nX-Folded: a\r\n b\r\n\r\n"),
        format!("GET /public HTTP/1.1\r\n{host}\r\nX-Bare: a\rb\r\n\r\n"),
        format!("GET /public HTTP/1.1\r\n{host}\r\nX-Nul: a\0b\r\n\r\n"),
        format!("GET /pub\0lic HTTP/1.1\r\n{host}\r\n\r\n"),
        format!("GET /public HTTP/1.1\r\n{host}\r\nX Space: a\r\n\r\n"),
    ];
    for request in cases {
        let raw = stack.raw_bytes(request.as_bytes()).await;
        assert_eq!(status(&raw), 400, "{request:?} answered {raw:?}");
        assert_eq!(responses(&raw), 1, "{request:?}: a second request was read: {raw:?}");
    }
    assert_eq!(stack.echo.requests(), 0);
}

#[tokio::test]
async fn one_validated_host_or_none() {
    let stack = stack().await;
    let host = stack.host();
    let port = stack.addr.port();
    let cases = [
        ("GET /public HTTP/1.1\r\n\r\n".to_owned(), 400),
        (format!("GET /public HTTP/1.1\r\n{host}\r\nHost: evil.example\r\n\r\n"), 400),
        (format!("GET http://evil.example/public HTTP/1.1\r\n{host}\r\n\r\n"), 400),
        (format!("GET https://localhost:{port}/public HTTP/1.1\r\nHost: LOCALHOST:{port}\r\n\r\n"), 200),
        (format!("GET /public HTTP/1.1\r\nHost: user@localhost:{port}\r\n\r\n"), 400),
        ("GET /public HTTP/1.0\r\n\r\n".to_owned(), 200),
    ];
    for (request, expected) in cases {
        let raw =
            stack.raw_bytes(format!("{}Connection: close\r\n\r\n", &request[..request.len() - 2]).as_bytes()).await;
        assert_eq!(status(&raw), expected, "{request:?} answered {raw:?}");
    }
    assert_eq!(stack.echo.requests(), 2);
}

#[tokio::test]
async fn path_tricks_reach_only_what_was_authorised() {
    let stack = stack().await;
    let host = stack.host();
    // (raw target, status, the path the upstream saw if it saw one)
    let cases: [(&str, u16, Option<&str>); 9] = [
        ("/public/..%2forders", 400, None),
        ("/public/%2e%2e/orders", 400, None),
        ("/public/%2E%2E/orders", 400, None),
        ("/public\\..\\orders", 400, None),
        ("//orders", 401, None),
        ("/%6Frders/1", 401, None),
        ("/public/../orders", 401, None),
        ("/orders;x/../../public/a", 200, Some("/public/a")),
        ("/ORDERS", 404, None),
    ];
    for (target, expected, seen) in cases {
        let before = stack.echo.requests();
        let raw =
            stack.raw_bytes(format!("GET {target} HTTP/1.1\r\n{host}\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert_eq!(status(&raw), expected, "{target} answered {raw:?}");
        match seen {
            Some(path) => assert_eq!(body(&raw)["path"], path, "{target}"),
            None => assert_eq!(stack.echo.requests(), before, "{target} reached the upstream"),
        }
    }
}

#[tokio::test]
async fn methods_must_be_exact() {
    let stack = stack().await;
    let host = stack.host();
    for (method, expected) in [("get", 400), ("Get", 400), ("CONNECT", 405), ("TRACE", 405)] {
        let target = if method == "CONNECT" { "localhost:443" } else { "/public" };
        let raw = stack
            .raw_bytes(format!("{method} {target} HTTP/1.1\r\n{host}\r\nConnection: close\r\n\r\n").as_bytes())
            .await;
        assert_eq!(status(&raw), expected, "{method}: {raw:?}");
        if expected == 405 {
            assert!(raw.to_ascii_lowercase().contains("\r\nallow: get, head, post"), "{raw:?}");
        }
    }
    assert_eq!(stack.echo.requests(), 0);
}

#[tokio::test]
async fn upgrades_other_than_websocket_and_request_trailers_never_pass() {
    let stack = stack().await;
    let host = stack.host();
    let h2c = format!(
        "GET /public HTTP/1.1\r\n{host}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nConnection: close\r\n\r\n"
    );
    let raw = stack.raw_bytes(h2c.as_bytes()).await;
    assert_eq!(status(&raw), 200, "{raw:?}");
    let seen = body(&raw)["headers"].clone();
    for gone in ["upgrade", "http2-settings", "connection"] {
        assert!(seen.get(gone).is_none(), "{gone} reached the upstream");
    }
    let chunked = format!(
        "POST /public HTTP/1.1\r\n{host}\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: forged\r\n\r\n"
    );
    let raw = stack.raw_bytes(chunked.as_bytes()).await;
    assert_eq!(status(&raw), 200, "{raw:?}");
    assert_eq!(body(&raw)["body_bytes"], 5);
    assert_eq!(body(&raw)["trailers"], Value::Null, "trailers reached the upstream");
    assert!(body(&raw)["headers"].get("trailer").is_none());
}

#[tokio::test]
async fn oversized_heads_and_targets_are_refused() {
    let stack = stack().await;
    let host = stack.host();
    let long_target = format!("/public/{}", "a".repeat(9 * 1024));
    let big_header = format!("X-Big: {}", "b".repeat(17 * 1024));
    let many_headers: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases = [
        (format!("GET {long_target} HTTP/1.1\r\n{host}\r\n\r\n"), 414),
        (format!("GET /public HTTP/1.1\r\n{host}\r\n{big_header}\r\n\r\n"), 431),
        (format!("GET /public HTTP/1.1\r\n{host}\r\n{many_headers}\r\n"), 431),
    ];
    for (request, expected) in cases {
        let raw = stack.raw_bytes(request.as_bytes()).await;
        assert_eq!(status(&raw), expected, "{} answered {raw:?}", &request[..40]);
    }
    assert_eq!(stack.echo.requests(), 0);
}

#[tokio::test]
async fn bodies_over_max_body_are_refused() {
    let routes = "[[routes]]\nname = \"small\"\npath = \"/\"\nupstream = \"{upstream}\"\nauth = \"public\"\nmax_body = \"1 KiB\"\n";
    let stack = Stack::with(Options::routes(routes)).await;
    let host = stack.host();
    let declared = format!("POST /x HTTP/1.1\r\n{host}\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n");
    let raw = stack.raw_bytes(declared.as_bytes()).await;
    assert_eq!(status(&raw), 413, "{raw:?}");
    assert_eq!(stack.echo.requests(), 0, "a declared oversize never reaches the upstream");

    let chunk = "a".repeat(600);
    let streamed = format!(
        "POST /x HTTP/1.1\r\n{host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let raw = stack.raw_bytes(streamed.as_bytes()).await;
    assert_eq!(status(&raw), 413, "{raw:?}");

    let small =
        format!("POST /x HTTP/1.1\r\n{host}\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{}", "a".repeat(1024));
    let raw = stack.raw_bytes(small.as_bytes()).await;
    assert_eq!(status(&raw), 200, "{raw:?}");
    assert_eq!(body(&raw)["body_bytes"], 1024);
}

/// A stack with short timeouts, for the slow-client tests; the idle
/// timeout is long unless asked, so each test sees the clock it is about.
async fn impatient(idle_timeout: &str) -> Stack {
    let server = format!("header_read_timeout = \"1s\"\nbody_timeout = \"1s\"\nidle_timeout = \"{idle_timeout}\"\n");
    Stack::with(Options { server, ..Options::default() }).await
}

#[tokio::test]
async fn a_slow_head_is_cut_off_while_others_are_served() {
    let stack = impatient("20s").await;
    let mut slow = stack.connect().await;
    slow.write_all(b"GET /public HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let drip = async {
        // one header line every 300 ms: each arrives before any per-read
        // timeout would fire, but the head never ends
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow.write_all(format!("X-Drip-{i}: a\r\n").as_bytes()).await.is_err() {
                break;
            }
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    };
    let others = async {
        for _ in 0..5 {
            assert_eq!(stack.get("/public", &[]).await.status, 200, "a normal client waited on the slow one");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::join!(drip, others);
    let cut = started.elapsed();
    assert!(cut < Duration::from_secs(4), "the slow head was allowed {cut:?}");
    assert_eq!(stack.echo.requests(), 5, "only the normal client's requests");
}

#[tokio::test]
async fn a_stalled_body_is_aborted_while_others_are_served() {
    let stack = impatient("20s").await;
    let mut slow = stack.connect().await;
    let head = format!("POST /public HTTP/1.1\r\n{}\r\nContent-Length: 100\r\n\r\nfirst-bytes", stack.host());
    slow.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(stack.get("/public", &[]).await.status, 200, "a normal client waited on the slow one");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status(&answer), 408, "{answer:?}");
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let stack = impatient("2s").await;
    let mut idle = stack.connect().await;
    let request = format!("GET /public HTTP/1.1\r\n{}\r\n\r\n", stack.host());
    idle.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = vec![0u8; 64 * 1024];
    let n = idle.read(&mut buffer).await.unwrap();
    assert_eq!(status(&String::from_utf8_lossy(&buffer[..n])), 200);
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match idle.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(1900), "closed after {:?}", started.elapsed());

    // a request in flight for longer than idle_timeout, trickling its body
    // faster than body_timeout, is not idle
    let mut busy = stack.connect().await;
    let head = format!("POST /public HTTP/1.1\r\n{}\r\nContent-Length: 8\r\nConnection: close\r\n\r\n", stack.host());
    busy.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        busy.write_all(b"x").await.unwrap();
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), busy.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status(&answer), 200, "{answer:?}");
    assert_eq!(body(&answer)["body_bytes"], 8);
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let options = Options { server: "max_connections = 2\n".into(), ..Options::default() };
    let stack = Stack::with(options).await;
    let _first = stack.connect().await;
    let _second = stack.connect().await;
    let tcp = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
    let refused = crate::support::tls_connect(&stack.cert, tcp).await;
    assert!(refused.is_err(), "a third connection was served");
    drop(_first);
    let served = eventually(Duration::from_secs(5), || async {
        let tcp = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
        crate::support::tls_connect(&stack.cert, tcp).await.is_ok()
    });
    assert!(served.await, "a freed slot is not reused");
}

#[tokio::test]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let untrusted = stack().await;
    let spoofed = [
        ("x-forwarded-for", "203.0.113.1"),
        ("x-forwarded-proto", "http"),
        ("x-real-ip", "1.1.1.1"),
        ("x-original-url", "/admin"),
    ];
    let reply = untrusted.get("/public", &spoofed).await;
    assert_eq!(reply.upstream_header("x-forwarded-for"), Some(json!("127.0.0.1")));
    assert_eq!(reply.upstream_header("x-forwarded-proto"), Some(json!("https")));
    assert_eq!(reply.upstream_header("x-real-ip"), Some(json!("127.0.0.1")));
    assert_eq!(reply.upstream_header("x-original-url"), None);

    let trusting =
        Stack::with(Options { server: "trusted_proxies = [\"127.0.0.0/8\"]\n".into(), ..Options::default() }).await;
    let reply = trusting.get("/public", &spoofed).await;
    assert_eq!(reply.upstream_header("x-forwarded-for"), Some(json!("203.0.113.1, 127.0.0.1")));
    assert_eq!(reply.upstream_header("x-forwarded-proto"), Some(json!("http")));
    assert_eq!(reply.upstream_header("x-real-ip"), Some(json!("203.0.113.1")));
    assert_eq!(reply.upstream_header("x-original-url"), None, "path overrides never pass");
}

#[tokio::test]
async fn configured_headers_are_stripped() {
    let routes = "[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"{upstream}\"\nauth = \"public\"\nstrip_headers = [\"x-route-secret\"]\n";
    let options = Options { server: "strip_headers = [\"x-debug\"]\n".into(), ..Options::routes(routes) };
    let stack = Stack::with(options).await;
    let reply = stack.get("/x", &[("x-debug", "1"), ("X-Route-Secret", "2"), ("x-kept", "3")]).await;
    assert_eq!(reply.upstream_header("x-debug"), None);
    assert_eq!(reply.upstream_header("x-route-secret"), None);
    assert_eq!(reply.upstream_header("x-kept"), Some(json!("3")));
}

#[tokio::test]
async fn exact_routes_take_their_path_only() {
    let routes = r#"
[[routes]]
name = "health"
path = "/healthz"
path_match = "exact"
upstream = "{upstream}"
auth = "public"
"#;
    let stack = Stack::with(Options::routes(routes)).await;
    assert_eq!(stack.get("/healthz", &[]).await.status, 200);
    assert_eq!(stack.get("/healthz/deep", &[]).await.status, 404);
    assert_eq!(stack.get("/healthz/", &[]).await.status, 404);
}

#[tokio::test]
async fn http2_requests_get_the_same_rules() {
    let stack = stack().await;
    let port = stack.addr.port();
    let send = |authority: &str, path: &str, headers: &[(&str, &str)]| {
        let mut request = http::Request::get(format!("https://{authority}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).unwrap();
        let stack = &stack;
        async move {
            let mut client = crate::support::h2_connect(stack).await.ready().await.unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            let response = response.await.unwrap();
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.data().await {
                bytes.extend_from_slice(&chunk.unwrap());
            }
            (status, serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null))
        }
    };
    let here = format!("localhost:{port}");
    let (status, _) = send(&here, "/public", &[("host", "evil.example")]).await;
    assert_eq!(status, 400, ":authority and host disagree");
    let (status, seen) = send(&here, "/public", &[("host", &here.to_uppercase())]).await;
    assert_eq!(status, 200, "the same host in another case agrees");
    assert_eq!(seen["headers"]["x-forwarded-host"], json!(here));
    let (status, _) = send(&here, "/public/%2e%2e/orders", &[]).await;
    assert_eq!(status, 400);
    let (status, seen) = send(&here, "/public", &[("x_user_id", "mallory"), ("x-forwarded-for", "6.6.6.6")]).await;
    assert_eq!(status, 200);
    assert!(seen["headers"].get("x_user_id").is_none());
    assert_eq!(seen["headers"]["x-forwarded-for"], json!("127.0.0.1"));
    assert_eq!(stack.echo.requests(), 2);
}

#[tokio::test]
async fn underscored_names_never_pass() {
    let stack = stack().await;
    let host = stack.host();
    let request = format!(
        "GET /public HTTP/1.1\r\n{host}\r\nX_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\nX_Original_URL: /orders\r\nX_Forwarded_Host: evil\r\nX_Custom: 1\r\nConnection: close\r\n\r\n"
    );
    let raw = stack.raw_bytes(request.as_bytes()).await;
    assert_eq!(status(&raw), 200, "{raw:?}");
    let seen = body(&raw)["headers"].clone();
    let underscored: Vec<&String> = seen.as_object().unwrap().keys().filter(|name| name.contains('_')).collect();
    assert!(underscored.is_empty(), "{underscored:?}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
}

#[tokio::test]
async fn dot_segments_with_parameters_are_refused() {
    let stack = stack().await;
    for path in ["/public/..;/orders", "/public/.;x/orders", "/public/%252e%252e/orders", "/public%252forders"] {
        assert_eq!(stack.get(path, &[]).await.status, 400, "{path}");
    }
    assert_eq!(stack.echo.requests(), 0);
}

#[tokio::test]
async fn a_head_that_looks_like_http2_at_first_is_still_timed() {
    let stack = impatient("20s").await;
    // "P" and "PRI * HTTP/2" begin the HTTP/2 preface, and "POST" too
    for start in ["P", "PRI * HTTP/2"] {
        let mut slow = stack.connect().await;
        let started = Instant::now();
        slow.write_all(start.as_bytes()).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(8), slow.read_to_end(&mut rest)).await;
        assert!(started.elapsed() < Duration::from_secs(4), "{start:?} was allowed {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn http1_after_alpn_h2_is_refused() {
    let stack = stack().await;
    let mut config = rustls::ClientConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::pem::PemObject;
            roots.add(rustls::pki_types::CertificateDer::from_pem_file(&stack.cert).unwrap()).unwrap();
            roots
        })
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut tls = connector.connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let request = format!("GET /public HTTP/1.1\r\n{}\r\nConnection: close\r\n\r\n", stack.host());
    let _ = tls.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("HTTP/1.1 200"), "HTTP/1 served after ALPN chose h2");
    assert_eq!(stack.echo.requests(), 0);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() {
    // an upstream that streams without end; the client never reads
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").await;
                let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
                while stream.write_all(chunk.as_bytes()).await.is_ok() {}
                let _ = closed_tx.send(());
            });
        }
    });
    let routes =
        format!("[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"http://{upstream}\"\nauth = \"public\"\n");
    let server = "body_timeout = \"1s\"\n".to_owned();
    let stack = Stack::with(Options { server, ..Options::routes(&routes) }).await;
    let mut client = stack.connect().await;
    client.write_all(format!("GET /stream HTTP/1.1\r\n{}\r\n\r\n", stack.host()).as_bytes()).await.unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(10), closed.recv()).await;
    assert!(gone.is_ok(), "the upstream connection is still held for a client that does not read");
}

#[tokio::test]
async fn http2_connections_idle_out_despite_pings() {
    let stack = impatient("2s").await;
    let mut config = rustls::ClientConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates({
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::pem::PemObject;
            roots.add(rustls::pki_types::CertificateDer::from_pem_file(&stack.cert).unwrap()).unwrap();
            roots
        })
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tls = connector.connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let (_client, mut connection) = h2::client::handshake(tls).await.unwrap();
    let mut ping = connection.ping_pong().unwrap();
    let pinging = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if ping.ping(h2::Ping::opaque()).await.is_err() {
                return;
            }
        }
    };
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        tokio::select! {
            _ = connection => {}
            () = pinging => {}
        }
    })
    .await;
    assert!(closed.is_ok(), "PINGs kept an idle HTTP/2 connection open");
    assert!(started.elapsed() >= Duration::from_millis(1900));
}

#[tokio::test]
async fn a_bare_upgrade_header_never_passes() {
    let stack = stack().await;
    let reply = stack.get("/public", &[("upgrade", "websocket"), ("x-kept", "1")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream_header("upgrade"), None);
    assert_eq!(reply.upstream_header("x-kept"), Some(json!("1")));
}

#[tokio::test]
async fn trailers_never_reach_an_http2_upstream() {
    let routes = "[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"{upstream}\"\nauth = \"public\"\nupstream_protocol = \"http2\"\n";
    let stack = Stack::with(Options::routes(routes)).await;
    let request = format!(
        "POST /x HTTP/1.1\r\n{}\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: forged\r\n\r\n",
        stack.host()
    );
    let raw = stack.raw_bytes(request.as_bytes()).await;
    assert_eq!(status(&raw), 200, "{raw:?}");
    assert_eq!(body(&raw)["version"], "HTTP/2.0");
    assert_eq!(body(&raw)["body_bytes"], 5);
    assert_eq!(body(&raw)["trailers"], Value::Null, "trailers reached the upstream");
}

#[tokio::test]
async fn a_silent_tls_handshake_is_dropped() {
    let options = Options { server: "tls_handshake_timeout = \"1s\"\n".into(), ..Options::default() };
    let stack = Stack::with(options).await;
    let mut silent = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(6), silent.read(&mut buffer)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the connection stayed open: {read:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "dropped after {:?}", started.elapsed());
}

#[tokio::test]
async fn http2_stream_limits_are_announced() {
    let options = Options { server: "max_concurrent_streams = 7\n".into(), ..Options::default() };
    let stack = Stack::with(options).await;
    let client = crate::support::h2_connect(&stack).await;
    let mut client = client.ready().await.unwrap();
    let (response, _) = client.send_request(http::Request::get(stack.url("/public")).body(()).unwrap(), true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    assert_eq!(client.current_max_send_streams(), 7);
}

#[tokio::test]
async fn one_client_cannot_take_every_connection() {
    let options = Options { server: "max_connections_per_client = 2\n".into(), ..Options::default() };
    let stack = Stack::with(options).await;
    let _first = stack.connect().await;
    let _second = stack.connect().await;
    let tcp = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
    assert!(crate::support::tls_connect(&stack.cert, tcp).await.is_err(), "a third connection from one address");
}
