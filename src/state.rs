//! The live snapshot: the compiled config and every provider's key set,
//! held together in one `ArcSwap` so a request sees one consistent pair.
//!
//! A request loads it once and keeps that `Arc` to the end, so it finishes
//! on the config and keys it started with. Only `control` replaces it.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::auth::ClaimNames;
use crate::config::{Config, ConfigError, ProviderConfig, ServerConfig};
use crate::headers::IdentityHeaders;
use crate::keys::KeySet;
use crate::metrics::{Metrics, ProviderMetrics, RouteMetrics};
use crate::refetch::Refetch;
use crate::revocation::Revocations;
use crate::route::RouteTable;
use crate::token::ClaimRules;
use crate::token_cache::TokenCache;

pub(crate) type SharedState = Arc<ArcSwap<Snapshot>>;

pub(crate) struct Snapshot {
    pub(crate) config: Arc<Compiled>,
    /// One per provider, same order as `config.providers`.
    pub(crate) keys: Vec<Arc<KeySet>>,
}

/// Everything derived from a `Config` that the request path needs, built
/// once per config so no request compiles anything.
pub(crate) struct Compiled {
    /// The config this was compiled from.
    pub(crate) source: Arc<Config>,
    pub(crate) server: ServerConfig,
    pub(crate) routes: RouteTable,
    pub(crate) identity_headers: IdentityHeaders,
    /// Every claim some route reads: kept (and rendered) per verified token.
    pub(crate) claim_names: Arc<ClaimNames>,
    /// Carried over by reloads; its entries check their provider and key.
    pub(crate) tokens: Arc<TokenCache>,
    /// The local copy of the revocation list; carried over by reloads that
    /// leave `[revocation]` as it was, else made anew (`control` starts
    /// and retires its sync loop).
    pub(crate) revocations: Option<Arc<Revocations>>,
    /// For requests no route matched.
    pub(crate) unrouted: RouteMetrics,
    /// Same order as `source.providers`. A reload carries a provider whose
    /// config did not change over, with its key loop and keys.
    pub(crate) providers: Vec<Arc<Provider>>,
}

pub(crate) struct Provider {
    pub(crate) config: ProviderConfig,
    pub(crate) rules: ClaimRules,
    pub(crate) refetch: Refetch,
    /// Stops the provider's key loop once a reload has dropped it.
    pub(crate) retired: CancellationToken,
    pub(crate) metrics: ProviderMetrics,
}

impl Provider {
    pub(crate) fn new(config: &ProviderConfig, retired: CancellationToken, metrics: &Arc<Metrics>) -> Provider {
        Provider {
            retired,
            metrics: metrics.provider(&config.name),
            rules: ClaimRules {
                audiences: config.audiences.clone(),
                leeway: config.leeway.as_secs_f64(),
                max_token_age: config.max_token_age.map(|age| age.as_secs_f64()),
                required_typ: config.required_typ.clone(),
            },
            refetch: Refetch::new(config.refetch_cooldown),
            config: config.clone(),
        }
    }
}

impl Compiled {
    /// `providers` are `config.providers`' (new or carried over); the
    /// upstream clients and token cache of `previous` are reused where
    /// they fit.
    pub(crate) fn new(
        config: Arc<Config>,
        providers: Vec<Arc<Provider>>,
        previous: Option<&Compiled>,
        metrics: &Arc<Metrics>,
    ) -> Result<Compiled, ConfigError> {
        let cache_size = config.server.tuning.token_cache_size;
        let tokens = match previous {
            Some(previous) if previous.tokens.capacity() == cache_size => previous.tokens.clone(),
            _ => Arc::new(TokenCache::new(cache_size, metrics)),
        };
        let claim_names = ClaimNames::new(config.routes.iter().flat_map(|r| {
            let injected = r.inject_headers.iter().map(|(_, claim)| claim);
            injected.chain(r.require_claims.iter().map(|requirement| &requirement.claim))
        }));
        // the same names, the same Arc: cached tokens stay usable
        let claim_names = match previous {
            Some(previous) if *previous.claim_names == claim_names => previous.claim_names.clone(),
            _ => Arc::new(claim_names),
        };
        let previous_list = previous.and_then(|p| p.revocations.as_ref());
        let revocations = match (&config.revocation, previous_list) {
            (Some(wanted), Some(kept)) if kept.config == *wanted => Some(kept.clone()),
            (Some(wanted), replaced) => {
                let list = Revocations::new(wanted).map_err(|reason| config.error("revocation.file", reason))?;
                if let Some(old) = replaced {
                    list.inherit(old);
                }
                Some(Arc::new(list))
            }
            (None, _) => None,
        };
        let routes = RouteTable::new(config.routes.clone(), previous.map(|p| &p.routes), metrics)
            .map_err(|(index, reason)| config.error(&format!("routes[{index}].upstream_ca_file"), reason))?;
        Ok(Compiled {
            server: config.server.clone(),
            routes,
            identity_headers: IdentityHeaders::new(config.routes.iter().flat_map(|r| {
                let claims = r.inject_headers.iter().map(|(name, _)| name);
                claims.chain(r.inject_client_cert.iter().map(|(name, _)| name))
            })),
            claim_names,
            tokens,
            revocations,
            providers,
            unrouted: metrics.route("-"),
            source: config,
        })
    }
}

impl Snapshot {
    /// The provider whose `issuer` is exactly `iss`, by index.
    pub(crate) fn provider_for(&self, iss: &str) -> Option<usize> {
        self.config.providers.iter().position(|p| p.config.issuer == iss)
    }

    /// Where `provider` is in this snapshot, if it is still part of it.
    pub(crate) fn position_of(&self, provider: &Arc<Provider>) -> Option<usize> {
        self.config.providers.iter().position(|p| Arc::ptr_eq(p, provider))
    }
}
