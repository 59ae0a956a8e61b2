//! JWK (RFC 7517) -> `VerifyingKey`, for every key type we verify with:
//! RSA (RS*, PS*), EC P-256/P-384 (ES256/384), OKP Ed25519 (EdDSA) and, from
//! local files only, oct shared secrets (HS*).
//!
//! A key is pinned to its JWK's `alg` when it has one (which must be one of
//! the provider's `algorithms` and fit the key type), else to every one of
//! the provider's algorithms that fits the key type.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;
use std::str::FromStr;

use super::VerifyingKey;
use super::verifier::Material;

pub(crate) const MIN_RSA_BITS: usize = 2048;
pub(crate) const MIN_SECRET_BYTES: usize = 32;

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// The JWK members we read; anything else is ignored (RFC 7517 §4).
#[derive(Deserialize)]
pub(crate) struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    k: Option<String>,
}

/// Every usable key of a JWKS document; the others are logged and skipped.
pub(crate) fn parse_set(
    document: &[u8],
    algorithms: &[Algorithm],
    secrets_allowed: bool,
) -> Result<Vec<VerifyingKey>, String> {
    let document: Document = serde_json::from_slice(document).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for value in document.keys {
        let kid = value.get("kid").and_then(|k| k.as_str()).unwrap_or("(no kid)").to_owned();
        let key = serde_json::from_value::<Jwk>(value)
            .map_err(|e| format!("malformed key: {e}"))
            .and_then(|jwk| verifying_key(jwk, algorithms, secrets_allowed));
        match key {
            Ok(key) => keys.push(key),
            Err(reason) => tracing::warn!(kid, reason, "key skipped"),
        }
    }
    Ok(keys)
}

pub(crate) fn verifying_key(jwk: Jwk, accepted: &[Algorithm], secrets_allowed: bool) -> Result<VerifyingKey, String> {
    if jwk.usage.as_deref().is_some_and(|usage| usage != "sig") {
        return Err("not a signing key (use is not \"sig\")".into());
    }
    if jwk.key_ops.as_ref().is_some_and(|ops| !ops.iter().any(|op| op == "verify")) {
        return Err("key_ops does not allow \"verify\"".into());
    }
    let (material, fitting) = match jwk.kty.as_str() {
        "RSA" => rsa(&jwk)?,
        "EC" => ec(&jwk)?,
        "OKP" => okp(&jwk)?,
        "oct" if secrets_allowed => secret(&jwk)?,
        "oct" => return Err("a shared secret (kty \"oct\") is never taken from a URL".into()),
        other => return Err(format!("key type {other:?} is not supported")),
    };
    let algorithms = pinned(jwk.alg.as_deref(), fitting, accepted, &jwk.kty)?;
    VerifyingKey::new(jwk.kid, &material, algorithms)
}

/// The algorithms a key verifies: its own `alg`, or the provider's that fit.
fn pinned(
    alg: Option<&str>,
    fitting: &[Algorithm],
    accepted: &[Algorithm],
    kty: &str,
) -> Result<Vec<Algorithm>, String> {
    match alg {
        Some(name) => {
            let alg = Algorithm::from_str(name).map_err(|_| format!("algorithm {name:?} is not supported"))?;
            if !fitting.contains(&alg) {
                return Err(format!("algorithm {name} does not fit a {kty} key"));
            }
            if !accepted.contains(&alg) {
                return Err(format!("algorithm {name} is not in the provider's algorithms"));
            }
            Ok(vec![alg])
        }
        None => {
            let algorithms: Vec<Algorithm> = accepted.iter().copied().filter(|a| fitting.contains(a)).collect();
            if algorithms.is_empty() {
                return Err(format!("none of the provider's algorithms fits a {kty} key"));
            }
            Ok(algorithms)
        }
    }
}

fn member<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, String> {
    value.as_deref().ok_or_else(|| format!("the key has no {name:?}"))
}

fn bytes(value: &Option<String>, name: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD.decode(member(value, name)?).map_err(|_| format!("{name:?} is not base64url"))
}

fn rsa(jwk: &Jwk) -> Result<(Material, &'static [Algorithm]), String> {
    let modulus = bytes(&jwk.n, "n")?;
    let bits = modulus_bits(&modulus);
    if bits < MIN_RSA_BITS {
        return Err(format!("an RSA key of {bits} bits is under {MIN_RSA_BITS}"));
    }
    let material = Material::Rsa { n: modulus, e: bytes(&jwk.e, "e")? };
    Ok((material, AlgorithmFamily::Rsa.algorithms()))
}

/// The size of a big-endian modulus in bits, leading zeros not counted.
fn modulus_bits(modulus: &[u8]) -> usize {
    match modulus.iter().position(|&b| b != 0) {
        Some(first) => (modulus.len() - first - 1) * 8 + (8 - modulus[first].leading_zeros() as usize),
        None => 0,
    }
}

fn ec(jwk: &Jwk) -> Result<(Material, &'static [Algorithm]), String> {
    let (fitting, size): (&'static [Algorithm], usize) = match member(&jwk.crv, "crv")? {
        "P-256" => (&[Algorithm::ES256], 32),
        "P-384" => (&[Algorithm::ES384], 48),
        other => return Err(format!("curve {other:?} is not supported")),
    };
    let (x, y) = (bytes(&jwk.x, "x")?, bytes(&jwk.y, "y")?);
    if x.len() != size || y.len() != size {
        return Err(format!("a point on this curve has coordinates of {size} bytes"));
    }
    // the uncompressed form (SEC 1 §2.3.3); whether it is on the curve is
    // checked when the verifier is parsed
    let point = [&[0x04][..], &x, &y].concat();
    Ok((Material::Ec(point), fitting))
}

fn okp(jwk: &Jwk) -> Result<(Material, &'static [Algorithm]), String> {
    if member(&jwk.crv, "crv")? != "Ed25519" {
        return Err(format!("curve {:?} is not supported", jwk.crv.as_deref().unwrap_or_default()));
    }
    let x = bytes(&jwk.x, "x")?;
    if x.len() != 32 {
        return Err("an Ed25519 key is 32 bytes".into());
    }
    Ok((Material::Ed25519(x), AlgorithmFamily::Ed.algorithms()))
}

fn secret(jwk: &Jwk) -> Result<(Material, &'static [Algorithm]), String> {
    let secret = bytes(&jwk.k, "k")?;
    Ok((hmac_key(&secret)?, AlgorithmFamily::Hmac.algorithms()))
}

/// A shared secret long enough to resist guessing (RFC 7518 §3.2).
pub(crate) fn hmac_key(secret: &[u8]) -> Result<Material, String> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!("a secret of {} bytes is shorter than {MIN_SECRET_BYTES}", secret.len()));
    }
    Ok(Material::Secret(secret.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn rsa_jwk(kid: &str, bytes: usize) -> Value {
        let mut modulus = vec![0xC5u8; bytes];
        modulus[bytes - 1] = 0x01;
        json!({"kty": "RSA", "kid": kid, "n": URL_SAFE_NO_PAD.encode(modulus), "e": "AQAB"})
    }

    fn with(mut jwk: Value, member: &str, value: Value) -> Value {
        jwk[member] = value;
        jwk
    }

    fn kids(keys: &[VerifyingKey]) -> Vec<&str> {
        keys.iter().map(|k| k.kid.as_deref().unwrap_or("-")).collect()
    }

    const RS256: &[Algorithm] = &[Algorithm::RS256];

    #[test]
    fn skips_unusable_keys_and_keeps_the_rest() {
        let document = json!({"keys": [
            {"kty": "EC", "kid": "ec-p521", "crv": "P-521", "x": "AA", "y": "AA"},
            rsa_jwk("short", 128),
            with(rsa_jwk("enc", 256), "use", json!("enc")),
            with(rsa_jwk("no-verify", 256), "key_ops", json!(["encrypt"])),
            with(rsa_jwk("hs", 256), "alg", json!("HS256")),
            with(rsa_jwk("rs512", 256), "alg", json!("RS512")),
            with(with(rsa_jwk("sig", 256), "use", json!("sig")), "alg", json!("RS256")),
            {"kty": "oct", "kid": "secret", "k": URL_SAFE_NO_PAD.encode([7u8; 32])},
            {"kty": "RSA", "kid": "broken"},
            "not even an object",
            rsa_jwk("good", 256),
        ]});
        let keys = parse_set(document.to_string().as_bytes(), RS256, false).unwrap();
        assert_eq!(kids(&keys), ["sig", "good"]);
    }

    #[test]
    fn counts_modulus_bits_exactly() {
        assert_eq!(modulus_bits(&[0, 0, 1]), 1);
        assert_eq!(modulus_bits(&[0x80, 0]), 16);
        let mut short = vec![0xFFu8; 256];
        short[0] = 0x7F; // 2047 bits
        let jwk = json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode(&short), "e": "AQAB"});
        assert!(verifying_key(serde_json::from_value(jwk).unwrap(), RS256, false).is_err());
    }

    #[test]
    fn pins_algorithms_by_jwk_or_by_provider() {
        let accepted = [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256];
        let key = |jwk: Value| verifying_key(serde_json::from_value(jwk).unwrap(), &accepted, false);
        assert_eq!(key(rsa_jwk("a", 256)).unwrap().algorithms(), [Algorithm::RS256, Algorithm::PS256]);
        let pinned = key(with(rsa_jwk("b", 256), "alg", json!("PS256"))).unwrap();
        assert_eq!(pinned.algorithms(), [Algorithm::PS256]);
        assert!(key(with(rsa_jwk("c", 256), "alg", json!("ES256"))).is_err(), "alg must fit the key type");
        assert!(key(with(rsa_jwk("d", 256), "alg", json!("RS384"))).is_err(), "alg must be accepted");
    }

    #[test]
    fn secrets_come_from_files_only_and_are_long_enough() {
        let accepted = [Algorithm::HS256];
        let secret = |bytes: usize| json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(vec![1u8; bytes])});
        let key = |jwk: Value, allowed| verifying_key(serde_json::from_value(jwk).unwrap(), &accepted, allowed);
        assert!(key(secret(32), true).is_ok());
        assert!(key(secret(31), true).is_err());
        assert!(key(secret(64), false).is_err());
    }
}
