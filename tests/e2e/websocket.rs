//! WebSocket upgrades through the gateway: the token is checked on the
//! upgrade request, then bytes flow both ways until either side closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{self, Options, Stack};

/// A WebSocket upstream that echoes every message; counts handshakes and
/// records the identity header it was given.
async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let users = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (counter, seen) = (handshakes.clone(), users.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (counter, seen) = (counter.clone(), seen.clone());
            tokio::spawn(async move {
                #[allow(clippy::result_large_err)] // the shape tungstenite's callback takes
                let record = |request: &http::Request<()>, response| {
                    let user = request.headers().get("x-user-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
                    seen.lock().unwrap().push(user.to_owned());
                    Ok(response)
                };
                let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() || message.is_binary() {
                        let _ = socket.send(message).await;
                    }
                }
            });
        }
    });
    (addr, handshakes, users)
}

fn routes(upstream: SocketAddr) -> Options {
    let routes = format!(
        r#"
[[routes]]
name = "live"
path = "/live"
upstream = "http://{upstream}"
websocket = true
inject_headers = {{ "x-user-id" = "sub" }}

[[routes]]
name = "plain"
path = "/plain"
upstream = "http://{upstream}"
auth = "public"
"#
    );
    Options::routes(&routes)
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn open(stack: &Stack, path: &str, token: Option<&str>) -> Result<Socket, String> {
    let mut request = format!("wss://localhost:{}{path}", stack.addr.port()).into_client_request().unwrap();
    if let Some(token) = token {
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let tls =
        support::tls_connect(&stack.cert, tokio::net::TcpStream::connect(stack.addr).await.unwrap()).await.unwrap();
    tokio_tungstenite::client_async(request, tls).await.map(|(socket, _)| socket).map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_websocket_with_a_valid_token_echoes_through_the_gateway() {
    let (upstream, handshakes, users) = echo_server().await;
    let stack = Stack::with(routes(upstream)).await;
    let token = stack.token(json!({}));
    let (mut sink, mut stream) = {
        let mut request = format!("wss://localhost:{}/live/feed", stack.addr.port()).into_client_request().unwrap();
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        request.headers_mut().insert("x-user-id", "mallory".parse().unwrap());
        let tcp = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
        let tls = support::tls_connect(&stack.cert, tcp).await.unwrap();
        let (socket, response) = tokio_tungstenite::client_async(request, tls).await.expect("the upgrade succeeds");
        assert_eq!(response.status(), 101);
        socket.split()
    };
    for text in ["hello", "through", "the gateway"] {
        sink.send(Message::text(text)).await.unwrap();
        let echoed =
            tokio::time::timeout(std::time::Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    sink.send(Message::Binary(vec![0u8, 1, 2, 255].into())).await.unwrap();
    let echoed = stream.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_data().as_ref(), [0u8, 1, 2, 255]);
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(users.lock().unwrap().as_slice(), ["alice"], "the upstream saw the verified identity only");
}

#[tokio::test]
async fn a_websocket_without_a_valid_token_never_reaches_the_upstream() {
    let (upstream, handshakes, _) = echo_server().await;
    let stack = Stack::with(routes(upstream)).await;
    let missing = open(&stack, "/live", None).await.expect_err("refused");
    assert!(missing.contains("401"), "{missing}");
    let expired = stack.token(json!({"exp": portcullis::dev::now() - 3600}));
    let refused = open(&stack, "/live", Some(&expired)).await.expect_err("refused");
    assert!(refused.contains("401"), "{refused}");
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn routes_without_websocket_do_not_upgrade() {
    let (upstream, handshakes, _) = echo_server().await;
    let stack = Stack::with(routes(upstream)).await;
    assert!(open(&stack, "/plain", None).await.is_err(), "an upgrade passed a route without websocket = true");
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn websockets_hold_their_connection_slot_and_close_when_idle() {
    let (upstream, _, _) = echo_server().await;
    let options = routes(upstream);
    let server = "max_connections = 2\nidle_timeout = \"2s\"\n".to_owned();
    let stack = Stack::with(Options { server, ..options }).await;
    let token = stack.token(json!({}));
    let socket = open(&stack, "/live", Some(&token)).await.expect("the upgrade succeeds");
    let _second = stack.connect().await;
    let tcp = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
    assert!(support::tls_connect(&stack.cert, tcp).await.is_err(), "an open WebSocket gave its slot away");

    // no traffic for idle_timeout: the gateway closes it
    let mut socket = socket;
    let ended =
        tokio::time::timeout(std::time::Duration::from_secs(6), async { while socket.next().await.is_some() {} }).await;
    assert!(ended.is_ok(), "an idle WebSocket stayed open");
}

#[tokio::test]
async fn a_websocket_outlives_the_head_timeout_while_in_use() {
    let (upstream, _, _) = echo_server().await;
    let server = "header_read_timeout = \"1s\"\nidle_timeout = \"20s\"\n".to_owned();
    let stack = Stack::with(Options { server, ..routes(upstream) }).await;
    let token = stack.token(json!({}));
    let socket = open(&stack, "/live", Some(&token)).await.expect("the upgrade succeeds");
    let (mut sink, mut stream) = socket.split();
    // messages for three times the head timeout: frames are not request heads
    for i in 0..10 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let text = format!("message {i}");
        assert!(sink.send(Message::text(text.clone())).await.is_ok(), "closed before {text}");
        let echoed = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next()).await;
        let echoed = echoed.ok().flatten().and_then(|m| m.ok()).map(|m| m.into_text().unwrap().to_string());
        assert_eq!(echoed.as_deref(), Some(text.as_str()));
    }
}
