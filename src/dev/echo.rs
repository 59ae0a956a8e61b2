//! An upstream that answers with the request it received, as JSON: method,
//! path and query, HTTP version, every header (a list where one was sent
//! several times), the number of body bytes and any trailers. It reads the body frame by
//! frame and counts it, never holding it whole.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{json_response, serve_http};

pub struct EchoUpstream {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl EchoUpstream {
    /// Binds a free loopback port and serves there.
    pub async fn start() -> std::io::Result<EchoUpstream> {
        EchoUpstream::serve(TcpListener::bind("127.0.0.1:0").await?)
    }

    pub fn serve(listener: TcpListener) -> std::io::Result<EchoUpstream> {
        let echo =
            EchoUpstream { addr: listener.local_addr()?, requests: Arc::default(), stop: CancellationToken::new() };
        let requests = echo.requests.clone();
        tokio::spawn(serve_http(listener, echo.stop.clone(), move |request| {
            requests.fetch_add(1, Ordering::SeqCst);
            echo_request(request)
        }));
        Ok(echo)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests reached this upstream.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn echo_request(request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, mut body) = request.into_parts();
    let mut body_bytes = 0usize;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) if frame.is_trailers() => trailers = frame.into_trailers().ok(),
            Ok(frame) => body_bytes += frame.data_ref().map_or(0, Bytes::len),
            Err(error) => {
                return json_response(StatusCode::BAD_REQUEST, &json!({"error": error.to_string()}));
            }
        }
    }
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    json_response(
        StatusCode::OK,
        &json!({
            "method": parts.method.as_str(),
            "path": path,
            "version": format!("{:?}", parts.version),
            "headers": headers_json(&parts.headers),
            "body_bytes": body_bytes,
            "trailers": trailers.as_ref().map(headers_json),
        }),
    )
}

fn headers_json(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for name in headers.keys() {
        let values: Vec<Value> = headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let value = match <[Value; 1]>::try_from(values) {
            Ok([one]) => one,
            Err(many) => Value::Array(many),
        };
        out.insert(name.as_str().to_owned(), value);
    }
    Value::Object(out)
}
