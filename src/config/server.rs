//! `[server]` -> `ServerConfig`: where to listen, TLS, whom to believe about
//! forwarding, and the limits that keep one client from starving others.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

use super::file::ServerFile;
use super::validate::{DAY, within};
use super::*;

pub(super) fn server(file: ServerFile) -> Result<ServerConfig, Invalid> {
    let listen = file.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| invalid("server.listen", format!("{listen:?} is not an address like \"0.0.0.0:8443\"")))?;
    Ok(ServerConfig {
        tls: tls(&file)?,
        listen,
        trusted_proxies: trusted_proxies(file.trusted_proxies.as_deref().unwrap_or_default())?,
        strip_headers: strip_headers("server.strip_headers", file.strip_headers.as_deref().unwrap_or_default())?,
        limits: limits(&file)?,
        lifecycle: lifecycle(&file)?,
        tuning: tuning(&file)?,
    })
}

fn tls(file: &ServerFile) -> Result<Option<Tls>, Invalid> {
    let default = match (file.tls_cert.clone(), file.tls_key.clone()) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        (Some(_), None) => return Err(invalid("server.tls_key", "tls_cert is set, so tls_key is needed too")),
        (None, Some(_)) => return Err(invalid("server.tls_cert", "tls_key is set, so tls_cert is needed too")),
    };
    let mut by_name = Vec::new();
    for (i, entry) in file.certificates.iter().enumerate() {
        let key = format!("server.certificates[{i}].names");
        if entry.names.is_empty() {
            return Err(invalid(key, "list the names (SNI) this certificate serves"));
        }
        let names = entry.names.iter().map(|name| server_name(&key, name)).collect::<Result<Vec<_>, _>>()?;
        by_name.push((names, TlsFiles { cert: entry.tls_cert.clone(), key: entry.tls_key.clone() }));
    }
    let client_auth = match (&file.client_ca, file.client_auth) {
        (Some(ca), auth) => Some(ClientCertAuth { ca: ca.clone(), required: auth == Some(ClientAuth::Required) }),
        (None, Some(_)) => {
            return Err(invalid("server.client_auth", "needs client_ca, the CA client certificates chain to"));
        }
        (None, None) => None,
    };
    // without a default, the first named certificate answers unknown names
    let Some(default) = default.or_else(|| by_name.first().map(|(_, files)| files.clone())) else {
        return match client_auth {
            Some(_) => Err(invalid("server.client_ca", "client certificates need TLS: set tls_cert and tls_key")),
            None => Ok(None),
        };
    };
    Ok(Some(Tls { default, by_name, client_auth }))
}

/// A DNS name or `*.` wildcard, lowercase.
fn server_name(key: &str, name: &str) -> Result<String, Invalid> {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    let valid = !bare.is_empty()
        && bare
            .split('.')
            .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !valid {
        return Err(invalid(key, format!("{name:?} is not a DNS name or *.wildcard")));
    }
    Ok(name.to_ascii_lowercase())
}

fn limits(file: &ServerFile) -> Result<Limits, Invalid> {
    let seconds = |s| Duration::from_secs(s);
    let timeout = |name: &str, value, default| within(&format!("server.{name}"), value, default, seconds(1), DAY);
    let bytes = |name: &str, value: Option<bytesize::ByteSize>, default: u64, min: u64| {
        let value = value.map_or(default, |v| v.as_u64());
        if value < min || value > 1024 * 1024 {
            return Err(invalid(format!("server.{name}"), format!("must be between {min} bytes and 1 MiB")));
        }
        Ok(value as usize)
    };
    let count = |name: &str, value: Option<usize>, default: usize| match value {
        Some(0) => Err(invalid(format!("server.{name}"), "must be at least 1")),
        value => Ok(value.unwrap_or(default)),
    };
    Ok(Limits {
        // hyper's read buffer, which bounds the head, cannot be under 8 KiB
        max_header_size: bytes("max_header_size", file.max_header_size, 16 * 1024, 8 * 1024)?,
        max_headers: count("max_headers", file.max_headers, 100)?,
        max_uri_size: bytes("max_uri_size", file.max_uri_size, 8 * 1024, 256)?,
        header_read_timeout: timeout("header_read_timeout", file.header_read_timeout, seconds(10))?,
        idle_timeout: timeout("idle_timeout", file.idle_timeout, seconds(60))?,
        body_timeout: timeout("body_timeout", file.body_timeout, seconds(30))?,
        tls_handshake_timeout: timeout("tls_handshake_timeout", file.tls_handshake_timeout, seconds(10))?,
        max_connections: count("max_connections", file.max_connections, 10_000)?,
        max_connections_per_client: match file.max_connections_per_client {
            Some(n) => Some(count("max_connections_per_client", Some(n), n)?),
            None => None,
        },
        max_concurrent_streams: count("max_concurrent_streams", file.max_concurrent_streams.map(|n| n as usize), 100)?
            as u32,
    })
}

fn lifecycle(file: &ServerFile) -> Result<Lifecycle, Invalid> {
    let shutdown_timeout =
        within("server.shutdown_timeout", file.shutdown_timeout, Duration::from_secs(30), Duration::ZERO, DAY)?;
    let watch_interval = match file.watch_interval {
        Some(Duration::ZERO) => None,
        interval => {
            Some(within("server.watch_interval", interval, Duration::from_secs(2), Duration::from_millis(100), DAY)?)
        }
    };
    Ok(Lifecycle { shutdown_timeout, watch_interval })
}

/// Most machines have a few hundred cores at most; a cache of tens of
/// millions of tokens is a typo or a memory exhaustion waiting to happen.
const MAX_WORKERS: usize = 1024;
const MAX_TOKEN_CACHE: u64 = 10_000_000;

fn tuning(file: &ServerFile) -> Result<Tuning, Invalid> {
    let workers = match file.workers {
        Some(n) if n == 0 || n > MAX_WORKERS => {
            return Err(invalid("server.workers", format!("must be between 1 and {MAX_WORKERS}")));
        }
        workers => workers,
    };
    let token_cache_size = file.token_cache_size.unwrap_or(100_000);
    if token_cache_size > MAX_TOKEN_CACHE {
        return Err(invalid("server.token_cache_size", format!("must be at most {MAX_TOKEN_CACHE} (0 turns it off)")));
    }
    Ok(Tuning { workers, token_cache_size })
}

fn trusted_proxies(entries: &[String]) -> Result<Vec<IpNet>, Invalid> {
    entries
        .iter()
        .map(|entry| {
            IpNet::from_str(entry)
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| invalid("server.trusted_proxies", format!("{entry:?} is not an address or CIDR range")))
        })
        .collect()
}

/// Extra headers to remove from requests; never those the proxy needs.
pub(super) fn strip_headers(key: &str, names: &[String]) -> Result<Vec<HeaderName>, Invalid> {
    names
        .iter()
        .map(|name| {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(key, format!("{name:?} is not a header name")))?;
            if [http::header::HOST, http::header::CONTENT_LENGTH, http::header::TRANSFER_ENCODING].contains(&header) {
                return Err(invalid(key, format!("{header} frames or routes the request and cannot be stripped")));
            }
            Ok(header)
        })
        .collect()
}
