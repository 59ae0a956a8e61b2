//! The only writer of the live snapshot, and the key refresh loops that feed it.
//!
//! Each provider has one refresh task. It fetches at start, then every
//! `refresh_interval` (sooner, with backoff, after a failure), and publishes
//! a good set by swapping in a new snapshot. A failed fetch publishes
//! nothing, so the last good keys stay. The request path never awaits this
//! loop, except a token with an unknown `kid`, which may ask for one early
//! fetch (`Refetch`): coalesced, at most one per provider per cooldown, and
//! waited for only briefly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::jwks::{self, KeySet};
use crate::state::{Compiled, SharedState, Snapshot};

const FIRST_RETRY: Duration = Duration::from_secs(1);

/// How long a token may wait for the early fetch it (or a concurrent
/// token) asked for, or for the first load at start.
pub(crate) const EARLY_FETCH_WAIT: Duration = Duration::from_secs(1);
const NEVER: u64 = u64::MAX;

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
}

/// What a request may wait on, and until when.
pub(crate) struct Wait {
    pub(crate) completions: watch::Receiver<u64>,
    pub(crate) deadline: tokio::time::Instant,
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
        }
    }

    /// For a token whose `kid` is unknown: asks for an early fetch if the
    /// cooldown allows, or joins the one asked for less than
    /// `EARLY_FETCH_WAIT` ago. `None`: deny at once.
    pub(crate) fn early(&self) -> Option<Wait> {
        let completions = self.completed.subscribe();
        let now = self.epoch.elapsed().as_millis() as u64;
        let asked = self.asked_at.load(Ordering::Acquire);
        let cooled =
            asked == NEVER || now.saturating_sub(asked) >= self.cooldown.as_millis() as u64;
        if cooled
            && self
                .asked_at
                .compare_exchange(asked, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.wake.notify_one();
            return Some(Wait {
                completions,
                deadline: self.deadline(now),
            });
        }
        let asked = self.asked_at.load(Ordering::Acquire);
        let deadline = self.deadline(asked);
        (self.is_outstanding() && tokio::time::Instant::now() < deadline).then_some(Wait {
            completions,
            deadline,
        })
    }

    /// For a token that arrives while the first fetch is still under way.
    pub(crate) fn first_load(&self) -> Option<Wait> {
        let completions = self.completed.subscribe();
        let deadline = tokio::time::Instant::now() + EARLY_FETCH_WAIT;
        let first_pending = *completions.borrow() == 0;
        first_pending.then_some(Wait {
            completions,
            deadline,
        })
    }

    /// An early fetch was asked for and has not completed.
    pub(crate) fn is_outstanding(&self) -> bool {
        let asked = self.asked_at.load(Ordering::Acquire);
        asked != NEVER && asked != self.served.load(Ordering::Acquire)
    }

    fn deadline(&self, asked: u64) -> tokio::time::Instant {
        let at = self.epoch + Duration::from_millis(asked) + EARLY_FETCH_WAIT;
        tokio::time::Instant::from_std(at)
    }

    /// Records a completed fetch; `early` is the `asked_at` it served.
    fn completed(&self, early: Option<u64>) {
        if let Some(asked) = early {
            self.served.store(asked, Ordering::Release);
        }
        self.completed.send_modify(|count| *count += 1);
    }
}

/// Owns every write to the shared snapshot.
#[derive(Clone)]
pub(crate) struct Control {
    state: SharedState,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Control {
    /// Publishes `config` with no keys yet and starts its refresh loops.
    pub(crate) fn start(
        config: Arc<Compiled>,
        shutdown: CancellationToken,
    ) -> (Control, SharedState) {
        let state: SharedState =
            Arc::new(ArcSwap::from_pointee(Snapshot::unloaded(config.clone())));
        let control = Control {
            state: state.clone(),
            http: jwks::http_client(),
            shutdown,
        };
        for index in 0..config.providers.len() {
            tokio::spawn(control.clone().refresh_loop(config.clone(), index));
        }
        (control, state)
    }

    async fn refresh_loop(self, config: Arc<Compiled>, index: usize) {
        let provider = &config.providers[index];
        let name = &provider.config.name;
        let refetch = &provider.refetch;
        let mut failures = 0u32;
        // the `asked_at` of the early fetch this one serves, if it is one
        let mut early = None;
        loop {
            let delay = match jwks::fetch(&self.http, &provider.config).await {
                Ok(keys) => {
                    failures = 0;
                    let kids: Vec<&str> = keys.kids().collect();
                    tracing::info!(provider = %name, keys = keys.len(), ?kids, "JWKS refreshed");
                    self.publish_keys(&config, index, keys);
                    provider.config.refresh_interval
                }
                Err(error) => {
                    failures += 1;
                    let retry = backoff(failures).min(provider.config.refresh_interval);
                    let error = crate::error::chain(&error);
                    tracing::warn!(provider = %name, %error, retry_in = ?retry, "JWKS fetch failed; keeping the last good keys");
                    retry
                }
            };
            refetch.completed(early);
            early = tokio::select! {
                _ = tokio::time::sleep(delay) => None,
                _ = refetch.wake.notified() => Some(refetch.asked_at.load(Ordering::Acquire)),
                _ = self.shutdown.cancelled() => return,
            };
        }
    }

    /// Swaps in a snapshot with provider `index`'s new keys, unless the
    /// config it belongs to has been replaced meanwhile.
    fn publish_keys(&self, config: &Arc<Compiled>, index: usize, keys: KeySet) {
        let keys = Arc::new(keys);
        self.state.rcu(|current| {
            if !Arc::ptr_eq(&current.config, config) {
                return current.clone();
            }
            let mut all = current.keys.clone();
            all[index] = keys.clone();
            Arc::new(Snapshot {
                config: current.config.clone(),
                keys: all,
            })
        });
    }
}

/// 1 s, 2 s, 4 s, ... capped at 5 minutes.
fn backoff(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1 << failures.saturating_sub(1).min(8))
        .min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn early_fetches_respect_the_cooldown() {
        let refetch = Refetch::new(Duration::from_secs(60));
        assert!(
            refetch.first_load().is_some(),
            "before any fetch, wait for the first"
        );
        refetch.completed(None);
        assert!(refetch.first_load().is_none(), "after it, not again");
        assert!(
            !refetch.is_outstanding(),
            "periodic fetches are never waited for"
        );

        let first = refetch.early().expect("the first unknown kid may ask");
        assert!(refetch.is_outstanding());
        let joined = refetch.early().expect("a concurrent one joins it");
        assert_eq!(
            joined.deadline, first.deadline,
            "and gives up at the same time"
        );
        let asked = refetch.asked_at.load(Ordering::Acquire);
        refetch.completed(Some(asked));
        assert!(!refetch.is_outstanding());
        assert!(
            refetch.early().is_none(),
            "within the cooldown: deny at once"
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(30), Duration::from_secs(256));
    }
}
