//! Authorization cost per request: a JWT this shard has verified before
//! (the cache), a first sight of an RS256 or ES256 token (signature and
//! claims checked), and a static token among 10,000.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

use shardmcp::auth::{Guard, Policy};
use shardmcp::config::{AuthConfig, AuthMode};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/auth")
        .join(name)
}

fn sign(alg: Algorithm, kid: &str, pem: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3_600;
    let claims = serde_json::json!({
        "iss": "https://auth.test", "sub": "alice", "aud": "https://mcp.test/mcp",
        "exp": exp, "scope": "mcp:tools",
    });
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    let pem = std::fs::read(fixture(pem)).unwrap();
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    format!("Bearer {}", encode(&header, &claims, &key).unwrap())
}

fn auth_benches(c: &mut Criterion) {
    let jwt = AuthConfig {
        mode: AuthMode::Jwt,
        resource: "https://mcp.test/mcp".into(),
        authorization_servers: vec!["https://auth.test".into()],
        scopes_required: vec!["mcp:tools".into()],
        issuer: "https://auth.test".into(),
        jwks_file: fixture("jwks.json").display().to_string(),
        ..AuthConfig::default()
    };
    let policy = Policy::load(&jwt).unwrap().unwrap();
    let rs256 = sign(Algorithm::RS256, "rsa-1", "rsa-private.pem");
    let es256 = sign(Algorithm::ES256, "ec-1", "ec-private.pem");

    let mut group = c.benchmark_group("auth");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(3));
    let cached = Guard::new(policy.clone());
    cached.authorize(Some(&rs256), None).unwrap();
    group.bench_function("jwt_cache_hit", |b| {
        b.iter(|| cached.authorize(black_box(Some(&rs256)), Some("sessionId=x")))
    });
    group.bench_function("jwt_rs256_first_sight", |b| {
        b.iter(|| Guard::new(policy.clone()).authorize(black_box(Some(&rs256)), None))
    });
    group.bench_function("jwt_es256_first_sight", |b| {
        b.iter(|| Guard::new(policy.clone()).authorize(black_box(Some(&es256)), None))
    });

    let dir = std::env::temp_dir().join(format!("shardmcp-auth-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens.toml");
    let mut text = String::new();
    for i in 0..10_000 {
        text.push_str(&format!(
            "[[tokens]]\ntoken = \"token-{i:016}\"\nprincipal = \"p{i}\"\nscopes = [\"mcp:tools\"]\n"
        ));
    }
    std::fs::write(&file, text).unwrap();
    let tokens = AuthConfig {
        mode: AuthMode::Static,
        tokens_file: file.display().to_string(),
        jwks_file: String::new(),
        ..jwt.clone()
    };
    let policy = Policy::load(&tokens).unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let guard = Guard::new(policy);
    let bearer = "Bearer token-0000000000005000";
    guard.authorize(Some(bearer), None).unwrap();
    group.bench_function("static_10k_tokens", |b| {
        b.iter(|| guard.authorize(black_box(Some(bearer)), None))
    });
    group.finish();
}

criterion_group!(benches, auth_benches);
criterion_main!(benches);
