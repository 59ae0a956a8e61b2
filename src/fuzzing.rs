//! Entry points for the fuzz targets in `fuzz/`: arbitrary bytes through
//! token parsing, the header and claim checks, key lookup, signature
//! verification and claim rendering. Not an API; it exists so the fuzzer
//! reaches crate-private code without it being made public.

use std::sync::OnceLock;

use jsonwebtoken::Algorithm;

use crate::auth::claim_of;
use crate::headers::claim_header_value;
use crate::keys::{self, Freshness, KeySet};
use crate::token::{self, ClaimRules};

/// Runs one input through everything a token meets before it is trusted.
/// It may return early; it must never panic or hang.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(jwt) = token::parse(text) else {
        return;
    };
    let rules = rules();
    let _ = jwt.issuer();
    let _ = jwt.check_type(&rules);
    let _ = token::check_claims(&jwt.claims, &rules, 1_800_000_000.0);
    if let Some(key) = key_set().find(jwt.kid.as_deref()) {
        let _ = key.verify(&jwt);
    }
    for name in ["sub", "roles", "realm_access.roles", "scope"] {
        if let Some(value) = claim_of(&jwt.claims, name) {
            let _ = claim_header_value(value);
        }
    }
}

fn rules() -> ClaimRules {
    ClaimRules {
        audiences: vec!["api".into()],
        leeway: 30.0,
        max_token_age: Some(3600.0),
        required_typ: Some(token::media_type("at+jwt")),
    }
}

/// One HMAC key (kid "hs") and one EC key (kid "ec"), built once.
fn key_set() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let document = br#"{"keys": [
            {"kty": "oct", "kid": "hs", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
            {"kty": "EC", "kid": "ec", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let algorithms = [Algorithm::HS256, Algorithm::ES256];
        keys::build_set(document, &algorithms, true, Freshness::local()).expect("the fuzz keys are valid")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    /// A stable stand-in for the fuzzer in CI: thousands of mutations of a
    /// well-formed token, none of which may panic.
    #[test]
    fn mutated_tokens_never_panic() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"hs","typ":"at+jwt"}"#);
        let claims = URL_SAFE_NO_PAD.encode(
            r#"{"iss":"i","aud":["api"],"exp":1800000100,"iat":1800000000,"sub":"a","realm_access":{"roles":["x"]}}"#,
        );
        let seed = format!("{header}.{claims}.c2lnbmF0dXJl");
        let mut rng = fastrand::Rng::with_seed(7);
        token(seed.as_bytes());
        for _ in 0..20_000 {
            let mut bytes = seed.clone().into_bytes();
            for _ in 0..rng.usize(1..4) {
                match rng.u8(0..4) {
                    0 => {
                        let i = rng.usize(..bytes.len());
                        bytes[i] = rng.u8(..);
                    }
                    1 => bytes.truncate(rng.usize(..bytes.len())),
                    2 => {
                        let i = rng.usize(..=bytes.len());
                        bytes.insert(i, b".=%\\\"{}[]"[rng.usize(..9)]);
                    }
                    _ => {
                        let i = rng.usize(..bytes.len());
                        let tail = bytes[i..].to_vec();
                        bytes.extend_from_slice(&tail);
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
            token(&bytes);
        }
    }
}
