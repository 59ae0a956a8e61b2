//! The route table: which route a request belongs to.
//!
//! Routes are kept in match order (a route with `host` before one without,
//! then the longest path), so the first match is the most specific one.
//! Path prefixes match whole segments: `/orders` matches `/orders` and
//! `/orders/1`, never `/ordersX`. Paths arrive canonical (see `path`).

use std::collections::HashMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use http::Method;

use crate::config::{PathMatch, RouteConfig, UpstreamProtocol};
use crate::metrics::{Metrics, RouteMetrics};
use crate::upstream::UpstreamClient;

pub(crate) struct RouteTable {
    routes: Vec<Route>,
}

/// A route and the pooled client for its kind of upstream.
pub(crate) struct Route {
    pub(crate) config: RouteConfig,
    pub(crate) client: Arc<UpstreamClient>,
    pub(crate) metrics: RouteMetrics,
}

impl Deref for Route {
    type Target = RouteConfig;

    fn deref(&self) -> &RouteConfig {
        &self.config
    }
}

impl RouteTable {
    /// `routes` must already be in match order, as `Config` keeps them.
    /// Routes with the same upstream CA and protocol share one client, and
    /// those that trust the system's roots keep `previous`'s (and its
    /// pooled connections); a CA file is read afresh, as it may have changed.
    /// Fails with the file index of a route whose CA file cannot be used.
    pub(crate) fn new(
        routes: Vec<RouteConfig>,
        previous: Option<&RouteTable>,
        metrics: &Arc<Metrics>,
    ) -> Result<RouteTable, (usize, String)> {
        let mut clients: HashMap<(Option<PathBuf>, UpstreamProtocol), Arc<UpstreamClient>> = previous
            .into_iter()
            .flat_map(|table| &table.routes)
            .filter(|route| route.upstream_ca_file.is_none())
            .map(|route| ((None, route.upstream_protocol), route.client.clone()))
            .collect();
        let mut table = Vec::with_capacity(routes.len());
        for config in routes {
            let kind = (config.upstream_ca_file.clone(), config.upstream_protocol);
            let client = match clients.get(&kind) {
                Some(client) => client.clone(),
                None => {
                    let client = UpstreamClient::new(kind.0.as_deref(), kind.1).map_err(|e| (config.index, e))?;
                    clients.entry(kind).or_insert(Arc::new(client)).clone()
                }
            };
            table.push(Route { metrics: metrics.route(&config.name), config, client });
        }
        Ok(RouteTable { routes: table })
    }

    pub(crate) fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// The most specific route for a request, and its index; `host` is
    /// lowercase, without port.
    pub(crate) fn find(&self, host: Option<&str>, path: &str, method: &Method) -> Option<(usize, &Route)> {
        self.routes.iter().enumerate().find(|(_, route)| route.mismatch(host, path, method).is_none())
    }

    /// Every route in match order, with why it does not match (`None`: it does).
    pub(crate) fn explain<'a>(
        &'a self,
        host: Option<&'a str>,
        path: &'a str,
        method: &'a Method,
    ) -> impl Iterator<Item = (&'a Route, Option<Mismatch>)> + 'a {
        self.routes.iter().map(move |route| (route, route.mismatch(host, path, method)))
    }
}

/// Why a route does not match a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mismatch {
    Host,
    Path,
    Method,
}

impl Route {
    fn mismatch(&self, host: Option<&str>, path: &str, method: &Method) -> Option<Mismatch> {
        if self.host.as_deref().is_some_and(|wanted| Some(wanted) != host) {
            return Some(Mismatch::Host);
        }
        let path_matches = match self.path_match {
            PathMatch::Prefix => path_has_prefix(path, &self.path),
            PathMatch::Exact => path == self.path,
        };
        if !path_matches {
            return Some(Mismatch::Path);
        }
        if self.methods.as_ref().is_some_and(|methods| !methods.contains(method)) {
            return Some(Mismatch::Method);
        }
        None
    }
}

/// Segment-aware prefix match.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table(routes: &str) -> RouteTable {
        let text = format!(
            "[[providers]]\nname = \"p\"\nissuer = \"i\"\njwks_url = \"http://127.0.0.1/j\"\naudiences = [\"a\"]\n{routes}"
        );
        RouteTable::new(Config::parse(&text, "test.toml").unwrap().routes, None, &Metrics::new()).unwrap()
    }

    fn name<'a>(table: &'a RouteTable, host: Option<&str>, path: &str, method: Method) -> Option<&'a str> {
        table.find(host, path, &method).map(|(_, r)| r.name.as_str())
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let t = table("[[routes]]\nname = \"orders\"\npath = \"/orders\"\nupstream = \"http://o\"\n");
        assert_eq!(name(&t, None, "/orders", Method::GET), Some("orders"));
        assert_eq!(name(&t, None, "/orders/1", Method::GET), Some("orders"));
        assert_eq!(name(&t, None, "/ordersX", Method::GET), None);
        assert_eq!(name(&t, None, "/order", Method::GET), None);
    }

    #[test]
    fn the_most_specific_route_wins() {
        let t = table(
            r#"
            [[routes]]
            name = "root"
            path = "/"
            upstream = "http://a"
            [[routes]]
            name = "orders"
            path = "/orders"
            upstream = "http://b"
            [[routes]]
            name = "orders-on-api"
            path = "/"
            host = "API.example.com"
            upstream = "http://c"
            [[routes]]
            name = "orders-exact"
            path = "/orders"
            path_match = "exact"
            upstream = "http://e"
            [[routes]]
            name = "orders-write"
            path = "/orders/new"
            methods = ["post"]
            upstream = "http://d"
            "#,
        );
        assert_eq!(name(&t, None, "/x", Method::GET), Some("root"));
        assert_eq!(name(&t, None, "/orders/1", Method::GET), Some("orders"));
        assert_eq!(name(&t, None, "/orders", Method::GET), Some("orders-exact"), "exact before prefix");
        assert_eq!(name(&t, Some("api.example.com"), "/orders/1", Method::GET), Some("orders-on-api"));
        assert_eq!(name(&t, None, "/orders/new", Method::POST), Some("orders-write"));
        assert_eq!(name(&t, None, "/orders/new", Method::GET), Some("orders"));
    }
}
