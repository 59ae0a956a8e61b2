//! `[[providers]]` -> `ProviderConfig`: one key source, the algorithms its
//! keys may verify, and the rules every token of the provider must meet.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};

use super::file::ProviderFile;
use super::validate::{DAY, YEAR, non_empty, within};
use super::*;
use crate::token::media_type;

pub(super) const MAX_LEEWAY: Duration = Duration::from_secs(300);

pub(super) fn provider(i: usize, file: ProviderFile) -> Result<ProviderConfig, Invalid> {
    let key = |name: &str| format!("providers[{i}].{name}");
    non_empty(&key("name"), &file.name)?;
    if !file.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(invalid(key("name"), "use letters, digits, '-', '_' and '.' only"));
    }
    non_empty(&key("issuer"), &file.issuer)?;
    if file.audiences.is_empty() || file.audiences.iter().any(String::is_empty) {
        return Err(invalid(
            key("audiences"),
            "list the audiences this gateway accepts (the token's `aud` must contain one)",
        ));
    }
    let source = source(i, &file)?;
    let algorithms = algorithms(&key("algorithms"), file.algorithms.as_deref(), &source)?;
    let leeway = file.leeway.unwrap_or(DEFAULT_LEEWAY);
    if leeway > MAX_LEEWAY {
        return Err(invalid(key("leeway"), "more than 5m of clock skew would accept long-expired tokens"));
    }
    let required_typ = match file.required_typ {
        Some(typ) if typ.trim().is_empty() => {
            return Err(invalid(key("required_typ"), "must not be empty"));
        }
        Some(typ) => Some(media_type(&typ)),
        None => None,
    };
    let max_token_age = match file.max_token_age {
        Some(age) => Some(within(&key("max_token_age"), Some(age), age, Duration::from_secs(1), YEAR)?),
        None => None,
    };
    Ok(ProviderConfig {
        refetch_cooldown: within(
            &key("refetch_cooldown"),
            file.refetch_cooldown,
            DEFAULT_REFETCH_COOLDOWN,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?,
        name: file.name,
        issuer: file.issuer,
        audiences: file.audiences,
        algorithms,
        source,
        leeway,
        max_token_age,
        required_typ,
        revocation: file.revocation.unwrap_or(false),
    })
}

impl ProviderConfig {
    /// Whether `other` loads the very keys this one does, pinned to the
    /// same algorithms: the same issuer (discovery checks it), source,
    /// trusted CAs and size cap. What differs (token rules, refresh timing,
    /// `max_stale`) does not change which keys verify, so a provider
    /// replaced by such a change can start from its predecessor's keys.
    pub(crate) fn same_keys(&self, other: &ProviderConfig) -> bool {
        let same_source = match (&self.source, &other.source) {
            (KeySource::Remote(mine), KeySource::Remote(theirs)) => {
                mine.location == theirs.location && mine.ca_file == theirs.ca_file && mine.max_size == theirs.max_size
            }
            (mine, theirs) => mine == theirs,
        };
        same_source && self.issuer == other.issuer && self.algorithms == other.algorithms
    }
}

/// The one key source the entry names, with its settings.
fn source(i: usize, file: &ProviderFile) -> Result<KeySource, Invalid> {
    let key = |name: &str| format!("providers[{i}].{name}");
    let named: Vec<&str> = [
        ("jwks_url", file.jwks_url.is_some()),
        ("discovery", file.discovery == Some(true)),
        ("jwks_file", file.jwks_file.is_some()),
        ("public_key_file", file.public_key_file.is_some()),
        ("secret_env", file.secret_env.is_some()),
        ("secret_file", file.secret_file.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    let source = match named.as_slice() {
        [] => {
            return Err(invalid(
                format!("providers[{i}]"),
                "name where keys come from: jwks_url, discovery = true, jwks_file, public_key_file, secret_env or secret_file",
            ));
        }
        [_, second, ..] => {
            return Err(invalid(key(second), format!("set only one key source, not {}", named.join(" and "))));
        }
        ["jwks_url"] => {
            let url = file.jwks_url.as_deref().unwrap_or_default();
            let location = RemoteLocation::JwksUrl(remote_url(&key("jwks_url"), url)?);
            KeySource::Remote(Box::new(remote(i, file, location)?))
        }
        ["discovery"] => {
            let url = format!("{}/.well-known/openid-configuration", file.issuer.trim_end_matches('/'));
            let url = remote_url(&key("issuer"), &url)
                .map_err(|e| invalid(e.key, format!("discovery needs an issuer URL: {}", e.reason)))?;
            KeySource::Remote(Box::new(remote(i, file, RemoteLocation::Discovery(url))?))
        }
        ["jwks_file"] => KeySource::JwksFile(file.jwks_file.clone().unwrap_or_default()),
        ["public_key_file"] => KeySource::PublicKeyFile(file.public_key_file.clone().unwrap_or_default()),
        ["secret_env"] => KeySource::SecretEnv(file.secret_env.clone().unwrap_or_default()),
        _ => KeySource::SecretFile(file.secret_file.clone().unwrap_or_default()),
    };
    if !matches!(source, KeySource::Remote(_)) {
        refuse_remote_settings(i, file, source.key())?;
    }
    Ok(source)
}

fn remote(i: usize, file: &ProviderFile, location: RemoteLocation) -> Result<RemoteKeys, Invalid> {
    let key = |name: &str| format!("providers[{i}].{name}");
    let refresh = |name: &str, value, default| within(&key(name), value, default, Duration::from_millis(100), 7 * DAY);
    let min_refresh = refresh("min_refresh", file.min_refresh, DEFAULT_MIN_REFRESH)?;
    let max_refresh = refresh("max_refresh", file.max_refresh, DEFAULT_MAX_REFRESH)?;
    if min_refresh > max_refresh {
        return Err(invalid(key("max_refresh"), "must not be shorter than min_refresh"));
    }
    let max_size = file.max_jwks_size.map_or(DEFAULT_MAX_JWKS_SIZE, |size| size.as_u64());
    if max_size < 1024 {
        return Err(invalid(key("max_jwks_size"), "must be at least 1 KiB"));
    }
    Ok(RemoteKeys {
        location,
        refresh_interval: refresh("refresh_interval", file.refresh_interval, DEFAULT_REFRESH_INTERVAL)?,
        min_refresh,
        max_refresh,
        fetch_timeout: within(
            &key("fetch_timeout"),
            file.fetch_timeout,
            DEFAULT_FETCH_TIMEOUT,
            Duration::from_millis(10),
            Duration::from_secs(300),
        )?,
        max_size,
        ca_file: file.ca_file.clone(),
        max_stale: within(&key("max_stale"), file.max_stale, DEFAULT_MAX_STALE, Duration::ZERO, YEAR)?,
        cache_dir: file.cache_dir.clone(),
    })
}

/// Settings that only mean something for key sets fetched over HTTP.
fn refuse_remote_settings(i: usize, file: &ProviderFile, source: &str) -> Result<(), Invalid> {
    let set = [
        ("refresh_interval", file.refresh_interval.is_some()),
        ("min_refresh", file.min_refresh.is_some()),
        ("max_refresh", file.max_refresh.is_some()),
        ("fetch_timeout", file.fetch_timeout.is_some()),
        ("max_jwks_size", file.max_jwks_size.is_some()),
        ("ca_file", file.ca_file.is_some()),
        ("max_stale", file.max_stale.is_some()),
        ("cache_dir", file.cache_dir.is_some()),
    ];
    match set.iter().find(|(_, set)| *set) {
        Some((name, _)) => Err(invalid(
            format!("providers[{i}].{name}"),
            format!("applies to jwks_url and discovery only, not {source}"),
        )),
        None => Ok(()),
    }
}

/// An http(s) URL; plain http is allowed with a warning unless loopback.
fn remote_url(key: &str, text: &str) -> Result<reqwest::Url, Invalid> {
    let url = reqwest::Url::parse(text).map_err(|e| invalid(key, format!("{text:?} is not a URL: {e}")))?;
    let Some(host) = url.host_str() else {
        return Err(invalid(key, format!("{text:?} has no host")));
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => tracing::warn!(key, url = text, "JWKS is fetched over plain http: keys can be forged in transit"),
        other => {
            return Err(invalid(key, format!("scheme {other:?} is not http or https")));
        }
    }
    Ok(url)
}

/// The algorithms keys may verify: HMAC for secrets only, public-key
/// algorithms for everything else (a JWKS file may hold both).
fn algorithms(key: &str, names: Option<&[String]>, source: &KeySource) -> Result<Vec<Algorithm>, Invalid> {
    let secret = matches!(source, KeySource::SecretEnv(_) | KeySource::SecretFile(_));
    let Some(names) = names else {
        return Ok(vec![if secret { Algorithm::HS256 } else { Algorithm::RS256 }]);
    };
    if names.is_empty() {
        return Err(invalid(key, "list at least one algorithm"));
    }
    let mut algorithms = Vec::new();
    for name in names {
        let algorithm = Algorithm::from_str(name).map_err(|_| {
            invalid(
                key,
                format!("{name:?} is not one of RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512"),
            )
        })?;
        let hmac = algorithm.family() == AlgorithmFamily::Hmac;
        if secret && !hmac {
            return Err(invalid(key, format!("a shared secret verifies HS256/384/512 only, not {name}")));
        }
        if hmac && matches!(source, KeySource::Remote(_) | KeySource::PublicKeyFile(_)) {
            return Err(invalid(key, format!("{name} needs a shared secret (secret_env, secret_file or a jwks_file)")));
        }
        if !algorithms.contains(&algorithm) {
            algorithms.push(algorithm);
        }
    }
    Ok(algorithms)
}
