//! `mint`: the keys and tokens of the benchmark (`bench/run.sh`, described
//! in `bench/README.md`).
//!
//! It makes one RSA-2048 key (RS256) and writes into `--out`:
//!
//! - `key.pem`: the public key as SPKI PEM, for HAProxy's `jwt_verify`;
//! - `jwks.json`: the same key as a JWKS, for Portcullis's `jwks_url`;
//! - `token.txt`: the "repeated" token, sent on every request of a run;
//! - `bad-token.txt`: the same claims and `kid`, signed by another key (401);
//! - `expired-token.txt`: signed by the key, expired an hour ago (401);
//! - `unique-0.txt` … `unique-{slices-1}.txt`: `--per-slice` tokens each,
//!   one a line, all different (unique `jti`), none shared between slices, so
//!   that each benchmark round sends tokens the gateway has never seen;
//! - `manifest.json`: what was minted and until when it is valid.
//!
//! Every token carries `iss`, `aud`, `sub`, `iat`, `exp` (now + 2 h) and
//! `jti`, with `kid` in the header. Signing costs about 0.3 ms of CPU per
//! token, so the unique ones are signed on every core, and a directory that
//! already holds enough tokens, for the same issuer and audience, valid for
//! at least `--min-valid` more seconds, is kept as it is: re-runs do not
//! re-mint. The private key is never written; a fresh mint makes a new key.
//!
//! The benchmark key signs through aws-lc-rs directly, with its key pair
//! parsed once (`jsonwebtoken::encode` parses the key on every call, which
//! doubles the cost), one copy of the key pair per thread (AWS-LC locks a
//! key while it signs); the JWK comes from jsonwebtoken, and one token is
//! verified with it before anything is written. The bad token's key is a
//! `portcullis::dev::SigningKey`, the stand-in identity provider's key.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Parser;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use portcullis::dev::{SigningKey, now};
use serde_json::{Value, json};

/// The `kid` of the benchmark key (the bad token's key claims it too).
const KID: &str = "bench-key-1";
/// Lifetime of the minted tokens, in seconds.
const LIFETIME: u64 = 2 * 3600;
/// Bumped when the files or their meaning change, so old caches are re-minted.
const FORMAT: u64 = 1;

#[derive(Parser)]
#[command(about = "Mint the benchmark's key, JWKS and tokens (bench/run.sh)")]
struct Args {
    /// The directory to write into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// The `iss` of every token.
    #[arg(long, default_value = "https://idp.bench.test")]
    issuer: String,
    /// The `aud` of every token.
    #[arg(long, default_value = "bench")]
    audience: String,
    /// How many files of unique tokens (one per benchmark round).
    #[arg(long, default_value_t = 1)]
    slices: usize,
    /// How many unique tokens in each file.
    #[arg(long, default_value_t = 100_000)]
    per_slice: usize,
    /// Keep an existing directory only if its tokens stay valid this many
    /// more seconds.
    #[arg(long, default_value_t = 3600)]
    min_valid: u64,
    /// Mint even if the directory could be kept.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mint: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> std::io::Result<()> {
    if !args.force
        && let Some(reason) = reusable(args)
    {
        println!("mint: keeping {} ({reason})", args.out.display());
        return Ok(());
    }
    let started = Instant::now();
    fs::create_dir_all(&args.out)?;
    // the manifest goes last: a mint cut short leaves a directory that is not reused
    remove_if_present(&args.out.join("manifest.json"))?;
    for entry in fs::read_dir(&args.out)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        if name.starts_with("unique-") && name.ends_with(".txt") {
            fs::remove_file(&path)?;
        }
    }

    let key = BenchKey::generate()?;
    let iat = now();
    let exp = iat + LIFETIME;
    let nonce = format!("{:08x}", fastrand::u32(..));
    let claims = |sub: &str, jti: &str, iat: u64, exp: u64| json!({"iss": args.issuer, "aud": args.audience, "sub": sub, "iat": iat, "exp": exp, "jti": jti});

    let repeated = key.sign(&claims("bench-user", &format!("{nonce}-repeated"), iat, exp));
    key.check(&repeated, args)?;
    fs::write(args.out.join("key.pem"), &key.public_pem)?;
    fs::write(args.out.join("jwks.json"), json!({"keys": [key.jwk]}).to_string())?;
    fs::write(args.out.join("token.txt"), format!("{repeated}\n"))?;
    let other = SigningKey::generate(KID);
    let bad = other.sign(&claims("bench-user", &format!("{nonce}-bad"), iat, exp));
    fs::write(args.out.join("bad-token.txt"), format!("{bad}\n"))?;
    let expired = key.sign(&claims("bench-user", &format!("{nonce}-expired"), iat - 2 * 3600, iat - 3600));
    fs::write(args.out.join("expired-token.txt"), format!("{expired}\n"))?;

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for slice in 0..args.slices {
        let sign = |pair: &KeyPair, i: usize| {
            let jti = format!("{nonce}-{slice}-{i}");
            key.sign_with(pair, &claims(&format!("user-{}", i % 10_000), &jti, iat, exp))
        };
        let tokens = sign_parallel(&key, args.per_slice, threads, sign)?;
        let path = args.out.join(format!("unique-{slice}.txt"));
        let mut file = BufWriter::new(File::create(&path)?);
        for token in &tokens {
            writeln!(file, "{token}")?;
        }
        file.into_inner().map_err(|error| error.into_error())?.sync_all()?;
        eprintln!("mint: {} ({} tokens)", path.display(), tokens.len());
    }

    let manifest = json!({
        "format": FORMAT,
        "kid": KID,
        "issuer": args.issuer,
        "audience": args.audience,
        "slices": args.slices,
        "per_slice": args.per_slice,
        "iat": iat,
        "exp": exp,
    });
    fs::write(args.out.join("manifest.json"), format!("{manifest:#}\n"))?;
    let signed = args.slices * args.per_slice + 3;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "mint: wrote {} ({signed} tokens in {seconds:.1} s, {:.0}/s on {threads} threads)",
        args.out.display(),
        signed as f64 / seconds.max(1e-9)
    );
    Ok(())
}

/// The benchmark's RS256 key: a parsed key pair, its JWK and public PEM.
struct BenchKey {
    pair: KeyPair,
    /// The private key, PKCS#8 DER, for copies of `pair`.
    pkcs8: Vec<u8>,
    /// The token header, base64url-encoded: the same for every token.
    header: String,
    jwk: Value,
    public_pem: String,
}

impl BenchKey {
    fn generate() -> std::io::Result<BenchKey> {
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(std::io::Error::other)?;
        let pkcs8 = pair.as_der().map_err(std::io::Error::other)?.as_ref().to_vec();
        let private = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.clone()));
        let encoding = EncodingKey::from_rsa_pem(private.as_bytes()).map_err(std::io::Error::other)?;
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&encoding, Algorithm::RS256).map_err(std::io::Error::other)?)?;
        jwk["use"] = json!("sig");
        jwk["kid"] = json!(KID);
        let public = pair.public_key().as_der().map_err(std::io::Error::other)?;
        let public_pem = pem::encode(&pem::Pem::new("PUBLIC KEY", public.as_ref()));
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": KID}).to_string();
        Ok(BenchKey { pair, pkcs8, header: URL_SAFE_NO_PAD.encode(header), jwk, public_pem })
    }

    /// Another key pair of the same key, for another thread.
    fn copy(&self) -> std::io::Result<KeyPair> {
        KeyPair::from_pkcs8(&self.pkcs8).map_err(std::io::Error::other)
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_with(&self.pair, claims)
    }

    /// Signs `claims` with `pair`, a copy of this key.
    fn sign_with(&self, pair: &KeyPair, claims: &Value) -> String {
        let message = format!("{}.{}", self.header, URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0; pair.public_modulus_len()];
        pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message.as_bytes(), &mut signature)
            .expect("signing with a generated key");
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// Verifies `token` as a gateway would, with the JWK the JWKS will hold.
    fn check(&self, token: &str, args: &Args) -> std::io::Result<()> {
        let jwk: Jwk = serde_json::from_value(self.jwk.clone())?;
        let key = DecodingKey::from_jwk(&jwk).map_err(std::io::Error::other)?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&args.issuer]);
        validation.set_audience(&[&args.audience]);
        jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map(drop)
            .map_err(|error| std::io::Error::other(format!("a minted token does not verify: {error}")))
    }
}

/// Why the existing directory can be kept, or `None` if it must be minted anew.
fn reusable(args: &Args) -> Option<String> {
    let text = fs::read_to_string(args.out.join("manifest.json")).ok()?;
    let manifest: Value = serde_json::from_str(&text).ok()?;
    let number = |name: &str| manifest[name].as_u64();
    let same = number("format") == Some(FORMAT)
        && manifest["kid"] == KID
        && manifest["issuer"] == args.issuer.as_str()
        && manifest["audience"] == args.audience.as_str();
    let slices = usize::try_from(number("slices")?).ok()?;
    let per_slice = usize::try_from(number("per_slice")?).ok()?;
    let left = number("exp")?.checked_sub(now())?;
    let files = ["key.pem", "jwks.json", "token.txt", "bad-token.txt", "expired-token.txt"]
        .into_iter()
        .map(str::to_owned)
        .chain((0..args.slices).map(|slice| format!("unique-{slice}.txt")))
        .all(|name| args.out.join(name).is_file());
    let enough = slices >= args.slices && per_slice >= args.per_slice;
    (same && enough && files && left >= args.min_valid)
        .then(|| format!("{slices} x {per_slice} unique tokens, valid {} more minutes", left / 60))
}

/// `count` results of `sign(pair, 0..count)`, in order, computed on
/// `threads` threads, each with its own copy of the key pair: threads
/// sharing one key pair take turns (AWS-LC locks an RSA key while it signs).
fn sign_parallel(
    key: &BenchKey,
    count: usize,
    threads: usize,
    sign: impl Fn(&KeyPair, usize) -> String + Sync,
) -> std::io::Result<Vec<String>> {
    let chunk = count.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        let sign = &sign;
        let workers: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                scope.spawn(move || -> std::io::Result<Vec<String>> {
                    let pair = key.copy()?;
                    Ok((start..(start + chunk).min(count)).map(|i| sign(&pair, i)).collect::<Vec<_>>())
                })
            })
            .collect();
        let mut tokens = Vec::with_capacity(count);
        for worker in workers {
            tokens.extend(worker.join().expect("a signing thread panicked")?);
        }
        Ok(tokens)
    })
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}
