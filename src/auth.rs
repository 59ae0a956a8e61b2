//! Token -> verified `Identity`, then the route's claim requirements.
//!
//! Fail closed: any doubt about a token (no key for it, keys not loaded or
//! stale, a claim of the wrong type, a parse error) is a denial. The
//! token's `iss` picks the one provider whose keys are tried; the algorithm
//! is the one pinned to the key, never the one a token names.

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use serde_json::{Map, Value};

use crate::config::{AuthMode, ClaimRequirement, RouteConfig, TokenSource};
use crate::refetch::keys_for;
use crate::state::{SharedState, Snapshot};
use crate::token::{self, Reason};

/// The verified claims of a token, and where the token was found.
#[derive(Debug)]
pub(crate) struct Identity {
    claims: Map<String, Value>,
    pub(crate) source: TokenSource,
}

impl Identity {
    /// A claim by name; a dotted name (`realm_access.roles`) that is not a
    /// top-level claim is looked up as a path into nested objects.
    pub(crate) fn claim(&self, name: &str) -> Option<&Value> {
        claim_of(&self.claims, name)
    }

    /// `iss`, `sub` and expiry, for people reading `explain`.
    pub(crate) fn summary(&self) -> String {
        let text = |name: &str| self.claims.get(name).and_then(Value::as_str).unwrap_or("-").to_owned();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let expiry = match self.claims.get("exp").and_then(Value::as_f64) {
            Some(exp) => format!("expires in {}s", (exp - now).max(0.0).round()),
            None => "no expiry".to_owned(),
        };
        format!("iss {}, sub {}, {expiry}", text("iss"), text("sub"))
    }
}

/// A claim by name, else by dotted path into nested objects.
pub(crate) fn claim_of<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let first = claims.get(parts.next()?)?;
    parts.try_fold(first, |value, part| value.get(part))
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("more than one credential where one is expected")]
    Ambiguous,
    #[error("only Bearer tokens are accepted")]
    UnsupportedScheme,
    #[error("{0}")]
    Invalid(Reason),
    #[error("the signing keys of provider {0:?} are not loaded yet")]
    KeysUnavailable(String),
    #[error("the signing keys of provider {0:?} are older than max_stale")]
    KeysStale(String),
    #[error("claim {claim:?} must include {missing:?}")]
    Insufficient {
        claim: String,
        missing: String,
        /// Every value the route requires of the claim.
        required: Vec<String>,
    },
}

impl From<Reason> for AuthError {
    fn from(reason: Reason) -> Self {
        AuthError::Invalid(reason)
    }
}

/// Verifies the request's token as the route demands. `Ok(None)` is an
/// anonymous request the route allows.
pub(crate) async fn authenticate(
    route: &RouteConfig,
    headers: &HeaderMap,
    snapshot: &Snapshot,
    state: &SharedState,
) -> Result<Option<Identity>, AuthError> {
    if route.auth == AuthMode::Public {
        return Ok(None);
    }
    match find_token(headers, &route.token_sources)? {
        Some((token, source)) => {
            let claims = verify(token, route, snapshot, state).await?;
            Ok(Some(Identity { claims, source: source.clone() }))
        }
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
        if let Some(missing) = values.iter().find(|value| !claim_holds(claim, held, value)) {
            return Err(AuthError::Insufficient {
                claim: claim.clone(),
                missing: missing.clone(),
                required: values.clone(),
            });
        }
    }
    Ok(())
}

/// An array claim holds each of its elements, a scalar claim itself; and
/// `scope`/`scp` strings hold each of their space-separated words.
fn claim_holds(name: &str, claim: Option<&Value>, wanted: &str) -> bool {
    let words = matches!(name, "scope" | "scp");
    let scalar = |value: &Value| match value {
        Value::String(text) => text == wanted || (words && text.split(' ').any(|word| word == wanted)),
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

/// The first token the route's sources yield, in their order.
fn find_token<'a>(
    headers: &'a HeaderMap,
    sources: &'a [TokenSource],
) -> Result<Option<(&'a str, &'a TokenSource)>, AuthError> {
    for source in sources {
        let token = match source {
            TokenSource::Header => bearer_token(headers)?,
            TokenSource::Cookie(name) => cookie(headers, name)?,
        };
        if let Some(token) = token {
            return Ok(Some((token, source)));
        }
    }
    Ok(None)
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
    let value = value.to_str().map_err(|_| AuthError::Invalid(Reason::Malformed))?;
    let (scheme, token) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::UnsupportedScheme);
    }
    Ok(Some(token.trim()))
}

/// The value of cookie `name`; sent twice, it is ambiguous.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, AuthError> {
    let mut found = None;
    let pairs = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='));
    for (key, value) in pairs {
        if key == name && found.replace(value.trim_matches('"')).is_some() {
            return Err(AuthError::Ambiguous);
        }
    }
    Ok(found)
}

async fn verify(
    raw: &str,
    route: &RouteConfig,
    snapshot: &Snapshot,
    state: &SharedState,
) -> Result<Map<String, Value>, AuthError> {
    let jwt = token::parse(raw)?;
    let index = snapshot.provider_for(jwt.issuer()?).ok_or(Reason::UnknownIssuer)?;
    if route.providers.as_ref().is_some_and(|allowed| !allowed.contains(&index)) {
        return Err(Reason::IssuerNotAllowed.into());
    }
    let provider = &snapshot.config.providers[index];
    jwt.check_type(&provider.rules)?;
    let keys = keys_for(snapshot, index, jwt.kid.as_deref(), state).await;
    let now = SystemTime::now();
    if !keys.is_usable(now) {
        let name = provider.config.name.clone();
        return Err(if keys.is_loaded() { AuthError::KeysStale(name) } else { AuthError::KeysUnavailable(name) });
    }
    keys.find(jwt.kid.as_deref()).ok_or(Reason::UnknownKey)?.verify(&jwt)?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    token::check_claims(&jwt.claims, &provider.rules, now)?;
    Ok(jwt.claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn identity(claims: Value) -> Identity {
        Identity { claims: claims.as_object().unwrap().clone(), source: TokenSource::Header }
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
        assert!(claim_holds("scp", Some(&json!(["read", "write"])), "write"));
        assert!(!claim_holds("tenant", Some(&json!("acme corp")), "acme"));
        assert!(claim_holds("roles", Some(&json!("admin")), "admin"));
        assert!(claim_holds("admin", Some(&json!(true)), "true"));
        assert!(!claim_holds("roles", Some(&json!(["administrator"])), "admin"));
        assert!(!claim_holds("roles", Some(&json!({"admin": true})), "admin"));
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
            matches!(only_admin, Err(AuthError::Insufficient { ref missing, .. }) if missing == "ops"),
            "{only_admin:?}"
        );
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
            assert!(matches!(bearer_token(&headers), Err(AuthError::UnsupportedScheme)), "{other}");
        }
        headers.insert(AUTHORIZATION, "Bearer".parse().unwrap());
        assert_eq!(bearer_token(&headers).unwrap(), Some(""));
        headers.append(AUTHORIZATION, "Bearer x".parse().unwrap());
        assert!(matches!(bearer_token(&headers), Err(AuthError::Ambiguous)));
    }

    #[test]
    fn tokens_are_taken_from_the_sources_in_order() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("theme=dark; session=\"c1\""));
        let session = TokenSource::Cookie("session".into());
        let both = [TokenSource::Header, session.clone()];
        assert_eq!(find_token(&headers, &both).unwrap(), Some(("c1", &session)));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer h1"));
        assert_eq!(find_token(&headers, &both).unwrap(), Some(("h1", &TokenSource::Header)));
        let cookie_first = [session.clone(), TokenSource::Header];
        assert_eq!(find_token(&headers, &cookie_first).unwrap(), Some(("c1", &session)));
        headers.append(COOKIE, HeaderValue::from_static("session=c2"));
        assert!(matches!(find_token(&headers, &cookie_first), Err(AuthError::Ambiguous)));
        assert_eq!(find_token(&headers, &[TokenSource::Cookie("other".into())]).unwrap(), None);
    }
}
