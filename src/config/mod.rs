//! The config pipeline: TOML text -> `ConfigFile` (serde) -> validated `Config`.
//!
//! Everything a user can get wrong is caught here, before anything listens:
//! each error names the file, the key, the line where it can be found, and
//! the reason. A `Config` that exists is one the gateway can run.

mod file;
mod locate;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, Method};

pub use file::AuthMode;
pub(crate) use file::ConfigFile;
use locate::KeyLines;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from, for messages.
    pub origin: String,
    pub server: ServerConfig,
    pub providers: Vec<ProviderConfig>,
    /// In match order: most specific first.
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `None` serves plaintext HTTP (behind a mesh that terminates TLS).
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub issuer: String,
    pub jwks_url: reqwest::Url,
    pub audiences: Vec<String>,
    pub refresh_interval: Duration,
    pub leeway: Duration,
    pub refetch_cooldown: Duration,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub path: String,
    /// Lowercase, without a port.
    pub host: Option<String>,
    pub methods: Option<Vec<Method>>,
    pub upstream: Upstream,
    pub auth: AuthMode,
    pub require_claims: Vec<ClaimRequirement>,
    /// Header name -> claim name.
    pub inject_headers: Vec<(HeaderName, String)>,
    pub forward_token: bool,
    pub upstream_timeout: Duration,
}

/// A claim that must hold every one of `values`.
#[derive(Debug, Clone)]
pub struct ClaimRequirement {
    pub claim: String,
    pub values: Vec<String>,
}

/// An upstream base URL, split so the request path can be appended cheaply.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Empty, or a path without a trailing `/` that prefixes every request path.
    pub base_path: String,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
pub const DEFAULT_REFETCH_COOLDOWN: Duration = Duration::from_secs(10);
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// What is wrong with a config, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// A validation failure before it is placed in the file.
#[derive(Debug)]
pub(crate) struct Invalid {
    pub(crate) key: String,
    pub(crate) reason: String,
}

pub(crate) fn invalid(key: impl Into<String>, reason: impl fmt::Display) -> Invalid {
    Invalid {
        key: key.into(),
        reason: reason.to_string(),
    }
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            file: origin.clone(),
            line: None,
            key: None,
            reason: format!("cannot read: {error}"),
        })?;
        Config::parse(&text, &origin)
    }

    /// Validates config `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, origin, |_| {})
    }

    /// Like `parse`, with a chance to adjust the file before validation
    /// (dev mode fills in the addresses it made).
    pub(crate) fn parse_with(
        text: &str,
        origin: &str,
        adjust: impl FnOnce(&mut ConfigFile),
    ) -> Result<Config, ConfigError> {
        let lines = KeyLines::scan(text);
        let mut file: ConfigFile = toml::from_str(text).map_err(|error| {
            let line = error.span().map(|span| locate::line_at(text, span.start));
            ConfigError {
                file: origin.to_owned(),
                line,
                key: line
                    .and_then(|line| lines.key_at_line(line))
                    .map(str::to_owned),
                reason: error.message().trim().to_owned(),
            }
        })?;
        adjust(&mut file);
        validate::config(file, origin).map_err(|Invalid { key, reason }| ConfigError {
            file: origin.to_owned(),
            line: lines.line_of(&key),
            key: Some(key),
            reason,
        })
    }

    /// A human summary of what was understood, routes in match order.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let scheme = if self.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        out.push_str(&format!("listen {scheme}://{}\n", self.server.listen));
        for p in &self.providers {
            out.push_str(&format!(
                "provider {}: issuer {}, jwks {}, audiences [{}], refresh every {}\n",
                p.name,
                p.issuer,
                p.jwks_url,
                p.audiences.join(", "),
                humantime::format_duration(p.refresh_interval),
            ));
        }
        for r in &self.routes {
            out.push_str(&format!("route {}: {}\n", r.name, r.describe()));
        }
        out
    }
}

impl RouteConfig {
    fn describe(&self) -> String {
        let host = self.host.as_deref().unwrap_or("*");
        let methods = match &self.methods {
            Some(methods) => methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(","),
            None => "any method".to_owned(),
        };
        let mut line = format!(
            "{methods} {host}{} -> {} (auth {}",
            self.path,
            self.upstream,
            self.auth.as_str()
        );
        for requirement in &self.require_claims {
            line.push_str(&format!(
                ", require {}=[{}]",
                requirement.claim,
                requirement.values.join(",")
            ));
        }
        for (header, claim) in &self.inject_headers {
            line.push_str(&format!(", {header} <- {claim}"));
        }
        line.push(')');
        line
    }
}
