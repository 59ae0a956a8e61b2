//! Where keys come from (JWKS URL, discovery, JWKS file, PEM file, shared
//! secret), every algorithm with a real key, tokens made by real issuers'
//! libraries, and the token rules a provider can add.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use portcullis::dev::{IdentityProvider, SigningKey, now};
use serde_json::{Value, json};

use crate::support::{AUDIENCE, ISSUER, Options, Stack, eventually};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/issuers");

/// A stack whose only route verifies tokens from the providers given.
async fn stack_with(providers: &str) -> Stack {
    let routes = "[[routes]]\nname = \"all\"\npath = \"/\"\nupstream = \"{upstream}\"\ninject_headers = { \"x-user-id\" = \"sub\" }\n";
    Stack::with(Options { routes: routes.into(), ..Options::providers(providers) }).await
}

fn claims(changes: Value) -> Value {
    let mut claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now(), "exp": now() + 600});
    for (name, value) in changes.as_object().unwrap() {
        claims[name] = value.clone();
    }
    claims
}

fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn every_algorithm_verifies_with_a_real_key() {
    let algorithms = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
    let keys: Vec<SigningKey> = algorithms.iter().map(|a| SigningKey::generate_for(*a, &format!("{a:?}"))).collect();
    let idp = IdentityProvider::start(ISSUER, AUDIENCE, Arc::new(SigningKey::generate("unused"))).await.unwrap();
    idp.publish(&keys.iter().collect::<Vec<_>>());
    let providers = r#"
[[providers]]
name = "idp"
issuer = "{issuer}"
jwks_url = "{jwks_url}"
audiences = ["orders"]
algorithms = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
"#;
    let key = Arc::new(SigningKey::generate("unused"));
    let options = Options::providers(providers);
    let stack = Stack::with_idp(options, idp, key).await;
    for (key, algorithm) in keys.iter().zip(algorithms) {
        let reply = stack.get_with_token("/orders", &key.sign(&claims(json!({})))).await;
        assert_eq!(reply.status, 200, "{algorithm:?}");
        assert_eq!(reply.upstream_header("x-user-id"), Some(json!("alice")));
    }
    // each JWK pins its alg: the same key under another alg of its family fails
    let rsa = &keys[0];
    for other in [Algorithm::RS512, Algorithm::PS256] {
        let mut header = Header::new(other);
        header.kid = rsa.kid().map(str::to_owned);
        let reply = stack.get_with_token("/orders", &rsa.sign_with(&header, &claims(json!({})))).await;
        assert_eq!(reply.status, 401, "RS256 key, {other:?} token");
        assert!(reply.header("www-authenticate").contains("algorithm"), "{}", reply.header("www-authenticate"));
    }
    assert_eq!(stack.echo.requests(), algorithms.len());
}

#[tokio::test]
async fn a_jwk_without_alg_verifies_only_the_providers_algorithms() {
    let key = Arc::new(SigningKey::generate("k1"));
    let idp = IdentityProvider::start(ISSUER, AUDIENCE, key.clone()).await.unwrap();
    let mut jwk = key.jwk().clone();
    jwk.as_object_mut().unwrap().remove("alg");
    jwk.as_object_mut().unwrap().remove("use");
    idp.publish_document(json!({"keys": [jwk]}));
    let stack = Stack::with_idp(Options::provider("algorithms = [\"PS256\"]"), idp, key.clone()).await;
    let header = |alg| Header { kid: Some("k1".into()), ..Header::new(alg) };
    let ps256 = key.sign_with(&header(Algorithm::PS256), &stack.claims(json!({})));
    assert_eq!(stack.get_with_token("/orders", &ps256).await.status, 200);
    let rs256 = key.sign_with(&header(Algorithm::RS256), &stack.claims(json!({})));
    assert_eq!(stack.get_with_token("/orders", &rs256).await.status, 401);
}

#[tokio::test]
async fn discovery_finds_the_jwks() {
    let key = Arc::new(SigningKey::generate("k1"));
    let idp = IdentityProvider::start_with_url_issuer(AUDIENCE, key.clone()).await.unwrap();
    let providers =
        "[[providers]]\nname = \"oidc\"\nissuer = \"{issuer}\"\ndiscovery = true\naudiences = [\"orders\"]\n";
    let stack = Stack::with_idp(Options::providers(providers), idp, key.clone()).await;
    let token = key.sign(&claims(json!({"iss": stack.idp.issuer()})));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 200);
}

#[tokio::test]
async fn discovery_refuses_a_document_for_another_issuer() {
    let key = Arc::new(SigningKey::generate("k1"));
    let idp = IdentityProvider::start_with_url_issuer(AUDIENCE, key.clone()).await.unwrap();
    // the configured issuer differs from what the document says (trailing slash)
    let providers =
        "[[providers]]\nname = \"oidc\"\nissuer = \"{issuer}/\"\ndiscovery = true\naudiences = [\"orders\"]\n";
    let stack = Stack::with_idp(Options::providers(providers), idp, key.clone()).await;
    let token = key.sign(&claims(json!({"iss": format!("{}/", stack.idp.issuer())})));
    assert_eq!(stack.get_with_token("/orders", &token).await.status, 503, "no keys were ever accepted");
    assert_eq!(stack.idp.fetches(), 0, "the JWKS it names was never fetched");
}

#[tokio::test]
async fn a_jwks_file_is_read_again_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let first = SigningKey::generate_for(Algorithm::ES256, "file-1");
    let secret = SigningKey::generate_for(Algorithm::HS256, "file-hs");
    let jwks = write(dir.path(), "jwks.json", json!({"keys": [first.jwk(), secret.jwk()]}).to_string());
    let providers = format!(
        "[[providers]]\nname = \"file\"\nissuer = \"{ISSUER}\"\njwks_file = {jwks:?}\naudiences = [\"orders\"]\nalgorithms = [\"ES256\", \"HS256\"]\n"
    );
    let stack = stack_with(&providers).await;
    assert_eq!(stack.get_with_token("/x", &first.sign(&claims(json!({})))).await.status, 200);
    assert_eq!(stack.get_with_token("/x", &secret.sign(&claims(json!({})))).await.status, 200, "oct keys from files");

    let second = SigningKey::generate_for(Algorithm::ES256, "file-2");
    let replacement = write(dir.path(), "jwks.json.new", json!({"keys": [second.jwk()]}).to_string());
    std::fs::rename(replacement, &jwks).unwrap();
    let rotated = eventually(Duration::from_secs(10), || async {
        stack.get_with_token("/x", &first.sign(&claims(json!({})))).await.status == 401
    })
    .await;
    assert!(rotated, "the old key still verifies");
    assert_eq!(stack.get_with_token("/x", &second.sign(&claims(json!({})))).await.status, 200);

    std::fs::write(&jwks, "{ not json").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await; // more than one check interval
    let reply = stack.get_with_token("/x", &second.sign(&claims(json!({})))).await;
    assert_eq!(reply.status, 200, "a broken file keeps the last good keys");
}

#[tokio::test]
async fn a_public_key_file_verifies_any_kid() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate_for(Algorithm::EdDSA, "whatever");
    let pem = write(dir.path(), "key.pem", key.public_pem().unwrap());
    let providers = format!(
        "[[providers]]\nname = \"pem\"\nissuer = \"{ISSUER}\"\npublic_key_file = {pem:?}\naudiences = [\"orders\"]\nalgorithms = [\"EdDSA\"]\n"
    );
    let stack = stack_with(&providers).await;
    assert_eq!(stack.get_with_token("/x", &key.sign(&claims(json!({})))).await.status, 200);
    let kidless = key.sign_with(&Header::new(Algorithm::EdDSA), &claims(json!({})));
    assert_eq!(stack.get_with_token("/x", &kidless).await.status, 200);
    let stranger = SigningKey::generate_for(Algorithm::EdDSA, "whatever");
    assert_eq!(stack.get_with_token("/x", &stranger.sign(&claims(json!({})))).await.status, 401);
}

#[tokio::test]
async fn unusable_local_keys_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = SigningKey::generate("k");
    let cases = [
        ("secret_file", write(dir.path(), "short", "s".repeat(31) + "\n"), "HS256", "shorter than 32"),
        (
            "public_key_file",
            write(dir.path(), "rsa.pem", rsa.public_pem().unwrap()),
            "ES256",
            "none of the provider's algorithms fits",
        ),
        ("public_key_file", write(dir.path(), "junk.pem", "not a key"), "RS256", "no RSA, EC or Ed25519 public key"),
        ("jwks_file", write(dir.path(), "empty.json", "{\"keys\": []}"), "RS256", "no usable key"),
        ("jwks_file", dir.path().join("missing.json").display().to_string(), "RS256", "missing.json"),
    ];
    for (source, path, algorithm, expected) in cases {
        let text = format!(
            "[[providers]]\nname = \"p\"\nissuer = \"i\"\n{source} = {path:?}\naudiences = [\"a\"]\nalgorithms = [\"{algorithm}\"]\n\
             [[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"http://127.0.0.1:1\"\n"
        );
        let config = portcullis::Config::parse(&text, "keys.toml").unwrap();
        let error = portcullis::check(&config).unwrap_err().to_string();
        assert!(error.starts_with(&format!("keys.toml:4: providers[0].{source}: ")), "{error}");
        assert!(error.contains(expected), "wanted {expected:?}: {error}");
    }
}

#[tokio::test]
async fn tokens_from_pyjwt_and_node_jose_verify() {
    let fixtures = Path::new(FIXTURES);
    let tokens: Vec<Value> = serde_json::from_slice(&std::fs::read(fixtures.join("tokens.json")).unwrap()).unwrap();
    let provider = |source: &str, algorithms: &str| {
        format!(
            "[[providers]]\nname = \"fixtures\"\nissuer = \"https://issuer.fixtures.test\"\n{source}\naudiences = [\"fixtures\"]\nalgorithms = {algorithms}\n"
        )
    };
    let jwks = format!("jwks_file = {:?}", fixtures.join("jwks.json").display().to_string());
    let secret = format!("secret_file = {:?}", fixtures.join("TEST-ONLY-hs256.secret").display().to_string());
    let routes = "[[routes]]\nname = \"all\"\npath = \"/\"\nupstream = \"{upstream}\"\n\
                  inject_headers = { \"x-user-id\" = \"sub\", \"x-django-user\" = \"user_id\" }\n";
    let asymmetric =
        Options { routes: routes.into(), ..Options::providers(&provider(&jwks, "[\"RS256\", \"ES256\", \"EdDSA\"]")) };
    let asymmetric = Stack::with(asymmetric).await;
    let hmac = Options { routes: routes.into(), ..Options::providers(&provider(&secret, "[\"HS256\"]")) };
    let hmac = Stack::with(hmac).await;
    for fixture in &tokens {
        let (library, alg, token) = (&fixture["library"], &fixture["alg"], fixture["token"].as_str().unwrap());
        let stack = if alg == "HS256" { &hmac } else { &asymmetric };
        let reply = stack.get_with_token("/", token).await;
        assert_eq!(reply.status, 200, "{library} {alg}: {}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.upstream_header("x-user-id"), Some(json!("fixture-user")), "{library} {alg}");
        if alg == "HS256" {
            assert_eq!(reply.upstream_header("x-django-user"), Some(json!("42")), "simplejwt's user_id");
        }
    }
    assert_eq!(tokens.len(), 5);
    let (asymmetric_tokens, hmac_tokens) = (asymmetric.echo.requests(), hmac.echo.requests());
    assert_eq!((asymmetric_tokens, hmac_tokens), (4, 1));
}

#[tokio::test]
async fn tokens_can_come_from_a_cookie() {
    let routes = r#"
[[routes]]
name = "browser"
path = "/app"
upstream = "{upstream}"
token_sources = ["cookie:session"]
inject_headers = { "x-user-id" = "sub" }

[[routes]]
name = "both"
path = "/api"
upstream = "{upstream}"
token_sources = ["header", "cookie:session"]
"#;
    let stack = Stack::with(Options::routes(routes)).await;
    let token = stack.token(json!({}));
    let cookie = format!("theme=dark; session={token}; lang=en");
    let reply = stack.get("/app", &[("cookie", &cookie)]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream_header("x-user-id"), Some(json!("alice")));
    assert_eq!(
        reply.upstream_header("cookie"),
        Some(json!("theme=dark; lang=en")),
        "the token cookie is not passed on"
    );

    let bearer = format!("Bearer {token}");
    let reply = stack.get("/app", &[("authorization", &bearer)]).await;
    assert_eq!(reply.status, 401, "this route reads only the cookie");
    assert_eq!(stack.get("/api", &[("cookie", &cookie)]).await.status, 200);
    let expired = format!("session={}", stack.token(json!({"exp": now() - 3600})));
    assert_eq!(stack.get("/app", &[("cookie", &expired)]).await.status, 401);
    let twice = format!("session={token}; session={token}");
    assert_eq!(stack.get("/app", &[("cookie", &twice)]).await.status, 400);
    assert_eq!(stack.echo.requests(), 2);
}

#[tokio::test]
async fn a_provider_can_require_the_access_token_type() {
    let stack = Stack::with(Options::provider("required_typ = \"at+jwt\"")).await;
    let typed = |typ: Option<&str>| {
        let header = Header { kid: Some("k1".into()), typ: typ.map(str::to_owned), ..Header::new(Algorithm::RS256) };
        stack.key.sign_with(&header, &stack.claims(json!({})))
    };
    for typ in ["at+jwt", "application/at+JWT"] {
        assert_eq!(stack.get_with_token("/orders", &typed(Some(typ))).await.status, 200, "{typ}");
    }
    for typ in [Some("JWT"), None] {
        let reply = stack.get_with_token("/orders", &typed(typ)).await;
        assert_eq!(reply.status, 401, "{typ:?}: an ID token is not an access token");
        assert!(reply.json()["error_description"].as_str().unwrap().contains("type"));
    }
}

#[tokio::test]
async fn a_provider_can_limit_token_lifetime() {
    let stack = Stack::with(Options::provider("max_token_age = \"1h\"")).await;
    let token = |lifetime: u64| stack.token(json!({"iat": now(), "exp": now() + lifetime}));
    assert_eq!(stack.get_with_token("/orders", &token(3600)).await.status, 200);
    assert_eq!(stack.get_with_token("/orders", &token(7200)).await.status, 401);
    assert_eq!(stack.get_with_token("/orders", &stack.token(json!({"iat": null}))).await.status, 401);
}

#[tokio::test]
async fn header_features_we_do_not_implement_are_refused() {
    let stack = Stack::start().await;
    let claims = stack.claims(json!({})).to_string();
    let cases = [
        r#"{"alg":"RS256","kid":"k1","crit":["exp"],"exp":1}"#,
        r#"{"alg":"RS256","kid":"k1","cty":"JWT"}"#,
        r#"{"alg":"RS256","kid":"k1","zip":"DEF"}"#,
        r#"{"alg":"RS256","kid":"k1","b64":false}"#,
        r#"{"alg":"RS256","kid":"k1","kid":"k1"}"#,
    ];
    for header in cases {
        let reply = stack.get_with_token("/orders", &stack.key.sign_raw(header, &claims)).await;
        assert_eq!(reply.status, 401, "{header}");
    }
    // keys named in the header are never fetched or used
    let foreign = SigningKey::generate("k1");
    let header = json!({"alg": "RS256", "kid": "k1", "jwk": foreign.jwk(), "jku": "http://127.0.0.1:1/jwks"});
    let reply = stack.get_with_token("/orders", &foreign.sign_raw(&header.to_string(), &claims)).await;
    assert_eq!(reply.status, 401);
    assert_eq!(stack.echo.requests(), 0);
}

#[tokio::test]
async fn duplicate_claims_never_grant_access() {
    let stack = Stack::start().await;
    let header = r#"{"alg":"RS256","kid":"k1"}"#;
    let (iss, exp) = (ISSUER, now() + 600);
    let payloads = [
        format!(r#"{{"iss":"{iss}","aud":"orders","exp":{exp},"sub":"alice","sub":"root"}}"#),
        format!(r#"{{"iss":"{iss}","aud":"orders","exp":{exp},"roles":["user"],"roles":["admin"]}}"#),
        format!(r#"{{"iss":"{iss}","aud":"payments","aud":"orders","exp":{exp}}}"#),
    ];
    for payload in payloads {
        let reply = stack.get_with_token("/admin", &stack.key.sign_raw(header, &payload)).await;
        assert_eq!(reply.status, 401, "{payload}");
        assert!(reply.json()["error_description"].as_str().unwrap().contains("twice"));
    }
    assert_eq!(stack.echo.requests(), 0);
}

#[tokio::test]
async fn routes_choose_their_providers_and_iss_picks_the_keys() {
    let partner_key = Arc::new(SigningKey::generate_for(Algorithm::ES256, "p1"));
    let partner = IdentityProvider::start("https://partner.test", AUDIENCE, partner_key.clone()).await.unwrap();
    let providers = format!(
        r#"
[[providers]]
name = "staff"
issuer = "{{issuer}}"
jwks_url = "{{jwks_url}}"
audiences = ["orders"]

[[providers]]
name = "partner"
issuer = "https://partner.test"
jwks_url = "{}"
audiences = ["orders"]
algorithms = ["ES256"]
"#,
        partner.jwks_url()
    );
    let routes = r#"
[[routes]]
name = "staff-only"
path = "/internal"
upstream = "{upstream}"
providers = ["staff"]

[[routes]]
name = "anyone"
path = "/"
upstream = "{upstream}"
"#;
    let stack = Stack::with(Options { routes: routes.into(), ..Options::providers(&providers) }).await;
    let staff = stack.token(json!({}));
    let partner_token = partner_key.sign(&stack.claims(json!({"iss": "https://partner.test"})));
    assert_eq!(stack.get_with_token("/internal", &staff).await.status, 200);
    assert_eq!(stack.get_with_token("/x", &partner_token).await.status, 200);
    let reply = stack.get_with_token("/internal", &partner_token).await;
    assert_eq!(reply.status, 401);
    assert!(reply.json()["error_description"].as_str().unwrap().contains("not accepted on this route"));
    // a partner key claiming the staff issuer finds only staff keys
    let impostor = partner_key.sign(&stack.claims(json!({})));
    assert_eq!(stack.get_with_token("/x", &impostor).await.status, 401);
    assert_eq!(partner.fetches(), 1);
}

#[tokio::test]
async fn a_missing_scope_is_named_in_the_challenge() {
    let routes = "[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"{upstream}\"\nrequire_claims = { scope = [\"orders:read\", \"orders:write\"] }\n";
    let stack = Stack::with(Options::routes(routes)).await;
    let reply = stack.get_with_token("/", &stack.token(json!({"scope": "orders:read profile"}))).await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.header("www-authenticate"),
        "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"orders:read orders:write\""
    );
    let reply = stack.get_with_token("/", &stack.token(json!({"scope": "orders:write orders:read"}))).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn credentials_that_were_not_checked_never_reach_the_upstream() {
    let routes = r#"
[[routes]]
name = "cookie-only"
path = "/app"
upstream = "{upstream}"
token_sources = ["cookie:session"]

[[routes]]
name = "cookie-optional"
path = "/maybe"
upstream = "{upstream}"
auth = "optional"
token_sources = ["cookie:session"]

[[routes]]
name = "both"
path = "/api"
upstream = "{upstream}"
token_sources = ["header", "cookie:session"]
forward_token = true
"#;
    let stack = Stack::with(Options::routes(routes)).await;
    let token = stack.token(json!({}));
    let forged = SigningKey::generate("k1").sign(&stack.claims(json!({"sub": "root"})));
    let session = format!("session={token}; theme=dark");
    let forged_bearer = format!("Bearer {forged}");

    let reply = stack.get("/app", &[("cookie", &session), ("authorization", &forged_bearer)]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream_header("authorization"), None, "a bearer nobody checked");

    for authorization in [forged_bearer.as_str(), "Basic YWxpY2U6c2VjcmV0"] {
        let reply = stack.get("/maybe", &[("authorization", authorization)]).await;
        assert_eq!(reply.status, 200, "anonymous on an optional cookie route");
        assert_eq!(reply.upstream_header("authorization"), None, "{authorization}");
    }

    let bearer = format!("Bearer {token}");
    let forged_cookie = format!("session={forged}; theme=dark");
    let reply = stack.get("/api", &[("authorization", &bearer), ("cookie", &forged_cookie)]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.upstream_header("authorization"), Some(json!(bearer)), "the checked one is forwarded");
    assert_eq!(reply.upstream_header("cookie"), Some(json!("theme=dark")), "a token cookie nobody checked");
}

/// A JWKS served over HTTPS with a certificate from a private CA; returns
/// its URL and the CA certificate's PEM.
async fn private_https_jwks(document: Value) -> (String, String) {
    use hyper_util::rt::TokioIo;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&leaf_key, &ca).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let tls = rustls::ServerConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(leaf.der().to_vec())], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}/jwks", listener.local_addr().unwrap().port());
    let body = bytes::Bytes::from(document.to_string());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else { return };
                let service = hyper::service::service_fn(move |_| {
                    let body = body.clone();
                    async move { Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(body))) }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (url, ca.pem())
}

#[tokio::test]
async fn a_private_ca_is_trusted_for_key_fetches_when_named() {
    let key = SigningKey::generate("k1");
    let (url, ca) = private_https_jwks(json!({"keys": [key.jwk()]})).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write(dir.path(), "ca.pem", ca);
    let provider = |extra: &str| {
        format!(
            "[[providers]]\nname = \"idp\"\nissuer = \"{ISSUER}\"\njwks_url = \"{url}\"\naudiences = [\"orders\"]\n{extra}\n"
        )
    };
    let trusting = stack_with(&provider(&format!("ca_file = {ca_file:?}"))).await;
    assert_eq!(trusting.get_with_token("/x", &key.sign(&claims(json!({})))).await.status, 200);
    let distrusting = stack_with(&provider("")).await;
    assert_eq!(distrusting.get_with_token("/x", &key.sign(&claims(json!({})))).await.status, 503);
}

#[tokio::test]
async fn simplejwt_tokens_without_kid_or_sub_verify_with_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "django-insecure-0123456789abcdefghijklmnopqrstuvwxyz";
    let secret_file = write(dir.path(), "secret", format!("{secret}\n"));
    let providers = format!(
        "[[providers]]\nname = \"django\"\nissuer = \"{ISSUER}\"\nsecret_file = {secret_file:?}\naudiences = [\"orders\"]\n"
    );
    let routes = "[[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"{upstream}\"\ninject_headers = { \"x-user-id\" = \"user_id\" }\n";
    let stack = Stack::with(Options { routes: routes.into(), ..Options::providers(&providers) }).await;
    let django = SigningKey::from_secret(Algorithm::HS256, secret.as_bytes());
    let claims = json!({
        "token_type": "access", "exp": now() + 300, "iat": now(), "jti": "9f2c", "user_id": 7,
        "iss": ISSUER, "aud": AUDIENCE,
    });
    let reply = stack.get_with_token("/", &django.sign(&claims)).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.upstream_header("x-user-id"), Some(json!("7")));
    let wrong = SigningKey::from_secret(Algorithm::HS256, &secret.as_bytes()[1..]);
    assert_eq!(stack.get_with_token("/", &wrong.sign(&claims)).await.status, 401);
}
