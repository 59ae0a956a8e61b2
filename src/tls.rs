//! The server's TLS setup: certificate chain and key from PEM files, TLS 1.2
//! and 1.3 through aws-lc-rs (the one crypto provider of the process), and
//! ALPN offering `h2` then `http/1.1`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Config, ConfigError, TlsFiles};

pub(crate) const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Loads the certificate and key named in `config`, if any.
pub(crate) fn server_config(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
    let Some(files) = &config.server.tls else {
        return Ok(None);
    };
    let error = |key: &str, reason: String| config.error(&format!("server.{key}"), reason);
    let TlsFiles { cert, key } = files;
    let chain = certificates(cert).map_err(|reason| error("tls_cert", reason))?;
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| error("tls_key", format!("{}: no PKCS#8, PKCS#1 or SEC1 private key: {e}", key.display())))?;
    let mut server = rustls::ServerConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
        .with_safe_default_protocol_versions()
        .map_err(|e| error("tls_cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| error("tls_key", format!("{} does not fit {}: {e}", key.display(), cert.display())))?;
    server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Some(Arc::new(server)))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(chain)
}
