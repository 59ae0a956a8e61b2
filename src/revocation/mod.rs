//! Revocation: tokens refused before their expiry, by `jti`, by `sid`, or
//! by a `sub` cut-off (every token of the subject issued before a time).
//!
//! The request path reads a local copy of the list: one `ArcSwap` load and
//! a hash lookup or three, never a wait on the backend. The copy is an
//! immutable `Denylist` rebuilt and swapped whole on each change (a batch of
//! changes at once), because reads happen on every request and writes on a
//! logout. Only the sync loop of the backend (`file` or `remote`) and this
//! gateway's own writes replace it. A copy older than `max_staleness` is
//! stale, and `fail_mode` decides what a token that is not on it gets.

pub(crate) mod api;
mod file;
mod remote;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::auth::AuthError;
use crate::config::{Config, FailMode, RevocationBackend, RevocationConfig};
use crate::token::Reason;

/// Open-mode warnings about a stale copy, at most one per this period.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// One revocation, as the admin API, the CLI, the file and the Redis
/// channel write it: `{"jti": "...", "exp": N}`, `{"sub": "...", "before": N}`
/// or `{"sid": "...", "exp": N}`, times in seconds since the epoch.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EntryFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
}

/// A revocation that makes sense: exactly one thing revoked, with its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// The token with this `jti`, which expires at `exp`.
    Jti { jti: String, exp: u64 },
    /// Every token of `sub` issued before `before` (or without `iat`).
    Sub { sub: String, before: u64 },
    /// Every token of session `sid`, the last of which expires at `exp`.
    Sid { sid: String, exp: u64 },
}

impl TryFrom<EntryFields> for Revoked {
    type Error = String;

    /// `before` defaults to now: "log this subject out everywhere".
    fn try_from(fields: EntryFields) -> Result<Revoked, String> {
        let named = [("jti", &fields.jti), ("sub", &fields.sub), ("sid", &fields.sid)];
        let named: Vec<(&str, &String)> = named.into_iter().filter_map(|(n, v)| v.as_ref().map(|v| (n, v))).collect();
        let [(name, id)] = named.as_slice() else {
            return Err("give exactly one of jti, sub or sid".into());
        };
        if id.is_empty() || id.len() > 1024 {
            return Err(format!("{name} must be 1 to 1024 characters"));
        }
        let id = (*id).clone();
        match (*name, fields.exp, fields.before) {
            ("sub", None, before) => Ok(Revoked::Sub { sub: id, before: before.unwrap_or_else(epoch_seconds) }),
            ("sub", Some(_), _) => Err("a sub cut-off takes before, not exp".into()),
            (_, _, Some(_)) => Err(format!("{name} takes exp (the token's expiry), not before")),
            ("jti", Some(exp), None) => Ok(Revoked::Jti { jti: id, exp }),
            (_, Some(exp), None) => Ok(Revoked::Sid { sid: id, exp }),
            (_, None, None) => Err(format!("{name} needs exp, the expiry of the token (or the session's last token)")),
        }
    }
}

impl Revoked {
    pub fn fields(&self) -> EntryFields {
        match self {
            Revoked::Jti { jti, exp } => {
                EntryFields { jti: Some(jti.clone()), exp: Some(*exp), ..EntryFields::default() }
            }
            Revoked::Sub { sub, before } => {
                EntryFields { sub: Some(sub.clone()), before: Some(*before), ..EntryFields::default() }
            }
            Revoked::Sid { sid, exp } => {
                EntryFields { sid: Some(sid.clone()), exp: Some(*exp), ..EntryFields::default() }
            }
        }
    }

    /// `jti`, `sub` or `sid`.
    pub fn kind(&self) -> &'static str {
        match self {
            Revoked::Jti { .. } => "jti",
            Revoked::Sub { .. } => "sub",
            Revoked::Sid { .. } => "sid",
        }
    }

    /// Whether some token could still be refused because of it.
    pub(crate) fn matters(&self, config: &RevocationConfig) -> bool {
        self.until(config) >= epoch_seconds()
    }

    /// When the entry stops mattering (every token it denies has expired),
    /// in seconds since the epoch.
    fn until(&self, config: &RevocationConfig) -> u64 {
        match self {
            Revoked::Jti { exp, .. } | Revoked::Sid { exp, .. } => exp.saturating_add(config.expiry_grace.as_secs()),
            Revoked::Sub { before, .. } => {
                before.saturating_add(config.max_token_lifetime.as_secs()).saturating_add(config.expiry_grace.as_secs())
            }
        }
    }
}

/// What the list is checked against, taken from a verified token.
#[derive(Debug, Default)]
pub(crate) struct Subject {
    jti: Option<Box<str>>,
    sub: Option<Box<str>>,
    sid: Option<Box<str>>,
    iat: Option<f64>,
}

impl Subject {
    pub(crate) fn of(claims: &Map<String, Value>) -> Subject {
        // a number (some issuers' `sid`) is matched by its JSON text, as an
        // entry naming it would write it; never silently unmatched
        let text = |name| {
            claims.get(name).map(|value| match value {
                Value::String(text) => Box::from(text.as_str()),
                other => Box::from(other.to_string()),
            })
        };
        Subject { jti: text("jti"), sub: text("sub"), sid: text("sid"), iat: claims.get("iat").and_then(Value::as_f64) }
    }
}

/// A `sub` cut-off: tokens issued before `before` are denied until `until`.
#[derive(Debug, Clone, Copy)]
struct Cutoff {
    before: u64,
    until: u64,
}

/// The revoked tokens, as of one read of the backend. Each value says until
/// when (seconds since the epoch) the entry matters.
#[derive(Debug, Default, Clone)]
pub(crate) struct Denylist {
    jtis: HashMap<Box<str>, u64>,
    sids: HashMap<Box<str>, u64>,
    subs: HashMap<Box<str>, Cutoff>,
}

impl Denylist {
    /// Adds `revoked` unless it no longer matters at `now`. Entries only
    /// grow: a later write can extend an entry or move a `sub` cut-off
    /// later, never shorten or move it back (a retried or reordered write
    /// must not un-revoke anything).
    fn insert(&mut self, revoked: &Revoked, config: &RevocationConfig, now: u64) {
        let until = revoked.until(config);
        if until < now {
            return;
        }
        let extend = |held: &mut u64| *held = (*held).max(until);
        match revoked {
            Revoked::Jti { jti, .. } => extend(self.jtis.entry(jti.as_str().into()).or_default()),
            Revoked::Sid { sid, .. } => extend(self.sids.entry(sid.as_str().into()).or_default()),
            Revoked::Sub { sub, before } => {
                let cutoff = self.subs.entry(sub.as_str().into()).or_insert(Cutoff { before: *before, until });
                cutoff.before = cutoff.before.max(*before);
                cutoff.until = cutoff.until.max(until);
            }
        }
    }

    fn from_entries<'a>(entries: impl IntoIterator<Item = &'a Revoked>, config: &RevocationConfig) -> Denylist {
        let now = epoch_seconds();
        let mut list = Denylist::default();
        for revoked in entries {
            list.insert(revoked, config, now);
        }
        list
    }

    /// Whether any entry has stopped mattering at `now`.
    fn has_expired(&self, now: u64) -> bool {
        self.jtis.values().chain(self.sids.values()).any(|until| *until < now)
            || self.subs.values().any(|cutoff| cutoff.until < now)
    }

    fn prune(&mut self, now: u64) {
        self.jtis.retain(|_, until| *until >= now);
        self.sids.retain(|_, until| *until >= now);
        self.subs.retain(|_, cutoff| cutoff.until >= now);
    }

    pub(crate) fn len(&self) -> usize {
        self.jtis.len() + self.sids.len() + self.subs.len()
    }

    /// Whether the token is revoked. A token without `iat` cannot show it
    /// was issued after its subject's cut-off, so it is denied.
    fn denies(&self, subject: &Subject) -> bool {
        let listed =
            |map: &HashMap<Box<str>, u64>, id: &Option<Box<str>>| id.as_deref().is_some_and(|id| map.contains_key(id));
        if listed(&self.jtis, &subject.jti) || listed(&self.sids, &subject.sid) {
            return true;
        }
        let cutoff = subject.sub.as_deref().and_then(|sub| self.subs.get(sub));
        cutoff.is_some_and(|cutoff| subject.iat.is_none_or(|iat| iat < cutoff.before as f64))
    }
}

/// The local copy of the list, its age, and the backend it comes from.
pub(crate) struct Revocations {
    pub(crate) config: RevocationConfig,
    list: ArcSwap<Denylist>,
    /// Milliseconds since the epoch of the last complete read of the
    /// backend; 0: never.
    synced_at: AtomicU64,
    warned_at: AtomicU64,
    /// Serialises this gateway's writes (a file is read, changed, rewritten).
    writing: tokio::sync::Mutex<()>,
    /// Stops the sync loop once a reload has replaced this list.
    pub(crate) retired: CancellationToken,
}

impl Revocations {
    /// A file list is read now (a file that cannot be read or parsed is an
    /// error, as at start a key file is); a Redis one starts empty and
    /// stale until its first sync.
    pub(crate) fn new(config: &RevocationConfig) -> Result<Revocations, String> {
        let revocations = Revocations {
            config: config.clone(),
            list: ArcSwap::default(),
            synced_at: AtomicU64::new(0),
            warned_at: AtomicU64::new(0),
            writing: tokio::sync::Mutex::new(()),
            retired: CancellationToken::new(),
        };
        if let RevocationBackend::File(path) = &config.backend {
            let entries = file::read(path)?.entries;
            revocations.replace(Denylist::from_entries(&entries, config));
        }
        Ok(revocations)
    }

    /// Starts from what `old` holds when it synced from the same Redis: a
    /// reload that changes another `[revocation]` key does not make the
    /// copy stale until the next sync. (A file was just read.)
    pub(crate) fn inherit(&self, old: &Revocations) {
        if matches!(self.config.backend, RevocationBackend::Redis { .. }) && self.config.backend == old.config.backend {
            self.list.store(old.list.load_full());
            self.synced_at.store(old.synced_at.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Checks a verified token against the list; on a stale copy,
    /// `fail_mode` decides for tokens that are not on it.
    pub(crate) fn check(&self, subject: &Subject) -> Result<(), AuthError> {
        if self.list.load().denies(subject) {
            return Err(Reason::Revoked.into());
        }
        let now = epoch_millis();
        let age = now.saturating_sub(self.synced_at.load(Ordering::Relaxed));
        if age <= self.config.max_staleness.as_millis() as u64 {
            return Ok(());
        }
        match self.config.fail_mode {
            FailMode::Closed => Err(AuthError::RevocationUnavailable),
            FailMode::Open => {
                let warned = self.warned_at.load(Ordering::Relaxed);
                if now.saturating_sub(warned) >= WARN_EVERY.as_millis() as u64
                    && self.warned_at.compare_exchange(warned, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
                {
                    tracing::warn!(
                        age_ms = age,
                        "the revocation list is stale: tokens are accepted unchecked (fail_mode = \"open\")"
                    );
                }
                Ok(())
            }
        }
    }

    /// Entries in the local copy, and its age (`None`: never synced).
    pub(crate) fn status(&self) -> (usize, Option<Duration>) {
        let synced_at = self.synced_at.load(Ordering::Relaxed);
        let age = (synced_at > 0).then(|| Duration::from_millis(epoch_millis().saturating_sub(synced_at)));
        (self.list.load().len(), age)
    }

    /// A complete read of the backend: the copy becomes exactly `list`.
    fn replace(&self, list: Denylist) {
        self.list.store(Arc::new(list));
        self.synced();
    }

    /// The backend was read in full and nothing changed.
    fn synced(&self) {
        self.synced_at.store(epoch_millis(), Ordering::Relaxed);
    }

    /// A complete read of a shared backend (Redis): its entries join the
    /// copy, which is then fresh. Entries the backend no longer holds are
    /// kept until they stop mattering: a store that lost keys (a restart
    /// without persistence, eviction, a failover) must not un-revoke
    /// tokens on every replica.
    fn merge(&self, entries: &[Revoked]) {
        self.add(entries);
        self.prune();
        self.synced();
    }

    /// Adds entries that arrived one by one (this gateway's own writes, the
    /// Redis channel), in one swap; the copy's age is unchanged.
    fn add(&self, entries: &[Revoked]) {
        let now = epoch_seconds();
        self.list.rcu(|current| {
            let mut list = Denylist::clone(current);
            for revoked in entries {
                list.insert(revoked, &self.config, now);
            }
            list
        });
    }

    /// Drops the entries that stopped mattering, if there are any.
    fn prune(&self) {
        let now = epoch_seconds();
        if self.list.load().has_expired(now) {
            self.list.rcu(|current| {
                let mut list = Denylist::clone(current);
                list.prune(now);
                list
            });
        }
    }

    /// Writes `revoked` to the backend, then to the local copy.
    pub(crate) async fn write(&self, revoked: &Revoked) -> Result<(), String> {
        let _writing = self.writing.lock().await;
        match &self.config.backend {
            RevocationBackend::File(path) => file::append(path, revoked, &self.config)?,
            RevocationBackend::Redis { url, key_prefix } => {
                remote::write(url, key_prefix, revoked, &self.config).await?;
            }
        }
        self.add(std::slice::from_ref(revoked));
        Ok(())
    }

    /// Keeps the local copy in step with the backend until retired.
    pub(crate) async fn sync(self: Arc<Self>, shutdown: CancellationToken) {
        let retired = self.retired.clone();
        let syncing = async {
            match self.config.backend.clone() {
                RevocationBackend::File(path) => file::watch(&self, &path).await,
                RevocationBackend::Redis { url, key_prefix } => remote::sync(&self, &url, &key_prefix).await,
            }
        };
        tokio::select! {
            () = syncing => {}
            () = retired.cancelled() => {}
            () = shutdown.cancelled() => {}
        }
    }
}

/// Writes `revoked` to the backend `config` names: what `portcullis revoke`
/// runs. A running gateway sees it at its next read of the backend (a Redis
/// one at once, through the channel).
pub async fn revoke(config: &Config, revoked: &Revoked) -> Result<(), String> {
    let Some(revocation) = &config.revocation else {
        return Err(format!("{}: no [revocation] table says where the list is kept", config.origin));
    };
    match &revocation.backend {
        RevocationBackend::File(path) => file::append(path, revoked, revocation),
        RevocationBackend::Redis { url, key_prefix } => remote::write(url, key_prefix, revoked, revocation).await,
    }
}

fn epoch_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn epoch_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The settings every test of the module starts from.
    pub(super) fn config() -> RevocationConfig {
        RevocationConfig {
            backend: RevocationBackend::File("unused".into()),
            resync_interval: Duration::from_secs(5),
            max_staleness: Duration::from_secs(30),
            fail_mode: FailMode::Closed,
            max_token_lifetime: Duration::from_secs(3600),
            expiry_grace: Duration::from_secs(30),
        }
    }

    fn subject(claims: Value) -> Subject {
        Subject::of(claims.as_object().unwrap())
    }

    fn entry(fields: Value) -> Result<Revoked, String> {
        Revoked::try_from(serde_json::from_value::<EntryFields>(fields).map_err(|e| e.to_string())?)
    }

    #[test]
    fn entries_name_one_thing_with_its_time() {
        assert_eq!(entry(json!({"jti": "a", "exp": 5})), Ok(Revoked::Jti { jti: "a".into(), exp: 5 }));
        assert_eq!(entry(json!({"sid": "s", "exp": 5})), Ok(Revoked::Sid { sid: "s".into(), exp: 5 }));
        assert_eq!(entry(json!({"sub": "u", "before": 7})), Ok(Revoked::Sub { sub: "u".into(), before: 7 }));
        assert!(matches!(entry(json!({"sub": "u"})), Ok(Revoked::Sub { before, .. }) if before + 5 > epoch_seconds()));
        for bad in [
            json!({"jti": "a"}),
            json!({"jti": "a", "sub": "u", "exp": 5}),
            json!({"jti": "a", "before": 5}),
            json!({"sub": "u", "exp": 5}),
            json!({"jti": "", "exp": 5}),
            json!({}),
            json!({"jti": "a", "exp": 5, "why": "x"}),
        ] {
            assert!(entry(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_list_denies_by_jti_sid_and_sub_cutoff() {
        let now = epoch_seconds();
        let entries = [
            Revoked::Jti { jti: "j1".into(), exp: now + 60 },
            Revoked::Sid { sid: "s1".into(), exp: now + 60 },
            Revoked::Sub { sub: "alice".into(), before: now },
        ];
        let list = Denylist::from_entries(&entries, &config());
        assert!(list.denies(&subject(json!({"jti": "j1", "sub": "bob"}))));
        assert!(list.denies(&subject(json!({"sid": "s1"}))));
        let numeric = Denylist::from_entries(&[Revoked::Sid { sid: "42".into(), exp: now + 60 }], &config());
        assert!(numeric.denies(&subject(json!({"sid": 42}))), "a numeric sid is matched by its text");
        assert!(list.denies(&subject(json!({"sub": "alice", "iat": now - 1}))));
        assert!(list.denies(&subject(json!({"sub": "alice"}))), "no iat under a cut-off");
        assert!(!list.denies(&subject(json!({"sub": "alice", "iat": now}))));
        assert!(!list.denies(&subject(json!({"jti": "j2", "sub": "bob", "sid": "s2"}))));
    }

    #[test]
    fn entries_that_no_longer_matter_are_dropped() {
        let now = epoch_seconds();
        let entries = [
            Revoked::Jti { jti: "old".into(), exp: now - 31 },
            Revoked::Jti { jti: "in_grace".into(), exp: now - 29 },
            Revoked::Sub { sub: "old".into(), before: now - 3631 },
        ];
        let mut list = Denylist::from_entries(&entries, &config());
        assert_eq!(list.len(), 1);
        assert!(!list.has_expired(now));
        assert!(list.has_expired(now + 2));
        list.prune(now + 2);
        assert_eq!(list.len(), 0);
    }

    #[test]
    fn entries_only_grow_and_a_full_read_never_forgets() {
        let now = epoch_seconds();
        let redis = RevocationConfig {
            backend: RevocationBackend::Redis { url: "redis://127.0.0.1:1".into(), key_prefix: "p:".into() },
            ..config()
        };
        let list = Revocations::new(&redis).unwrap();
        list.merge(&[
            Revoked::Sub { sub: "alice".into(), before: now },
            Revoked::Jti { jti: "j".into(), exp: now + 60 },
        ]);
        // a late or retried write with an older cut-off does not move it back
        list.add(&[Revoked::Sub { sub: "alice".into(), before: now - 600 }]);
        assert!(list.check(&subject(json!({"sub": "alice", "iat": now - 1}))).is_err());
        // a store that lost its keys does not un-revoke them
        list.merge(&[]);
        assert!(list.check(&subject(json!({"sub": "alice", "iat": now - 1}))).is_err());
        assert!(list.check(&subject(json!({"jti": "j"}))).is_err());
        assert!(list.check(&subject(json!({"sub": "alice", "iat": now}))).is_ok());
        assert!(Revoked::Sub { sub: "old".into(), before: now - 3629 }.matters(&redis), "a leeway past the lifetime");
    }

    #[test]
    fn a_stale_copy_fails_as_configured() {
        let closed = Revocations::new(&RevocationConfig {
            backend: RevocationBackend::Redis { url: "redis://127.0.0.1:1".into(), key_prefix: "p:".into() },
            ..config()
        })
        .unwrap();
        let anyone = subject(json!({"sub": "bob", "iat": 1}));
        assert!(matches!(closed.check(&anyone), Err(AuthError::RevocationUnavailable)), "never synced");
        closed.replace(Denylist::default());
        assert!(closed.check(&anyone).is_ok());
        closed.add(&[Revoked::Sub { sub: "bob".into(), before: epoch_seconds() }]);
        assert!(matches!(closed.check(&anyone), Err(AuthError::Invalid(Reason::Revoked))));
        let open =
            Revocations { config: RevocationConfig { fail_mode: FailMode::Open, ..closed.config.clone() }, ..closed };
        open.synced_at.store(1, Ordering::Relaxed);
        assert!(open.check(&subject(json!({"sub": "carol"}))).is_ok());
        assert!(open.check(&anyone).is_err(), "what the stale copy holds is still denied");
    }
}
