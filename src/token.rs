//! A compact JWS, taken apart and checked: header rules, claim types and
//! times. Signature checks are `auth`'s; everything here is pure, so it is
//! also what the fuzz target drives.
//!
//! Strict by design: a header member we do not implement (`crit`, `cty`,
//! `zip`, `b64`) is a refusal, not something to ignore; keys named in the
//! header (`jku`, `x5u`, `jwk`, `x5c`) are never used; a registered claim
//! of the wrong JSON type is a refusal, never "absent"; a JSON object with
//! a member twice is a refusal, so no parser disagreement can grant access.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Larger tokens are refused before any decoding work.
pub(crate) const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a token was refused; `code` is stable for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Malformed,
    TooLarge,
    Encrypted,
    UnsupportedHeader,
    DuplicateMember,
    WrongType,
    UnknownIssuer,
    IssuerNotAllowed,
    UnknownKey,
    BadAlgorithm,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    TooLongLived,
    WrongAudience,
    MissingClaim,
    BadClaimType,
    UnsendableClaim,
    /// On the revocation list.
    Revoked,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::Encrypted => "encrypted",
            Reason::UnsupportedHeader => "unsupported_header",
            Reason::DuplicateMember => "duplicate_member",
            Reason::WrongType => "wrong_typ",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::IssuerNotAllowed => "issuer_not_allowed",
            Reason::UnknownKey => "unknown_kid",
            Reason::BadAlgorithm => "bad_algorithm",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::TooLongLived => "too_long_lived",
            Reason::WrongAudience => "wrong_audience",
            Reason::MissingClaim => "missing_claim",
            Reason::BadClaimType => "bad_claim_type",
            Reason::UnsendableClaim => "unsendable_claim",
            Reason::Revoked => "revoked",
        }
    }

    /// Safe to show the client: says what is wrong, never with what.
    pub fn description(self) -> &'static str {
        match self {
            Reason::Malformed => "the token is not a well-formed JWT",
            Reason::TooLarge => "the token is larger than 8 KiB",
            Reason::Encrypted => "encrypted tokens are not accepted",
            Reason::UnsupportedHeader => "the token's header uses a feature that is not accepted",
            Reason::DuplicateMember => "the token names a member twice",
            Reason::WrongType => "the token is not of the required type",
            Reason::UnknownIssuer => "the token's issuer is not a configured provider",
            Reason::IssuerNotAllowed => "the token's issuer is not accepted on this route",
            Reason::UnknownKey => "the token was signed with a key the provider does not publish",
            Reason::BadAlgorithm => "the token's algorithm is not the one its key is pinned to",
            Reason::BadSignature => "the token's signature is invalid",
            Reason::Expired => "the token has expired",
            Reason::NotYetValid => "the token is not valid yet",
            Reason::IssuedInFuture => "the token was issued in the future",
            Reason::TooLongLived => "the token's lifetime is longer than allowed",
            Reason::WrongAudience => "the token is not meant for this audience",
            Reason::MissingClaim => "the token lacks a required claim",
            Reason::BadClaimType => "a claim of the token has the wrong type",
            Reason::UnsendableClaim => "a claim of the token cannot be sent as a header",
            Reason::Revoked => "the token has been revoked",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// A token taken apart, signature not yet checked.
#[derive(Debug)]
pub(crate) struct Jwt<'a> {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
    typ: Option<String>,
    /// `header.payload`, the bytes the signature covers.
    pub(crate) signing_input: &'a str,
    pub(crate) signature: &'a str,
    pub(crate) claims: Map<String, Value>,
}

/// What a provider demands of every token beyond its signature.
#[derive(Debug, Clone)]
pub(crate) struct ClaimRules {
    pub(crate) audiences: Vec<String>,
    pub(crate) leeway: f64,
    pub(crate) max_token_age: Option<f64>,
    /// Normalised (see `media_type`).
    pub(crate) required_typ: Option<String>,
}

const REFUSED_HEADER_MEMBERS: [&str; 5] = ["crit", "cty", "zip", "b64", "enc"];

pub(crate) fn parse(token: &str) -> Result<Jwt<'_>, Reason> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Reason::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Reason::Malformed);
    };
    match parts.count() {
        0 => {}
        2 => return Err(Reason::Encrypted),
        _ => return Err(Reason::Malformed),
    }
    let signing_input = &token[..header.len() + 1 + payload.len()];
    let header = decode_object(header)?;
    if REFUSED_HEADER_MEMBERS.iter().any(|member| header.contains_key(*member)) {
        return Err(Reason::UnsupportedHeader);
    }
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => Algorithm::from_str(alg).map_err(|_| Reason::BadAlgorithm)?,
        _ => return Err(Reason::Malformed),
    };
    Ok(Jwt {
        alg,
        kid: optional_string(&header, "kid", Reason::Malformed)?,
        typ: optional_string(&header, "typ", Reason::Malformed)?,
        signing_input,
        signature,
        claims: decode_object(payload)?,
    })
}

impl Jwt<'_> {
    /// `iss`, which must be a string.
    pub(crate) fn issuer(&self) -> Result<&str, Reason> {
        match self.claims.get("iss") {
            Some(Value::String(iss)) => Ok(iss),
            Some(_) => Err(Reason::BadClaimType),
            None => Err(Reason::MissingClaim),
        }
    }

    /// The header's `typ`, when the provider requires one (RFC 9068 `at+jwt`).
    pub(crate) fn check_type(&self, rules: &ClaimRules) -> Result<(), Reason> {
        match (&rules.required_typ, &self.typ) {
            (None, _) => Ok(()),
            (Some(required), Some(typ)) if media_type(typ) == *required => Ok(()),
            (Some(_), _) => Err(Reason::WrongType),
        }
    }
}

/// A media type compared as RFC 7515 §4.1.9 says: case-insensitive, with
/// the `application/` prefix optional.
pub(crate) fn media_type(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => lower,
    }
}

/// Checks the registered claims at time `now` (seconds since the epoch).
pub(crate) fn check_claims(claims: &Map<String, Value>, rules: &ClaimRules, now: f64) -> Result<(), Reason> {
    let exp = numeric_date(claims, "exp")?.ok_or(Reason::MissingClaim)?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    for name in ["sub", "jti"] {
        optional_string(claims, name, Reason::BadClaimType)?;
    }
    if now > exp + rules.leeway {
        return Err(Reason::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now + rules.leeway) {
        return Err(Reason::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now + rules.leeway) {
        return Err(Reason::IssuedInFuture);
    }
    if let Some(max_age) = rules.max_token_age {
        let iat = iat.ok_or(Reason::MissingClaim)?;
        if exp - iat > max_age {
            return Err(Reason::TooLongLived);
        }
    }
    check_audience(claims.get("aud"), &rules.audiences)
}

/// When claims that passed `check_claims` pass it, leeway applied: from
/// the later of `nbf` and `iat` until `exp`, in seconds since the epoch.
pub(crate) fn validity(claims: &Map<String, Value>, rules: &ClaimRules) -> (f64, f64) {
    let date = |name| numeric_date(claims, name).ok().flatten();
    let from = date("nbf").into_iter().chain(date("iat")).fold(f64::NEG_INFINITY, f64::max);
    let until = date("exp").unwrap_or(f64::NEG_INFINITY);
    (from - rules.leeway, until + rules.leeway)
}

fn check_audience(aud: Option<&Value>, accepted: &[String]) -> Result<(), Reason> {
    let accepts = |value: &str| accepted.iter().any(|a| a == value);
    match aud {
        None => Err(Reason::MissingClaim),
        Some(Value::String(aud)) if accepts(aud) => Ok(()),
        Some(Value::String(_)) => Err(Reason::WrongAudience),
        Some(Value::Array(items)) => {
            if !items.iter().all(Value::is_string) {
                return Err(Reason::BadClaimType);
            }
            match items.iter().filter_map(Value::as_str).any(accepts) {
                true => Ok(()),
                false => Err(Reason::WrongAudience),
            }
        }
        Some(_) => Err(Reason::BadClaimType),
    }
}

/// A NumericDate claim: a finite, non-negative JSON number, if present.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Reason> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(t)),
            _ => Err(Reason::BadClaimType),
        },
        Some(_) => Err(Reason::BadClaimType),
    }
}

fn optional_string(object: &Map<String, Value>, name: &str, wrong: Reason) -> Result<Option<String>, Reason> {
    match object.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(wrong),
    }
}

/// Base64url (unpadded) JSON object, refusing duplicate members anywhere.
fn decode_object(part: &str) -> Result<Map<String, Value>, Reason> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| Reason::Malformed)?;
    match serde_json::from_slice::<Strict>(&bytes) {
        Ok(Strict(Value::Object(object))) => Ok(object),
        Ok(_) => Err(Reason::Malformed),
        Err(error) if error.to_string().starts_with(DUPLICATE) => Err(Reason::DuplicateMember),
        Err(_) => Err(Reason::Malformed),
    }
}

const DUPLICATE: &str = "duplicate member";

/// A JSON value whose objects may not name a member twice. serde_json keeps
/// the last of duplicates silently; another parser upstream may keep the
/// first, so a token with duplicates could mean two things.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if object.insert(key, value).is_some() {
                return Err(de::Error::custom(DUPLICATE));
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    fn raw(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload))
    }

    fn token(header: Value, claims: Value) -> String {
        format!("{}.{}.c2ln", b64(&header), b64(&claims))
    }

    fn rules() -> ClaimRules {
        ClaimRules { audiences: vec!["api".into()], leeway: 30.0, max_token_age: None, required_typ: None }
    }

    const NOW: f64 = 1_800_000_000.0;

    fn claims(extra: Value) -> Map<String, Value> {
        let mut claims = json!({"iss": "i", "aud": "api", "exp": NOW + 60.0, "iat": NOW});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let mut claims = claims.as_object().unwrap().clone();
        claims.retain(|_, v| !v.is_null());
        claims
    }

    #[test]
    fn takes_a_token_apart() {
        let text = token(json!({"alg": "ES256", "kid": "k", "typ": "at+jwt"}), json!({"iss": "i"}));
        let jwt = parse(&text).unwrap();
        assert_eq!(jwt.alg, Algorithm::ES256);
        assert_eq!(jwt.kid.as_deref(), Some("k"));
        assert_eq!(jwt.issuer(), Ok("i"));
        assert_eq!(jwt.signature, "c2ln");
        assert_eq!(format!("{}.c2ln", jwt.signing_input), text);
    }

    #[test]
    fn refuses_what_it_does_not_implement() {
        let claims = json!({"iss": "i"});
        let cases = [
            (json!({"alg": "none"}), Reason::BadAlgorithm),
            (json!({"alg": "HS257"}), Reason::BadAlgorithm),
            (json!({"alg": 1}), Reason::Malformed),
            (json!({}), Reason::Malformed),
            (json!({"alg": "RS256", "crit": ["exp"]}), Reason::UnsupportedHeader),
            (json!({"alg": "RS256", "cty": "JWT"}), Reason::UnsupportedHeader),
            (json!({"alg": "RS256", "zip": "DEF"}), Reason::UnsupportedHeader),
            (json!({"alg": "RS256", "b64": false}), Reason::UnsupportedHeader),
            (json!({"alg": "RS256", "kid": 7}), Reason::Malformed),
        ];
        for (header, expected) in cases {
            assert_eq!(parse(&token(header.clone(), claims.clone())).unwrap_err(), expected, "{header}");
        }
        let keyed = json!({"alg": "RS256", "jku": "https://evil/", "x5u": "https://evil/", "jwk": {}, "x5c": []});
        assert!(parse(&token(keyed, claims)).is_ok(), "named keys are ignored, never fetched");
    }

    #[test]
    fn refuses_malformed_and_encrypted_shapes() {
        for text in ["", "a", "a.b", "a.b.c.d", "e30.e30.x.y.z.w", "!!!.e30.", "e30.!!!.", "e30=.e30.x", "W10.e30.x"] {
            assert!(parse(text).is_err(), "{text}");
        }
        assert_eq!(parse("e30.e30.a.b.c").unwrap_err(), Reason::Encrypted);
        assert_eq!(parse(&"a".repeat(MAX_TOKEN_BYTES + 1)).unwrap_err(), Reason::TooLarge);
    }

    #[test]
    fn refuses_duplicate_members_anywhere() {
        let cases = [
            raw(r#"{"alg":"RS256","alg":"none"}"#, r#"{"iss":"i"}"#),
            raw(r#"{"alg":"RS256"}"#, r#"{"sub":"alice","sub":"admin"}"#),
            raw(r#"{"alg":"RS256"}"#, r#"{"realm_access":{"roles":["a"],"roles":["admin"]}}"#),
            raw(r#"{"alg":"RS256"}"#, r#"{"list":[{"a":1,"a":2}]}"#),
        ];
        for text in cases {
            assert_eq!(parse(&text).unwrap_err(), Reason::DuplicateMember, "{text}");
        }
    }

    #[test]
    fn checks_times_with_leeway() {
        let rules = rules();
        let ok = |extra: Value| check_claims(&claims(extra), &rules, NOW);
        assert_eq!(ok(json!({})), Ok(()));
        assert_eq!(ok(json!({"exp": NOW - 20.0})), Ok(()), "inside the leeway");
        assert_eq!(ok(json!({"exp": NOW - 31.0})), Err(Reason::Expired));
        assert_eq!(ok(json!({"exp": null})), Err(Reason::MissingClaim));
        assert_eq!(ok(json!({"nbf": NOW + 20.0})), Ok(()));
        assert_eq!(ok(json!({"nbf": NOW + 31.0})), Err(Reason::NotYetValid));
        assert_eq!(ok(json!({"iat": NOW + 31.0})), Err(Reason::IssuedInFuture));
        assert_eq!(ok(json!({"exp": NOW + 0.5, "iat": NOW - 0.5})), Ok(()), "fractional dates");
    }

    #[test]
    fn refuses_registered_claims_of_the_wrong_type() {
        let rules = rules();
        for extra in [
            json!({"exp": "soon"}),
            json!({"exp": -1}),
            json!({"nbf": true}),
            json!({"iat": [1]}),
            json!({"sub": 7}),
            json!({"jti": {}}),
            json!({"aud": 7}),
            json!({"aud": ["api", 7]}),
            json!({"aud": {"api": true}}),
        ] {
            assert_eq!(check_claims(&claims(extra.clone()), &rules, NOW), Err(Reason::BadClaimType), "{extra}");
        }
    }

    #[test]
    fn audiences_and_token_age() {
        let mut rules = rules();
        let check = |extra: Value, rules: &ClaimRules| check_claims(&claims(extra), rules, NOW);
        assert_eq!(check(json!({"aud": ["x", "api"]}), &rules), Ok(()));
        assert_eq!(check(json!({"aud": ["x"]}), &rules), Err(Reason::WrongAudience));
        assert_eq!(check(json!({"aud": []}), &rules), Err(Reason::WrongAudience));
        assert_eq!(check(json!({"aud": null}), &rules), Err(Reason::MissingClaim));
        rules.max_token_age = Some(3600.0);
        assert_eq!(check(json!({"exp": NOW + 3600.0}), &rules), Ok(()));
        assert_eq!(check(json!({"exp": NOW + 3601.0}), &rules), Err(Reason::TooLongLived));
        assert_eq!(check(json!({"iat": null}), &rules), Err(Reason::MissingClaim));
    }

    #[test]
    fn typ_is_compared_as_a_media_type() {
        let mut rules = rules();
        rules.required_typ = Some(media_type("at+jwt"));
        for typ in ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+JWT"] {
            let jwt = token(json!({"alg": "RS256", "typ": typ}), json!({}));
            assert_eq!(parse(&jwt).unwrap().check_type(&rules), Ok(()), "{typ}");
        }
        for header in [json!({"alg": "RS256", "typ": "JWT"}), json!({"alg": "RS256"})] {
            let jwt = token(header.clone(), json!({}));
            assert_eq!(parse(&jwt).unwrap().check_type(&rules), Err(Reason::WrongType), "{header}");
        }
    }
}
