//! The `file` backend: a TOML file (or JSON, when its name ends in `.json`)
//! of `[[revoked]]` entries, polled by content every `resync_interval`.
//!
//! A file that cannot be read or parsed keeps the last good copy (logged
//! once per new content) and the copy ages until the file is good again. A
//! file that was never there is an empty list (nothing has been revoked
//! yet); one that was there and is gone is a failed read. Writes read,
//! change and rewrite the file in one rename, dropping what has expired.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Denylist, EntryFields, Revocations, Revoked, epoch_seconds};
use crate::config::RevocationConfig;

/// The file as written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ListFile {
    #[serde(default)]
    revoked: Vec<EntryFields>,
}

/// A file read and understood.
pub(super) struct Read {
    pub(super) entries: Vec<Revoked>,
}

/// Reads the list at `path`; a missing file is an empty list.
pub(super) fn read(path: &Path) -> Result<Read, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    Ok(Read { entries: parse(path, &bytes)? })
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Vec<Revoked>, String> {
    let at = |error: String| format!("{}: {error}", path.display());
    let text = std::str::from_utf8(bytes).map_err(|e| at(e.to_string()))?;
    let file: ListFile = if is_json(path) {
        if text.trim().is_empty() {
            ListFile::default()
        } else {
            serde_json::from_str(text).map_err(|e| at(e.to_string()))?
        }
    } else {
        toml::from_str(text).map_err(|e| at(e.message().trim().to_owned()))?
    };
    file.revoked
        .into_iter()
        .enumerate()
        .map(|(i, fields)| {
            // "now" read from a file would be a new cut-off at every read
            if fields.sub.is_some() && fields.before.is_none() {
                return Err(at(format!("revoked[{i}]: a sub cut-off needs before (seconds since the epoch)")));
            }
            Revoked::try_from(fields).map_err(|e| at(format!("revoked[{i}]: {e}")))
        })
        .collect()
}

fn is_json(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Adds `revoked` to the file at `path`, dropping entries that no longer
/// matter, and replaces the file in one rename. A file that cannot be
/// parsed is left as it is: rewriting it would lose its entries.
pub(super) fn append(path: &Path, revoked: &Revoked, config: &RevocationConfig) -> Result<(), String> {
    let now = epoch_seconds();
    let mut entries = read(path)?.entries;
    entries.retain(|entry| entry.until(config) >= now && entry != revoked);
    entries.push(revoked.clone());
    let file = ListFile { revoked: entries.iter().map(Revoked::fields).collect() };
    let text = if is_json(path) {
        serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?
    } else {
        toml::to_string(&file).map_err(|e| e.to_string())?
    };
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let at = |error: std::io::Error| format!("{}: {error}", path.display());
    let mut staged = tempfile::NamedTempFile::new_in(dir).map_err(at)?;
    std::io::Write::write_all(&mut staged, text.as_bytes()).map_err(at)?;
    staged.as_file().sync_all().map_err(at)?;
    staged.persist(path).map_err(|e| at(e.error))?;
    Ok(())
}

/// Re-reads the file whenever its content changes; a good read, changed or
/// not, keeps the copy fresh.
pub(super) async fn watch(revocations: &Revocations, path: &Path) {
    // read once more at the first tick: a write between the start's read
    // and this one must not be marked seen without being parsed
    let mut seen: Option<u64> = None;
    let mut failed: Option<u64> = None;
    // once the file has been there, its vanishing (a volume unmounted, a
    // path changed) is a failed read, not "nothing is revoked"
    // (entries in the copy came from the file: it was there at start, even
    // if it is gone by the time this loop first runs)
    let mut existed = path.exists() || revocations.list.load().len() > 0;
    let mut tick = tokio::time::interval(revocations.config.resync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let bytes = match std::fs::read(path) {
            Ok(bytes) => {
                existed = true;
                bytes
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !existed => Vec::new(),
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "revocation list unreadable; keeping the last good copy");
                continue;
            }
        };
        let latest = fingerprint(&bytes);
        if seen == Some(latest) {
            revocations.prune();
            revocations.synced();
            continue;
        }
        match parse(path, &bytes) {
            Ok(entries) => {
                let list = Denylist::from_entries(&entries, &revocations.config);
                tracing::info!(file = %path.display(), entries = list.len(), "revocation list reloaded");
                revocations.replace(list);
                (seen, failed) = (Some(latest), None);
            }
            Err(error) if failed != Some(latest) => {
                tracing::warn!(%error, "revocation list not reloaded; keeping the last good copy");
                failed = Some(latest);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::tests::config;

    #[test]
    fn appends_keep_the_format_and_drop_expired_entries() {
        let dir = tempfile::tempdir().unwrap();
        let now = epoch_seconds();
        for name in ["list.toml", "list.json"] {
            let path = dir.path().join(name);
            let old = Revoked::Jti { jti: "old".into(), exp: now - 100 };
            let fresh = Revoked::Sub { sub: "alice".into(), before: now };
            append(&path, &old, &config()).unwrap();
            append(&path, &fresh, &config()).unwrap();
            append(&path, &fresh, &config()).unwrap();
            assert_eq!(read(&path).unwrap().entries, [fresh], "{name}");
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(text.trim_start().starts_with('{'), name.ends_with(".json"), "{text}");
        }
    }

    #[test]
    fn a_bad_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("list.toml");
        std::fs::write(&path, "[[revoked]]\nsub = \"alice\"\n").unwrap();
        let error = read(&path).err().unwrap();
        assert!(error.contains("revoked[0]") && error.contains("before"), "{error}");
        std::fs::write(&path, "[[revoked]]\njti = \"a\"\n").unwrap();
        let error = read(&path).err().unwrap();
        assert!(error.contains("revoked[0]") && error.contains("exp"), "{error}");
        let entry = Revoked::Jti { jti: "b".into(), exp: epoch_seconds() + 60 };
        assert!(append(&path, &entry, &config()).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[[revoked]]\njti = \"a\"\n");
        assert!(read(&dir.path().join("missing.toml")).unwrap().entries.is_empty());
    }
}
