//! Reloading without a restart: the config file, and the TLS files it names.
//!
//! Both are polled by content hash every `server.watch_interval`, which
//! catches in-place writes, renames and the symlink swaps Kubernetes and
//! cert-manager use alike; `SIGHUP` (through `Reloader::reload`) forces a
//! reload. A new config is loaded, validated and compiled in full before
//! anything is swapped, so a bad file only logs its error while the old
//! config keeps serving. Connections and requests already under way keep
//! what they started with.
//!
//! A failed reload is not final: it may have failed only because a file the
//! new config names was not there yet (a half-swapped certificate pair, a
//! key file the kubelet has not synced). So it is tried again whenever the
//! config file or any file it names changes, and TLS files that failed to
//! load are tried again every tick (a certificate may become valid with
//! time alone). An error is logged again only when it changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::{AdminConfig, Config, ConfigError, KeySource, LogConfig, Tls};
use crate::control::Control;
use crate::metrics::Metrics;
use crate::server::Serving;

/// How often to look again at whether watching was turned on, when it is off.
const UNWATCHED_RECHECK: Duration = Duration::from_secs(2);

/// Reloads the gateway's config; cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: the config came from text, and there is nothing to re-read.
    path: Option<PathBuf>,
    control: Control,
    serving: Arc<ArcSwap<Serving>>,
    metrics: Arc<Metrics>,
    bound: Bound,
    /// What the files held when last looked at; held while reloading, so
    /// reloads never overlap.
    seen: Mutex<Seen>,
}

/// What only a restart changes.
struct Bound {
    listen: std::net::SocketAddr,
    max_connections: usize,
    max_connections_per_client: Option<usize>,
    admin: Option<AdminConfig>,
    /// Only `format` and `level` are bound: `include_sub` is read per request.
    log: LogConfig,
    workers: Option<usize>,
}

#[derive(Default)]
struct Seen {
    config: Option<String>,
    tls: Vec<Option<String>>,
    /// The last config reload failed.
    failed: Option<Failed>,
    /// Why the running config's TLS files last failed to load, until they do.
    tls_failed: Option<String>,
}

/// A config reload that failed, and what it read.
struct Failed {
    error: String,
    /// Every file the new config names, hashed before the attempt (`None`
    /// where it could not be read), so a change after it is seen.
    inputs: Vec<(PathBuf, Option<String>)>,
}

impl Failed {
    fn inputs_changed(&self) -> bool {
        self.inputs.iter().any(|(path, hash)| file_hash(path) != *hash)
    }
}

impl Reloader {
    pub(crate) fn new(
        config: &Config,
        control: Control,
        serving: Arc<ArcSwap<Serving>>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        let seen = Seen {
            config: config.path.as_deref().and_then(file_hash),
            tls: config.server.tls.as_ref().map(tls_hashes).unwrap_or_default(),
            ..Seen::default()
        };
        let inner = Inner {
            path: config.path.clone(),
            control,
            serving,
            metrics,
            bound: Bound::of(config),
            seen: Mutex::new(seen),
        };
        Reloader { inner: Arc::new(inner) }
    }

    /// Re-reads the config file (and with it every TLS file) now, as
    /// `SIGHUP` does. On error the running config stays.
    pub async fn reload(&self) -> Result<(), ConfigError> {
        let inner = self.inner.clone();
        let outcome = tokio::task::spawn_blocking(move || inner.reload_config());
        let origin = || self.inner.control.state().load().config.source.origin.clone();
        outcome.await.unwrap_or_else(|panic| Err(ConfigError::whole_file(origin(), format!("reload failed: {panic}"))))
    }

    /// Polls the files until `stop`, reloading what changed.
    pub(crate) async fn watch(self, stop: CancellationToken) {
        if self.inner.path.is_none() {
            return;
        }
        loop {
            let interval = self.inner.control.state().load().config.server.lifecycle.watch_interval;
            tokio::select! {
                () = tokio::time::sleep(interval.unwrap_or(UNWATCHED_RECHECK)) => {}
                () = stop.cancelled() => return,
            }
            if interval.is_some() {
                let inner = self.inner.clone();
                let _ = tokio::task::spawn_blocking(move || inner.check()).await;
            }
        }
    }
}

impl Inner {
    /// Reloads whatever changed since last seen, and retries what failed.
    fn check(&self) {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let config_hash = self.path.as_deref().and_then(file_hash);
        let changed = config_hash != seen.config;
        let retry = !changed && seen.failed.as_ref().is_some_and(Failed::inputs_changed);
        if changed || retry {
            seen.config = config_hash;
            let _ = self.apply_config(&mut seen, retry);
            return;
        }
        let snapshot = self.control.state().load();
        let Some(tls) = &snapshot.config.server.tls else {
            return;
        };
        let tls_hashes = tls_hashes(tls);
        if tls_hashes == seen.tls && seen.tls_failed.is_none() {
            return;
        }
        seen.tls = tls_hashes;
        match Serving::new(&snapshot.config.source) {
            Ok(serving) => {
                self.serving.store(Arc::new(serving));
                self.metrics.certificate_reloads.record(true);
                seen.tls_failed = None;
                tracing::info!("TLS certificates reloaded: new connections use them");
            }
            Err(error) => {
                let reason = error.to_string();
                if seen.tls_failed.as_ref() != Some(&reason) {
                    self.metrics.certificate_reloads.record(false);
                    tracing::error!(%error, "TLS certificates not reloaded; the old ones stay in use");
                }
                seen.tls_failed = Some(reason);
            }
        }
    }

    fn reload_config(&self) -> Result<(), ConfigError> {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.config = self.path.as_deref().and_then(file_hash);
        self.apply_config(&mut seen, false)
    }

    /// Loads, validates and swaps in the config file, logging the result;
    /// a `retry` that fails as the last attempt did is not logged again.
    fn apply_config(&self, seen: &mut Seen, retry: bool) -> Result<(), ConfigError> {
        let Some(path) = self.path.as_deref() else {
            let origin = self.control.state().load().config.source.origin.clone();
            return Err(ConfigError::whole_file(origin, "was not loaded from a file: nothing to reload".into()));
        };
        let config = Config::load(path).map(Arc::new);
        let inputs = config.as_deref().map(input_hashes).unwrap_or_default();
        let result = config.and_then(|config| self.swap_in(config, seen));
        self.metrics.config_reloads.record(result.is_ok());
        match &result {
            Ok(()) => seen.failed = None,
            Err(error) => {
                let reason = error.to_string();
                if retry && seen.failed.as_ref().is_some_and(|failed| failed.error == reason) {
                    tracing::debug!(%error, "config reload retried: same error");
                } else {
                    tracing::error!(%error, "config not reloaded; the old one keeps serving");
                }
                seen.failed = Some(Failed { error: reason, inputs });
            }
        }
        result
    }

    fn swap_in(&self, config: Arc<Config>, seen: &mut Seen) -> Result<(), ConfigError> {
        // hashed before reading, so a change in between is seen next time
        let tls = config.server.tls.as_ref().map(tls_hashes).unwrap_or_default();
        let serving = Serving::new(&config)?;
        let applied = self.control.reload(config.clone())?;
        self.serving.store(Arc::new(serving));
        if tls != seen.tls {
            self.metrics.certificate_reloads.record(true);
            seen.tls = tls;
        }
        seen.tls_failed = None;
        for key in self.bound.needs_restart(&config) {
            tracing::warn!(key, "changed in the config, but applies only after a restart");
        }
        tracing::info!(
            config = %config.origin,
            sha256 = %config.sha256,
            routes = config.routes.len(),
            providers_kept = applied.kept,
            providers_added = applied.added,
            providers_retired = applied.retired,
            "config reloaded"
        );
        Ok(())
    }
}

impl Bound {
    fn of(config: &Config) -> Bound {
        Bound {
            listen: config.server.listen,
            max_connections: config.server.limits.max_connections,
            max_connections_per_client: config.server.limits.max_connections_per_client,
            admin: config.admin.clone(),
            log: config.log.clone(),
            workers: config.server.tuning.workers,
        }
    }

    /// The keys whose new values a reload cannot apply.
    fn needs_restart(&self, config: &Config) -> Vec<&'static str> {
        let limits = &config.server.limits;
        let changed = [
            ("server.listen", self.listen != config.server.listen),
            ("server.max_connections", self.max_connections != limits.max_connections),
            ("server.max_connections_per_client", self.max_connections_per_client != limits.max_connections_per_client),
            ("admin.listen", self.admin.as_ref().map(|a| a.listen) != config.admin.as_ref().map(|a| a.listen)),
            ("log.format", self.log.format != config.log.format),
            ("log.level", self.log.level != config.log.level),
            ("server.workers", self.workers != config.server.tuning.workers),
        ];
        changed.into_iter().filter(|(_, changed)| *changed).map(|(key, _)| key).collect()
    }
}

/// Every file the TLS setup reads, hashed in a fixed order.
fn tls_hashes(tls: &Tls) -> Vec<Option<String>> {
    tls_files(tls).map(file_hash).collect()
}

fn tls_files(tls: &Tls) -> impl Iterator<Item = &Path> {
    let named = tls.by_name.iter().map(|(_, files)| files);
    let pairs = std::iter::once(&tls.default).chain(named).flat_map(|files| [&files.cert, &files.key]);
    pairs.chain(tls.client_auth.iter().map(|auth| &auth.ca)).map(PathBuf::as_path)
}

/// Every file `config` names (TLS files, local keys, CA bundles), hashed.
fn input_hashes(config: &Config) -> Vec<(PathBuf, Option<String>)> {
    let tls = config.server.tls.iter().flat_map(tls_files);
    let keys = config.providers.iter().filter_map(|provider| match &provider.source {
        KeySource::JwksFile(path) | KeySource::PublicKeyFile(path) | KeySource::SecretFile(path) => Some(path),
        KeySource::Remote(remote) => remote.ca_file.as_ref(),
        KeySource::SecretEnv(_) => None,
    });
    let upstream_cas = config.routes.iter().filter_map(|route| route.upstream_ca_file.as_ref());
    let files = tls.chain(keys.chain(upstream_cas).map(PathBuf::as_path));
    files.map(|path| (path.to_owned(), file_hash(path))).collect()
}

/// The SHA-256 of a file's content (through any symlinks), if it can be read.
fn file_hash(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|bytes| crate::config::sha256_hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(log: &str) -> Config {
        let text = format!(
            "[[providers]]\nname = \"idp\"\nissuer = \"https://idp.test\"\njwks_url = \"https://idp.test/jwks\"\n\
             audiences = [\"api\"]\n[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"http://u\"\n[log]\n{log}\n"
        );
        Config::parse(&text, "t.toml").unwrap()
    }

    #[test]
    fn only_the_log_format_and_level_need_a_restart() {
        let running = Bound::of(&config("include_sub = false"));
        assert!(running.needs_restart(&config("include_sub = true")).is_empty(), "include_sub applies live");
        assert_eq!(running.needs_restart(&config("level = \"debug\"")), ["log.level"]);
        assert_eq!(running.needs_restart(&config("format = \"json\"")), ["log.format"]);
    }
}
