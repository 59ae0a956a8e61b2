//! The config file as written: serde types that mirror the TOML one to one.
//!
//! Unknown keys are errors (`deny_unknown_fields`) so a typo never silently
//! turns a check off. Nothing here is validated beyond its TOML type; that is
//! `validate`'s job.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub(crate) server: ServerFile,
    #[serde(default)]
    pub(crate) providers: Vec<ProviderFile>,
    #[serde(default)]
    pub(crate) routes: Vec<RouteFile>,
    pub(crate) admin: Option<AdminFile>,
    #[serde(default)]
    pub(crate) log: LogFile,
    pub(crate) revocation: Option<RevocationFile>,
}

/// Where revoked tokens are listed, and how fresh the local copy must be.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevocationFile {
    pub(crate) backend: RevocationBackendName,
    pub(crate) file: Option<PathBuf>,
    pub(crate) url: Option<String>,
    pub(crate) key_prefix: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) resync_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) max_staleness: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) max_token_lifetime: Option<Duration>,
    pub(crate) fail_mode: Option<FailMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RevocationBackendName {
    File,
    Redis,
}

/// What a token on a revocation-checked route gets when the local copy of
/// the revocation list is older than `max_staleness`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Accepted (checked against the copy there is), with a warning.
    Open,
    /// Refused with 503.
    Closed,
}

/// The admin listener: health, readiness, metrics, the running config.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminFile {
    pub(crate) listen: String,
    pub(crate) token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogFile {
    pub(crate) format: Option<LogFormat>,
    pub(crate) level: Option<String>,
    pub(crate) include_sub: Option<bool>,
}

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerFile {
    pub(crate) listen: Option<String>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
    #[serde(default)]
    pub(crate) certificates: Vec<CertificateFile>,
    pub(crate) client_ca: Option<PathBuf>,
    pub(crate) client_auth: Option<ClientAuth>,
    pub(crate) trusted_proxies: Option<Vec<String>>,
    pub(crate) strip_headers: Option<Vec<String>>,
    // limits
    pub(crate) max_header_size: Option<ByteSize>,
    pub(crate) max_headers: Option<usize>,
    pub(crate) max_uri_size: Option<ByteSize>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) header_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) body_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) tls_handshake_timeout: Option<Duration>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_connections_per_client: Option<usize>,
    pub(crate) max_concurrent_streams: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) shutdown_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) watch_interval: Option<Duration>,
    // tuning
    pub(crate) workers: Option<usize>,
    pub(crate) token_cache_size: Option<u64>,
}

/// A certificate served for the names (SNI) it lists.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CertificateFile {
    pub(crate) tls_cert: PathBuf,
    pub(crate) tls_key: PathBuf,
    #[serde(default)]
    pub(crate) names: Vec<String>,
}

/// What a route speaks to its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    Http1,
    /// Over TLS by ALPN, or cleartext with prior knowledge (h2c).
    Http2,
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    Optional,
    Required,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderFile {
    pub(crate) name: String,
    pub(crate) issuer: String,
    #[serde(default)]
    pub(crate) audiences: Vec<String>,
    pub(crate) algorithms: Option<Vec<String>>,
    // key sources: exactly one
    pub(crate) jwks_url: Option<String>,
    pub(crate) discovery: Option<bool>,
    pub(crate) jwks_file: Option<PathBuf>,
    pub(crate) public_key_file: Option<PathBuf>,
    pub(crate) secret_env: Option<String>,
    pub(crate) secret_file: Option<PathBuf>,
    // remote key sets only
    #[serde(default, with = "humantime_serde")]
    pub(crate) refresh_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) min_refresh: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) max_refresh: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) fetch_timeout: Option<Duration>,
    pub(crate) max_jwks_size: Option<ByteSize>,
    pub(crate) ca_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) max_stale: Option<Duration>,
    pub(crate) cache_dir: Option<PathBuf>,
    // token rules
    #[serde(default, with = "humantime_serde")]
    pub(crate) leeway: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) refetch_cooldown: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) max_token_age: Option<Duration>,
    pub(crate) required_typ: Option<String>,
    pub(crate) revocation: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteFile {
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) host: Option<String>,
    pub(crate) methods: Option<Vec<String>>,
    pub(crate) upstream: String,
    pub(crate) auth: Option<AuthMode>,
    pub(crate) mode: Option<RouteMode>,
    pub(crate) providers: Option<Vec<String>>,
    pub(crate) token_sources: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) require_claims: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    pub(crate) inject_headers: BTreeMap<String, String>,
    pub(crate) forward_token: Option<bool>,
    pub(crate) preserve_host: Option<bool>,
    pub(crate) path_match: Option<PathMatch>,
    pub(crate) websocket: Option<bool>,
    pub(crate) max_body: Option<ByteSize>,
    pub(crate) strip_headers: Option<Vec<String>>,
    pub(crate) upstream_ca_file: Option<PathBuf>,
    pub(crate) upstream_protocol: Option<UpstreamProtocol>,
    pub(crate) require_client_cert: Option<bool>,
    #[serde(default)]
    pub(crate) inject_client_cert: BTreeMap<String, String>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) upstream_timeout: Option<Duration>,
    pub(crate) revocation: Option<bool>,
}

/// How a route treats the bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A valid token is needed.
    Required,
    /// No token passes anonymously; a token that is sent must be valid.
    Optional,
    /// No verification at all.
    Public,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Required => "required",
            AuthMode::Optional => "optional",
            AuthMode::Public => "public",
        }
    }
}

/// Whether a route's auth decisions are applied or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteMode {
    /// Denied requests are refused.
    Enforce,
    /// Denied requests are logged and counted, then forwarded anyway.
    Report,
}

impl RouteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteMode::Enforce => "enforce",
            RouteMode::Report => "report",
        }
    }
}

/// How a route's `path` matches a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMatch {
    /// The path itself or anything below it, by whole segments.
    Prefix,
    /// The path itself only.
    Exact,
}

/// `roles = "admin"` and `roles = ["admin"]` mean the same.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(crate) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(value) => vec![value],
            OneOrMany::Many(values) => values,
        }
    }
}
