//! The last good JWKS of each provider on disk (`cache_dir`), so a gateway
//! that restarts while the identity provider is down still verifies.
//!
//! Writes are atomic (a temporary file renamed over the old one), so a
//! crash never leaves half a document. A cached set keeps the time it was
//! fetched, so `max_stale` counts from then, not from the restart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Entry {
    /// The URL the set was configured from: a changed config ignores it.
    source: String,
    fetched_at: u64,
    lifetime_secs: u64,
    jwks: Box<serde_json::value::RawValue>,
}

/// A set read back from the cache.
pub(crate) struct Cached {
    pub(crate) body: Vec<u8>,
    pub(crate) fetched_at: SystemTime,
    pub(crate) lifetime: Duration,
}

fn path(dir: &Path, provider: &str) -> PathBuf {
    dir.join(format!("{provider}.jwks.json"))
}

/// Saves a good set; `source` identifies where it came from.
pub(crate) fn store(
    dir: &Path,
    provider: &str,
    source: &str,
    body: &[u8],
    fetched_at: SystemTime,
    lifetime: Duration,
) -> Result<(), String> {
    let jwks = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let entry = Entry {
        source: source.to_owned(),
        fetched_at: fetched_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        lifetime_secs: lifetime.as_secs(),
        jwks,
    };
    let text = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
    let target = path(dir, provider);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        // a unique temporary file per write, synced before it replaces the
        // old one: readers and concurrent writers only ever see whole files
        let mut temporary = tempfile::NamedTempFile::new_in(dir)?;
        temporary.write_all(&text)?;
        temporary.as_file().sync_all()?;
        temporary.persist(&target)?;
        Ok(())
    };
    write().map_err(|e| super::at(&target, e))
}

/// The cached set for `provider`, if there is one from the same `source`.
pub(crate) fn load(dir: &Path, provider: &str, source: &str) -> Option<Cached> {
    let file = path(dir, provider);
    let text = std::fs::read(&file).ok()?;
    let entry: Entry = match serde_json::from_slice(&text) {
        Ok(entry) => entry,
        Err(error) => {
            tracing::warn!(file = %file.display(), %error, "unreadable key cache ignored");
            return None;
        }
    };
    if entry.source != source {
        return None;
    }
    Some(Cached {
        body: entry.jwks.get().as_bytes().to_vec(),
        fetched_at: UNIX_EPOCH.checked_add(Duration::from_secs(entry.fetched_at))?,
        lifetime: Duration::from_secs(entry.lifetime_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Freshness;

    #[test]
    fn round_trips_and_ignores_other_sources() {
        let dir = tempfile::tempdir().unwrap();
        let fetched_at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let body = br#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#;
        store(dir.path(), "idp", "https://a/jwks", body, fetched_at, Duration::from_secs(300)).unwrap();
        let cached = load(dir.path(), "idp", "https://a/jwks").unwrap();
        assert_eq!(cached.body, body);
        assert_eq!(cached.fetched_at, fetched_at);
        assert_eq!(cached.lifetime, Duration::from_secs(300));
        assert!(load(dir.path(), "idp", "https://b/jwks").is_none());
        assert!(load(dir.path(), "other", "https://a/jwks").is_none());
        std::fs::write(dir.path().join("idp.jwks.json"), "{half").unwrap();
        assert!(load(dir.path(), "idp", "https://a/jwks").is_none());
        let huge = format!(r#"{{"source":"s","fetched_at":{},"lifetime_secs":{},"jwks":{{}}}}"#, u64::MAX, u64::MAX);
        std::fs::write(dir.path().join("idp.jwks.json"), huge).unwrap();
        assert!(
            load(dir.path(), "idp", "s")
                .is_none_or(|c| Freshness::remote(c.fetched_at, c.lifetime, Duration::ZERO).is_none())
        );
    }
}
