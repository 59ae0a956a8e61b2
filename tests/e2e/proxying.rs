//! Routing, forwarding, streaming and the errors of the proxy itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Method, Request, Version};
use http_body_util::Full;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{self, Options, Stack};

/// A TCP upstream that answers every request head on a connection with
/// `response` (or, if `None`, never answers). Counts connections.
async fn raw_upstream(response: Option<&'static str>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let Some(response) = response else {
                            return std::future::pending::<()>().await;
                        };
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, connections)
}

fn routes_to(upstream: &str, extra: &str) -> Options {
    let routes =
        format!("[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"{upstream}\"\nauth = \"public\"\n{extra}");
    Options { routes, ..Options::default() }
}

#[tokio::test]
async fn no_matching_route_is_404() {
    let stack = Stack::start().await;
    for path in ["/", "/ordersX", "/nothing/here"] {
        let reply = stack.get(path, &[]).await;
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.json()["error"], "not_found");
    }
    assert_eq!(stack.echo.requests(), 0);
}

#[tokio::test]
async fn routes_match_by_host_path_and_method() {
    let routes = r#"
[[routes]]
name = "any-host"
path = "/"
upstream = "{upstream}/any"
auth = "public"

[[routes]]
name = "api-host"
path = "/"
host = "localhost"
methods = ["GET"]
upstream = "{upstream}/api"
auth = "public"

[[routes]]
name = "deep"
path = "/a/b"
upstream = "{upstream}/deep"
auth = "public"
"#;
    let stack = Stack::with(Options { routes: routes.into(), ..Options::default() }).await;
    let path = |reply: support::Reply| reply.json()["path"].as_str().unwrap().to_owned();
    // the client connects to localhost: the host route wins over the longer path
    assert_eq!(path(stack.get("/a/b/c", &[]).await), "/api/a/b/c");
    // a method the host route does not take falls through to the next best
    let post = stack.send(Method::POST, "/a/b/c", &[], Bytes::new()).await;
    assert_eq!(path(post), "/deep/a/b/c");
    let post = stack.send(Method::POST, "/x", &[], Bytes::new()).await;
    assert_eq!(path(post), "/any/x");
}

#[tokio::test]
async fn methods_outside_a_route_do_not_match_it() {
    let routes = r#"
[[routes]]
name = "read-only"
path = "/"
methods = ["GET", "HEAD"]
upstream = "{upstream}"
auth = "public"
"#;
    let stack = Stack::with(Options { routes: routes.into(), ..Options::default() }).await;
    assert_eq!(stack.get("/x", &[]).await.status, 200);
    let reply = stack.send(Method::DELETE, "/x", &[], Bytes::new()).await;
    assert_eq!(reply.status, 404);
    assert_eq!(stack.echo.requests(), 1);
}

#[tokio::test]
async fn path_and_query_are_forwarded_exactly() {
    let stack = Stack::start().await;
    let token = stack.token(json!({}));
    for path in ["/orders", "/orders/", "/orders/a%20b/c;v=1?q=%2F&x=1&x=2", "/orders?"] {
        let reply = stack.get_with_token(path, &token).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.json()["path"], path);
    }
}

#[tokio::test]
async fn paths_are_matched_and_forwarded_in_canonical_form() {
    let stack = Stack::start().await;
    // each spelling reaches /orders (so it needs a token), whatever route
    // its raw text seems to name
    for path in ["/public/../orders", "//orders", "/%6Frders/1", "/public/./../orders/", "/x/%2E%2E"] {
        let reply = stack.get(path, &[]).await;
        let expected = if path == "/x/%2E%2E" { 400 } else { 401 };
        assert_eq!(reply.status, expected, "{path}");
    }
    let token = stack.token(json!({}));
    let cases = [
        ("/public/../orders/1?q=%2F", "/orders/1?q=%2F"),
        ("//orders///a/./b/../c", "/orders/a/c"),
        ("/%6Frders/%7e%c3%a9", "/orders/~%C3%A9"),
    ];
    for (sent, seen) in cases {
        let reply = stack.get_with_token(sent, &token).await;
        assert_eq!(reply.status, 200, "{sent}");
        assert_eq!(reply.json()["path"], seen, "{sent}");
    }
}

#[tokio::test]
async fn paths_that_could_mean_something_else_are_refused() {
    let stack = Stack::start().await;
    for path in ["/public/%2e%2e/orders", "/public%2Forders", "/public/%5C/x", "/public/a%00", "/public/%zz"] {
        let reply = stack.get(path, &[]).await;
        assert_eq!(reply.status, 400, "{path}");
        assert_eq!(reply.json()["error"], "invalid_request");
    }
    let host = format!("Host: localhost:{}", stack.addr.port());
    let raw = stack.raw(&["GET /public\\..\\orders HTTP/1.1", &host, "Connection: close"]).await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert_eq!(stack.echo.requests(), 0);
}

#[tokio::test]
async fn two_host_headers_are_refused() {
    let stack = Stack::start().await;
    let host = format!("Host: localhost:{}", stack.addr.port());
    let raw = stack.raw(&["GET /public HTTP/1.1", &host, "Host: evil.example", "Connection: close"]).await;
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("invalid_request"), "{raw}");
    assert_eq!(stack.echo.requests(), 0);
}

#[tokio::test]
async fn host_routes_match_a_fully_qualified_name() {
    let routes = r#"
[[routes]]
name = "api"
path = "/"
host = "localhost"
upstream = "{upstream}/api"
auth = "public"
"#;
    let stack = Stack::with(Options { routes: routes.into(), ..Options::default() }).await;
    for host in ["localhost", "LocalHost.", "localhost.:443"] {
        let reply = stack.get("/x", &[("host", host)]).await;
        assert_eq!(reply.status, 200, "{host}");
        assert_eq!(reply.json()["path"], "/api/x");
    }
}

#[tokio::test]
async fn forwarded_headers_describe_the_client() {
    let stack = Stack::start().await;
    let reply = stack.get("/public", &[("x-forwarded-for", "203.0.113.9")]).await;
    assert_eq!(reply.upstream_header("x-forwarded-for"), Some(json!("127.0.0.1")), "rebuilt from the peer");
    assert_eq!(reply.upstream_header("x-forwarded-proto"), Some(json!("https")));
    let host = format!("localhost:{}", stack.addr.port());
    assert_eq!(reply.upstream_header("x-forwarded-host"), Some(json!(host)));
    assert_eq!(reply.upstream_header("host"), Some(json!(host)), "the client's Host is kept");
}

#[tokio::test]
async fn http2_is_served_through_alpn() {
    let stack = Stack::start().await;
    let client = support::client(&stack.cert, Version::HTTP_2);
    let request = Request::get(stack.url("/orders/7?x=1"))
        .header("authorization", format!("Bearer {}", stack.token(json!({}))))
        .header("x-user-id", "mallory")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = support::send(&client, request).await;
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.status, 200);
    let seen = reply.json();
    assert_eq!(seen["path"], "/orders/7?x=1");
    assert_eq!(seen["headers"]["x-user-id"], "alice");
    assert_eq!(seen["headers"]["host"], format!("localhost:{}", stack.addr.port()));

    let unauthenticated = Request::get(stack.url("/orders")).body(Full::new(Bytes::new())).unwrap();
    assert_eq!(support::send(&client, unauthenticated).await.status, 401);
    assert_eq!(stack.echo.requests(), 1);
}

#[tokio::test]
async fn http2_cookies_reach_http1_upstreams_as_one_header() {
    let stack = Stack::start().await;
    let client = support::client(&stack.cert, Version::HTTP_2);
    let request = Request::get(stack.url("/public"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("x_user_id", "mallory")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = support::send(&client, request).await;
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.upstream_header("cookie"), Some(json!("a=1; b=2")));
    assert_eq!(reply.upstream_header("x_user_id"), None, "spoofing over HTTP/2 is stripped too");
}

#[tokio::test]
async fn the_upstream_host_is_sent_when_the_route_does_not_preserve_it() {
    let stack = Stack::with(routes_to("{upstream}", "preserve_host = false")).await;
    let reply = stack.get("/x", &[]).await;
    let upstream_authority = stack.echo.url().trim_start_matches("http://").to_owned();
    assert_eq!(reply.upstream_header("host"), Some(json!(upstream_authority)));
    let client_host = format!("localhost:{}", stack.addr.port());
    assert_eq!(reply.upstream_header("x-forwarded-host"), Some(json!(client_host)));
}

#[tokio::test]
async fn http1_is_served_when_the_client_offers_only_http1() {
    let stack = Stack::start().await;
    let reply = stack.get("/public", &[]).await;
    assert_eq!(reply.version, Version::HTTP_11);
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn large_uploads_stream_through_whole() {
    let stack = Stack::start().await;
    let body = Bytes::from(vec![7u8; 8 * 1024 * 1024]);
    let token = stack.token(json!({}));
    let auth = format!("Bearer {token}");
    let reply = stack.send(Method::POST, "/orders", &[("authorization", &auth)], body.clone()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body_bytes"], 8 * 1024 * 1024);

    let client = support::client(&stack.cert, Version::HTTP_2);
    let request = Request::post(stack.url("/orders")).header("authorization", auth).body(Full::new(body)).unwrap();
    let reply = support::send(&client, request).await;
    assert_eq!(reply.json()["body_bytes"], 8 * 1024 * 1024, "over HTTP/2 too");
}

#[tokio::test]
async fn a_refused_upload_never_reaches_the_upstream() {
    let stack = Stack::start().await;
    let body = Bytes::from(vec![1u8; 1024 * 1024]);
    let reply = stack.send(Method::POST, "/orders", &[], body).await;
    assert_eq!(reply.status, 401);
    assert_eq!(stack.echo.requests(), 0);
}

#[tokio::test]
async fn an_unreachable_upstream_is_502() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let stack = Stack::with(routes_to(&format!("http://{closed}"), "")).await;
    let reply = stack.get("/x", &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"], "bad_gateway");
    assert!(!String::from_utf8_lossy(&reply.body).contains(&closed.to_string()), "no internals leak");
}

#[tokio::test]
async fn an_upstream_that_closes_without_answering_is_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let stack = Stack::with(routes_to(&format!("http://{addr}"), "")).await;
    let reply = stack.get("/x", &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"], "bad_gateway");
}

#[tokio::test]
async fn an_upstream_that_resets_is_502() {
    let (addr, connections) = raw_upstream(Some("garbage, not HTTP\r\n\r\n")).await;
    let stack = Stack::with(routes_to(&format!("http://{addr}"), "")).await;
    assert_eq!(stack.get("/x", &[]).await.status, 502);
    assert!(connections.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn a_slow_upstream_is_504() {
    let (addr, connections) = raw_upstream(None).await;
    let stack = Stack::with(routes_to(&format!("http://{addr}"), "upstream_timeout = \"300ms\"")).await;
    let reply = stack.get("/x", &[]).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"], "gateway_timeout");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn upstream_errors_and_hop_by_hop_headers() {
    let response = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: x-internal\r\n\
                    X-Internal: secret\r\nKeep-Alive: timeout=5\r\nX-App: 1\r\nContent-Length: 4\r\n\r\ndown";
    let (addr, _) = raw_upstream(Some(response)).await;
    let stack = Stack::with(routes_to(&format!("http://{addr}"), "")).await;
    let reply = stack.get("/x", &[]).await;
    assert_eq!(reply.status, 503, "the upstream's own errors pass through");
    assert_eq!(&reply.body[..], b"down");
    assert_eq!(reply.header("x-app"), "1");
    assert!(reply.headers.get("x-internal").is_none());
    assert!(reply.headers.get("keep-alive").is_none());
}

#[tokio::test]
async fn plaintext_is_served_without_tls_files() {
    let stack = Stack::with(Options { tls: false, ..Options::default() }).await;
    let reply = stack.get_with_token("/orders", &stack.token(json!({}))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream_header("x-forwarded-proto"), Some(json!("http")));
    assert_eq!(reply.upstream_header("x-user-id"), Some(json!("alice")));
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let (addr, connections) = raw_upstream(Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
    let stack = Stack::with(routes_to(&format!("http://{addr}"), "")).await;
    for _ in 0..3 {
        assert_eq!(stack.get("/x", &[]).await.status, 200);
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}
