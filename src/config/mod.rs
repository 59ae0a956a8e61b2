//! The config pipeline: TOML text -> `ConfigFile` (serde) -> validated `Config`.
//!
//! Everything a user can get wrong is caught here, before anything listens:
//! each error names the file, the key, the line where it can be found, and
//! the reason. A `Config` that exists is one the gateway can run.

mod file;
mod locate;
mod provider;
mod redact;
mod revocation;
mod server;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, Method};
use ipnet::IpNet;
use jsonwebtoken::Algorithm;

pub(crate) use file::ConfigFile;
pub use file::{AuthMode, ClientAuth, FailMode, LogFormat, PathMatch, RouteMode, UpstreamProtocol};
use locate::KeyLines;
pub(crate) use redact::sha256_hex;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from, for messages.
    pub origin: String,
    /// The file it was loaded from, watched for changes; `None` for a
    /// config made from text (dev mode, tests).
    pub path: Option<PathBuf>,
    /// The SHA-256 of the text, in hex (what `sha256sum` prints).
    pub sha256: String,
    pub server: ServerConfig,
    pub providers: Vec<ProviderConfig>,
    /// In match order: most specific first.
    pub routes: Vec<RouteConfig>,
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    /// `None`: no token is checked against a revocation list.
    pub revocation: Option<RevocationConfig>,
    /// Where each key was written, for errors found after validation.
    lines: Arc<KeyLines>,
    /// The file as written (after dev mode's changes), as JSON, with
    /// credentials in URLs redacted: what the admin listener shows.
    redacted: Arc<serde_json::Value>,
}

/// The admin listener (plaintext, kept off the public one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// The bearer token `POST /revocations` demands, read from this file
    /// on each call (so it can be rotated); `None`: no such endpoint.
    pub token_file: Option<PathBuf>,
}

/// The revocation list: where it is kept and how fresh its local copy must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationConfig {
    pub backend: RevocationBackend,
    /// How often the backend is read in full (the file polled, Redis scanned).
    pub resync_interval: Duration,
    /// A local copy older than this is stale: `fail_mode` decides.
    pub max_staleness: Duration,
    pub fail_mode: FailMode,
    /// How long a `sub` cut-off is kept after its `before` time: the longest
    /// lifetime of a token it must deny.
    pub max_token_lifetime: Duration,
    /// How long a `jti` or `sid` entry is kept past the token's `exp`: the
    /// largest `leeway` a provider may have (a provider accepts a token
    /// that long past its `exp`, and leeways can be raised by a reload).
    pub expiry_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationBackend {
    /// A TOML (or, named `*.json`, JSON) file, polled for changes.
    File(PathBuf),
    /// Redis: keys under `key_prefix`, and a pub/sub channel.
    Redis { url: String, key_prefix: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter: `info`, or `portcullis=debug,hyper=warn`.
    pub level: String,
    /// The access log names the token's `sub` (it is personal data: off by default).
    pub include_sub: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".into(), include_sub: false }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `None` serves plaintext HTTP (behind a mesh that terminates TLS).
    pub tls: Option<Tls>,
    /// Peers whose `X-Forwarded-*` are believed (and appended to).
    pub trusted_proxies: Vec<IpNet>,
    /// Removed from every request.
    pub strip_headers: Vec<HeaderName>,
    pub limits: Limits,
    pub lifecycle: Lifecycle,
    pub tuning: Tuning,
}

/// How the process uses the machine; both need a restart to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// Runtime worker threads; `None`: one per core.
    pub workers: Option<usize>,
    /// Verified tokens remembered; 0 verifies every request from scratch.
    pub token_cache_size: u64,
}

/// What one client may take of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The whole request head (431 beyond).
    pub max_header_size: usize,
    pub max_headers: usize,
    /// The request target (414 beyond).
    pub max_uri_size: usize,
    /// From the first byte of a request head to its last.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight.
    pub idle_timeout: Duration,
    /// A request body that sends nothing for this long is aborted.
    pub body_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    /// New connections beyond this are closed at once.
    pub max_connections: usize,
    /// The same, per client address; `None`: no such limit.
    pub max_connections_per_client: Option<usize>,
    /// Per HTTP/2 connection.
    pub max_concurrent_streams: u32,
}

/// What the gateway does over time rather than per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// How long in-flight requests may take to finish at shutdown.
    pub shutdown_timeout: Duration,
    /// How often the config and TLS files are checked for changes; `None`:
    /// only `SIGHUP` reloads.
    pub watch_interval: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The certificates the server presents, and what it asks of clients.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// For clients whose SNI names no listed certificate (or send none).
    pub default: TlsFiles,
    /// Chosen by SNI: exact names and `*.suffix` wildcards, lowercase.
    pub by_name: Vec<(Vec<String>, TlsFiles)>,
    pub client_auth: Option<ClientCertAuth>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientCertAuth {
    /// The CA bundle client certificates must chain to.
    pub ca: PathBuf,
    pub required: bool,
}

/// What of a verified client certificate a header can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertField {
    /// The subject DN, as RFC 4514 writes it.
    Subject,
    /// The subject alternative names: `DNS:...`, `URI:...`, `IP:...`, `email:...`.
    Sans,
    /// The SHA-256 of the certificate (DER), in hex.
    Sha256,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    /// What a key of this provider may verify, unless its JWK pins one.
    pub algorithms: Vec<Algorithm>,
    pub source: KeySource,
    pub leeway: Duration,
    pub refetch_cooldown: Duration,
    pub max_token_age: Option<Duration>,
    /// Normalised: lowercase, without an `application/` prefix.
    pub required_typ: Option<String>,
    /// Its tokens are checked against the revocation list on every route.
    pub revocation: bool,
}

/// Where a provider's keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    Remote(Box<RemoteKeys>),
    JwksFile(PathBuf),
    PublicKeyFile(PathBuf),
    SecretEnv(String),
    SecretFile(PathBuf),
}

impl KeySource {
    /// The config key that names this source, for messages.
    pub fn key(&self) -> &'static str {
        match self {
            KeySource::Remote(remote) => match remote.location {
                RemoteLocation::JwksUrl(_) => "jwks_url",
                RemoteLocation::Discovery(_) => "discovery",
            },
            KeySource::JwksFile(_) => "jwks_file",
            KeySource::PublicKeyFile(_) => "public_key_file",
            KeySource::SecretEnv(_) => "secret_env",
            KeySource::SecretFile(_) => "secret_file",
        }
    }
}

/// A key set fetched over HTTP, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteKeys {
    pub location: RemoteLocation,
    /// Freshness when the response says nothing (no `Cache-Control`/`Expires`).
    pub refresh_interval: Duration,
    /// Bounds for freshness taken from the response.
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    pub fetch_timeout: Duration,
    pub max_size: u64,
    pub ca_file: Option<PathBuf>,
    /// How long past its freshness the last good set may still verify.
    pub max_stale: Duration,
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RemoteLocation {
    JwksUrl(reqwest::Url),
    /// The OpenID configuration document's URL.
    Discovery(reqwest::Url),
}

/// Where a route looks for the token, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// The named cookie.
    Cookie(String),
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Its position in the file (routes are kept in match order), for messages.
    pub index: usize,
    pub name: String,
    pub path: String,
    /// Lowercase, without a port.
    pub host: Option<String>,
    pub methods: Option<Vec<Method>>,
    pub upstream: Upstream,
    pub auth: AuthMode,
    /// Whether denials are applied or only reported.
    pub mode: RouteMode,
    /// Indices into `Config::providers`; `None` accepts every provider.
    pub providers: Option<Vec<usize>>,
    pub token_sources: Vec<TokenSource>,
    pub require_claims: Vec<ClaimRequirement>,
    /// Header name -> claim name.
    pub inject_headers: Vec<(HeaderName, String)>,
    pub forward_token: bool,
    /// Send the client's `Host` upstream (else the upstream's own).
    pub preserve_host: bool,
    pub path_match: PathMatch,
    /// WebSocket upgrades are passed through.
    pub websocket: bool,
    /// Request bodies larger than this are refused (413); `None`: no limit.
    pub max_body: Option<u64>,
    pub strip_headers: Vec<HeaderName>,
    pub require_client_cert: bool,
    pub inject_client_cert: Vec<(HeaderName, ClientCertField)>,
    /// Trust only these CAs for an https upstream (else the system's).
    pub upstream_ca_file: Option<PathBuf>,
    pub upstream_protocol: UpstreamProtocol,
    pub upstream_timeout: Duration,
    /// Every token this route accepts is checked against the revocation
    /// list, whatever its provider says.
    pub revocation: bool,
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
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(60 * 60);
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_JWKS_SIZE: u64 = 1024 * 1024;
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(24 * 60 * 60);
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

impl ConfigError {
    /// An error about the file as a whole.
    pub(crate) fn whole_file(file: String, reason: String) -> ConfigError {
        ConfigError { file, line: None, key: None, reason }
    }
}

/// A validation failure before it is placed in the file.
#[derive(Debug)]
pub(crate) struct Invalid {
    pub(crate) key: String,
    pub(crate) reason: String,
}

pub(crate) fn invalid(key: impl Into<String>, reason: impl fmt::Display) -> Invalid {
    Invalid { key: key.into(), reason: reason.to_string() }
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::whole_file(origin.clone(), format!("cannot read: {error}")))?;
        let mut config = Config::parse(&text, &origin)?;
        config.path = Some(path.to_owned());
        Ok(config)
    }

    /// Validates config `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let lines = KeyLines::scan(text);
        let file = parse_file(text, origin, &lines)?;
        let lines = Arc::new(lines);
        let redacted = Arc::new(redact::file(&file));
        let mut config = validate::config(file, origin, lines.clone()).map_err(|Invalid { key, reason }| {
            ConfigError { file: origin.to_owned(), line: lines.line_of(&key), key: Some(key), reason }
        })?;
        config.sha256 = redact::sha256_hex(text.as_bytes());
        config.redacted = redacted;
        Ok(config)
    }

    /// `text` changed by `adjust` and written back as TOML, comments lost
    /// (dev mode fills in the addresses it made).
    pub(crate) fn rewrite(
        text: &str,
        origin: &str,
        adjust: impl FnOnce(&mut ConfigFile),
    ) -> Result<String, ConfigError> {
        let mut file = parse_file(text, origin, &KeyLines::scan(text))?;
        adjust(&mut file);
        toml::to_string(&file).map_err(|error| ConfigError::whole_file(origin.to_owned(), error.to_string()))
    }

    /// The file as written, credentials redacted, as JSON.
    pub fn redacted(&self) -> &serde_json::Value {
        &self.redacted
    }

    /// An error about `key` found after validation (TLS files, say).
    pub(crate) fn error(&self, key: &str, reason: String) -> ConfigError {
        ConfigError { file: self.origin.clone(), line: self.lines.line_of(key), key: Some(key.to_owned()), reason }
    }

    /// A human summary of what was understood, routes in match order.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let scheme = if self.server.tls.is_some() { "https" } else { "http" };
        out.push_str(&format!("listen {scheme}://{}\n", self.server.listen));
        for p in &self.providers {
            let algorithms: Vec<String> = p.algorithms.iter().map(|a| format!("{a:?}")).collect();
            out.push_str(&format!(
                "provider {}: issuer {}, keys from {}, algorithms [{}], audiences [{}]\n",
                p.name,
                p.issuer,
                p.source,
                algorithms.join(", "),
                p.audiences.join(", "),
            ));
        }
        if let Some(revocation) = &self.revocation {
            let backend = match &revocation.backend {
                RevocationBackend::File(path) => format!("file {}", path.display()),
                // the URL may carry a password
                RevocationBackend::Redis { key_prefix, .. } => format!("redis, keys {key_prefix}*"),
            };
            let mode = match revocation.fail_mode {
                FailMode::Open => "open",
                FailMode::Closed => "closed",
            };
            out.push_str(&format!("revocation list: {backend}, fail_mode {mode}\n"));
        }
        for r in &self.routes {
            out.push_str(&format!("route {}: {}\n", r.name, r.describe()));
        }
        out
    }
}

/// The TOML of a config file, without validation; errors name the line.
fn parse_file(text: &str, origin: &str, lines: &KeyLines) -> Result<ConfigFile, ConfigError> {
    toml::from_str(text).map_err(|error| {
        let line = error.span().map(|span| locate::line_at(text, span.start));
        ConfigError {
            file: origin.to_owned(),
            line,
            key: line.and_then(|line| lines.key_at_line(line)).map(str::to_owned),
            reason: error.message().trim().to_owned(),
        }
    })
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Remote(remote) => {
                match &remote.location {
                    RemoteLocation::JwksUrl(url) => write!(f, "{url}")?,
                    RemoteLocation::Discovery(url) => write!(f, "discovery at {url}")?,
                }
                write!(
                    f,
                    " (fresh for {} unless the response says otherwise)",
                    humantime::format_duration(remote.refresh_interval)
                )
            }
            KeySource::JwksFile(path) => write!(f, "JWKS file {}", path.display()),
            KeySource::PublicKeyFile(path) => write!(f, "public key file {}", path.display()),
            KeySource::SecretEnv(name) => write!(f, "secret in ${name}"),
            KeySource::SecretFile(path) => write!(f, "secret file {}", path.display()),
        }
    }
}

impl RouteConfig {
    fn describe(&self) -> String {
        let host = self.host.as_deref().unwrap_or("*");
        let methods = match &self.methods {
            Some(methods) => methods.iter().map(Method::as_str).collect::<Vec<_>>().join(","),
            None => "any method".to_owned(),
        };
        let mut line = format!("{methods} {host}{} -> {} (auth {}", self.path, self.upstream, self.auth.as_str());
        for requirement in &self.require_claims {
            line.push_str(&format!(", require {}=[{}]", requirement.claim, requirement.values.join(",")));
        }
        for (header, claim) in &self.inject_headers {
            line.push_str(&format!(", {header} <- {claim}"));
        }
        line.push(')');
        line
    }
}

#[cfg(test)]
mod tests;
