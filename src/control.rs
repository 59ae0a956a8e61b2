//! The only writer of the live snapshot, and the key loops that feed it.
//!
//! Each provider has one loop. A remote key set is fetched at start, again
//! when 90% of its freshness has passed, and sooner (with backoff and
//! jitter) after a failure; a local source is checked every few seconds and
//! reloaded when it changes. A good set is published by swapping in a new
//! snapshot; a failed load publishes nothing, so the last good keys stay.
//! The request path never awaits these loops, except a token with an
//! unknown `kid` through `Refetch`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, KeySource, RemoteKeys, RemoteLocation};
use crate::error::chain;
use crate::keys::{self, Fetcher, Fingerprint, Freshness, KeySet};
use crate::metrics::Metrics;
use crate::revocation::Revocations;
use crate::state::{Compiled, Provider, SharedState, Snapshot};

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(300);
/// After this many failed fetches in a row, discovery runs again.
const REDISCOVER_AFTER: u32 = 3;
/// How often local key files and secrets are checked for changes.
const LOCAL_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Owns every write to the shared snapshot.
#[derive(Clone)]
pub(crate) struct Control {
    state: SharedState,
    metrics: Arc<Metrics>,
    /// Every provider's `retired` token is a child of this one.
    shutdown: CancellationToken,
}

/// What a provider's loop starts from.
enum Start {
    Remote(Box<Fetcher>),
    Local(Fingerprint),
}

/// A provider new to the config, with its first keys and how its loop starts.
struct Fresh {
    provider: Arc<Provider>,
    keys: Arc<KeySet>,
    start: Start,
    /// The provider it replaces, when that one fetched the same keys: its
    /// keys verify until this one's first fetch, so changing a provider's
    /// token rules never waits on the identity provider.
    predecessor: Option<Arc<Provider>>,
}

impl Fresh {
    /// The keys to publish it with in `now`: its predecessor's, when it
    /// has one with keys loaded, else its own.
    fn first_keys(&self, now: &Snapshot) -> Arc<KeySet> {
        let inherited = self.predecessor.as_ref().and_then(|old| now.position_of(old)).map(|index| &now.keys[index]);
        match (inherited.filter(|keys| keys.is_loaded()), &self.provider.config.source) {
            (Some(keys), KeySource::Remote(remote)) => Arc::new(keys.with_max_stale(remote.max_stale)),
            _ => self.keys.clone(),
        }
    }
}

/// What a reload did with the providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Unchanged: carried over with their keys and loops.
    pub(crate) kept: usize,
    pub(crate) added: usize,
    pub(crate) retired: usize,
}

impl Control {
    /// Publishes the first snapshot (local keys loaded, remote ones from
    /// `cache_dir` where they are still usable) and starts the key loops.
    pub(crate) fn start(
        config: Arc<Config>,
        shutdown: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Result<(Control, SharedState), ConfigError> {
        let fresh: Vec<Fresh> = (0..config.providers.len())
            .map(|index| fresh_provider(&config, index, &shutdown, &metrics))
            .collect::<Result<_, _>>()?;
        let providers = fresh.iter().map(|f| f.provider.clone()).collect();
        let compiled = Arc::new(Compiled::new(config, providers, None, &metrics)?);
        let keys = fresh.iter().map(|f| f.keys.clone()).collect();
        let state: SharedState = Arc::new(ArcSwap::from_pointee(Snapshot { config: compiled, keys }));
        let control = Control { state: state.clone(), shutdown, metrics };
        control.spawn_loops(fresh);
        control.sync_revocations(None);
        Ok((control, state))
    }

    /// Swaps in `config`, compiled, in one step. Providers whose config is
    /// unchanged keep their keys and loops; changed ones whose keys come
    /// from the same place start with their predecessor's keys; new ones
    /// load local keys first (remote ones verify once fetched); dropped
    /// ones stop. On error nothing changes. Callers serialise reloads.
    pub(crate) fn reload(&self, config: Arc<Config>) -> Result<Applied, ConfigError> {
        let current = self.state.load_full();
        let mut fresh = Vec::new();
        let mut providers = Vec::new();
        for (index, wanted) in config.providers.iter().enumerate() {
            match current.config.providers.iter().find(|p| p.config == *wanted) {
                Some(kept) => providers.push(kept.clone()),
                None => {
                    let mut new = fresh_provider(&config, index, &self.shutdown, &self.metrics)?;
                    // local keys were just loaded; remote ones would wait for a fetch
                    if matches!(wanted.source, KeySource::Remote(_)) {
                        new.predecessor = current.config.providers.iter().find(|p| p.config.same_keys(wanted)).cloned();
                    }
                    providers.push(new.provider.clone());
                    fresh.push(new);
                }
            }
        }
        let compiled = Arc::new(Compiled::new(config, providers, Some(&current.config), &self.metrics)?);
        self.state.rcu(|now| {
            let keys = compiled.providers.iter().map(|provider| match now.position_of(provider) {
                Some(index) => now.keys[index].clone(),
                None => fresh
                    .iter()
                    .find(|f| Arc::ptr_eq(&f.provider, provider))
                    .map(|f| f.first_keys(now))
                    .unwrap_or_default(),
            });
            Snapshot { config: compiled.clone(), keys: keys.collect() }
        });
        for f in fresh.iter().filter(|f| f.predecessor.is_some()) {
            let provider = &f.provider.config.name;
            tracing::info!(provider = %provider, "provider changed, not its keys: they carry over until its first fetch");
        }
        let retired: Vec<&Arc<Provider>> = current
            .config
            .providers
            .iter()
            .filter(|old| !compiled.providers.iter().any(|p| Arc::ptr_eq(p, old)))
            .collect();
        for provider in &retired {
            provider.retired.cancel();
        }
        let applied =
            Applied { kept: compiled.providers.len() - fresh.len(), added: fresh.len(), retired: retired.len() };
        self.spawn_loops(fresh);
        self.sync_revocations(current.config.revocations.as_ref());
        Ok(applied)
    }

    /// Starts the live revocation list's sync loop if it is new, and stops
    /// the one it replaced (`before`, the list of the previous config).
    fn sync_revocations(&self, before: Option<&Arc<Revocations>>) {
        let now = self.state.load().config.revocations.clone();
        let same = |a: &Arc<Revocations>, b: &Arc<Revocations>| Arc::ptr_eq(a, b);
        if let Some(old) = before
            && now.as_ref().is_none_or(|now| !same(now, old))
        {
            old.retired.cancel();
        }
        if let Some(now) = now
            && before.is_none_or(|old| !same(&now, old))
        {
            tokio::spawn(now.sync(self.shutdown.clone()));
        }
    }

    /// The snapshot `start` would publish, without key loops: local keys
    /// and cached remote ones only. Tokens never wait for a load.
    pub(crate) fn offline(config: Arc<Config>) -> Result<SharedState, ConfigError> {
        let (shutdown, metrics) = (CancellationToken::new(), Metrics::new());
        let fresh: Vec<Fresh> = (0..config.providers.len())
            .map(|index| fresh_provider(&config, index, &shutdown, &metrics))
            .collect::<Result<_, _>>()?;
        for f in &fresh {
            f.provider.refetch.completed(None, false);
        }
        let providers = fresh.iter().map(|f| f.provider.clone()).collect();
        let compiled = Arc::new(Compiled::new(config, providers, None, &metrics)?);
        let keys = fresh.into_iter().map(|f| f.keys).collect();
        Ok(Arc::new(ArcSwap::from_pointee(Snapshot { config: compiled, keys })))
    }

    /// Resolves once every remote provider has completed a fetch (good or
    /// bad); local ones were loaded at start.
    pub(crate) async fn first_fetches(&self) {
        loop {
            let providers = &self.state.load().config.providers;
            let all =
                providers.iter().all(|p| !matches!(p.config.source, KeySource::Remote(_)) || p.refetch.loads() > 0);
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resolves once the revocation list, if there is one, has been read
    /// in full (a file list was read at start; a Redis one syncs first).
    pub(crate) async fn first_revocation_sync(&self) {
        loop {
            let revocations = self.state.load().config.revocations.clone();
            if revocations.is_none_or(|list| list.status().1.is_some()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The live snapshot, for readers outside the request path.
    pub(crate) fn state(&self) -> &SharedState {
        &self.state
    }

    fn spawn_loops(&self, fresh: Vec<Fresh>) {
        for Fresh { provider, start, .. } in fresh {
            let control = self.clone();
            match start {
                Start::Remote(fetcher) => tokio::spawn(control.remote_loop(provider, *fetcher)),
                Start::Local(fingerprint) => tokio::spawn(control.local_loop(provider, fingerprint)),
            };
        }
    }

    async fn remote_loop(self, provider: Arc<Provider>, mut fetcher: Fetcher) {
        let KeySource::Remote(remote) = &provider.config.source else {
            return;
        };
        let name = &provider.config.name;
        let mut failures = 0u32;
        let mut early = None;
        loop {
            let outcome = fetch(&mut fetcher, &provider, remote).await;
            let ok = outcome.is_ok();
            provider.metrics.fetched(ok);
            let delay = match outcome {
                Ok((keys, lifetime)) => {
                    failures = 0;
                    tracing::info!(provider = %name, keys = keys.len(), kids = ?keys.kids(), fresh_for = ?lifetime, "keys refreshed");
                    self.publish_keys(&provider, keys);
                    lifetime.mul_f64(0.9)
                }
                Err(error) => {
                    failures += 1;
                    if failures.is_multiple_of(REDISCOVER_AFTER) {
                        fetcher.rediscover();
                    }
                    let retry = with_jitter(backoff(failures)).min(remote.refresh_interval);
                    tracing::warn!(provider = %name, %error, retry_in = ?retry, "key fetch failed; keeping the last good keys");
                    retry
                }
            };
            provider.refetch.completed(early, ok);
            match wait(&provider, delay).await {
                Some(next) => early = next,
                None => return,
            }
        }
    }

    async fn local_loop(self, provider: Arc<Provider>, mut fingerprint: Fingerprint) {
        let name = &provider.config.name;
        while let Some(early) = wait(&provider, LOCAL_CHECK_INTERVAL).await {
            let loaded = keys::load_local(&provider.config.source, &provider.config.algorithms);
            let ok = loaded.is_ok();
            match loaded {
                Ok((keys, latest)) if latest != fingerprint => {
                    fingerprint = latest;
                    tracing::info!(provider = %name, keys = keys.len(), kids = ?keys.kids(), "keys reloaded");
                    self.publish_keys(&provider, keys);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(provider = %name, %error, "keys not reloaded; keeping the last good ones");
                }
            }
            provider.refetch.completed(early, ok);
        }
    }

    /// Swaps in a snapshot with `provider`'s new keys, unless a reload has
    /// dropped it meanwhile.
    fn publish_keys(&self, provider: &Arc<Provider>, keys: KeySet) {
        let keys = Arc::new(keys);
        self.state.rcu(|current| {
            let Some(index) = current.position_of(provider) else {
                return current.clone();
            };
            let mut all = current.keys.clone();
            all[index] = keys.clone();
            Arc::new(Snapshot { config: current.config.clone(), keys: all })
        });
    }
}

/// Sleeps `delay` or until an early fetch is asked for. `None`: the
/// provider is retired (or the gateway stopped); `Some(early)`: the
/// `asked_at` the next load serves, if any.
async fn wait(provider: &Provider, delay: Duration) -> Option<Option<u64>> {
    tokio::select! {
        _ = tokio::time::sleep(delay) => Some(None),
        asked = provider.refetch.asked() => Some(Some(asked)),
        _ = provider.retired.cancelled() => None,
    }
}

/// One fetch, parsed, and saved to `cache_dir` when it is good.
async fn fetch(fetcher: &mut Fetcher, provider: &Provider, remote: &RemoteKeys) -> Result<(KeySet, Duration), String> {
    let fetched = fetcher.fetch().await.map_err(|e| chain(&e))?;
    let fetched_at = SystemTime::now();
    let freshness =
        Freshness::remote(fetched_at, fetched.lifetime, remote.max_stale).ok_or("freshness out of range")?;
    let keys = keys::build_set(&fetched.body, &provider.config.algorithms, false, freshness)?;
    if let Some(dir) = &remote.cache_dir {
        let name = &provider.config.name;
        if let Err(error) =
            keys::store_cached(dir, name, &cache_source(remote), &fetched.body, fetched_at, fetched.lifetime)
        {
            tracing::warn!(provider = %name, %error, "could not write the key cache");
        }
    }
    Ok((keys, fetched.lifetime))
}

/// `config.providers[index]`, made afresh with its first keys.
fn fresh_provider(
    config: &Config,
    index: usize,
    shutdown: &CancellationToken,
    metrics: &Arc<Metrics>,
) -> Result<Fresh, ConfigError> {
    let provider = Arc::new(Provider::new(&config.providers[index], shutdown.child_token(), metrics));
    let (keys, start) = first_keys(config, index, &provider)?;
    Ok(Fresh { provider, keys: Arc::new(keys), start, predecessor: None })
}

/// The key set a provider starts with, and how its loop starts.
fn first_keys(config: &Config, index: usize, provider: &Provider) -> Result<(KeySet, Start), ConfigError> {
    let source = &provider.config.source;
    let error = |reason: String| config.error(&format!("providers[{index}].{}", source.key()), reason);
    match source {
        KeySource::Remote(remote) => {
            let fetcher = Fetcher::new(remote, &provider.config.issuer)
                .map_err(|reason| config.error(&format!("providers[{index}].ca_file"), reason))?;
            Ok((cached_keys(provider, remote).unwrap_or_default(), Start::Remote(Box::new(fetcher))))
        }
        local => {
            let (keys, fingerprint) = keys::load_local(local, &provider.config.algorithms).map_err(error)?;
            Ok((keys, Start::Local(fingerprint)))
        }
    }
}

/// The set saved in `cache_dir`, if it is still within `max_stale`.
fn cached_keys(provider: &Provider, remote: &RemoteKeys) -> Option<KeySet> {
    let name = &provider.config.name;
    let cached = keys::load_cached(remote.cache_dir.as_deref()?, name, &cache_source(remote))?;
    let freshness = Freshness::remote(cached.fetched_at, cached.lifetime, remote.max_stale)?;
    let keys = keys::build_set(&cached.body, &provider.config.algorithms, false, freshness).ok()?;
    if !keys.is_usable(SystemTime::now()) {
        tracing::warn!(provider = %name, "cached keys are older than max_stale: not used");
        return None;
    }
    tracing::info!(provider = %name, keys = keys.len(), "keys loaded from the cache until the first fetch");
    Some(keys)
}

/// What a cache entry must have been fetched from to be used.
fn cache_source(remote: &RemoteKeys) -> String {
    match &remote.location {
        RemoteLocation::JwksUrl(url) | RemoteLocation::Discovery(url) => url.to_string(),
    }
}

/// Everything `start` would load, without starting: what `check` runs.
pub(crate) fn preflight(config: &Config) -> Result<(), ConfigError> {
    let (shutdown, metrics) = (CancellationToken::new(), Metrics::new());
    let fresh: Vec<Fresh> = (0..config.providers.len())
        .map(|index| fresh_provider(config, index, &shutdown, &metrics))
        .collect::<Result<_, _>>()?;
    let providers = fresh.into_iter().map(|f| f.provider).collect();
    Compiled::new(Arc::new(config.clone()), providers, None, &metrics).map(drop)
}

/// 1 s, 2 s, 4 s, ... capped at 5 minutes.
fn backoff(failures: u32) -> Duration {
    FIRST_RETRY.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MAX_RETRY)
}

/// Somewhere in the upper half of `delay`, so gateways that lost their
/// identity provider together do not retry together.
fn with_jitter(delay: Duration) -> Duration {
    delay.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(30), MAX_RETRY);
        for _ in 0..100 {
            let delay = with_jitter(Duration::from_secs(8));
            assert!(delay >= Duration::from_secs(4) && delay <= Duration::from_secs(8), "{delay:?}");
        }
    }
}
