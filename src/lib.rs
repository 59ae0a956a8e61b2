//! Portcullis: an authentication gateway.
//!
//! It terminates TLS, matches each request to a route from a TOML file,
//! verifies the bearer JWT against the identity provider's JWKS, strips
//! identity headers a client tried to send, injects the verified ones, and
//! streams the request to the route's upstream.
//!
//! The binary (`main.rs`) is a thin CLI over this library; the tests start
//! the gateway in-process through it.

#![forbid(unsafe_code)]

mod access;
pub mod admin;
mod auth;
mod body;
pub mod config;
mod connection;
mod control;
pub mod dev;
mod error;
pub mod explain;
mod forwarded;
#[doc(hidden)]
pub mod fuzzing;
mod headers;
mod keys;
mod metrics;
mod path;
mod proxy;
mod refetch;
mod reload;
mod request;
pub mod revocation;
mod route;
mod server;
mod state;
mod tls;
mod token;
mod token_cache;
mod upstream;

pub use config::{Config, ConfigError};
pub use reload::Reloader;
pub use server::{Gateway, StartError};

/// Loads everything `Gateway::bind` would (TLS files included) without
/// binding: what `portcullis check` runs.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    server::preflight(config)
}
