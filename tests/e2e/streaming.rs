//! Bodies stream through the gateway in both directions: each side sees
//! the first bytes before the other side has sent the last ones.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::channel::Channel;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::support::{self, Options, Stack};

const WITHIN: Duration = Duration::from_secs(10);

fn public_route_to(addr: std::net::SocketAddr) -> Options {
    let routes = format!("[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"http://{addr}\"\nauth = \"public\"\n");
    Options { routes, ..Options::default() }
}

/// Reads from `stream` until `marker` has been seen.
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, marker: &[u8]) {
    let mut buf = [0u8; 4096];
    while !seen.windows(marker.len()).any(|w| w == marker) {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed before {:?}", String::from_utf8_lossy(marker));
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_response_streams_to_the_client_before_it_ends() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (finish, finished) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        read_until(&mut stream, &mut Vec::new(), b"\r\n\r\n").await;
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        // the rest only once the client has shown it got the first part
        let _ = finished.await;
        stream.write_all(b"4\r\nlast\r\n0\r\n\r\n").await.unwrap();
    });
    let stack = Stack::with(public_route_to(addr)).await;
    let client = support::client::<Full<Bytes>>(&stack.cert, Version::HTTP_11);
    let request = Request::get(stack.url("/stream")).body(Full::new(Bytes::new())).unwrap();
    let response = tokio::time::timeout(WITHIN, client.request(request)).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let frame = tokio::time::timeout(WITHIN, body.frame())
        .await
        .expect("the first part arrives while the upstream holds the rest");
    assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), "first");
    finish.send(()).unwrap();
    let rest = tokio::time::timeout(WITHIN, body.collect()).await.unwrap().unwrap().to_bytes();
    assert_eq!(rest, "last");
}

#[tokio::test]
async fn a_request_body_streams_to_the_upstream_before_it_ends() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_first, first_seen) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        read_until(&mut stream, &mut seen, b"first-part").await;
        got_first.send(()).unwrap();
        read_until(&mut stream, &mut seen, b"last-part").await;
        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
    });
    let stack = Stack::with(public_route_to(addr)).await;
    let client = support::client::<Channel<Bytes>>(&stack.cert, Version::HTTP_2);
    let (mut sender, body) = Channel::<Bytes>::new(1);
    let request = Request::post(stack.url("/upload")).body(body).unwrap();
    let response = tokio::spawn(client.request(request));
    sender.send_data(Bytes::from_static(b"first-part")).await.unwrap();
    tokio::time::timeout(WITHIN, first_seen)
        .await
        .expect("the upstream sees the first part while the client still holds the rest")
        .unwrap();
    sender.send_data(Bytes::from_static(b"last-part")).await.unwrap();
    drop(sender);
    let response = tokio::time::timeout(WITHIN, response).await.unwrap().unwrap().unwrap();
    assert_eq!(response.status(), 200);
}
