//! `POST /revocations` on the admin listener: one entry as JSON, written to
//! the backend and to this gateway's local copy before the answer.
//!
//! It demands `Authorization: Bearer <token>` with the token in
//! `admin.token_file`, compared in constant time (of SHA-256 digests, so
//! not even the length leaks). No `token_file`, or no `[revocation]`: the
//! endpoint does not exist (404), so an admin listener never takes writes
//! nobody configured.

use aws_lc_rs::{constant_time, digest};
use bytes::Bytes;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::{EntryFields, Revoked};
use crate::admin::json_response;
use crate::state::Snapshot;

/// An entry is a few hundred bytes; anything much larger is not one.
const MAX_BODY: usize = 64 * 1024;

pub(crate) async fn answer(snapshot: &Snapshot, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let source = &snapshot.config.source;
    let token_file = source.admin.as_ref().and_then(|admin| admin.token_file.as_ref());
    let (Some(token_file), Some(list)) = (token_file, &snapshot.config.revocations) else {
        return json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
    };
    if request.method() != Method::POST {
        let mut response = json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "method_not_allowed"}));
        response.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let expected = match std::fs::read(token_file) {
        Ok(bytes) if !bytes.trim_ascii().is_empty() => bytes.trim_ascii().to_vec(),
        Ok(_) | Err(_) => {
            tracing::error!(file = %token_file.display(), "admin.token_file is unreadable or empty: revocations refused");
            let body = json!({"error": "unavailable", "detail": "the admin token cannot be read"});
            return json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
        }
    };
    if !authorized(request.headers().get(AUTHORIZATION), &expected) {
        let mut response = json_response(StatusCode::UNAUTHORIZED, &json!({"error": "unauthorized"}));
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"portcullis-admin\""));
        return response;
    }
    let bad =
        |detail: String| json_response(StatusCode::BAD_REQUEST, &json!({"error": "invalid_request", "detail": detail}));
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => return bad(format!("the body could not be read: {error}")),
    };
    let revoked =
        match serde_json::from_slice::<EntryFields>(&body).map_err(|e| e.to_string()).and_then(Revoked::try_from) {
            Ok(revoked) => revoked,
            Err(detail) => return bad(detail),
        };
    if !revoked.matters(&list.config) {
        return bad("the entry has already expired: every token it names is refused as expired".into());
    }
    match list.write(&revoked).await {
        Ok(()) => {
            // what was revoked, not whom: a sub is personal data (see log.include_sub)
            tracing::info!(kind = revoked.kind(), "revoked through the admin API");
            json_response(StatusCode::OK, &json!({"revoked": revoked.fields()}))
        }
        Err(error) => {
            tracing::error!(%error, "revocation not written");
            let body = json!({"error": "unavailable", "detail": "the revocation list could not be written; retry"});
            json_response(StatusCode::SERVICE_UNAVAILABLE, &body)
        }
    }
}

/// Whether `header` is `Bearer <expected>`.
fn authorized(header: Option<&HeaderValue>, expected: &[u8]) -> bool {
    let Some((scheme, token)) = header.and_then(|value| value.to_str().ok()).and_then(|value| value.split_once(' '))
    else {
        return false;
    };
    let sha = |bytes: &[u8]| digest::digest(&digest::SHA256, bytes);
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time::verify_slices_are_equal(sha(token.trim().as_bytes()).as_ref(), sha(expected).as_ref()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        let header = |text: &'static str| HeaderValue::from_static(text);
        assert!(authorized(Some(&header("Bearer s3cret")), b"s3cret"));
        assert!(authorized(Some(&header("bearer s3cret")), b"s3cret"));
        assert!(!authorized(Some(&header("Bearer s3cre")), b"s3cret"));
        assert!(!authorized(Some(&header("Basic s3cret")), b"s3cret"));
        assert!(!authorized(Some(&header("Bearer")), b"s3cret"));
        assert!(!authorized(None, b"s3cret"));
    }
}
