//! The request path's side of key fetching: a token whose `kid` is not in
//! the current set may ask for one early fetch and wait for it briefly.
//!
//! At most one early fetch per provider per cooldown; tokens arriving
//! within a second of the ask share it and give up at the same moment;
//! otherwise an unknown kid is refused at once. A kid that an early fetch
//! did not bring is remembered for a minute and refused without asking.
//! Nothing here blocks: state is atomics, a `Notify` and a `watch`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};

use crate::keys::KeySet;
use crate::state::{SharedState, Snapshot};

/// How long a token may wait for the early fetch it (or a concurrent
/// token) asked for, or for the first load at start.
pub(crate) const EARLY_FETCH_WAIT: Duration = Duration::from_secs(1);
const NEVER: u64 = u64::MAX;
/// How long a kid stays refused without a fetch once one failed to find it.
const UNKNOWN_KID_TTL: Duration = Duration::from_secs(60);
const UNKNOWN_KIDS_KEPT: usize = 1024;

/// Coordinates early fetches for tokens with an unknown `kid`.
pub(crate) struct Refetch {
    wake: Notify,
    /// Counts completed fetches, good or bad, so waiters can re-check.
    completed: watch::Sender<u64>,
    cooldown: Duration,
    epoch: Instant,
    /// Milliseconds after `epoch` when the last early fetch was asked for.
    asked_at: AtomicU64,
    /// `asked_at` of the last early fetch that completed.
    served: AtomicU64,
    /// Whether that fetch brought a key set (else its absences mean nothing).
    served_ok: AtomicBool,
    /// Kids still unknown after an early fetch, and until when to refuse
    /// them without asking again. Written rarely, read without locks.
    unknown: ArcSwap<HashMap<String, Instant>>,
}

/// What a request may wait on, and until when.
struct Wait {
    completions: watch::Receiver<u64>,
    deadline: tokio::time::Instant,
    /// Waiting for an early fetch (not the first load).
    early: bool,
    /// This token asked for the fetch (rather than joining one).
    asked: bool,
}

/// The provider's keys for a token's `kid`, after waiting briefly for an
/// early fetch when the key is not among them (rotation), or for the first
/// load at start. Falls back to the latest published set, never to an older
/// one than the caller had.
pub(crate) async fn keys_for(snapshot: &Snapshot, index: usize, kid: Option<&str>, state: &SharedState) -> Arc<KeySet> {
    let keys = &snapshot.keys[index];
    if keys.find(kid).is_some() {
        return keys.clone();
    }
    let provider = &snapshot.config.providers[index];
    let refetch = &provider.refetch;
    let latest = || {
        let current = state.load();
        current.position_of(provider).map_or_else(|| keys.clone(), |at| current.keys[at].clone())
    };
    let wait = match (keys.is_loaded(), kid) {
        (false, _) => refetch.first_load(),
        (true, Some(kid)) if !refetch.is_known_unknown(kid) => refetch.early(),
        (true, _) => None,
    };
    let counters = &provider.metrics;
    match &wait {
        Some(wait) if wait.asked => counters.refetch_forced.increment(1),
        None if kid.is_some() && keys.is_loaded() => counters.refetch_throttled.increment(1),
        _ => {}
    }
    let Some(Wait { mut completions, deadline, early, .. }) = wait else {
        return latest();
    };
    loop {
        let completed = tokio::time::timeout_at(deadline, completions.changed()).await;
        let keys = latest();
        if keys.find(kid).is_some() || !matches!(completed, Ok(Ok(()))) {
            return keys;
        }
        if !refetch.is_outstanding() {
            if let (Some(kid), true) = (kid, early && refetch.served_ok.load(Ordering::Acquire)) {
                refetch.remember_unknown(kid);
            }
            return keys;
        }
    }
}

impl Refetch {
    pub(crate) fn new(cooldown: Duration) -> Refetch {
        Refetch {
            wake: Notify::new(),
            completed: watch::Sender::new(0),
            cooldown,
            epoch: Instant::now(),
            asked_at: AtomicU64::new(NEVER),
            served: AtomicU64::new(NEVER),
            served_ok: AtomicBool::new(false),
            unknown: ArcSwap::default(),
        }
    }

    /// Resolves when a token asks for an early fetch, with the ask's time
    /// (to pass to `completed`).
    pub(crate) async fn asked(&self) -> u64 {
        self.wake.notified().await;
        self.asked_at.load(Ordering::Acquire)
    }

    /// A kid an early fetch recently failed to find.
    fn is_known_unknown(&self, kid: &str) -> bool {
        self.unknown.load().get(kid).is_some_and(|until| Instant::now() < *until)
    }

    /// Remembers that an early fetch did not bring `kid`.
    fn remember_unknown(&self, kid: &str) {
        let until = Instant::now() + UNKNOWN_KID_TTL;
        self.unknown.rcu(|current| {
            let now = Instant::now();
            let mut next: HashMap<String, Instant> =
                current.iter().filter(|(_, t)| **t > now).map(|(k, t)| (k.clone(), *t)).collect();
            if next.len() < UNKNOWN_KIDS_KEPT {
                next.insert(kid.to_owned(), until);
            }
            next
        });
    }

    /// For a token whose `kid` is unknown: asks for an early fetch if the
    /// cooldown allows, or joins the one asked for less than
    /// `EARLY_FETCH_WAIT` ago. `None`: deny at once.
    fn early(&self) -> Option<Wait> {
        let completions = self.completed.subscribe();
        let now = self.epoch.elapsed().as_millis() as u64;
        let asked = self.asked_at.load(Ordering::Acquire);
        let cooled = asked == NEVER || now.saturating_sub(asked) >= self.cooldown.as_millis() as u64;
        if cooled && self.asked_at.compare_exchange(asked, now, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.wake.notify_one();
            return Some(Wait { completions, deadline: self.deadline(now), early: true, asked: true });
        }
        let asked = self.asked_at.load(Ordering::Acquire);
        let deadline = self.deadline(asked);
        let joinable = self.is_outstanding() && tokio::time::Instant::now() < deadline;
        joinable.then_some(Wait { completions, deadline, early: true, asked: false })
    }

    /// For a token that arrives while the first fetch is still under way.
    fn first_load(&self) -> Option<Wait> {
        let completions = self.completed.subscribe();
        let deadline = tokio::time::Instant::now() + EARLY_FETCH_WAIT;
        let first_pending = *completions.borrow() == 0;
        first_pending.then_some(Wait { completions, deadline, early: false, asked: false })
    }

    /// An early fetch was asked for and has not completed.
    fn is_outstanding(&self) -> bool {
        let asked = self.asked_at.load(Ordering::Acquire);
        asked != NEVER && asked != self.served.load(Ordering::Acquire)
    }

    fn deadline(&self, asked: u64) -> tokio::time::Instant {
        let at = self.epoch + Duration::from_millis(asked) + EARLY_FETCH_WAIT;
        tokio::time::Instant::from_std(at)
    }

    /// How many loads (good or bad) have completed.
    pub(crate) fn loads(&self) -> u64 {
        *self.completed.borrow()
    }

    /// Records a completed fetch, good (`ok`) or not; `early` is the
    /// `asked_at` it served, if it was an early one.
    pub(crate) fn completed(&self, early: Option<u64>, ok: bool) {
        if let Some(asked) = early {
            self.served_ok.store(ok, Ordering::Release);
            self.served.store(asked, Ordering::Release);
        }
        self.completed.send_modify(|count| *count += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn early_fetches_respect_the_cooldown() {
        let refetch = Refetch::new(Duration::from_secs(60));
        assert!(refetch.first_load().is_some(), "before any fetch, wait for the first");
        refetch.completed(None, true);
        assert!(refetch.first_load().is_none(), "after it, not again");
        assert!(!refetch.is_outstanding(), "periodic fetches are never waited for");

        let first = refetch.early().expect("the first unknown kid may ask");
        assert!(refetch.is_outstanding());
        let joined = refetch.early().expect("a concurrent one joins it");
        assert_eq!(joined.deadline, first.deadline, "and gives up at the same time");
        let asked = refetch.asked_at.load(Ordering::Acquire);
        refetch.completed(Some(asked), true);
        assert!(!refetch.is_outstanding());
        assert!(refetch.early().is_none(), "within the cooldown: deny at once");
    }
}
