//! Bearer token -> verified `Identity`, then the route's claim requirements.
//!
//! Fail closed: any doubt about a token (no key for it, keys not loaded,
//! a claim of the wrong type, a parse error) is a denial. The algorithm is
//! the one pinned to the key when the key set was built, never the one a
//! token names, so `alg: none` and HS256-signed-with-the-public-key fail.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use jsonwebtoken::errors::ErrorKind;
use serde_json::{Map, Value};

use crate::config::{AuthMode, ClaimRequirement, RouteConfig};
use crate::control::Wait;
use crate::jwks::KeySet;
use crate::state::{SharedState, Snapshot};

/// Larger tokens are refused before any decoding work.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The verified claims of a token.
#[derive(Debug)]
pub(crate) struct Identity {
    claims: Map<String, Value>,
}

impl Identity {
    /// A claim by name; a dotted name (`realm_access.roles`) that is not a
    /// top-level claim is looked up as a path into nested objects.
    pub(crate) fn claim(&self, name: &str) -> Option<&Value> {
        if let Some(value) = self.claims.get(name) {
            return Some(value);
        }
        let mut parts = name.split('.');
        let first = self.claims.get(parts.next()?)?;
        parts.try_fold(first, |value, part| value.get(part))
    }
}

/// Why a token was refused; `code` is stable for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Malformed,
    TooLarge,
    UnknownIssuer,
    UnknownKey,
    BadAlgorithm,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
    BadClaimType,
    UnsendableClaim,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::UnknownKey => "unknown_kid",
            Reason::BadAlgorithm => "bad_algorithm",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::MissingClaim => "missing_claim",
            Reason::BadClaimType => "bad_claim_type",
            Reason::UnsendableClaim => "unsendable_claim",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Reason::Malformed => "the token is not a well-formed JWT",
            Reason::TooLarge => "the token is larger than 8 KiB",
            Reason::UnknownIssuer => "the token's issuer is not a configured provider",
            Reason::UnknownKey => "the token was signed with a key the provider does not publish",
            Reason::BadAlgorithm => "the token's algorithm is not the one its key is pinned to",
            Reason::BadSignature => "the token's signature is invalid",
            Reason::Expired => "the token has expired",
            Reason::NotYetValid => "the token is not valid yet",
            Reason::WrongIssuer => "the token's issuer does not match",
            Reason::WrongAudience => "the token is not meant for this audience",
            Reason::MissingClaim => {
                "the token lacks a required claim (exp, iss and aud are required)"
            }
            Reason::BadClaimType => "a claim of the token has the wrong type",
            Reason::UnsendableClaim => "a claim of the token cannot be sent as a header",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("more than one Authorization header")]
    Ambiguous,
    #[error("only Bearer tokens are accepted")]
    UnsupportedScheme,
    #[error("{}", .0.description())]
    Invalid(Reason),
    #[error("the signing keys of provider {0:?} are not loaded yet")]
    KeysUnavailable(String),
    #[error("claim {claim:?} must include {value:?}")]
    Insufficient { claim: String, value: String },
}

/// Verifies the request's bearer token as the route demands. `Ok(None)` is
/// an anonymous request the route allows.
pub(crate) async fn authenticate(
    route: &RouteConfig,
    headers: &HeaderMap,
    snapshot: &Snapshot,
    state: &SharedState,
) -> Result<Option<Identity>, AuthError> {
    if route.auth == AuthMode::Public {
        return Ok(None);
    }
    match bearer_token(headers)? {
        Some(token) => verify(token, snapshot, state).await.map(Some),
        None if route.auth == AuthMode::Optional => Ok(None),
        None => Err(AuthError::Missing),
    }
}

/// Checks the route's `require_claims` against a verified identity.
pub(crate) fn authorize(route: &RouteConfig, identity: Option<&Identity>) -> Result<(), AuthError> {
    let Some(identity) = identity else {
        return Ok(());
    };
    for ClaimRequirement { claim, values } in &route.require_claims {
        let held = identity.claim(claim);
        if let Some(value) = values.iter().find(|value| !claim_holds(claim, held, value)) {
            return Err(AuthError::Insufficient {
                claim: claim.clone(),
                value: value.clone(),
            });
        }
    }
    Ok(())
}

/// An array claim holds each of its elements, a scalar claim itself; and
/// `scope`/`scp` strings hold each of their space-separated words (RFC 8693).
fn claim_holds(name: &str, claim: Option<&Value>, wanted: &str) -> bool {
    let words = matches!(name, "scope" | "scp");
    let scalar = |value: &Value| match value {
        Value::String(text) => {
            text == wanted || (words && text.split(' ').any(|word| word == wanted))
        }
        Value::Number(number) => number.to_string() == wanted,
        Value::Bool(flag) => flag.to_string() == wanted,
        _ => false,
    };
    match claim {
        Some(Value::Array(items)) => items.iter().any(scalar),
        Some(value) => scalar(value),
        None => false,
    }
}

/// The bearer token, if the request carries one (scheme case-insensitive).
/// Credentials of any other scheme are refused on a route that verifies
/// tokens, never passed on unverified.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Ambiguous);
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::Invalid(Reason::Malformed))?;
    let (scheme, token) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::UnsupportedScheme);
    }
    Ok(Some(token.trim()))
}

async fn verify(
    token: &str,
    snapshot: &Snapshot,
    state: &SharedState,
) -> Result<Identity, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Invalid(Reason::TooLarge));
    }
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid(Reason::Malformed))?;
    let index = snapshot
        .provider_for(&unverified_issuer(token)?)
        .ok_or(AuthError::Invalid(Reason::UnknownIssuer))?;
    let kid = header.kid.as_deref();
    let keys = keys_for(snapshot, index, kid, state).await;
    let Some(key) = keys.find(kid) else {
        return Err(if keys.is_loaded() {
            AuthError::Invalid(Reason::UnknownKey)
        } else {
            AuthError::KeysUnavailable(snapshot.config.providers[index].config.name.clone())
        });
    };
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &key.validation)
        .map_err(|error| AuthError::Invalid(reason(error.kind())))?;
    Ok(Identity {
        claims: data.claims,
    })
}

/// Reads `iss` before verification, only to pick the provider (and so the
/// keys) to verify with; the verified token must carry the same `iss`.
fn unverified_issuer(token: &str) -> Result<String, AuthError> {
    let invalid = AuthError::Invalid;
    let payload = token.split('.').nth(1).ok_or(invalid(Reason::Malformed))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| invalid(Reason::Malformed))?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| invalid(Reason::Malformed))?;
    match claims.get("iss") {
        Some(Value::String(iss)) => Ok(iss.clone()),
        Some(_) => Err(invalid(Reason::BadClaimType)),
        None => Err(invalid(Reason::MissingClaim)),
    }
}

/// The provider's keys, after waiting briefly for an early fetch when the
/// token's key is not among them (rotation), or for the first load at start.
async fn keys_for(
    snapshot: &Snapshot,
    index: usize,
    kid: Option<&str>,
    state: &SharedState,
) -> Arc<KeySet> {
    let keys = &snapshot.keys[index];
    if keys.find(kid).is_some() {
        return keys.clone();
    }
    let refetch = &snapshot.config.providers[index].refetch;
    let wait = match (keys.is_loaded(), kid) {
        (false, _) => refetch.first_load(),
        (true, Some(_)) => refetch.early(),
        (true, None) => None,
    };
    let Some(Wait {
        mut completions,
        deadline,
    }) = wait
    else {
        return keys.clone();
    };
    loop {
        let completed = tokio::time::timeout_at(deadline, completions.changed()).await;
        let latest = {
            let current = state.load();
            if !Arc::ptr_eq(&current.config, &snapshot.config) {
                return keys.clone();
            }
            current.keys[index].clone()
        };
        let finished = !matches!(completed, Ok(Ok(()))) || !refetch.is_outstanding();
        if finished || latest.find(kid).is_some() {
            return latest;
        }
    }
}

fn reason(kind: &ErrorKind) -> Reason {
    match kind {
        ErrorKind::InvalidSignature => Reason::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => Reason::BadAlgorithm,
        ErrorKind::ExpiredSignature => Reason::Expired,
        ErrorKind::ImmatureSignature => Reason::NotYetValid,
        ErrorKind::InvalidIssuer => Reason::WrongIssuer,
        ErrorKind::InvalidAudience => Reason::WrongAudience,
        // jsonwebtoken reports a claim of the wrong type as missing
        ErrorKind::MissingRequiredClaim(_) => Reason::MissingClaim,
        ErrorKind::InvalidClaimFormat(_) => Reason::BadClaimType,
        _ => Reason::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity(claims: Value) -> Identity {
        Identity {
            claims: claims.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn claims_are_found_by_name_then_by_path() {
        let id = identity(json!({
            "sub": "alice",
            "https://example.com/roles": ["a"],
            "realm_access": {"roles": ["admin"]},
        }));
        assert_eq!(id.claim("sub"), Some(&json!("alice")));
        assert_eq!(id.claim("https://example.com/roles"), Some(&json!(["a"])));
        assert_eq!(id.claim("realm_access.roles"), Some(&json!(["admin"])));
        assert_eq!(id.claim("realm_access.groups"), None);
    }

    #[test]
    fn required_values_must_all_be_held() {
        assert!(claim_holds("roles", Some(&json!(["admin", "ops"])), "ops"));
        assert!(claim_holds("scope", Some(&json!("read write")), "write"));
        assert!(!claim_holds("tenant", Some(&json!("acme corp")), "acme"));
        assert!(claim_holds("roles", Some(&json!("admin")), "admin"));
        assert!(claim_holds("admin", Some(&json!(true)), "true"));
        assert!(!claim_holds(
            "roles",
            Some(&json!(["administrator"])),
            "admin"
        ));
        assert!(!claim_holds(
            "roles",
            Some(&json!({"admin": true})),
            "admin"
        ));
        assert!(!claim_holds("roles", None, "admin"));
    }

    #[test]
    fn every_required_value_must_be_held() {
        let text = "[[providers]]\nname = \"p\"\nissuer = \"i\"\njwks_url = \"https://idp.test/j\"\naudiences = [\"a\"]\n\
                    [[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"http://u\"\n\
                    require_claims = { roles = [\"admin\", \"ops\"] }\n";
        let config = crate::config::Config::parse(text, "t.toml").unwrap();
        let route = &config.routes[0];
        assert!(authorize(route, Some(&identity(json!({"roles": ["ops", "admin"]})))).is_ok());
        let only_admin = authorize(route, Some(&identity(json!({"roles": ["admin"]}))));
        assert!(
            matches!(only_admin, Err(AuthError::Insufficient { ref value, .. }) if value == "ops"),
            "{only_admin:?}"
        );
    }

    #[test]
    fn jwt_errors_map_to_their_reasons() {
        let cases = [
            (ErrorKind::ExpiredSignature, Reason::Expired),
            (ErrorKind::ImmatureSignature, Reason::NotYetValid),
            (ErrorKind::InvalidSignature, Reason::BadSignature),
            (ErrorKind::InvalidAlgorithm, Reason::BadAlgorithm),
            (ErrorKind::InvalidIssuer, Reason::WrongIssuer),
            (ErrorKind::InvalidAudience, Reason::WrongAudience),
            (
                ErrorKind::MissingRequiredClaim("exp".into()),
                Reason::MissingClaim,
            ),
            (
                ErrorKind::InvalidClaimFormat("nbf".into()),
                Reason::BadClaimType,
            ),
            (ErrorKind::InvalidToken, Reason::Malformed),
        ];
        for (kind, expected) in cases {
            assert_eq!(reason(&kind), expected, "{kind:?}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_unique() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, "bEaReR abc".parse().unwrap());
        assert_eq!(bearer_token(&headers).unwrap(), Some("abc"));
        headers.insert(AUTHORIZATION, "Bearer\tabc".parse().unwrap());
        assert_eq!(bearer_token(&headers).unwrap(), Some("abc"));
        for other in ["Basic abc", "Token abc", "Bearerabc"] {
            headers.insert(AUTHORIZATION, other.parse().unwrap());
            assert!(
                matches!(bearer_token(&headers), Err(AuthError::UnsupportedScheme)),
                "{other}"
            );
        }
        headers.insert(AUTHORIZATION, "Bearer".parse().unwrap());
        assert_eq!(bearer_token(&headers).unwrap(), Some(""));
        headers.append(AUTHORIZATION, "Bearer x".parse().unwrap());
        assert!(matches!(bearer_token(&headers), Err(AuthError::Ambiguous)));
    }
}
