//! Keys kept on this machine: a JWKS file, one PEM public key, or a shared
//! secret (HS256/384/512) from an environment variable or a file.
//!
//! A PEM key or a secret that cannot be used is an error (the operator
//! named that one key); a JWKS file follows the JWKS rule: unusable keys
//! are skipped, as long as one usable key remains.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, jwk};

use super::{Freshness, KeySet, VerifyingKey, at, build_set};
use crate::config::KeySource;

/// Tells whether a source changed since it was last loaded.
pub(crate) type Fingerprint = u64;

/// Loads a local source. Errors name the file or variable and the reason.
pub(crate) fn load(source: &KeySource, algorithms: &[Algorithm]) -> Result<(KeySet, Fingerprint), String> {
    match source {
        KeySource::JwksFile(path) => {
            let bytes = read(path)?;
            let set = build_set(&bytes, algorithms, true, Freshness::local()).map_err(|e| at(path, e))?;
            Ok((set, fingerprint(&bytes)))
        }
        KeySource::PublicKeyFile(path) => {
            let bytes = read(path)?;
            let key = public_key(&bytes, algorithms).map_err(|e| at(path, e))?;
            Ok((KeySet::single(key), fingerprint(&bytes)))
        }
        KeySource::SecretEnv(name) => {
            let value = std::env::var_os(name).ok_or_else(|| format!("${name} is not set"))?;
            let secret = value.into_encoded_bytes();
            let key = secret_key(&secret, algorithms).map_err(|e| format!("${name}: {e}"))?;
            Ok((KeySet::single(key), fingerprint(&secret)))
        }
        KeySource::SecretFile(path) => {
            let bytes = read(path)?;
            let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
            let key = secret_key(secret, algorithms).map_err(|e| at(path, e))?;
            Ok((KeySet::single(key), fingerprint(&bytes)))
        }
        KeySource::Remote(_) => Err("keys fetched over HTTP are not a local source".into()),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| at(path, e.to_string()))
}

fn fingerprint(bytes: &[u8]) -> Fingerprint {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// A PEM public key (RSA, EC or Ed25519), checked and pinned like a JWK.
fn public_key(pem: &[u8], algorithms: &[Algorithm]) -> Result<VerifyingKey, String> {
    let decoding = DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .map_err(|_| "no RSA, EC or Ed25519 public key in PEM form".to_owned())?;
    let as_jwk = jwk::Jwk::from_decoding_key(&decoding, None).map_err(|e| format!("unusable key: {e}"))?;
    let as_jwk = serde_json::to_value(as_jwk).map_err(|e| e.to_string())?;
    let as_jwk = serde_json::from_value(as_jwk).map_err(|e| e.to_string())?;
    super::jwk::verifying_key(as_jwk, algorithms, false)
}

fn secret_key(secret: &[u8], algorithms: &[Algorithm]) -> Result<VerifyingKey, String> {
    VerifyingKey::new(None, &super::jwk::hmac_key(secret)?, algorithms.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_loses_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let secret = "s".repeat(32);
        for content in [format!("{secret}\n"), format!("{secret}\r\n"), secret.clone()] {
            std::fs::write(&path, &content).unwrap();
            assert!(load(&KeySource::SecretFile(path.clone()), &[Algorithm::HS256]).is_ok(), "{content:?}");
        }
        std::fs::write(&path, "s".repeat(31) + "\n").unwrap();
        let error = load(&KeySource::SecretFile(path.clone()), &[Algorithm::HS256]).err().unwrap();
        assert!(error.contains("31 bytes is shorter than 32"), "{error}");
    }

    #[test]
    fn a_missing_source_is_named() {
        let error = load(&KeySource::SecretEnv("PORTCULLIS_TEST_UNSET".into()), &[Algorithm::HS256]).err().unwrap();
        assert_eq!(error, "$PORTCULLIS_TEST_UNSET is not set");
        let error = load(&KeySource::JwksFile("/nonexistent/jwks.json".into()), &[Algorithm::RS256]).err().unwrap();
        assert!(error.starts_with("/nonexistent/jwks.json: "), "{error}");
    }
}
