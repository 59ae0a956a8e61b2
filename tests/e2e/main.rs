//! End-to-end tests: real TLS, real HTTP, a real JWKS server and upstream,
//! all in-process on 127.0.0.1 ephemeral ports. One binary, linked once.

mod cli;
mod hardening;
mod identity;
mod key_sources;
mod keys;
mod operations;
mod proxying;
mod reload;
mod revocation;
mod revocation_redis;
mod running;
mod shutdown;
mod streaming;
mod support;
mod tls;
mod token_cache;
mod tokens;
mod upstreams;
mod websocket;
