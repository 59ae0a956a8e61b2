//! The verified-token cache: a token that verified is not verified again
//! while it stays valid, so a client reusing its token for minutes pays for
//! one signature check, not one per request.
//!
//! Entries are keyed by the SHA-256 of the token's bytes: two tokens that
//! share a key would share an identity, so the hash must resist collisions,
//! not merely spread well. An entry remembers what made the token valid (its
//! provider, the key that verified it, its time window), and a hit re-checks
//! each against the live snapshot, so it is exactly as strict as a fresh
//! verification: a provider whose config changed is a new provider object,
//! a key that left its set or changed has a new fingerprint, and the time is
//! always now. An entry is never used past its token's expiry (and is
//! dropped when found expired); a full cache evicts the entries least
//! likely to be asked for again (quick_cache's CLOCK-Pro).
//!
//! It holds only the claims the running config reads (see `Claims`), so an
//! entry costs a few hundred bytes whatever the token carries. A hit is
//! checked against the revocation list like a fresh verification, so a
//! revoked token is refused as soon as the local copy of the list has it.

use std::sync::{Arc, Weak};

use aws_lc_rs::digest;
use metrics::Counter;
use quick_cache::sync::Cache;

use crate::auth::Claims;
use crate::keys::KeyFingerprint;
use crate::metrics::Metrics;
use crate::revocation::Subject;
use crate::state::Provider;

pub(crate) type TokenHash = [u8; 32];

/// What a successful verification established.
pub(crate) struct Verified {
    /// Weak: a retired provider is not kept alive by its tokens.
    pub(crate) provider: Weak<Provider>,
    pub(crate) kid: Option<Box<str>>,
    pub(crate) key: KeyFingerprint,
    /// Seconds since the epoch, leeway applied: the claims check passes
    /// from `valid_from` to `valid_until`.
    pub(crate) valid_from: f64,
    pub(crate) valid_until: f64,
    pub(crate) claims: Claims,
    /// Its provider checks every token against the revocation list.
    pub(crate) revocable: bool,
    /// What the revocation list is checked against; taken whenever the
    /// config has a list, so a hit is checked at once, every time.
    pub(crate) subject: Option<Subject>,
}

pub(crate) struct TokenCache {
    /// `None` when `token_cache_size` is 0.
    entries: Option<Cache<TokenHash, Arc<Verified>>>,
    capacity: u64,
    hits: Counter,
    misses: Counter,
}

impl TokenCache {
    pub(crate) fn new(capacity: u64, metrics: &Metrics) -> TokenCache {
        let entries = usize::try_from(capacity).ok().filter(|&n| n > 0).map(Cache::new);
        let (hits, misses) = metrics.token_cache();
        TokenCache { entries, capacity, hits, misses }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The key for `token`, or `None` when there is no cache to look in.
    pub(crate) fn key(&self, token: &str) -> Option<TokenHash> {
        self.entries.as_ref()?;
        let mut hash = [0; 32];
        hash.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
        Some(hash)
    }

    pub(crate) fn get(&self, key: &TokenHash) -> Option<Arc<Verified>> {
        self.entries.as_ref()?.get(key)
    }

    /// Counts a cached verification that was used.
    pub(crate) fn hit(&self) {
        self.hits.increment(1);
    }

    /// Keeps a fresh verification (counted as a miss).
    pub(crate) fn insert(&self, key: TokenHash, verified: Arc<Verified>) {
        if let Some(entries) = &self.entries {
            self.misses.increment(1);
            entries.insert(key, verified);
        }
    }

    pub(crate) fn remove(&self, key: &TokenHash) {
        if let Some(entries) = &self.entries {
            entries.remove(key);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, Cache::len)
    }
}
