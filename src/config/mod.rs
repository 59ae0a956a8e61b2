//! The config pipeline: TOML text -> `ConfigFile` (serde) -> validated `Config`.
//!
//! Everything a user can get wrong is caught here, before anything listens:
//! each error names the file, the key, the line where it can be found, and
//! the reason. A `Config` that exists is one the gateway can run.

mod file;
mod locate;
mod provider;
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
pub use file::{AuthMode, ClientAuth, PathMatch, UpstreamProtocol};
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
    /// Where each key was written, for errors found after validation.
    lines: Arc<KeyLines>,
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
    /// Per HTTP/2 connection.
    pub max_concurrent_streams: u32,
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

#[derive(Debug, Clone)]
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
                key: line.and_then(|line| lines.key_at_line(line)).map(str::to_owned),
                reason: error.message().trim().to_owned(),
            }
        })?;
        adjust(&mut file);
        let lines = Arc::new(lines);
        validate::config(file, origin, lines.clone()).map_err(|Invalid { key, reason }| ConfigError {
            file: origin.to_owned(),
            line: lines.line_of(&key),
            key: Some(key),
            reason,
        })
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
        for r in &self.routes {
            out.push_str(&format!("route {}: {}\n", r.name, r.describe()));
        }
        out
    }
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
mod tests {
    use super::*;

    const PROVIDER: &str = r#"
[[providers]]
name = "idp"
issuer = "https://idp.test"
jwks_url = "https://idp.test/jwks"
audiences = ["api"]
"#;

    fn error(routes: &str) -> String {
        Config::parse(&format!("{PROVIDER}{routes}"), "t.toml").map(|_| String::new()).unwrap_or_else(|e| e.to_string())
    }

    fn route(extra: &str) -> String {
        format!("[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"http://u\"\n{extra}\n")
    }

    #[test]
    fn route_rules_are_enforced_with_the_key_and_line() {
        let cases = [
            (route("host = \"api.test:443\""), "t.toml:11: routes[0].host: \"api.test:443\" must be a bare host name"),
            (route("methods = []"), "t.toml:11: routes[0].methods: list at least one method"),
            (route("methods = [\"GE T\"]"), "routes[0].methods: \"GE T\" is not an HTTP method"),
            (
                route("auth = \"optional\"\nrequire_claims = { roles = \"a\" }"),
                "routes[0].require_claims: claims can only be required",
            ),
            (
                route("auth = \"public\"\ninject_headers = { \"x-id\" = \"sub\" }"),
                "routes[0].inject_headers: a public route",
            ),
            (route("inject_headers = { \"x_id\" = \"sub\" }"), "routes[0].inject_headers.x_id: use '-'"),
            (route("inject_headers = { \"x-forwarded-for\" = \"sub\" }"), "is managed by the proxy"),
            (route("require_claims = { roles = [] }"), "routes[0].require_claims.roles: give a claim name"),
            (route("upstream_timeout = \"0s\""), "routes[0].upstream_timeout: must be between 1ms and 1day"),
            (route("auth = \"sometimes\""), "t.toml:11: routes[0].auth: unknown variant `sometimes`"),
            (format!("{}{}", route(""), route("")), "routes[1].name: \"r\" is the same as routes[0]'s"),
            (
                format!(
                    "{}{}",
                    route("methods = [\"GET\", \"POST\"]"),
                    route("methods = [\"post\"]").replace("\"r\"", "\"s\"")
                ),
                "routes[1].path: routes[0] (\"r\") has the same host and path and takes all its methods",
            ),
            (String::new(), "routes: at least one [[routes]] entry is needed"),
        ];
        for (routes, expected) in cases {
            let message = error(&routes);
            assert!(message.contains(expected), "wanted {expected:?}, got {message:?}");
        }
    }

    #[test]
    fn a_route_that_could_still_match_is_accepted() {
        let named = |name: &str, extra: &str| route(extra).replace("\"r\"", &format!("{name:?}"));
        let accepted = [
            format!("{}{}", named("a", "methods = [\"GET\"]"), named("b", "methods = [\"POST\"]")),
            format!("{}{}", named("a", "methods = [\"GET\"]"), named("b", "")),
            format!("{}{}", named("a", ""), named("b", "host = \"api.test\"")),
        ];
        for routes in accepted {
            assert_eq!(error(&routes), "", "{routes}");
        }
    }

    #[test]
    fn managed_headers_cannot_carry_claims() {
        for name in [
            "authorization",
            "Cookie",
            "content-length",
            "x-forwarded-for",
            "host",
            "connection",
            "transfer-encoding",
            "forwarded",
        ] {
            let message = error(&route(&format!("inject_headers = {{ \"{name}\" = \"sub\" }}")));
            assert!(message.contains("managed by the proxy"), "{name}: {message}");
        }
    }

    #[test]
    fn provider_rules_are_enforced() {
        let with = |from: &str, to: &str| {
            let text = format!("{}{}", PROVIDER.replace(from, to), route(""));
            Config::parse(&text, "t.toml").unwrap_err().to_string()
        };
        assert!(with("https://idp.test/jwks", "ftp://idp.test/jwks").contains("providers[0].jwks_url: scheme \"ftp\""));
        assert!(with("https://idp.test/jwks", "not a url").contains("providers[0].jwks_url:"));
        assert!(with("audiences = [\"api\"]", "audiences = []").contains("providers[0].audiences"));
        assert!(
            with("issuer = \"https://idp.test\"", "issuer = \" \"").contains("providers[0].issuer: must not be empty")
        );
        assert!(with("audiences", "leeway = \"10m\"\naudiences").contains("providers[0].leeway"));
        let twice = format!("{PROVIDER}{}{}", PROVIDER.replace("\"idp\"", "\"idp2\""), route(""));
        let message = Config::parse(&twice, "t.toml").unwrap_err().to_string();
        assert!(
            message.contains("t.toml:10: providers[1].issuer: \"https://idp.test\" is the same as providers[0]'s"),
            "{message}"
        );
        let public_only = Config::parse(&route("auth = \"public\""), "t.toml");
        assert!(public_only.is_ok(), "no provider is needed when no route verifies");
        let message = Config::parse(&route(""), "t.toml").unwrap_err().to_string();
        assert!(message.contains("routes[0].auth: auth = \"required\" needs at least one [[providers]]"), "{message}");
    }

    fn provider_error(replace: &str, with: &str) -> String {
        let text = format!("{}{}", PROVIDER.replace(replace, with), route(""));
        Config::parse(&text, "t.toml").map(|_| String::new()).unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn exactly_one_key_source() {
        let jwks = "jwks_url = \"https://idp.test/jwks\"";
        let cases = [
            (jwks, "", "t.toml:2: providers[0]: name where keys come from"),
            (jwks, "discovery = false", "providers[0]: name where keys come from"),
            (
                jwks,
                "jwks_url = \"https://idp.test/jwks\"\njwks_file = \"k.json\"",
                "providers[0].jwks_file: set only one key source, not jwks_url and jwks_file",
            ),
            (
                jwks,
                "secret_env = \"S\"\nrefresh_interval = \"1m\"",
                "providers[0].refresh_interval: applies to jwks_url and discovery only, not secret_env",
            ),
            (
                jwks,
                "jwks_file = \"k.json\"\ncache_dir = \"/tmp\"",
                "providers[0].cache_dir: applies to jwks_url and discovery only",
            ),
            (
                jwks,
                "secret_env = \"S\"\nalgorithms = [\"RS256\"]",
                "providers[0].algorithms: a shared secret verifies HS256/384/512 only",
            ),
            (
                jwks,
                "jwks_url = \"https://i/j\"\nalgorithms = [\"HS256\"]",
                "providers[0].algorithms: HS256 needs a shared secret",
            ),
            (
                jwks,
                "jwks_url = \"https://i/j\"\nalgorithms = [\"none\"]",
                "providers[0].algorithms: \"none\" is not one of",
            ),
            (
                jwks,
                "jwks_url = \"https://i/j\"\nmin_refresh = \"2h\"",
                "providers[0].max_refresh: must not be shorter than min_refresh",
            ),
            (
                "issuer = \"https://idp.test\"\njwks_url = \"https://idp.test/jwks\"",
                "issuer = \"idp\"\ndiscovery = true",
                "providers[0].issuer: discovery needs an issuer URL",
            ),
            ("name = \"idp\"", "name = \"i/dp\"", "providers[0].name: use letters, digits"),
            (
                jwks,
                "jwks_url = \"https://i/j\"\nmax_stale = \"400000y\"",
                "providers[0].max_stale: must be between 0s and 1year",
            ),
            (
                jwks,
                "jwks_url = \"https://i/j\"\nrefetch_cooldown = \"1ms\"",
                "providers[0].refetch_cooldown: must be between 100ms and 1h",
            ),
        ];
        for (replace, with, expected) in cases {
            let message = provider_error(replace, with);
            assert!(message.contains(expected), "wanted {expected:?}, got {message:?}");
        }
    }

    #[test]
    fn key_sources_and_their_defaults() {
        let jwks = "jwks_url = \"https://idp.test/jwks\"";
        let parse = |with: &str| {
            let text = format!("{}{}", PROVIDER.replace(jwks, with), route(""));
            Config::parse(&text, "t.toml").unwrap().providers.remove(0)
        };
        let secret = parse("secret_file = \"s.txt\"");
        assert_eq!(secret.source, KeySource::SecretFile("s.txt".into()));
        assert_eq!(secret.algorithms, [Algorithm::HS256], "secrets default to HS256");
        let discovery = parse("discovery = true");
        let KeySource::Remote(remote) = &discovery.source else {
            panic!("{:?}", discovery.source);
        };
        let RemoteLocation::Discovery(url) = &remote.location else {
            panic!("{:?}", remote.location);
        };
        assert_eq!(url.as_str(), "https://idp.test/.well-known/openid-configuration");
        let pem = parse(
            "public_key_file = \"k.pem\"\nalgorithms = [\"ES256\", \"EdDSA\"]\nrequired_typ = \"application/AT+JWT\"",
        );
        assert_eq!(pem.algorithms, [Algorithm::ES256, Algorithm::EdDSA]);
        assert_eq!(pem.required_typ.as_deref(), Some("at+jwt"));
        let remote = parse("jwks_url = \"https://i/j\"\nmax_jwks_size = \"64 KiB\"\nmax_stale = \"0s\"");
        let KeySource::Remote(remote) = remote.source else { panic!() };
        assert_eq!((remote.max_size, remote.max_stale), (64 * 1024, Duration::ZERO));
    }

    #[test]
    fn route_providers_and_token_sources() {
        let parse = |extra: &str| Config::parse(&format!("{PROVIDER}{}", route(extra)), "t.toml");
        let config = parse("providers = [\"idp\"]\ntoken_sources = [\"cookie:session\", \"header\"]").unwrap();
        assert_eq!(config.routes[0].providers, Some(vec![0]));
        assert_eq!(config.routes[0].token_sources, [TokenSource::Cookie("session".into()), TokenSource::Header]);
        let cases = [
            ("providers = [\"nope\"]", "routes[0].providers: \"nope\" is not the name of a [[providers]] entry"),
            ("providers = []", "routes[0].providers: list at least one provider"),
            ("token_sources = [\"query:token\"]", "tokens in the query string are not supported"),
            ("token_sources = [\"cookie:\"]", "\"cookie:\" is not \"header\" or \"cookie:NAME\""),
            ("token_sources = [\"header\", \"header\"]", "\"header\" is listed twice"),
            (
                "auth = \"public\"\ntoken_sources = [\"header\"]",
                "routes[0].token_sources: a public route verifies no token",
            ),
        ];
        for (extra, expected) in cases {
            let message = parse(extra).unwrap_err().to_string();
            assert!(message.contains(expected), "wanted {expected:?}, got {message:?}");
        }
    }

    #[test]
    fn defaults_and_normalisation() {
        let config =
            Config::parse(&format!("{PROVIDER}{}", route("host = \"API.Test\"\nmethods = [\"get\"]")), "t.toml")
                .unwrap();
        assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
        assert!(config.server.tls.is_none());
        let provider = &config.providers[0];
        let KeySource::Remote(remote) = &provider.source else {
            panic!("{:?}", provider.source);
        };
        assert_eq!(remote.refresh_interval, DEFAULT_REFRESH_INTERVAL);
        assert_eq!((remote.min_refresh, remote.max_refresh), (DEFAULT_MIN_REFRESH, DEFAULT_MAX_REFRESH));
        assert_eq!(remote.max_size, DEFAULT_MAX_JWKS_SIZE);
        assert_eq!(remote.max_stale, DEFAULT_MAX_STALE);
        assert_eq!(provider.algorithms, [Algorithm::RS256]);
        assert_eq!(provider.leeway, DEFAULT_LEEWAY);
        let route = &config.routes[0];
        assert_eq!(route.auth, AuthMode::Required);
        assert_eq!(route.host.as_deref(), Some("api.test"));
        assert_eq!(route.methods, Some(vec![Method::GET]));
        assert!(!route.forward_token);
        assert_eq!(route.token_sources, [TokenSource::Header]);
        assert_eq!(route.providers, None);
        assert_eq!(route.upstream_timeout, DEFAULT_UPSTREAM_TIMEOUT);
    }
}
