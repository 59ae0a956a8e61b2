//! A provider's verifying keys: where they come from (`local`, `remote`,
//! `cache`), how a JWK becomes a key (`jwk`), and the set the request path
//! looks keys up in.
//!
//! Every key is compiled once, when its set is built, with the algorithms
//! it is pinned to; the request path only looks up and verifies. A key set
//! knows how fresh it is, so a provider whose identity provider has been
//! unreachable for longer than `max_stale` stops verifying.

mod cache;
mod jwk;
mod local;
mod remote;
mod verifier;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jsonwebtoken::Algorithm;

pub(crate) use cache::{load as load_cached, store as store_cached};
pub(crate) use local::{Fingerprint, load as load_local};
pub(crate) use remote::Fetcher;
pub(crate) use verifier::KeyFingerprint;

use crate::token::{Jwt, Reason};

/// A key with everything needed to check a signature, parsed once.
pub(crate) struct VerifyingKey {
    kid: Option<String>,
    /// One per algorithm the key is pinned to: fixed when the key was
    /// loaded, never taken from a token.
    verifiers: Vec<(Algorithm, verifier::Verifier)>,
    /// The token cache trusts a verification only while its key set still
    /// holds a key with this fingerprint.
    pub(crate) fingerprint: KeyFingerprint,
}

impl VerifyingKey {
    fn new(kid: Option<String>, material: &verifier::Material, algorithms: Vec<Algorithm>) -> Result<Self, String> {
        let verifiers =
            algorithms.iter().map(|&alg| Ok((alg, material.verifier(alg)?))).collect::<Result<Vec<_>, String>>()?;
        let fingerprint = material.fingerprint(kid.as_deref(), &algorithms);
        Ok(VerifyingKey { kid, verifiers, fingerprint })
    }

    /// Checks the token's algorithm against the key's and its signature.
    pub(crate) fn verify(&self, jwt: &Jwt<'_>) -> Result<(), Reason> {
        let (_, verifier) = self.verifiers.iter().find(|(alg, _)| *alg == jwt.alg).ok_or(Reason::BadAlgorithm)?;
        match verifier.verify(jwt.signing_input.as_bytes(), jwt.signature) {
            true => Ok(()),
            false => Err(Reason::BadSignature),
        }
    }

    #[cfg(test)]
    fn algorithms(&self) -> Vec<Algorithm> {
        self.verifiers.iter().map(|(alg, _)| *alg).collect()
    }
}

/// When a set was fetched and until when it may verify.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Freshness {
    pub(crate) fetched_at: SystemTime,
    /// When a refresh is due; `None` for local sources, which never expire.
    pub(crate) expires_at: Option<SystemTime>,
    /// `expires_at` + `max_stale`: past it, the set no longer verifies.
    pub(crate) stale_after: Option<SystemTime>,
}

impl Freshness {
    pub(crate) fn local() -> Freshness {
        Freshness { fetched_at: SystemTime::now(), expires_at: None, stale_after: None }
    }

    /// `None` when the times do not fit (a corrupt cache entry, say).
    pub(crate) fn remote(fetched_at: SystemTime, lifetime: Duration, max_stale: Duration) -> Option<Freshness> {
        let expires_at = fetched_at.checked_add(lifetime)?;
        let stale_after = expires_at.checked_add(max_stale)?;
        Some(Freshness { fetched_at, expires_at: Some(expires_at), stale_after: Some(stale_after) })
    }
}

/// One provider's usable keys, as of one load.
#[derive(Default)]
pub(crate) struct KeySet {
    /// Shared with the copies `with_max_stale` makes.
    keys: Arc<Keys>,
    /// `None` until the first good load: the provider's routes deny until then.
    pub(crate) freshness: Option<Freshness>,
}

#[derive(Default)]
struct Keys {
    list: Vec<VerifyingKey>,
    by_kid: HashMap<String, usize>,
    /// A single key from a PEM file or secret verifies whatever `kid` a
    /// token names: the operator chose that key for this provider.
    any_kid: bool,
}

impl KeySet {
    fn single(key: VerifyingKey) -> KeySet {
        let keys = Keys { list: vec![key], by_kid: HashMap::new(), any_kid: true };
        KeySet { keys: Arc::new(keys), freshness: Some(Freshness::local()) }
    }

    fn from_keys(list: Vec<VerifyingKey>, freshness: Freshness) -> KeySet {
        let mut keys = Keys::default();
        for key in list {
            if let Some(kid) = &key.kid {
                if keys.by_kid.contains_key(kid) {
                    tracing::warn!(kid, "duplicate kid in key set: the first one is kept");
                    continue;
                }
                keys.by_kid.insert(kid.clone(), keys.list.len());
            }
            keys.list.push(key);
        }
        KeySet { keys: Arc::new(keys), freshness: Some(freshness) }
    }

    /// The same keys, stale `max_stale` after they expire (a remote set a
    /// provider inherits from its previous config, whose `max_stale` may
    /// have been another).
    pub(crate) fn with_max_stale(&self, max_stale: Duration) -> KeySet {
        let freshness = self.freshness.map(|f| Freshness {
            stale_after: f.expires_at.and_then(|expires| expires.checked_add(max_stale)).or(f.stale_after),
            ..f
        });
        KeySet { keys: self.keys.clone(), freshness }
    }

    pub(crate) fn is_loaded(&self) -> bool {
        self.freshness.is_some()
    }

    /// Loaded, and not stale beyond `max_stale` at `now`.
    pub(crate) fn is_usable(&self, now: SystemTime) -> bool {
        self.freshness.is_some_and(|f| f.stale_after.is_none_or(|limit| now <= limit))
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.list.len()
    }

    /// The key for a token's `kid`. A token without one may only use a set
    /// holding exactly one key, so there is never a guess between keys.
    pub(crate) fn find(&self, kid: Option<&str>) -> Option<&VerifyingKey> {
        let keys = &self.keys;
        if keys.any_kid || (kid.is_none() && keys.list.len() == 1) {
            return keys.list.first();
        }
        keys.by_kid.get(kid?).map(|&i| &keys.list[i])
    }

    pub(crate) fn kids(&self) -> Vec<&str> {
        self.keys.list.iter().map(|k| k.kid.as_deref().unwrap_or("(no kid)")).collect()
    }
}

/// "path: reason", the form of every file error here.
fn at(path: &std::path::Path, reason: impl std::fmt::Display) -> String {
    format!("{}: {reason}", path.display())
}

/// Parses a JWKS document into a set: keys are taken one by one, and one
/// that cannot be used is skipped with a warning, never costing the others.
pub(crate) fn build_set(
    document: &[u8],
    algorithms: &[Algorithm],
    secrets_allowed: bool,
    freshness: Freshness,
) -> Result<KeySet, String> {
    let keys = jwk::parse_set(document, algorithms, secrets_allowed)?;
    if keys.is_empty() {
        return Err("no usable key in the set".into());
    }
    Ok(KeySet::from_keys(keys, freshness))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_can_be_redated_for_another_max_stale() {
        let fetched_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let freshness = Freshness::remote(fetched_at, Duration::from_secs(60), Duration::from_secs(100));
        let set = KeySet { freshness, ..KeySet::default() };
        let redated = set.with_max_stale(Duration::from_secs(1000)).freshness.unwrap();
        assert_eq!(redated.stale_after, Some(fetched_at + Duration::from_secs(1060)));
        assert_eq!((redated.fetched_at, redated.expires_at), (fetched_at, freshness.unwrap().expires_at));
        let local = KeySet { freshness: Some(Freshness::local()), ..KeySet::default() };
        assert_eq!(
            local.with_max_stale(Duration::ZERO).freshness.unwrap().stale_after,
            None,
            "local keys never go stale"
        );
    }
}
