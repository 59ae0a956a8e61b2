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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::jwks::{self, KeySet};
use crate::state::{Compiled, SharedState, Snapshot};

const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Coordinates early fetches for tokens with an unknown `kid`.
pub(crate) struct Refetch {
    wake: Notify,
    /// Counts completed fetches, good or bad, so waiters can re-check.
    completed: watch::Sender<u64>,
    /// An early fetch was asked for and has not started yet.
    pending: AtomicBool,
    in_flight: AtomicBool,
    cooldown: Duration,
    epoch: Instant,
    /// Milliseconds after `epoch` of the last early fetch; `u64::MAX` = never.
    last_forced: AtomicU64,
}

impl Refetch {
    pub(crate) fn new(cooldown: Duration) -> Refetch {
        Refetch {
            wake: Notify::new(),
            completed: watch::Sender::new(0),
            pending: AtomicBool::new(false),
            in_flight: AtomicBool::new(false),
            cooldown,
            epoch: Instant::now(),
            last_forced: AtomicU64::new(u64::MAX),
        }
    }

    /// Asks for an early fetch if the cooldown allows one. Returns what to
    /// wait on when a fetch is coming (asked for now or already under way),
    /// or `None` when the caller should deny at once.
    pub(crate) fn request(&self) -> Option<watch::Receiver<u64>> {
        let completions = self.completed.subscribe();
        if self.claim_cooldown() {
            self.pending.store(true, Ordering::Release);
            self.wake.notify_one();
            return Some(completions);
        }
        self.is_busy().then_some(completions)
    }

    /// A fetch is asked for or running: worth waiting for.
    pub(crate) fn is_busy(&self) -> bool {
        self.pending.load(Ordering::Acquire) || self.in_flight.load(Ordering::Acquire)
    }

    fn claim_cooldown(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_forced.load(Ordering::Acquire);
        let cooled =
            last == u64::MAX || now.saturating_sub(last) >= self.cooldown.as_millis() as u64;
        cooled
            && self
                .last_forced
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    fn started(&self) {
        self.in_flight.store(true, Ordering::Release);
        self.pending.store(false, Ordering::Release);
    }

    fn finished(&self) {
        self.in_flight.store(false, Ordering::Release);
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
        let mut failures = 0u32;
        loop {
            provider.refetch.started();
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
            provider.refetch.finished();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = provider.refetch.wake.notified() => {}
                _ = self.shutdown.cancelled() => return,
            }
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

    #[test]
    fn early_fetches_respect_the_cooldown() {
        let refetch = Refetch::new(Duration::from_secs(60));
        assert!(refetch.request().is_some(), "the first unknown kid may ask");
        assert!(refetch.is_busy());
        assert!(
            refetch.request().is_some(),
            "while one is pending, others wait for it"
        );
        refetch.started();
        refetch.finished();
        assert!(!refetch.is_busy());
        assert!(
            refetch.request().is_none(),
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
