//! Unit tests of the policy, the guard and its cache, static tokens and JWT
//! checks, with the fixture keys of tests/fixtures/auth.

use std::cell::Cell;
use std::rc::Rc;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;

const RSA_PRIVATE: &str = include_str!("../../tests/fixtures/auth/rsa-private.pem");
const EC_PRIVATE: &str = include_str!("../../tests/fixtures/auth/ec-private.pem");
const ROGUE_PRIVATE: &str = include_str!("../../tests/fixtures/auth/rogue-rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("../../tests/fixtures/auth/rsa-public.pem");
const JWKS: &str = include_str!("../../tests/fixtures/auth/jwks.json");

const RESOURCE: &str = "https://mcp.example.com/mcp";
const ISSUER: &str = "https://auth.example.com";

fn now() -> u64 {
    system_wall_clock()
}

fn jwt_config() -> AuthConfig {
    AuthConfig {
        mode: AuthMode::Jwt,
        resource: RESOURCE.into(),
        authorization_servers: vec![ISSUER.into()],
        scopes_supported: vec!["mcp:tools".into(), "mcp:admin".into()],
        scopes_required: vec!["mcp:tools".into()],
        issuer: ISSUER.into(),
        ..AuthConfig::default()
    }
}

fn jwt_policy(config: &AuthConfig) -> Arc<Policy> {
    let keys = jwt::JwtKeys::parse(JWKS, config).expect("fixture JWKS parses");
    Arc::new(Policy::new(config, Verifier::Jwt(keys)))
}

fn claims(sub: &str) -> serde_json::Value {
    json!({
        "iss": ISSUER, "sub": sub, "aud": RESOURCE,
        "exp": now() + 600, "iat": now(), "scope": "mcp:tools other",
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        _ => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
    };
    encode(&header, claims, &key).unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn a_good_rs256_or_es256_token_names_its_principal() {
    let guard = Guard::new(jwt_policy(&jwt_config()));
    let rsa = sign(Algorithm::RS256, Some("rsa-1"), &claims("alice"));
    let ec = sign(Algorithm::ES256, Some("ec-1"), &claims("alice"));
    let bob = sign(Algorithm::RS256, Some("rsa-1"), &claims("bob"));
    let alice = PrincipalId::of_jwt(ISSUER, "alice");
    assert_eq!(guard.authorize(Some(&bearer(&rsa)), None), Ok(alice));
    assert_eq!(guard.authorize(Some(&bearer(&ec)), None), Ok(alice));
    assert_ne!(guard.authorize(Some(&bearer(&bob)), None), Ok(alice));
    // The scheme is case-insensitive (RFC 7235).
    assert_eq!(
        guard.authorize(Some(&format!("bearer {rsa}")), None),
        Ok(alice)
    );
}

#[test]
fn bad_tokens_are_invalid_with_the_reason() {
    let guard = Guard::new(jwt_policy(&jwt_config()));
    let refused = |token: &str| guard.authorize(Some(&bearer(token)), None);
    let good = claims("alice");
    let with = |key: &str, value: serde_json::Value| {
        let mut claims = good.clone();
        claims[key] = value;
        claims
    };
    let cases = [
        (
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &with("iss", json!("https://evil.example")),
            ),
            "wrong issuer",
        ),
        (
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &with("aud", json!("https://other.example/mcp")),
            ),
            "wrong audience",
        ),
        (
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &with("exp", json!(now() - 3_600)),
            ),
            "expired",
        ),
        (
            sign(
                Algorithm::RS256,
                Some("rsa-1"),
                &with("nbf", json!(now() + 3_600)),
            ),
            "not valid yet",
        ),
        (
            sign(Algorithm::RS256, Some("nope"), &good),
            "unknown key id",
        ),
        (
            sign(Algorithm::RS256, None, &good),
            "the token names no key id",
        ),
        // An RSA signature presented as the EC key's.
        (
            sign(Algorithm::RS256, Some("ec-1"), &good),
            "algorithm not accepted for this key",
        ),
    ];
    for (token, why) in cases {
        assert_eq!(refused(&token), Err(Refusal::InvalidToken(why)), "{why}");
    }
    let mut no_sub = good.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        refused(&sign(Algorithm::RS256, Some("rsa-1"), &no_sub)),
        Err(Refusal::InvalidToken(
            "a required claim (exp, iss, aud, sub) is missing"
        ))
    );
    // Signed by a key the JWKS does not hold, under a kid it does.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let rogue = EncodingKey::from_rsa_pem(ROGUE_PRIVATE.as_bytes()).unwrap();
    let forged = encode(&header, &good, &rogue).unwrap();
    assert_eq!(
        refused(&forged),
        Err(Refusal::InvalidToken("bad signature"))
    );
    // Its payload swapped under a good signature.
    let real = sign(Algorithm::RS256, Some("rsa-1"), &good);
    let other = sign(Algorithm::RS256, Some("rsa-1"), &claims("mallory"));
    let parts: Vec<&str> = real.split('.').collect();
    let spliced = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );
    assert_eq!(
        refused(&spliced),
        Err(Refusal::InvalidToken("bad signature"))
    );
}

#[test]
fn alg_none_and_hmac_with_the_public_key_are_refused() {
    let guard = Guard::new(jwt_policy(&jwt_config()));
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"})),
        b64(claims("alice"))
    );
    assert!(matches!(
        guard.authorize(Some(&bearer(&none)), None),
        Err(Refusal::InvalidToken(_))
    ));
    // The classic confusion: HS256 keyed with the RSA public key's PEM.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let hmac = encode(
        &header,
        &claims("alice"),
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        guard.authorize(Some(&bearer(&hmac)), None),
        Err(Refusal::InvalidToken("algorithm not accepted for this key"))
    );
}

#[test]
fn missing_malformed_and_query_tokens() {
    let guard = Guard::new(jwt_policy(&jwt_config()));
    assert_eq!(guard.authorize(None, None), Err(Refusal::Missing));
    assert_eq!(
        guard.authorize(Some("Basic dXNlcjpwYXNz"), None),
        Err(Refusal::Missing),
        "another scheme is no bearer token"
    );
    for bad in [
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "Bearer ä",
        "Bearer not.a.jwt",
    ] {
        assert!(
            matches!(
                guard.authorize(Some(bad), None),
                Err(Refusal::InvalidToken(_))
            ),
            "{bad}"
        );
    }
    let good = sign(Algorithm::RS256, Some("rsa-1"), &claims("alice"));
    assert_eq!(
        guard.authorize(
            Some(&bearer(&good)),
            Some(&format!("x=1&access_token={good}"))
        ),
        Err(Refusal::TokenInQuery)
    );
    assert_eq!(
        guard.authorize(None, Some("access_token")),
        Err(Refusal::TokenInQuery)
    );
    assert!(guard
        .authorize(Some(&bearer(&good)), Some("sessionId=abc"))
        .is_ok());
}

#[test]
fn a_token_without_the_required_scopes_is_forbidden() {
    let guard = Guard::new(jwt_policy(&jwt_config()));
    let mut narrow = claims("alice");
    narrow["scope"] = json!("other");
    let token = sign(Algorithm::RS256, Some("rsa-1"), &narrow);
    assert_eq!(
        guard.authorize(Some(&bearer(&token)), None),
        Err(Refusal::InsufficientScope)
    );
    narrow.as_object_mut().unwrap().remove("scope");
    narrow["scp"] = json!(["mcp:tools"]);
    let token = sign(Algorithm::RS256, Some("rsa-1"), &narrow);
    assert!(
        guard.authorize(Some(&bearer(&token)), None).is_ok(),
        "scp list"
    );
}

#[test]
fn challenges_follow_rfc6750_and_point_to_the_metadata() {
    let policy = jwt_policy(&jwt_config());
    let metadata = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";
    assert_eq!(policy.metadata_url(), metadata);
    assert_eq!(
        policy.challenge(Refusal::Missing),
        format!(r#"Bearer resource_metadata="{metadata}", scope="mcp:tools""#)
    );
    let invalid = policy.challenge(Refusal::InvalidToken("expired"));
    assert!(
        invalid.contains(r#"error="invalid_token", error_description="expired""#),
        "{invalid}"
    );
    let scope = policy.challenge(Refusal::InsufficientScope);
    assert!(scope.contains(r#"error="insufficient_scope""#), "{scope}");
    assert!(scope.contains(r#"scope="mcp:tools""#), "{scope}");
    assert_eq!(Refusal::TokenInQuery.status(), "400 Bad Request");
    assert_eq!(Refusal::InsufficientScope.status(), "403 Forbidden");
}

#[test]
fn metadata_is_served_at_the_root_and_path_inserted_forms() {
    let mut config = jwt_config();
    config.resource = "https://mcp.example.com/public/mcp/".into();
    config.audience = "https://mcp.example.com/public/mcp/".into();
    let guard = Guard::new(jwt_policy(&config));
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/public/mcp",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let body = guard.metadata(path).unwrap_or_else(|| panic!("{path}"));
        let document: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            document,
            json!({
                "resource": "https://mcp.example.com/public/mcp/",
                "authorization_servers": [ISSUER],
                "scopes_supported": ["mcp:tools", "mcp:admin"],
                "bearer_methods_supported": ["header"],
            })
        );
    }
    assert_eq!(
        guard.metadata("/.well-known/oauth-protected-resource/x"),
        None
    );
    assert_eq!(guard.metadata("/mcp"), None);
    assert_eq!(split_resource("http://h:1"), ("http://h:1", ""));
    assert_eq!(split_resource("https://h/a/b?q=1"), ("https://h", "/a/b"));
}

#[test]
fn verified_tokens_are_cached_until_they_expire_and_the_cache_is_bounded() {
    let mut config = jwt_config();
    config.token_cache_entries_max = 2;
    config.leeway_secs = 0;
    let wall = Rc::new(Cell::new(now()));
    let clock = wall.clone();
    let guard = Guard::with_wall_clock(jwt_policy(&config), Box::new(move || clock.get()));
    let mut short = claims("alice");
    short["exp"] = json!(now() + 5);
    let token = sign(Algorithm::RS256, Some("rsa-1"), &short);
    assert!(guard.authorize(Some(&bearer(&token)), None).is_ok());
    assert_eq!(guard.cached_tokens(), 1);
    assert!(
        guard.authorize(Some(&bearer(&token)), None).is_ok(),
        "from the cache"
    );
    // Past its exp the cached entry no longer answers: the token is checked
    // again (and is still within its real exp, so it is re-cached).
    wall.set(now() + 10);
    assert!(guard.authorize(Some(&bearer(&token)), None).is_ok());
    for sub in ["b", "c", "d"] {
        let token = sign(Algorithm::ES256, Some("ec-1"), &claims(sub));
        assert!(guard.authorize(Some(&bearer(&token)), None).is_ok());
        assert!(guard.cached_tokens() <= 2, "bounded");
    }
}

#[test]
fn jwks_problems_are_named() {
    let config = jwt_config();
    let error = |text: &str| jwt::JwtKeys::parse(text, &config).err().unwrap();
    assert!(error("{").starts_with("not a JWKS"));
    assert_eq!(error(r#"{"keys":[]}"#), "the JWKS holds no keys");
    let oct = r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0"}]}"#;
    assert!(error(oct).contains("symmetric"), "{}", error(oct));
    let jwks: serde_json::Value = serde_json::from_str(JWKS).unwrap();
    let twice = json!({"keys": [jwks["keys"][0], jwks["keys"][0]]});
    assert_eq!(error(&twice.to_string()), "key `rsa-1` appears twice");
    let mut only_rsa = config.clone();
    only_rsa.algorithms = vec!["RS256".into()];
    let error = jwt::JwtKeys::parse(JWKS, &only_rsa).err().unwrap();
    assert!(
        error.starts_with("key `ec-1` fits none of auth.algorithms"),
        "{error}"
    );
    let mut small = config.clone();
    small.jwks_keys_max = 1;
    assert!(jwt::JwtKeys::parse(JWKS, &small).is_err());
}

#[test]
fn static_tokens_are_kept_as_digests_and_checked_by_name() {
    let required = vec!["mcp".to_string()];
    let text = format!(
        r#"
[[tokens]]
token = "alice-0123456789abcdef"
principal = "alice"
scopes = ["mcp"]

[[tokens]]
token_sha256 = "{}"
principal = "bob"
scopes = []
"#,
        hex(&sha256(b"bob-0123456789abcdef"))
    );
    let tokens = tokens::StaticTokens::parse(&text, false, 10, &required).unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!(
        tokens.lookup("alice-0123456789abcdef"),
        Some((PrincipalId::of_static("alice"), true))
    );
    assert_eq!(
        tokens.lookup("bob-0123456789abcdef"),
        Some((PrincipalId::of_static("bob"), false))
    );
    assert_eq!(tokens.lookup("alice-0123456789abcdeF"), None);
    let json = r#"{"tokens":[{"token":"carol-0123456789abcdef","principal":"carol"}]}"#;
    let tokens = tokens::StaticTokens::parse(json, true, 10, &[]).unwrap();
    assert!(tokens.lookup("carol-0123456789abcdef").is_some());

    let error = |text: &str| {
        tokens::StaticTokens::parse(text, false, 1, &[])
            .err()
            .unwrap()
    };
    assert_eq!(
        error("[[tokens]]\ntoken = \"short\"\nprincipal = \"a\"\n"),
        "tokens[0].token: at least 16 characters"
    );
    assert_eq!(
        error("[[tokens]]\nprincipal = \"a\"\n"),
        "tokens[0]: exactly one of token and token_sha256"
    );
    assert_eq!(
        error("[[tokens]]\ntoken_sha256 = \"+f\"\nprincipal = \"a\"\n"),
        "tokens[0].token_sha256: 64 hex digits"
    );
    assert_eq!(
        error("[[tokens]]\ntoken = \"0123456789abcdef\"\nprincipal = \"\"\n"),
        "tokens[0].principal: must not be empty"
    );
    assert!(error("[[tokens]]\ntoken = \"0123456789abcdef\"\nprincipal = \"a\"\n[[tokens]]\ntoken = \"0123456789abcdefg\"\nprincipal = \"b\"\n").contains("auth.tokens_max"));
    assert!(error("[[tokens]]\nprincipal = \"a\"\nrole = \"x\"\n").contains("role"));
    let twice = "[[tokens]]\ntoken = \"0123456789abcdef\"\nprincipal = \"a\"\n[[tokens]]\ntoken = \"0123456789abcdef\"\nprincipal = \"b\"\n";
    assert_eq!(
        tokens::StaticTokens::parse(twice, false, 5, &[])
            .err()
            .unwrap(),
        "tokens[1]: the same token appears twice"
    );
}

#[test]
fn load_reads_the_files_and_names_the_key_when_they_are_bad() {
    let dir = std::env::temp_dir().join(format!("shardmcp-auth-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = jwt_config();
    config.jwks_file = dir.join("absent.json").display().to_string();
    let error = Policy::load(&config).err().unwrap().to_string();
    assert!(error.starts_with("config key `auth.jwks_file`"), "{error}");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"keys\": 3}").unwrap();
    config.jwks_file = bad.display().to_string();
    let error = Policy::load(&config).err().unwrap().to_string();
    assert!(error.contains("not a JWKS"), "{error}");
    let good = dir.join("jwks.json");
    std::fs::write(&good, JWKS).unwrap();
    config.jwks_file = good.display().to_string();
    assert!(Policy::load(&config).unwrap().is_some());
    config.mode = AuthMode::Off;
    assert!(Policy::load(&config).unwrap().is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn principal_ids_do_not_collide_across_kinds_or_boundaries() {
    assert_ne!(
        PrincipalId::of_jwt("ab", "c"),
        PrincipalId::of_jwt("a", "bc")
    );
    assert_ne!(PrincipalId::of_static("x"), PrincipalId::of_jwt("", "x"));
    assert_eq!(PrincipalId::of_static("x"), PrincipalId::of_static("x"));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
