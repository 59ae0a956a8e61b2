//! `ConfigFile` -> `Config`: every rule a config must satisfy, each failure
//! naming the key it is about. Defaults are applied here, in one place.

use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, Method, Uri};

use super::file::{AdminFile, ConfigFile, LogFile, RouteFile};
use super::*;
use crate::headers;
use std::sync::Arc;

pub(super) fn config(file: ConfigFile, origin: &str, lines: Arc<KeyLines>) -> Result<Config, Invalid> {
    let server = super::server::server(file.server)?;
    let providers: Vec<ProviderConfig> = file
        .providers
        .into_iter()
        .enumerate()
        .map(|(i, p)| super::provider::provider(i, p))
        .collect::<Result<_, _>>()?;
    unique("providers", "name", providers.iter().map(|p| &p.name))?;
    // a token's `iss` must pick exactly one provider
    unique("providers", "issuer", providers.iter().map(|p| &p.issuer))?;
    let routes: Vec<RouteConfig> =
        file.routes.into_iter().enumerate().map(|(i, r)| route(i, r, &providers, &server)).collect::<Result<_, _>>()?;
    unique("routes", "name", routes.iter().map(|r| &r.name))?;
    if routes.is_empty() {
        return Err(invalid("routes", "at least one [[routes]] entry is needed"));
    }
    check_reachable(&routes)?;
    let revocation = match file.revocation {
        Some(table) => Some(super::revocation::revocation(table)?),
        None => None,
    };
    if revocation.is_none() {
        let provider = providers.iter().position(|p| p.revocation).map(|i| format!("providers[{i}].revocation"));
        let route = routes.iter().find(|r| r.revocation).map(|r| format!("routes[{}].revocation", r.index));
        if let Some(key) = provider.or(route) {
            return Err(invalid(key, "needs a [revocation] table saying where the revocation list is kept"));
        }
    }
    Ok(Config {
        origin: origin.to_owned(),
        path: None,
        sha256: String::new(),
        server,
        providers,
        routes: in_match_order(routes),
        admin: file.admin.map(admin).transpose()?,
        log: log(file.log)?,
        revocation,
        lines,
        redacted: Arc::default(),
    })
}

fn admin(file: AdminFile) -> Result<AdminConfig, Invalid> {
    let listen = file
        .listen
        .parse()
        .map_err(|_| invalid("admin.listen", format!("{:?} is not an address like \"127.0.0.1:9901\"", file.listen)))?;
    if file.token_file.as_ref().is_some_and(|path| path.as_os_str().is_empty()) {
        return Err(invalid("admin.token_file", "must not be empty"));
    }
    Ok(AdminConfig { listen, token_file: file.token_file })
}

fn log(file: LogFile) -> Result<LogConfig, Invalid> {
    let defaults = LogConfig::default();
    let level = file.level.unwrap_or(defaults.level);
    if let Err(error) = tracing_subscriber::EnvFilter::try_new(&level) {
        return Err(invalid("log.level", format!("{level:?} is not a level or filter like \"info\": {error}")));
    }
    Ok(LogConfig {
        format: file.format.unwrap_or(defaults.format),
        level,
        include_sub: file.include_sub.unwrap_or(defaults.include_sub),
    })
}

/// Refuses a value of `table[].field` seen twice, naming both entries.
fn unique<'a>(table: &str, field: &str, values: impl Iterator<Item = &'a String>) -> Result<(), Invalid> {
    let values: Vec<&String> = values.collect();
    for (j, value) in values.iter().enumerate() {
        if let Some(i) = values[..j].iter().position(|earlier| earlier == value) {
            return Err(invalid(format!("{table}[{j}].{field}"), format!("{value:?} is the same as {table}[{i}]'s")));
        }
    }
    Ok(())
}

fn route(
    i: usize,
    file: RouteFile,
    providers: &[ProviderConfig],
    server: &ServerConfig,
) -> Result<RouteConfig, Invalid> {
    let key = |name: &str| format!("routes[{i}].{name}");
    non_empty(&key("name"), &file.name)?;
    let auth = file.auth.unwrap_or(AuthMode::Required);
    let mode = file.mode.unwrap_or(RouteMode::Enforce);
    if auth != AuthMode::Public && providers.is_empty() {
        return Err(invalid(key("auth"), format!("auth = {:?} needs at least one [[providers]] entry", auth.as_str())));
    }
    if !file.require_claims.is_empty() && auth != AuthMode::Required {
        return Err(invalid(key("require_claims"), "claims can only be required when auth = \"required\""));
    }
    let verifying = [
        ("inject_headers", !file.inject_headers.is_empty()),
        ("providers", file.providers.is_some()),
        ("token_sources", file.token_sources.is_some()),
        ("mode", file.mode.is_some()),
        ("revocation", file.revocation.is_some()),
    ];
    if let Some((name, _)) = verifying.iter().find(|(_, set)| *set && auth == AuthMode::Public) {
        return Err(invalid(key(name), "a public route verifies no token"));
    }
    let mut require_claims = Vec::new();
    for (claim, values) in file.require_claims {
        let values = values.into_vec();
        if claim.is_empty() || values.is_empty() || values.iter().any(String::is_empty) {
            return Err(invalid(
                key(&format!("require_claims.{claim}")),
                "give a claim name and at least one non-empty value",
            ));
        }
        require_claims.push(ClaimRequirement { claim, values });
    }
    let client_certs = server.tls.as_ref().is_some_and(|tls| tls.client_auth.is_some());
    let require_client_cert = file.require_client_cert.unwrap_or(false);
    if (require_client_cert || !file.inject_client_cert.is_empty()) && !client_certs {
        let name = if require_client_cert { "require_client_cert" } else { "inject_client_cert" };
        return Err(invalid(key(name), "needs server.client_ca, so clients can present certificates"));
    }
    let mut inject_client_cert = Vec::new();
    for (header, field) in file.inject_client_cert {
        let header_key = key(&format!("inject_client_cert.{header}"));
        let field = match field.as_str() {
            "subject" => ClientCertField::Subject,
            "sans" => ClientCertField::Sans,
            "sha256" => ClientCertField::Sha256,
            other => return Err(invalid(header_key, format!("{other:?} is not subject, sans or sha256"))),
        };
        inject_client_cert.push((injectable_header(&header_key, &header)?, field));
    }
    let upstream = upstream(&key("upstream"), &file.upstream)?;
    if file.upstream_ca_file.is_some() && upstream.scheme != Scheme::HTTPS {
        return Err(invalid(key("upstream_ca_file"), "applies to https:// upstreams only"));
    }
    let upstream_protocol = file.upstream_protocol.unwrap_or(UpstreamProtocol::Http1);
    if upstream_protocol == UpstreamProtocol::Http2 && file.websocket == Some(true) {
        return Err(invalid(key("websocket"), "WebSocket upgrades need upstream_protocol = \"http1\""));
    }
    let mut inject_headers = Vec::new();
    for (header, claim) in file.inject_headers {
        let header_key = key(&format!("inject_headers.{header}"));
        if claim.is_empty() {
            return Err(invalid(header_key, "name the claim to inject"));
        }
        inject_headers.push((injectable_header(&header_key, &header)?, claim));
    }
    Ok(RouteConfig {
        providers: file.providers.map(|names| route_providers(&key("providers"), &names, providers)).transpose()?,
        token_sources: token_sources(&key("token_sources"), file.token_sources)?,
        path: route_path(&key("path"), file.path)?,
        host: file.host.map(|host| route_host(&key("host"), &host)).transpose()?,
        methods: file.methods.map(|methods| route_methods(&key("methods"), methods)).transpose()?,
        upstream,
        auth,
        mode,
        require_claims,
        inject_headers,
        forward_token: file.forward_token.unwrap_or(false),
        preserve_host: file.preserve_host.unwrap_or(true),
        path_match: file.path_match.unwrap_or(PathMatch::Prefix),
        websocket: file.websocket.unwrap_or(false),
        max_body: file.max_body.map(|size| size.as_u64()),
        index: i,
        require_client_cert,
        inject_client_cert,
        upstream_protocol,
        upstream_ca_file: file.upstream_ca_file,
        strip_headers: super::server::strip_headers(
            &key("strip_headers"),
            file.strip_headers.as_deref().unwrap_or_default(),
        )?,
        upstream_timeout: positive(&key("upstream_timeout"), file.upstream_timeout, DEFAULT_UPSTREAM_TIMEOUT)?,
        revocation: file.revocation.unwrap_or(false),
        name: file.name,
    })
}

/// Provider names -> indices into the config's providers.
fn route_providers(key: &str, names: &[String], providers: &[ProviderConfig]) -> Result<Vec<usize>, Invalid> {
    if names.is_empty() {
        return Err(invalid(key, "list at least one provider, or leave providers out to accept all"));
    }
    let mut indices = Vec::new();
    for name in names {
        let index = providers
            .iter()
            .position(|p| &p.name == name)
            .ok_or_else(|| invalid(key, format!("{name:?} is not the name of a [[providers]] entry")))?;
        if !indices.contains(&index) {
            indices.push(index);
        }
    }
    Ok(indices)
}

/// `"header"` and `"cookie:NAME"`, in order; `["header"]` by default.
fn token_sources(key: &str, names: Option<Vec<String>>) -> Result<Vec<TokenSource>, Invalid> {
    let Some(names) = names else {
        return Ok(vec![TokenSource::Header]);
    };
    if names.is_empty() {
        return Err(invalid(key, "list at least one source, or leave token_sources out for [\"header\"]"));
    }
    let mut sources = Vec::new();
    for name in names {
        let source = match name.split_once(':') {
            None if name == "header" => TokenSource::Header,
            Some(("cookie", cookie)) if is_token(cookie) => TokenSource::Cookie(cookie.to_owned()),
            _ if name.starts_with("query") => {
                return Err(invalid(key, "tokens in the query string are not supported: they end up in logs"));
            }
            _ => {
                return Err(invalid(key, format!("{name:?} is not \"header\" or \"cookie:NAME\"")));
            }
        };
        if sources.contains(&source) {
            return Err(invalid(key, format!("{name:?} is listed twice")));
        }
        sources.push(source);
    }
    Ok(sources)
}

/// An RFC 9110 token, as cookie names must be.
fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn route_path(key: &str, path: String) -> Result<String, Invalid> {
    let bad = !path.starts_with('/')
        || path.contains(['?', '#', '%', '\\'])
        || path.chars().any(|c| c.is_whitespace() || c.is_control())
        || path.split('/').any(|segment| segment == "." || segment == "..");
    if bad {
        return Err(invalid(
            key,
            format!("{path:?} must be a plain path starting with '/' (no query, '%', '\\' or dot segments)"),
        ));
    }
    Ok(path)
}

fn route_host(key: &str, host: &str) -> Result<String, Invalid> {
    let parsed: Authority = host.parse().map_err(|_| invalid(key, format!("{host:?} is not a host name")))?;
    if parsed.port().is_some() || host.contains('@') || host.is_empty() {
        return Err(invalid(key, format!("{host:?} must be a bare host name, without port")));
    }
    Ok(host.to_ascii_lowercase())
}

fn route_methods(key: &str, methods: Vec<String>) -> Result<Vec<Method>, Invalid> {
    if methods.is_empty() {
        return Err(invalid(key, "list at least one method, or leave methods out to allow any"));
    }
    let mut out: Vec<Method> = Vec::new();
    for name in methods {
        let method = Method::from_bytes(name.to_ascii_uppercase().as_bytes())
            .map_err(|_| invalid(key, format!("{name:?} is not an HTTP method")))?;
        if !out.contains(&method) {
            out.push(method);
        }
    }
    Ok(out)
}

fn upstream(key: &str, text: &str) -> Result<Upstream, Invalid> {
    let uri: Uri = text.parse().map_err(|e| invalid(key, format!("{text:?} is not a URL: {e}")))?;
    let scheme = match uri.scheme() {
        Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
        _ => {
            return Err(invalid(key, format!("{text:?} must start with http:// or https://")));
        }
    };
    let authority = match uri.authority() {
        Some(a) if !a.as_str().contains('@') => a.clone(),
        _ => {
            return Err(invalid(key, format!("{text:?} needs a host and no user info")));
        }
    };
    if uri.query().is_some() || text.contains('#') {
        return Err(invalid(key, format!("{text:?} is a base URL: no query or fragment")));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok(Upstream { scheme, authority, base_path })
}

/// Injected headers are stripped from every request; names that carry
/// framing, routing or credentials would break the proxy if we did that.
fn injectable_header(key: &str, name: &str) -> Result<HeaderName, Invalid> {
    let header =
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid(key, format!("{name:?} is not a header name")))?;
    if name.contains('_') {
        return Err(invalid(key, "use '-' in header names: many proxies drop names with '_'"));
    }
    if headers::is_reserved(&header) {
        return Err(invalid(key, format!("{header} is managed by the proxy and cannot carry a claim")));
    }
    Ok(header)
}

pub(super) fn non_empty(key: &str, value: &str) -> Result<(), Invalid> {
    if value.trim().is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    Ok(())
}

pub(super) fn positive(key: &str, value: Option<Duration>, default: Duration) -> Result<Duration, Invalid> {
    within(key, value, default, Duration::from_millis(1), DAY)
}

pub(super) const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// humantime's year (365.25 days), so messages read "1year".
pub(super) const YEAR: Duration = Duration::from_secs(31_557_600);

/// A duration between `min` and `max`: the bounds keep typos like "5d"
/// for "5s" from surprising anyone, and arithmetic on times from overflowing.
pub(super) fn within(
    key: &str,
    value: Option<Duration>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, Invalid> {
    let value = value.unwrap_or(default);
    if value < min || value > max {
        let (min, max) = (humantime::format_duration(min), humantime::format_duration(max));
        return Err(invalid(key, format!("must be between {min} and {max}")));
    }
    Ok(value)
}

/// Refuses a route that an earlier one with the same host and path always
/// wins over: one whose every method the earlier route already takes.
fn check_reachable(routes: &[RouteConfig]) -> Result<(), Invalid> {
    for (j, later) in routes.iter().enumerate() {
        for (i, earlier) in routes[..j].iter().enumerate() {
            let covered = match (&earlier.methods, &later.methods) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(taken), Some(wanted)) => wanted.iter().all(|m| taken.contains(m)),
            };
            let same_place =
                earlier.host == later.host && earlier.path == later.path && earlier.path_match == later.path_match;
            if covered && same_place {
                return Err(invalid(
                    format!("routes[{j}].path"),
                    format!(
                        "routes[{i}] ({:?}) has the same host and path and takes all its methods: it could never match",
                        earlier.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Host-specific routes first, then longest path, then exact before prefix
/// matches; file order breaks ties.
fn in_match_order(mut routes: Vec<RouteConfig>) -> Vec<RouteConfig> {
    routes.sort_by_key(|r| (r.host.is_none(), std::cmp::Reverse(r.path.len()), r.path_match == PathMatch::Prefix));
    routes
}
