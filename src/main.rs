//! The `portcullis` command: parse the CLI, set up logging, call the library.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use portcullis::config::{LogConfig, LogFormat};
use portcullis::explain::Question;
use portcullis::revocation::{EntryFields, Revoked};
use portcullis::{Config, Gateway, Reloader};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "An authentication gateway: TLS, routes, JWT verification, identity headers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const DEFAULT_CONFIG: &str = "config/portcullis.toml";

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file (reloaded when it changes, or on SIGHUP).
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Load and validate a config file, print the routes it defines, and exit.
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Explain why a request would be allowed or denied: the route it
    /// matches, each check with its outcome, the decision, and the headers
    /// the upstream would receive. Exits 0 for allow, 1 for deny, 2 on error.
    Explain {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// GET, POST, ...
        method: String,
        /// `https://host/path?query`, or a path alone (sent to the first
        /// route's host, or `localhost`, unless `-H 'Host: ...'` names one).
        url: String,
        /// A request header, `Name: value`; repeat for more.
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// A token to send as `Authorization: Bearer`.
        #[arg(long)]
        token: Option<String>,
        /// Fetch nothing: use local key files and `cache_dir` only.
        #[arg(long)]
        offline: bool,
    },
    /// Start a self-contained demo on loopback: gateway, identity provider
    /// and echo upstream, with ready-to-paste commands.
    Dev {
        /// Where the gateway listens (loopback only).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Where the admin listener listens (loopback only).
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Revoke tokens: write one entry to the revocation list the config's
    /// `[revocation]` names (the file, or Redis). Gateways using the same
    /// list deny the tokens at their next read of it (through Redis: at once).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "sub", "sid"])))]
    Revoke {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The token with this `jti` (give its `--exp`).
        #[arg(long)]
        jti: Option<String>,
        /// Every token of this `sub` issued before `--before` (default now).
        #[arg(long)]
        sub: Option<String>,
        /// Every token of this session id `sid` (give the `--exp` of its last token).
        #[arg(long)]
        sid: Option<String>,
        /// Expiry of the token (or session), in seconds since the epoch.
        #[arg(long)]
        exp: Option<u64>,
        /// The cut-off for `--sub`, in seconds since the epoch.
        #[arg(long)]
        before: Option<u64>,
    },
    /// Exit 0 if `url` answers 2xx within 2 s, else 1: a health check for
    /// images without curl.
    Health {
        #[arg(long, default_value = "http://127.0.0.1:9901/healthz")]
        url: String,
    },
    /// Demo services for compose and trials; never for production.
    #[command(subcommand)]
    Demo(Demo),
}

#[derive(Subcommand)]
enum Demo {
    /// An identity provider: a JWKS, discovery, and `/token?sub=..&roles=a,b`
    /// minting one-hour tokens for anyone who asks.
    Idp {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        audience: String,
    },
    /// An upstream that answers every request with the request it got, as JSON.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // the runtime of every command but `run`, which sizes its own
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return fail(format!("cannot start the runtime: {error}")),
    };
    match cli.command {
        Command::Check { config } => {
            init_logging(&LogConfig::default());
            check(&config)
        }
        Command::Run { config } => {
            drop(runtime);
            run(&config)
        }
        Command::Explain { config, method, url, headers, token, offline } => {
            init_logging(&LogConfig { level: "warn".into(), ..LogConfig::default() });
            let question = Question { method, url, headers, token, offline };
            runtime.block_on(explain(&config, &question))
        }
        Command::Dev { listen, admin_listen } => {
            init_logging(&LogConfig::default());
            match runtime.block_on(portcullis::dev::run(listen, admin_listen, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => fail(error.to_string()),
            }
        }
        Command::Revoke { config, jti, sub, sid, exp, before } => {
            init_logging(&LogConfig { level: "warn".into(), ..LogConfig::default() });
            let fields = EntryFields { jti, sub, sid, exp, before };
            runtime.block_on(revoke(&config, fields))
        }
        Command::Health { url } => match runtime.block_on(portcullis::admin::probe(&url, Duration::from_secs(2))) {
            Ok(status) if status.is_success() => ExitCode::SUCCESS,
            Ok(status) => fail(format!("{url}: {status}")),
            Err(error) => fail(error),
        },
        Command::Demo(demo) => {
            init_logging(&LogConfig::default());
            let served = match demo {
                Demo::Idp { listen, issuer, audience } => {
                    runtime.block_on(portcullis::dev::demo_idp(listen, &issuer, &audience, shutdown_signal()))
                }
                Demo::Echo { listen } => runtime.block_on(portcullis::dev::demo_echo(listen, shutdown_signal())),
            };
            served.map_or_else(|error| fail(error.to_string()), |()| ExitCode::SUCCESS)
        }
    }
}

/// Logs to stderr as `[log]` says; `RUST_LOG`, when set, overrides the level.
fn init_logging(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // a closed stderr must not turn every logged request into a panic
        .log_internal_errors(false);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
    }
}

fn check(path: &Path) -> ExitCode {
    let config = match Config::load(path).and_then(|config| portcullis::check(&config).map(|()| config)) {
        Ok(config) => config,
        Err(error) => return fail(error.to_string()),
    };
    println!("{}: ok", config.origin);
    print!("{}", config.describe());
    ExitCode::SUCCESS
}

/// The config is read before the runtime starts: it says how many worker
/// threads to run.
fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => return fail(error.to_string()),
    };
    init_logging(&config.log);
    match serving_runtime(config.server.tuning.workers) {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(error) => fail(format!("cannot start the runtime: {error}")),
    }
}

/// One worker: a single-threaded runtime, with no work stealing or
/// cross-thread wakeups to pay for. More: a work-stealing pool of that many
/// threads (by default one per core).
fn serving_runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

async fn serve(config: Config) -> ExitCode {
    let gateway = match Gateway::bind(&config).await {
        Ok(gateway) => gateway,
        Err(error) => return fail(error.to_string()),
    };
    tracing::info!(
        addr = %gateway.local_addr(),
        admin = gateway.admin_addr().map(|addr| addr.to_string()),
        config = %config.origin,
        sha256 = %config.sha256,
        routes = config.routes.len(),
        "listening"
    );
    reload_on_hangup(gateway.reloader());
    gateway.serve(shutdown_signal()).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn revoke(path: &Path, fields: EntryFields) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => return fail(error.to_string()),
    };
    let revoked = match Revoked::try_from(fields) {
        Ok(revoked) => revoked,
        Err(error) => return fail_with(2, error),
    };
    match portcullis::revocation::revoke(&config, &revoked).await {
        Ok(()) => {
            println!("revoked: {}", serde_json::to_string(&revoked.fields()).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(error) => fail(error),
    }
}

async fn explain(path: &Path, question: &Question) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => return fail_with(2, error.to_string()),
    };
    match portcullis::explain::explain(&config, question).await {
        Ok(answer) => {
            print!("{}", answer.text);
            if answer.allowed { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(error) => fail_with(2, error.to_string()),
    }
}

fn fail(message: String) -> ExitCode {
    fail_with(1, message)
}

fn fail_with(code: u8, message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

/// `SIGHUP` re-reads the config file (errors are logged by the reloader).
fn reload_on_hangup(reloader: Reloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return tracing::warn!("cannot listen for SIGHUP: reload by editing the config file");
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config");
                let _ = reloader.reload().await;
            }
        });
    }
    #[cfg(not(unix))]
    drop(reloader);
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return drop(interrupt.await),
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
