//! Every way the gateway refuses or fails a request, mapped to a response
//! in one place: a status, the RFC 6750 challenge where one is due, and an
//! RFC 9457 `application/problem+json` body that also carries the OAuth
//! `error` and `error_description`. Never a token, key or internal error.

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::auth::AuthError;
use crate::path::PathError;
use crate::request::ALLOWED_METHODS;
use crate::upstream::UpstreamError;

const REALM: &str = "portcullis";

#[derive(Debug, thiserror::Error)]
pub(crate) enum Rejection {
    #[error("no route matches")]
    NoRoute,
    #[error("bad request: {0}")]
    BadRequest(PathError),
    #[error("CONNECT and TRACE are not proxied")]
    MethodNotAllowed,
    #[error("this route needs a client certificate")]
    ClientCertRequired,
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(u64),
    #[error("the request target is too long")]
    UriTooLong,
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl Rejection {
    /// A short stable label for logs (and, later, metrics).
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Rejection::NoRoute => "no_route",
            Rejection::BadRequest(_) => "bad_request",
            Rejection::MethodNotAllowed => "method_not_allowed",
            Rejection::ClientCertRequired => "client_cert_required",
            Rejection::PayloadTooLarge(_) => "body_too_large",
            Rejection::UriTooLong => "uri_too_long",
            Rejection::Auth(AuthError::Missing) => "missing_token",
            Rejection::Auth(AuthError::Ambiguous) => "ambiguous_credentials",
            Rejection::Auth(AuthError::UnsupportedScheme) => "unsupported_scheme",
            Rejection::Auth(AuthError::Invalid(reason)) => reason.code(),
            Rejection::Auth(AuthError::KeysUnavailable(_)) => "keys_unavailable",
            Rejection::Auth(AuthError::KeysStale(_)) => "keys_stale",
            Rejection::Auth(AuthError::RevocationUnavailable) => "revocation_unavailable",
            Rejection::Auth(AuthError::Insufficient { .. }) => "insufficient_claims",
            Rejection::Upstream(UpstreamError::Unreachable(_)) => "upstream_unreachable",
            Rejection::Upstream(UpstreamError::Timeout(_)) => "upstream_timeout",
            Rejection::Upstream(UpstreamError::BodyTooLarge(_)) => "body_too_large",
            Rejection::Upstream(UpstreamError::BodyStalled(_)) => "body_stalled",
            Rejection::Upstream(UpstreamError::BodyAborted) => "body_aborted",
        }
    }

    /// The status and the error code the client sees. A request without
    /// bearer credentials gets no code (RFC 6750 §3.1), just the challenge.
    fn status(&self) -> (StatusCode, Option<&'static str>) {
        let (status, code) = match self {
            Rejection::NoRoute => (StatusCode::NOT_FOUND, "not_found"),
            Rejection::BadRequest(_)
            | Rejection::Auth(AuthError::Ambiguous)
            | Rejection::Upstream(UpstreamError::BodyAborted) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Rejection::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Rejection::ClientCertRequired => (StatusCode::FORBIDDEN, "client_cert_required"),
            Rejection::UriTooLong => (StatusCode::URI_TOO_LONG, "uri_too_long"),
            Rejection::PayloadTooLarge(_) | Rejection::Upstream(UpstreamError::BodyTooLarge(_)) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            Rejection::Upstream(UpstreamError::BodyStalled(_)) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Rejection::Auth(AuthError::Missing | AuthError::UnsupportedScheme) => {
                return (StatusCode::UNAUTHORIZED, None);
            }
            Rejection::Auth(AuthError::Invalid(_)) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Rejection::Auth(
                AuthError::KeysUnavailable(_) | AuthError::KeysStale(_) | AuthError::RevocationUnavailable,
            ) => (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable"),
            Rejection::Auth(AuthError::Insufficient { .. }) => (StatusCode::FORBIDDEN, "insufficient_scope"),
            Rejection::Upstream(UpstreamError::Unreachable(_)) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            Rejection::Upstream(UpstreamError::Timeout(_)) => (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout"),
        };
        (status, Some(code))
    }

    /// What the client is told: enough to act on, nothing internal.
    fn description(&self) -> String {
        match self {
            Rejection::Upstream(UpstreamError::Unreachable(_)) => "the upstream could not be reached".into(),
            Rejection::Upstream(UpstreamError::Timeout(_)) => "the upstream did not answer in time".into(),
            Rejection::Auth(AuthError::KeysUnavailable(_) | AuthError::KeysStale(_)) => {
                "the token cannot be checked right now; retry later".into()
            }
            Rejection::Auth(AuthError::RevocationUnavailable) => {
                "the revocation list is unavailable, so the token cannot be checked; retry later".into()
            }
            // the route's policy stays in the log (and in `scope` for scopes)
            Rejection::Auth(AuthError::Insufficient { .. }) => "the token does not grant access to this route".into(),
            other => other.to_string(),
        }
    }

    /// The status and the problem+json body the client gets.
    pub(crate) fn response_parts(&self) -> (StatusCode, String) {
        let (status, code) = self.status();
        let description = self.description();
        let mut body = serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or_default(),
            "status": status.as_u16(),
            "detail": description,
        });
        if let Some(code) = code {
            body["error"] = code.into();
            body["error_description"] = description.into();
        }
        (status, body.to_string())
    }

    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let (status, body) = self.response_parts();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(challenge) = self.challenge() {
            headers.insert(WWW_AUTHENTICATE, challenge);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// The RFC 6750 `WWW-Authenticate` challenge, for auth failures.
    fn challenge(&self) -> Option<HeaderValue> {
        let realm = format!("Bearer realm=\"{REALM}\"");
        let text = match self {
            Rejection::Auth(AuthError::Missing | AuthError::UnsupportedScheme) => realm,
            Rejection::Auth(AuthError::Ambiguous) => format!("{realm}, error=\"invalid_request\""),
            Rejection::Auth(AuthError::Invalid(reason)) => {
                format!("{realm}, error=\"invalid_token\", error_description=\"{}\"", reason.description())
            }
            Rejection::Auth(AuthError::Insufficient { claim, required, .. }) => {
                let mut text = format!("{realm}, error=\"insufficient_scope\"");
                if matches!(claim.as_str(), "scope" | "scp") && required.iter().all(|s| is_scope_token(s)) {
                    text.push_str(&format!(", scope=\"{}\"", required.join(" ")));
                }
                text
            }
            _ => return None,
        };
        HeaderValue::from_str(&text).ok()
    }
}

/// RFC 6749 §3.3 scope-token: printable ASCII but space, `"` and `\`.
fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty() && scope.bytes().all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

/// An error and its causes on one line: "request failed: ...: connection refused".
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Reason;
    use http_body_util::BodyExt;

    fn insufficient(claim: &str, required: &[&str]) -> Rejection {
        Rejection::Auth(AuthError::Insufficient {
            claim: claim.into(),
            missing: required[0].into(),
            required: required.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[tokio::test]
    async fn every_rejection_is_a_problem_with_a_challenge_where_due() {
        let cases = [
            (Rejection::NoRoute, 404, None),
            (Rejection::Auth(AuthError::Missing), 401, Some("Bearer realm=\"portcullis\"")),
            (Rejection::Auth(AuthError::Invalid(Reason::Expired)), 401, Some("error=\"invalid_token\"")),
            (insufficient("roles", &["admin"]), 403, Some("Bearer realm=\"portcullis\", error=\"insufficient_scope\"")),
            (
                insufficient("scope", &["read", "write"]),
                403,
                Some("error=\"insufficient_scope\", scope=\"read write\""),
            ),
            (Rejection::Upstream(UpstreamError::Unreachable("refused".into())), 502, None),
            (Rejection::Auth(AuthError::KeysStale("idp".into())), 503, None),
        ];
        for (rejection, status, challenge) in cases {
            let response = rejection.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
            let found = response.headers().get(WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_owned());
            match challenge {
                Some(part) => assert!(found.unwrap().contains(part)),
                None => assert!(found.is_none()),
            }
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["status"], status);
            if status == 401 && challenge == Some("Bearer realm=\"portcullis\"") {
                assert!(body.get("error").is_none(), "no error code without credentials");
            } else {
                assert!(body["error"].is_string() && body["detail"] == body["error_description"]);
            }
        }
    }

    #[test]
    fn no_internals_leak() {
        let unreachable = Rejection::Upstream(UpstreamError::Unreachable("10.0.0.7:8080 refused".into()));
        assert!(!unreachable.description().contains("10.0.0.7"));
        assert!(!Rejection::Auth(AuthError::KeysUnavailable("idp".into())).description().contains("idp"));
    }
}
