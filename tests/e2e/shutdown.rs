//! Graceful shutdown: stop accepting, let what is in flight finish within
//! `server.shutdown_timeout`, then end.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::channel::Channel;
use serde_json::json;
use tokio::net::TcpStream;

use crate::support::{self, Options, Stack};

const WITHIN: Duration = Duration::from_secs(5);

/// Starts a POST to `/orders` whose body the caller finishes.
async fn slow_request(
    stack: &Stack,
) -> (
    http_body_util::channel::Sender<Bytes>,
    tokio::task::JoinHandle<Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>>,
) {
    let client = support::client::<Channel<Bytes>>(&stack.cert, Version::HTTP_11);
    let (mut body, request_body) = Channel::<Bytes>::new(1);
    let token = stack.token(json!({}));
    let request = Request::post(stack.url("/orders/slow"))
        .header("authorization", format!("Bearer {token}"))
        .body(request_body)
        .unwrap();
    let response = tokio::spawn(client.request(request));
    body.send_data(Bytes::from_static(b"first")).await.unwrap();
    // the gateway has it once the upstream is being sent to
    tokio::time::sleep(Duration::from_millis(200)).await;
    (body, response)
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight_and_stops_accepting() {
    let stack = Stack::start().await;
    let (mut body, response) = slow_request(&stack).await;
    stack.stop.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(TcpStream::connect(stack.addr).await.is_err(), "still accepting after shutdown began");
    assert!(!stack.served.is_finished(), "stopped before the request in flight finished");

    body.send_data(Bytes::from_static(b"last")).await.unwrap();
    drop(body);
    let response = tokio::time::timeout(WITHIN, response).await.unwrap().unwrap().unwrap();
    assert_eq!(response.status(), 200);
    tokio::time::timeout(WITHIN, stack.served).await.expect("the gateway ends once drained").unwrap();
}

#[tokio::test]
async fn shutdown_gives_up_on_requests_after_the_timeout() {
    let stack = Stack::with(Options { server: "shutdown_timeout = \"500ms\"".into(), ..Options::default() }).await;
    let (_body, response) = slow_request(&stack).await;
    stack.stop.cancel();
    tokio::time::timeout(WITHIN, stack.served).await.expect("the gateway ends at the timeout").unwrap();
    let response = tokio::time::timeout(WITHIN, response).await.unwrap().unwrap();
    assert!(response.is_err() || response.unwrap().status() != 200, "a request cut off at shutdown succeeded");
}
