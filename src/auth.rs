//! Token -> verified `Identity`, then the route's claim requirements.
//!
//! Fail closed: any doubt about a token (no key for it, keys not loaded or
//! stale, a claim of the wrong type, a parse error) is a denial. The
//! token's `iss` picks the one provider whose keys are tried; the algorithm
//! is the one pinned to the key, never the one a token names.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue};
use serde_json::{Map, Value};

use crate::config::{AuthMode, ClaimRequirement, RouteConfig, TokenSource};
use crate::headers::claim_header_value;
use crate::keys::KeySet;
use crate::refetch::keys_for;
use crate::revocation::Subject;
use crate::state::{Provider, SharedState, Snapshot};
use crate::token::{self, Reason};
use crate::token_cache::Verified;

/// A verified token, and where it was found.
pub(crate) struct Identity {
    verified: Arc<Verified>,
    pub(crate) source: TokenSource,
}

/// The claims the running config reads of a token: every route's
/// `require_claims` and `inject_headers` claims, and `sub` for the access
/// log. Compiled once per config.
#[derive(Debug, PartialEq)]
pub(crate) struct ClaimNames(Vec<String>);

impl ClaimNames {
    pub(crate) fn new<'a>(names: impl IntoIterator<Item = &'a String>) -> ClaimNames {
        let mut names: Vec<String> = names.into_iter().cloned().chain(["sub".to_owned()]).collect();
        names.sort();
        names.dedup();
        ClaimNames(names)
    }
}

/// What the config reads of a verified token's claims, each with its
/// header value rendered once. Only these are kept (and cached): a token's
/// other claims cost no memory, and a cached token whose claims were taken
/// for other names (the config changed) is verified afresh.
pub(crate) struct Claims {
    pub(crate) names: Arc<ClaimNames>,
    /// Aligned with `names`; `None` where the token lacks the claim.
    held: Box<[Option<Held>]>,
}

struct Held {
    value: Value,
    /// `None`: the claim cannot be sent as a header.
    header: Option<HeaderValue>,
}

impl Claims {
    pub(crate) fn new(all: &Map<String, Value>, names: &Arc<ClaimNames>) -> Claims {
        let held = names
            .0
            .iter()
            .map(|name| {
                claim_of(all, name).map(|value| Held { header: claim_header_value(value), value: value.clone() })
            })
            .collect();
        Claims { names: names.clone(), held }
    }

    fn get(&self, name: &str) -> Option<&Held> {
        let index = self.names.0.iter().position(|held| held == name)?;
        self.held[index].as_ref()
    }
}

impl Identity {
    /// A claim the config reads, by name; a dotted name
    /// (`realm_access.roles`) that is not a top-level claim is a path into
    /// nested objects.
    pub(crate) fn claim(&self, name: &str) -> Option<&Value> {
        self.verified.claims.get(name).map(|held| &held.value)
    }

    /// Claim `name` as a header value: `None` when the token lacks it,
    /// `Some(None)` when it cannot be sent as a header.
    pub(crate) fn header_value(&self, name: &str) -> Option<Option<HeaderValue>> {
        self.verified.claims.get(name).map(|held| held.header.clone())
    }

    /// Issuer, `sub` and validity, for people reading `explain`.
    pub(crate) fn summary(&self) -> String {
        let issuer = self.verified.provider.upgrade().map_or_else(|| "-".to_owned(), |p| p.config.issuer.clone());
        let sub = self.claim("sub").and_then(Value::as_str).unwrap_or("-");
        let left = (self.verified.valid_until - epoch_seconds()).max(0.0).round();
        format!("iss {issuer}, sub {sub}, valid for {left}s more (leeway included)")
    }
}

/// Now, in seconds since the epoch: the clock token times are read against.
pub(crate) fn epoch_seconds() -> f64 {
    seconds_since_epoch(SystemTime::now())
}

fn seconds_since_epoch(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
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
    #[error("the revocation list is unavailable")]
    RevocationUnavailable,
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
            let verified = verify(token, route, snapshot, state).await?;
            Ok(Some(Identity { verified, source: source.clone() }))
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

/// The token's claims, from the cache when it verified before and that
/// verification still stands, else from a fresh verification.
async fn verify(
    raw: &str,
    route: &RouteConfig,
    snapshot: &Snapshot,
    state: &SharedState,
) -> Result<Arc<Verified>, AuthError> {
    let cache = &snapshot.config.tokens;
    let key = cache.key(raw);
    if let Some(key) = &key
        && let Some(verified) = cache.get(key)
    {
        match recheck(&verified, route, snapshot, SystemTime::now()) {
            Some(Ok(())) => {
                cache.hit();
                unrevoked(&verified, route, snapshot)?;
                return Ok(verified);
            }
            Some(Err(error)) => return Err(error),
            None => cache.remove(key),
        }
    }
    let verified = Arc::new(verify_afresh(raw, route, snapshot, state).await?);
    if let Some(key) = key {
        cache.insert(key, verified.clone());
    }
    unrevoked(&verified, route, snapshot)?;
    Ok(verified)
}

/// Checks the token against the revocation list when its provider or the
/// route asks for it. Fails closed: validation ties `revocation = true` to
/// a `[revocation]` table, and a verification made under one keeps the
/// claims the check needs.
fn unrevoked(verified: &Verified, route: &RouteConfig, snapshot: &Snapshot) -> Result<(), AuthError> {
    if !(verified.revocable || route.revocation) {
        return Ok(());
    }
    match (&snapshot.config.revocations, &verified.subject) {
        (Some(list), Some(subject)) => list.check(subject),
        _ => Err(AuthError::RevocationUnavailable),
    }
}

async fn verify_afresh(
    raw: &str,
    route: &RouteConfig,
    snapshot: &Snapshot,
    state: &SharedState,
) -> Result<Verified, AuthError> {
    let jwt = token::parse(raw)?;
    let index = snapshot.provider_for(jwt.issuer()?).ok_or(Reason::UnknownIssuer)?;
    allowed(route, index)?;
    let provider = &snapshot.config.providers[index];
    jwt.check_type(&provider.rules)?;
    let keys = keys_for(snapshot, index, jwt.kid.as_deref(), state).await;
    let now = SystemTime::now();
    usable(&keys, provider, now)?;
    let key = keys.find(jwt.kid.as_deref()).ok_or(Reason::UnknownKey)?;
    key.verify(&jwt)?;
    token::check_claims(&jwt.claims, &provider.rules, seconds_since_epoch(now))?;
    let (valid_from, valid_until) = token::validity(&jwt.claims, &provider.rules);
    Ok(Verified {
        provider: Arc::downgrade(provider),
        kid: jwt.kid.as_deref().map(Box::from),
        key: key.fingerprint,
        valid_from,
        valid_until,
        claims: Claims::new(&jwt.claims, &snapshot.config.claim_names),
        revocable: provider.config.revocation,
        subject: snapshot.config.revocations.is_some().then(|| Subject::of(&jwt.claims)),
    })
}

/// A cached verification checked again at `now` against the request's
/// snapshot, in the order a fresh one runs: the same provider object (a
/// changed provider config made a new one), allowed on this route, with
/// usable keys that still hold the very key that verified it, and the time
/// inside the token's window. `None`: it no longer stands (or its claims
/// were kept for another config); verify afresh. Revocation is checked
/// after, on hits and fresh verifications alike.
fn recheck(
    verified: &Verified,
    route: &RouteConfig,
    snapshot: &Snapshot,
    now: SystemTime,
) -> Option<Result<(), AuthError>> {
    if !Arc::ptr_eq(&verified.claims.names, &snapshot.config.claim_names) {
        return None;
    }
    // verified before the config had a revocation list: its claims were not kept
    if verified.subject.is_none() && snapshot.config.revocations.is_some() {
        return None;
    }
    let provider = verified.provider.upgrade()?;
    let index = snapshot.position_of(&provider)?;
    let keys = &snapshot.keys[index];
    if let Err(error) = allowed(route, index).and_then(|()| usable(keys, &provider, now)) {
        return Some(Err(error));
    }
    if keys.find(verified.kid.as_deref())?.fingerprint != verified.key {
        return None;
    }
    let now = seconds_since_epoch(now);
    if now > verified.valid_until {
        return Some(Err(Reason::Expired.into()));
    }
    (now >= verified.valid_from).then_some(Ok(()))
}

/// Whether the route accepts tokens of the provider at `index`.
fn allowed(route: &RouteConfig, index: usize) -> Result<(), AuthError> {
    match &route.providers {
        Some(allowed) if !allowed.contains(&index) => Err(Reason::IssuerNotAllowed.into()),
        _ => Ok(()),
    }
}

/// Keys loaded and not older than `max_stale` at `now`.
fn usable(keys: &KeySet, provider: &Provider, now: SystemTime) -> Result<(), AuthError> {
    if keys.is_usable(now) {
        return Ok(());
    }
    let name = provider.config.name.clone();
    Err(if keys.is_loaded() { AuthError::KeysStale(name) } else { AuthError::KeysUnavailable(name) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn identity(claims: Value) -> Identity {
        let all = claims.as_object().unwrap();
        let names = ["sub", "https://example.com/roles", "realm_access.roles", "realm_access.groups", "roles"];
        let names = Arc::new(ClaimNames::new(&names.map(String::from)));
        let verified = Verified {
            provider: std::sync::Weak::new(),
            kid: None,
            key: [0; 32],
            valid_from: 0.0,
            valid_until: 0.0,
            claims: Claims::new(all, &names),
            revocable: false,
            subject: None,
        };
        Identity { verified: Arc::new(verified), source: TokenSource::Header }
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
