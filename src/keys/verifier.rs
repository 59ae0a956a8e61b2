//! Key material -> one parsed aws-lc-rs verifier per pinned algorithm, so a
//! signature check is the crypto and nothing else: the key was decoded,
//! validated and turned into an `EVP_PKEY` when its set was built.

use aws_lc_rs::{digest, hmac, signature};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;

/// An RSA-8192 signature; anything longer is no signature of ours.
const MAX_SIGNATURE_BYTES: usize = 1024;

/// A key's public numbers (or secret), decoded from its JWK or PEM.
pub(crate) enum Material {
    /// Big-endian modulus and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point: `0x04 || x || y`.
    Ec(Vec<u8>),
    Ed25519(Vec<u8>),
    Secret(Vec<u8>),
}

pub(crate) enum Verifier {
    Public(signature::ParsedPublicKey),
    // boxed: an HMAC key holds its padded inner and outer states (1 KiB)
    Secret(Box<hmac::Key>),
}

/// Identifies a key's material and the algorithms it is pinned to.
pub(crate) type KeyFingerprint = [u8; 32];

impl Material {
    /// The verifier for `alg`; an algorithm that does not fit the material
    /// is an error here, at load, never a request-time surprise.
    pub(crate) fn verifier(&self, alg: Algorithm) -> Result<Verifier, String> {
        use Algorithm::*;
        let public = |algorithm: &'static dyn signature::VerificationAlgorithm, bytes: &[u8]| {
            signature::ParsedPublicKey::new(algorithm, bytes).map(Verifier::Public)
        };
        let parsed = match (self, alg) {
            (Material::Rsa { n, e }, _) => {
                let parameters = rsa_parameters(alg).ok_or_else(|| format!("{alg:?} does not fit an RSA key"))?;
                let components =
                    signature::RsaPublicKeyComponents { n: without_leading_zeros(n), e: without_leading_zeros(e) };
                components.to_parsed_public_key(parameters).map(Verifier::Public)
            }
            (Material::Ec(point), ES256) => public(&signature::ECDSA_P256_SHA256_FIXED, point),
            (Material::Ec(point), ES384) => public(&signature::ECDSA_P384_SHA384_FIXED, point),
            (Material::Ed25519(x), EdDSA) => public(&signature::ED25519, x),
            (Material::Secret(secret), HS256 | HS384 | HS512) => {
                let algorithm = match alg {
                    HS256 => hmac::HMAC_SHA256,
                    HS384 => hmac::HMAC_SHA384,
                    _ => hmac::HMAC_SHA512,
                };
                Ok(Verifier::Secret(Box::new(hmac::Key::new(algorithm, secret))))
            }
            _ => return Err(format!("{alg:?} does not fit the key")),
        };
        parsed.map_err(|e| format!("unusable key: {e}"))
    }

    /// SHA-256 over the key id, the pinned algorithms and the material.
    pub(crate) fn fingerprint(&self, kid: Option<&str>, algorithms: &[Algorithm]) -> KeyFingerprint {
        let mut context = digest::Context::new(&digest::SHA256);
        let mut field = |bytes: &[u8]| {
            context.update(&(bytes.len() as u64).to_be_bytes());
            context.update(bytes);
        };
        field(kid.unwrap_or_default().as_bytes());
        field(format!("{algorithms:?}").as_bytes());
        match self {
            Material::Rsa { n, e } => {
                field(b"RSA");
                field(n);
                field(e);
            }
            Material::Ec(point) => field(point),
            Material::Ed25519(x) => field(x),
            Material::Secret(secret) => field(secret),
        }
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(context.finish().as_ref());
        fingerprint
    }
}

impl Verifier {
    /// Checks a base64url signature over `message`.
    pub(crate) fn verify(&self, message: &[u8], encoded_signature: &str) -> bool {
        let mut buffer = [0u8; MAX_SIGNATURE_BYTES];
        let Ok(length) = URL_SAFE_NO_PAD.decode_slice(encoded_signature, &mut buffer) else {
            return false;
        };
        let signature = &buffer[..length];
        match self {
            Verifier::Public(key) => key.verify_sig(message, signature).is_ok(),
            Verifier::Secret(key) => hmac::verify(key, message, signature).is_ok(),
        }
    }
}

fn rsa_parameters(alg: Algorithm) -> Option<&'static signature::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

fn without_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}
