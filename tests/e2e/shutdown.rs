//! Graceful shutdown: stop accepting, let what is in flight finish within
//! `server.shutdown_timeout`, then end.

use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::support::{Options, Stack, request_in_flight};

const WITHIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight_and_stops_accepting() {
    let stack = Stack::start().await;
    let (mut body, response) = request_in_flight(&stack, "/orders/slow").await;
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
    let (_body, response) = request_in_flight(&stack, "/orders/slow").await;
    stack.stop.cancel();
    tokio::time::timeout(WITHIN, stack.served).await.expect("the gateway ends at the timeout").unwrap();
    let response = tokio::time::timeout(WITHIN, response).await.unwrap().unwrap();
    assert!(response.is_err() || response.unwrap().status() != 200, "a request cut off at shutdown succeeded");
}
