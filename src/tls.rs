//! The server's TLS: certificates chosen by SNI (exact names, `*.`
//! wildcards, a default), TLS 1.2 and 1.3 through aws-lc-rs (the one crypto
//! provider of the process), ALPN offering `h2` then `http/1.1`, and
//! optional or required client certificates, whose subject and SANs the
//! proxy can pass on.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use crate::config::{Config, ConfigError, TlsFiles};

pub(crate) const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn provider() -> Arc<CryptoProvider> {
    rustls::crypto::aws_lc_rs::default_provider().into()
}

/// Loads every certificate, key and CA named in `config`, if it uses TLS.
pub(crate) fn server_config(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
    let Some(tls) = &config.server.tls else {
        return Ok(None);
    };
    let error = |key: String, reason: String| config.error(&key, reason);
    let load = |key: &str, files: &TlsFiles| {
        certified_key(files).map_err(|(part, reason)| error(format!("{key}.{part}"), reason))
    };
    let mut resolver =
        SniResolver { exact: HashMap::new(), wildcards: Vec::new(), default: load("server", &tls.default)? };
    for (i, (names, files)) in tls.by_name.iter().enumerate() {
        let key = load(&format!("server.certificates[{i}]"), files)?;
        for name in names {
            match name.strip_prefix("*.") {
                Some(suffix) => resolver.wildcards.push((format!(".{suffix}"), key.clone())),
                None => drop(resolver.exact.insert(name.clone(), key.clone())),
            }
        }
    }
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| error("server.tls_cert".into(), e.to_string()))?;
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let roots = client_roots(&auth.ca).map_err(|reason| error("server.client_ca".into(), reason))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if auth.required { verifier } else { verifier.allow_unauthenticated() };
            let verifier = verifier.build().map_err(|e| error("server.client_ca".into(), e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Some(Arc::new(server)))
}

/// A chain whose leaf is valid now and its key, checked to belong
/// together; errors name the part.
fn certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, (&'static str, String)> {
    let TlsFiles { cert, key } = files;
    let chain = certificates(cert).map_err(|reason| ("tls_cert", reason))?;
    valid_now(cert, &chain[0]).map_err(|reason| ("tls_cert", reason))?;
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ("tls_key", format!("{}: no PKCS#8, PKCS#1 or SEC1 private key: {e}", key.display())))?;
    CertifiedKey::from_der(chain, private_key, &provider())
        .map(Arc::new)
        .map_err(|e| ("tls_key", format!("{} does not fit {}: {e}", key.display(), cert.display())))
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

/// Refuses a leaf certificate outside its validity period: every client
/// would refuse it, so serving it is an outage, not a renewal.
fn valid_now(path: &Path, leaf: &CertificateDer<'_>) -> Result<(), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("{}: the first certificate cannot be read: {e}", path.display()))?;
    let validity = parsed.validity();
    let (from, until) = (validity.not_before, validity.not_after);
    let now = x509_parser::time::ASN1Time::now();
    if now < from {
        return Err(format!("{}: the certificate is not valid before {from} (valid until {until})", path.display()));
    }
    if now > until {
        return Err(format!("{}: the certificate expired on {until} (valid from {from})", path.display()));
    }
    Ok(())
}

fn client_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Picks the certificate for the name a client asked for (SNI).
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `.example.com` for `*.example.com`: one label in front, no more.
    wildcards: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name().map(str::to_ascii_lowercase) else {
            return Some(self.default.clone());
        };
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        let wildcard = self.wildcards.iter().find(|(suffix, _)| {
            name.strip_suffix(suffix.as_str()).is_some_and(|label| !label.is_empty() && !label.contains('.'))
        });
        Some(wildcard.map_or(&self.default, |(_, key)| key).clone())
    }
}

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientCert {
    pub(crate) subject: String,
    pub(crate) sans: String,
    pub(crate) sha256: String,
}

/// The client certificate a connection was verified with, if any.
pub(crate) fn client_cert(connection: &rustls::ServerConnection) -> Option<ClientCert> {
    let der = connection.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|extension| extension.value.general_names.iter().filter_map(general_name).collect())
        .unwrap_or_default();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    Some(ClientCert {
        subject: rfc4514(cert.subject()),
        sans: sans.join(","),
        sha256: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// A distinguished name as RFC 4514 writes it, most specific first, with
/// its special characters escaped, so a CA that signs any name a client
/// asks for cannot make one attribute look like two.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let escape = |value: &str| {
        let mut out = String::with_capacity(value.len());
        let last = value.chars().count().saturating_sub(1);
        for (i, c) in value.chars().enumerate() {
            let edge = (i == 0 && (c == ' ' || c == '#')) || (i == last && c == ' ');
            if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    };
    // the short names RFC 4514 §3 lists; other attributes by dotted OID
    let registry = x509_parser::objects::oid_registry();
    let label = |oid: &x509_parser::der_parser::oid::Oid<'_>| {
        let short = match registry.get(oid).map(|entry| entry.sn()) {
            Some("commonName") => "CN",
            Some("localityName") => "L",
            Some("stateOrProvinceName") => "ST",
            Some("organizationName") => "O",
            Some("organizationalUnitName") => "OU",
            Some("countryName") => "C",
            Some("streetAddress") => "STREET",
            Some("domainComponent") => "DC",
            Some("userId") => "UID",
            _ => return oid.to_id_string(),
        };
        short.to_owned()
    };
    let mut parts: Vec<String> = Vec::new();
    for rdn in name.iter() {
        let attributes: Vec<String> = rdn
            .iter()
            .map(|attribute| {
                let label = label(attribute.attr_type());
                let hex = || attribute.attr_value().data.iter().map(|b| format!("{b:02x}")).collect::<String>();
                let value = attribute.as_str().map_or_else(|_| format!("#{}", hex()), escape);
                format!("{label}={value}")
            })
            .collect();
        parts.push(attributes.join("+"));
    }
    parts.reverse();
    parts.join(",")
}

/// One SAN, typed; commas in a URI are percent-encoded so the list splits
/// on `,` unambiguously (DNS names and addresses cannot hold one).
fn general_name(name: &x509_parser::extensions::GeneralName<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    match name {
        GeneralName::DNSName(dns) if !dns.contains(',') => Some(format!("DNS:{dns}")),
        GeneralName::URI(uri) => Some(format!("URI:{}", uri.replace(',', "%2C"))),
        GeneralName::RFC822Name(email) if !email.contains(',') => Some(format!("email:{email}")),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => Some(format!("IP:{}", std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).ok()?))),
            16 => Some(format!("IP:{}", std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).ok()?))),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a self-signed localhost certificate valid from `from` to
    /// `until` (years), and its key.
    fn write_certificate(dir: &Path, from: i32, until: i32) -> TlsFiles {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let files = TlsFiles { cert: dir.join(format!("{from}.crt")), key: dir.join(format!("{from}.key")) };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn a_certificate_outside_its_validity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(certified_key(&write_certificate(dir.path(), 2020, 2200)).is_ok());

        let expired = write_certificate(dir.path(), 2019, 2021);
        let (part, reason) = certified_key(&expired).err().unwrap();
        assert_eq!(part, "tls_cert");
        assert!(
            reason.starts_with(&format!("{}: the certificate expired on Jan  1", expired.cert.display())),
            "{reason}"
        );
        assert!(reason.contains("2021") && reason.contains("(valid from Jan  1 00:00:00 2019"), "{reason}");

        let early = write_certificate(dir.path(), 2190, 2200);
        let (_, reason) = certified_key(&early).err().unwrap();
        assert!(reason.contains("2190.crt: the certificate is not valid before Jan  1 00:00:00 2190"), "{reason}");
    }

    #[test]
    fn subjects_are_escaped_as_rfc_4514_says() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Org");
        params.distinguished_name.push(rcgen::DnType::CommonName, "evil, O=admin+x");
        let cert = params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        let subject = rfc4514(parsed.subject());
        assert!(subject.contains(r"CN=evil\, O\=admin\+x"), "{subject}");
        assert!(subject.contains("O=Org"), "{subject}");
        assert_eq!(subject.matches(',').count() - subject.matches(r"\,").count(), 1, "{subject}");
    }
}
