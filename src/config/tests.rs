//! The config rules, each with the message a user sees.

use super::*;

const PROVIDER: &str = r#"
[[providers]]
name = "idp"
issuer = "https://idp.test"
jwks_url = "https://idp.test/jwks"
audiences = ["api"]
"#;

fn error(routes: &str) -> String {
    Config::parse(&format!("{PROVIDER}{routes}"), "t.toml").map(|_| String::new()).unwrap_or_else(|e| e.to_string())
}

fn route(extra: &str) -> String {
    format!("[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"http://u\"\n{extra}\n")
}

#[test]
fn route_rules_are_enforced_with_the_key_and_line() {
    let cases = [
        (route("host = \"api.test:443\""), "t.toml:11: routes[0].host: \"api.test:443\" must be a bare host name"),
        (route("methods = []"), "t.toml:11: routes[0].methods: list at least one method"),
        (route("methods = [\"GE T\"]"), "routes[0].methods: \"GE T\" is not an HTTP method"),
        (
            route("auth = \"optional\"\nrequire_claims = { roles = \"a\" }"),
            "routes[0].require_claims: claims can only be required",
        ),
        (
            route("auth = \"public\"\ninject_headers = { \"x-id\" = \"sub\" }"),
            "routes[0].inject_headers: a public route",
        ),
        (route("inject_headers = { \"x_id\" = \"sub\" }"), "routes[0].inject_headers.x_id: use '-'"),
        (route("inject_headers = { \"x-forwarded-for\" = \"sub\" }"), "is managed by the proxy"),
        (route("require_claims = { roles = [] }"), "routes[0].require_claims.roles: give a claim name"),
        (route("upstream_timeout = \"0s\""), "routes[0].upstream_timeout: must be between 1ms and 1day"),
        (route("auth = \"sometimes\""), "t.toml:11: routes[0].auth: unknown variant `sometimes`"),
        (format!("{}{}", route(""), route("")), "routes[1].name: \"r\" is the same as routes[0]'s"),
        (
            format!(
                "{}{}",
                route("methods = [\"GET\", \"POST\"]"),
                route("methods = [\"post\"]").replace("\"r\"", "\"s\"")
            ),
            "routes[1].path: routes[0] (\"r\") has the same host and path and takes all its methods",
        ),
        (String::new(), "routes: at least one [[routes]] entry is needed"),
    ];
    for (routes, expected) in cases {
        let message = error(&routes);
        assert!(message.contains(expected), "wanted {expected:?}, got {message:?}");
    }
}

#[test]
fn a_route_that_could_still_match_is_accepted() {
    let named = |name: &str, extra: &str| route(extra).replace("\"r\"", &format!("{name:?}"));
    let accepted = [
        format!("{}{}", named("a", "methods = [\"GET\"]"), named("b", "methods = [\"POST\"]")),
        format!("{}{}", named("a", "methods = [\"GET\"]"), named("b", "")),
        format!("{}{}", named("a", ""), named("b", "host = \"api.test\"")),
    ];
    for routes in accepted {
        assert_eq!(error(&routes), "", "{routes}");
    }
}

#[test]
fn managed_headers_cannot_carry_claims() {
    for name in [
        "authorization",
        "Cookie",
        "content-length",
        "x-forwarded-for",
        "host",
        "connection",
        "transfer-encoding",
        "forwarded",
    ] {
        let message = error(&route(&format!("inject_headers = {{ \"{name}\" = \"sub\" }}")));
        assert!(message.contains("managed by the proxy"), "{name}: {message}");
    }
}

#[test]
fn provider_rules_are_enforced() {
    let with = |from: &str, to: &str| {
        let text = format!("{}{}", PROVIDER.replace(from, to), route(""));
        Config::parse(&text, "t.toml").unwrap_err().to_string()
    };
    assert!(with("https://idp.test/jwks", "ftp://idp.test/jwks").contains("providers[0].jwks_url: scheme \"ftp\""));
    assert!(with("https://idp.test/jwks", "not a url").contains("providers[0].jwks_url:"));
    assert!(with("audiences = [\"api\"]", "audiences = []").contains("providers[0].audiences"));
    assert!(with("issuer = \"https://idp.test\"", "issuer = \" \"").contains("providers[0].issuer: must not be empty"));
    assert!(with("audiences", "leeway = \"10m\"\naudiences").contains("providers[0].leeway"));
    let twice = format!("{PROVIDER}{}{}", PROVIDER.replace("\"idp\"", "\"idp2\""), route(""));
    let message = Config::parse(&twice, "t.toml").unwrap_err().to_string();
    assert!(
        message.contains("t.toml:10: providers[1].issuer: \"https://idp.test\" is the same as providers[0]'s"),
        "{message}"
    );
    let public_only = Config::parse(&route("auth = \"public\""), "t.toml");
    assert!(public_only.is_ok(), "no provider is needed when no route verifies");
    let message = Config::parse(&route(""), "t.toml").unwrap_err().to_string();
    assert!(message.contains("routes[0].auth: auth = \"required\" needs at least one [[providers]]"), "{message}");
}

fn provider_error(replace: &str, with: &str) -> String {
    let text = format!("{}{}", PROVIDER.replace(replace, with), route(""));
    Config::parse(&text, "t.toml").map(|_| String::new()).unwrap_or_else(|e| e.to_string())
}

#[test]
fn exactly_one_key_source() {
    let jwks = "jwks_url = \"https://idp.test/jwks\"";
    let cases = [
        (jwks, "", "t.toml:2: providers[0]: name where keys come from"),
        (jwks, "discovery = false", "providers[0]: name where keys come from"),
        (
            jwks,
            "jwks_url = \"https://idp.test/jwks\"\njwks_file = \"k.json\"",
            "providers[0].jwks_file: set only one key source, not jwks_url and jwks_file",
        ),
        (
            jwks,
            "secret_env = \"S\"\nrefresh_interval = \"1m\"",
            "providers[0].refresh_interval: applies to jwks_url and discovery only, not secret_env",
        ),
        (
            jwks,
            "jwks_file = \"k.json\"\ncache_dir = \"/tmp\"",
            "providers[0].cache_dir: applies to jwks_url and discovery only",
        ),
        (
            jwks,
            "secret_env = \"S\"\nalgorithms = [\"RS256\"]",
            "providers[0].algorithms: a shared secret verifies HS256/384/512 only",
        ),
        (
            jwks,
            "jwks_url = \"https://i/j\"\nalgorithms = [\"HS256\"]",
            "providers[0].algorithms: HS256 needs a shared secret",
        ),
        (
            jwks,
            "jwks_url = \"https://i/j\"\nalgorithms = [\"none\"]",
            "providers[0].algorithms: \"none\" is not one of",
        ),
        (
            jwks,
            "jwks_url = \"https://i/j\"\nmin_refresh = \"2h\"",
            "providers[0].max_refresh: must not be shorter than min_refresh",
        ),
        (
            "issuer = \"https://idp.test\"\njwks_url = \"https://idp.test/jwks\"",
            "issuer = \"idp\"\ndiscovery = true",
            "providers[0].issuer: discovery needs an issuer URL",
        ),
        ("name = \"idp\"", "name = \"i/dp\"", "providers[0].name: use letters, digits"),
        (
            jwks,
            "jwks_url = \"https://i/j\"\nmax_stale = \"400000y\"",
            "providers[0].max_stale: must be between 0s and 1year",
        ),
        (
            jwks,
            "jwks_url = \"https://i/j\"\nrefetch_cooldown = \"1ms\"",
            "providers[0].refetch_cooldown: must be between 100ms and 1h",
        ),
    ];
    for (replace, with, expected) in cases {
        let message = provider_error(replace, with);
        assert!(message.contains(expected), "wanted {expected:?}, got {message:?}");
    }
}

#[test]
fn key_sources_and_their_defaults() {
    let jwks = "jwks_url = \"https://idp.test/jwks\"";
    let parse = |with: &str| {
        let text = format!("{}{}", PROVIDER.replace(jwks, with), route(""));
        Config::parse(&text, "t.toml").unwrap().providers.remove(0)
    };
    let secret = parse("secret_file = \"s.txt\"");
    assert_eq!(secret.source, KeySource::SecretFile("s.txt".into()));
    assert_eq!(secret.algorithms, [Algorithm::HS256], "secrets default to HS256");
    let discovery = parse("discovery = true");
    let KeySource::Remote(remote) = &discovery.source else {
        panic!("{:?}", discovery.source);
    };
    let RemoteLocation::Discovery(url) = &remote.location else {
        panic!("{:?}", remote.location);
    };
    assert_eq!(url.as_str(), "https://idp.test/.well-known/openid-configuration");
    let pem = parse(
        "public_key_file = \"k.pem\"\nalgorithms = [\"ES256\", \"EdDSA\"]\nrequired_typ = \"application/AT+JWT\"",
    );
    assert_eq!(pem.algorithms, [Algorithm::ES256, Algorithm::EdDSA]);
    assert_eq!(pem.required_typ.as_deref(), Some("at+jwt"));
    let remote = parse("jwks_url = \"https://i/j\"\nmax_jwks_size = \"64 KiB\"\nmax_stale = \"0s\"");
    let KeySource::Remote(remote) = remote.source else { panic!() };
    assert_eq!((remote.max_size, remote.max_stale), (64 * 1024, Duration::ZERO));
}

#[test]
fn route_providers_and_token_sources() {
    let parse = |extra: &str| Config::parse(&format!("{PROVIDER}{}", route(extra)), "t.toml");
    let config = parse("providers = [\"idp\"]\ntoken_sources = [\"cookie:session\", \"header\"]").unwrap();
    assert_eq!(config.routes[0].providers, Some(vec![0]));
    assert_eq!(config.routes[0].token_sources, [TokenSource::Cookie("session".into()), TokenSource::Header]);
    let cases = [
        ("providers = [\"nope\"]", "routes[0].providers: \"nope\" is not the name of a [[providers]] entry"),
        ("providers = []", "routes[0].providers: list at least one provider"),
        ("token_sources = [\"query:token\"]", "tokens in the query string are not supported"),
        ("token_sources = [\"cookie:\"]", "\"cookie:\" is not \"header\" or \"cookie:NAME\""),
        ("token_sources = [\"header\", \"header\"]", "\"header\" is listed twice"),
        (
            "auth = \"public\"\ntoken_sources = [\"header\"]",
            "routes[0].token_sources: a public route verifies no token",
        ),
    ];
    for (extra, expected) in cases {
        let message = parse(extra).unwrap_err().to_string();
        assert!(message.contains(expected), "wanted {expected:?}, got {message:?}");
    }
}

#[test]
fn defaults_and_normalisation() {
    let config =
        Config::parse(&format!("{PROVIDER}{}", route("host = \"API.Test\"\nmethods = [\"get\"]")), "t.toml").unwrap();
    assert_eq!(config.server.listen.to_string(), DEFAULT_LISTEN);
    assert!(config.server.tls.is_none());
    let provider = &config.providers[0];
    let KeySource::Remote(remote) = &provider.source else {
        panic!("{:?}", provider.source);
    };
    assert_eq!(remote.refresh_interval, DEFAULT_REFRESH_INTERVAL);
    assert_eq!((remote.min_refresh, remote.max_refresh), (DEFAULT_MIN_REFRESH, DEFAULT_MAX_REFRESH));
    assert_eq!(remote.max_size, DEFAULT_MAX_JWKS_SIZE);
    assert_eq!(remote.max_stale, DEFAULT_MAX_STALE);
    assert_eq!(provider.algorithms, [Algorithm::RS256]);
    assert_eq!(provider.leeway, DEFAULT_LEEWAY);
    let route = &config.routes[0];
    assert_eq!(route.auth, AuthMode::Required);
    assert_eq!(route.host.as_deref(), Some("api.test"));
    assert_eq!(route.methods, Some(vec![Method::GET]));
    assert!(!route.forward_token);
    assert_eq!(route.token_sources, [TokenSource::Header]);
    assert_eq!(route.providers, None);
    assert_eq!(route.upstream_timeout, DEFAULT_UPSTREAM_TIMEOUT);
}

#[test]
fn tuning_defaults_and_bounds() {
    let parse = |server: &str| Config::parse(&format!("[server]\n{server}\n{PROVIDER}{}", route("")), "t.toml");
    let tuning = parse("").unwrap().server.tuning;
    assert_eq!(tuning, Tuning { workers: None, token_cache_size: 100_000 });
    let tuning = parse("workers = 2\ntoken_cache_size = 0").unwrap().server.tuning;
    assert_eq!(tuning, Tuning { workers: Some(2), token_cache_size: 0 });
    for (server, expected) in [
        ("workers = 0", "server.workers: must be between 1 and 1024"),
        ("token_cache_size = 20000000", "server.token_cache_size: must be at most 10000000"),
    ] {
        let message = parse(server).unwrap_err().to_string();
        assert!(message.contains(expected), "wanted {expected:?}, got {message:?}");
    }
}

#[test]
fn a_provider_changed_only_in_its_rules_or_timing_loads_the_same_keys() {
    let provider = |extra: &str| {
        let text = format!("{PROVIDER}{extra}\n{}", route(""));
        Config::parse(&text, "t.toml").unwrap().providers.remove(0)
    };
    let running = provider("");
    for same in ["leeway = \"5s\"", "required_typ = \"at+jwt\"", "refresh_interval = \"1m\"", "max_stale = \"2d\""] {
        assert!(running.same_keys(&provider(same)), "{same}");
    }
    for other in ["algorithms = [\"ES256\"]", "max_jwks_size = \"2MiB\"", "ca_file = \"ca.pem\""] {
        assert!(!running.same_keys(&provider(other)), "{other}");
    }
}

#[test]
fn revocation_rules_name_the_key() {
    let table = |keys: &str| format!("{}[revocation]\n{keys}\n", route(""));
    let cases = [
        (table("backend = \"file\""), "revocation.file: backend = \"file\" needs the path"),
        (
            table("backend = \"file\"\nfile = \"r.toml\"\nurl = \"redis://r\""),
            "revocation.url: applies to backend = \"redis\"",
        ),
        (table("backend = \"redis\""), "revocation.url: backend = \"redis\" needs url"),
        (table("backend = \"redis\"\nurl = \"http://r\""), "revocation.url: \"http://r\" must be redis://"),
        (
            table("backend = \"redis\"\nurl = \"redis://r\"\nfile = \"x\""),
            "revocation.file: applies to backend = \"file\"",
        ),
        (table("backend = \"redis\"\nurl = \"redis://r\"\nkey_prefix = \"a*\""), "revocation.key_prefix: no spaces"),
        (table("backend = \"disk\""), "revocation.backend: unknown variant `disk`"),
        (
            table("backend = \"file\"\nfile = \"r.toml\"\nresync_interval = \"10s\"\nmax_staleness = \"5s\""),
            "revocation.max_staleness: must be longer than resync_interval",
        ),
        (
            table("backend = \"file\"\nfile = \"r.toml\"\nfail_mode = \"maybe\""),
            "revocation.fail_mode: unknown variant",
        ),
        (route("revocation = true"), "routes[0].revocation: needs a [revocation] table"),
        (route("auth = \"public\"\nrevocation = true"), "routes[0].revocation: a public route verifies no token"),
    ];
    for (text, expected) in cases {
        let message = error(&text);
        assert!(message.contains(expected), "wanted {expected:?}, got {message:?}");
    }
    let provider = Config::parse(&format!("{PROVIDER}revocation = true\n{}", route("")), "t.toml").unwrap_err();
    assert!(provider.to_string().contains("providers[0].revocation: needs a [revocation] table"), "{provider}");
}

#[test]
fn revocation_defaults() {
    let text = format!(
        "{PROVIDER}leeway = \"45s\"\n{}[revocation]\nbackend = \"redis\"\nurl = \"redis://r:6380/2\"\n",
        route("")
    );
    let config = Config::parse(&text, "t.toml").unwrap();
    let revocation = config.revocation.unwrap();
    assert_eq!(
        revocation,
        RevocationConfig {
            backend: RevocationBackend::Redis { url: "redis://r:6380/2".into(), key_prefix: "portcullis:".into() },
            resync_interval: Duration::from_secs(5),
            max_staleness: Duration::from_secs(30),
            fail_mode: FailMode::Closed,
            max_token_lifetime: Duration::from_secs(24 * 3600),
            expiry_grace: Duration::from_secs(300),
        }
    );
}
