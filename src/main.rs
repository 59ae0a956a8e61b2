//! The `portcullis` command: parse the CLI, set up logging, call the library.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::{Config, Gateway, Reloader};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "An authentication gateway: TLS, routes, JWT verification, identity headers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file.
    Run {
        #[arg(long, default_value = "config/portcullis.toml")]
        config: PathBuf,
    },
    /// Load and validate a config file, print the routes it defines, and exit.
    Check {
        #[arg(long, default_value = "config/portcullis.toml")]
        config: PathBuf,
    },
    /// Start a self-contained demo on loopback: gateway, identity provider
    /// and echo upstream, with ready-to-paste commands.
    Dev {
        /// Where the gateway listens (loopback only).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // a closed stderr must not turn every logged request into a panic
        .log_internal_errors(false)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return fail(format!("cannot start the runtime: {error}")),
    };
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => runtime.block_on(run(&config)),
        Command::Dev { listen } => match runtime.block_on(portcullis::dev::run(listen, shutdown_signal())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => fail(error.to_string()),
        },
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

async fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => return fail(error.to_string()),
    };
    let gateway = match Gateway::bind(&config).await {
        Ok(gateway) => gateway,
        Err(error) => return fail(error.to_string()),
    };
    tracing::info!(addr = %gateway.local_addr(), config = %config.origin, routes = config.routes.len(), "listening");
    reload_on_hangup(gateway.reloader());
    gateway.serve(shutdown_signal()).await;
    ExitCode::SUCCESS
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
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
