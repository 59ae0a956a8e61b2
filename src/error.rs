//! Every way the gateway refuses or fails a request, mapped to a response
//! in one place: a status, the right headers, and a JSON body
//! `{"error": ..., "error_description": ...}`. Never a token, never a trace.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::auth::{AuthError, Reason};
use crate::upstream::UpstreamError;

const REALM: &str = "portcullis";

#[derive(Debug, thiserror::Error)]
pub(crate) enum Rejection {
    #[error("no route matches")]
    NoRoute,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
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
            Rejection::Auth(AuthError::Missing) => "missing_token",
            Rejection::Auth(AuthError::Ambiguous) => "ambiguous_authorization",
            Rejection::Auth(AuthError::UnsupportedScheme) => "unsupported_scheme",
            Rejection::Auth(AuthError::Invalid(reason)) => reason.code(),
            Rejection::Auth(AuthError::KeysUnavailable(_)) => "keys_unavailable",
            Rejection::Auth(AuthError::Insufficient { .. }) => "insufficient_claims",
            Rejection::Upstream(UpstreamError::Unreachable(_)) => "upstream_unreachable",
            Rejection::Upstream(UpstreamError::Timeout(_)) => "upstream_timeout",
        }
    }

    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let (status, error) = match &self {
            Rejection::NoRoute => (StatusCode::NOT_FOUND, "not_found"),
            Rejection::BadRequest(_) | Rejection::Auth(AuthError::Ambiguous) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            Rejection::Auth(AuthError::Missing) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Rejection::Auth(AuthError::UnsupportedScheme) => {
                (StatusCode::UNAUTHORIZED, "invalid_request")
            }
            Rejection::Auth(AuthError::Invalid(_)) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Rejection::Auth(AuthError::KeysUnavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable")
            }
            Rejection::Auth(AuthError::Insufficient { .. }) => {
                (StatusCode::FORBIDDEN, "insufficient_scope")
            }
            Rejection::Upstream(UpstreamError::Unreachable(_)) => {
                (StatusCode::BAD_GATEWAY, "bad_gateway")
            }
            Rejection::Upstream(UpstreamError::Timeout(_)) => {
                (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout")
            }
        };
        let description = match &self {
            // the upstream's address and error stay in the log
            Rejection::Upstream(UpstreamError::Unreachable(_)) => {
                "the upstream could not be reached".to_owned()
            }
            Rejection::Upstream(UpstreamError::Timeout(_)) => {
                "the upstream did not answer in time".to_owned()
            }
            other => other.to_string(),
        };
        let body = serde_json::json!({"error": error, "error_description": description});
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(challenge) = self.challenge() {
            headers.insert(WWW_AUTHENTICATE, challenge);
        }
        if matches!(self, Rejection::Auth(AuthError::KeysUnavailable(_))) {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }

    /// The RFC 6750 `WWW-Authenticate` challenge, for auth failures.
    fn challenge(&self) -> Option<HeaderValue> {
        let text = match self {
            Rejection::Auth(AuthError::Missing | AuthError::UnsupportedScheme) => {
                format!("Bearer realm=\"{REALM}\"")
            }
            Rejection::Auth(AuthError::Ambiguous) => {
                format!("Bearer realm=\"{REALM}\", error=\"invalid_request\"")
            }
            Rejection::Auth(AuthError::Invalid(reason)) => invalid_token_challenge(*reason),
            Rejection::Auth(AuthError::Insufficient { .. }) => {
                format!("Bearer realm=\"{REALM}\", error=\"insufficient_scope\"")
            }
            _ => return None,
        };
        HeaderValue::from_str(&text).ok()
    }
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

fn invalid_token_challenge(reason: Reason) -> String {
    format!(
        "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
        reason.description()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_is_json_with_a_challenge_where_due() {
        let cases = [
            (Rejection::NoRoute, 404, None),
            (
                Rejection::Auth(AuthError::Missing),
                401,
                Some("Bearer realm=\"portcullis\""),
            ),
            (
                Rejection::Auth(AuthError::Invalid(Reason::Expired)),
                401,
                Some("error=\"invalid_token\""),
            ),
            (
                Rejection::Auth(AuthError::Insufficient {
                    claim: "roles".into(),
                    value: "admin".into(),
                }),
                403,
                Some("error=\"insufficient_scope\""),
            ),
            (
                Rejection::Upstream(UpstreamError::Unreachable("refused".into())),
                502,
                None,
            ),
        ];
        for (rejection, status, challenge) in cases {
            let response = rejection.into_response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
            let found = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .map(|v| v.to_str().unwrap().to_owned());
            match challenge {
                Some(part) => assert!(found.unwrap().contains(part)),
                None => assert!(found.is_none()),
            }
        }
    }
}
