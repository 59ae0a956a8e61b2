//! `[revocation]` -> `RevocationConfig`: one backend with its own settings,
//! and how fresh the local copy of the list must be.

use std::time::Duration;

use super::file::{RevocationBackendName, RevocationFile};
use super::validate::{DAY, YEAR, within};
use super::*;

pub const DEFAULT_KEY_PREFIX: &str = "portcullis:";
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

pub(super) fn revocation(file: RevocationFile) -> Result<RevocationConfig, Invalid> {
    let key = |name: &str| format!("revocation.{name}");
    let backend = match file.backend {
        RevocationBackendName::File => {
            let redis_only = [("url", file.url.is_some()), ("key_prefix", file.key_prefix.is_some())];
            if let Some((name, _)) = redis_only.iter().find(|(_, set)| *set) {
                return Err(invalid(key(name), "applies to backend = \"redis\" only"));
            }
            match file.file {
                Some(path) if !path.as_os_str().is_empty() => RevocationBackend::File(path),
                _ => return Err(invalid(key("file"), "backend = \"file\" needs the path of the revocation list")),
            }
        }
        RevocationBackendName::Redis => {
            if file.file.is_some() {
                return Err(invalid(key("file"), "applies to backend = \"file\" only"));
            }
            let Some(url) = file.url else {
                return Err(invalid(key("url"), "backend = \"redis\" needs url, like \"redis://127.0.0.1:6379\""));
            };
            redis_url(&key("url"), &url)?;
            let key_prefix = file.key_prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
            // the prefix is a SCAN pattern too: glob characters would match other keys
            if key_prefix.chars().any(|c| c.is_whitespace() || c.is_control() || "*?[]\\".contains(c)) {
                return Err(invalid(
                    key("key_prefix"),
                    "no spaces, control characters or glob characters (* ? [ ] \\)",
                ));
            }
            RevocationBackend::Redis { url, key_prefix }
        }
    };
    let resync_interval = within(
        &key("resync_interval"),
        file.resync_interval,
        DEFAULT_RESYNC_INTERVAL,
        Duration::from_millis(10),
        Duration::from_secs(3600),
    )?;
    let max_staleness =
        within(&key("max_staleness"), file.max_staleness, DEFAULT_MAX_STALENESS, Duration::from_millis(100), DAY)?;
    if max_staleness <= resync_interval {
        return Err(invalid(key("max_staleness"), "must be longer than resync_interval, or every resync is late"));
    }
    let max_token_lifetime = within(
        &key("max_token_lifetime"),
        file.max_token_lifetime,
        DEFAULT_MAX_TOKEN_LIFETIME,
        Duration::from_secs(1),
        YEAR,
    )?;
    Ok(RevocationConfig {
        backend,
        resync_interval,
        max_staleness,
        fail_mode: file.fail_mode.unwrap_or(FailMode::Closed),
        max_token_lifetime,
        // the largest leeway any provider may have, not the largest one has
        // now: raising a leeway later must not let a revoked token through
        // in the gap between its old and new grace
        expiry_grace: super::provider::MAX_LEEWAY,
    })
}

/// `redis://[:password@]host[:port][/db]`: plaintext, as the crate is built.
fn redis_url(key: &str, url: &str) -> Result<(), Invalid> {
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(key, format!("{url:?} is not a URL: {e}")))?;
    if parsed.scheme() != "redis" || parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid(key, format!("{url:?} must be redis://host[:port][/db]")));
    }
    redis::Client::open(url).map_err(|e| invalid(key, format!("{url:?}: {e}")))?;
    Ok(())
}
