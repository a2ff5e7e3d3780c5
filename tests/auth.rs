//! Authorization over real sockets: bearer tokens (JWT against the fixture
//! JWKS, or static), 401/403 with their challenges, the protected resource
//! metadata, sessions bound to the principal that opened them (across
//! shards too, and after the session's pool died), and auth off leaving everything as it was.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use common::http::Reply;
use common::{test_config, IO_TIMEOUT};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use shardmcp::config::{AuthMode, Config};
use shardmcp::ids::ShardId;
use shardmcp::registry::SessionId;
use shardmcp::runtime::Fault;
use shardmcp::runtime::{self, NodeHandle};
use shardmcp::server::demo;

const RESOURCE: &str = "https://mcp.test/mcp";
const ISSUER: &str = "https://auth.test";
const METADATA: &str = "https://mcp.test/.well-known/oauth-protected-resource/mcp";
const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/auth")
        .join(name)
}

/// Drains and joins the node when the test ends, failed or not.
struct Node(Option<NodeHandle>);

impl Node {
    fn start(config: Config) -> Node {
        Node(Some(runtime::start(config, demo::factory()).unwrap()))
    }

    fn handle(&self) -> &NodeHandle {
        self.0.as_ref().unwrap()
    }

    fn addr(&self) -> SocketAddr {
        self.handle().http_addr().unwrap()
    }

    fn forwarded(&self) -> u64 {
        (0..2)
            .map(|shard| self.handle().query(ShardId(shard)).unwrap().http_forwarded)
            .sum()
    }

    /// Refusals counted by every shard with this error label.
    fn refusals(&self, error: &str) -> u64 {
        let shards = self.handle().shard_count();
        (0..shards)
            .flat_map(|shard| {
                self.handle()
                    .query(ShardId(shard as u16))
                    .unwrap()
                    .metrics
                    .auth_refusals
            })
            .filter(|(_, label, _)| *label == error)
            .map(|(_, _, count)| count)
            .sum()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(node) = self.0.take() {
            node.drain();
            let _ = node.join();
        }
    }
}

fn auth_config(shards: usize) -> Config {
    let mut config = test_config(shards, 2);
    config.listen.tcp = String::new();
    config.auth.mode = AuthMode::Jwt;
    config.auth.resource = RESOURCE.into();
    config.auth.authorization_servers = vec![ISSUER.into()];
    config.auth.scopes_supported = vec!["mcp:tools".into(), "mcp:admin".into()];
    config.auth.scopes_required = vec!["mcp:tools".into()];
    config.auth.issuer = ISSUER.into();
    config.auth.jwks_file = fixture("jwks.json").display().to_string();
    config
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str) -> serde_json::Value {
    json!({"iss": ISSUER, "sub": sub, "aud": RESOURCE, "exp": now() + 600, "scope": "mcp:tools"})
}

fn sign_with(alg: Algorithm, kid: &str, claims: &serde_json::Value, pem: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    let pem = std::fs::read(fixture(pem)).unwrap();
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        Algorithm::HS256 => EncodingKey::from_secret(&pem),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    };
    encode(&header, claims, &key).unwrap()
}

fn token(sub: &str) -> String {
    sign_with(Algorithm::RS256, "rsa-1", &claims(sub), "rsa-private.pem")
}

/// One request on its own connection, read to the end; `bearer` becomes
/// the Authorization header.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let authorization = bearer.map(|token| format!("Bearer {token}"));
    let mut all: Vec<(&str, &str)> = Vec::new();
    if let Some(authorization) = &authorization {
        all.push(("Authorization", authorization));
    }
    all.extend_from_slice(headers);
    common::http::request(addr, method, path, &all, body)
}

const JSON: [(&str, &str); 2] = [
    ("Content-Type", "application/json"),
    ("Accept", "application/json"),
];

fn post(addr: SocketAddr, bearer: Option<&str>, session: Option<&str>, body: &str) -> Reply {
    let mut headers = JSON.to_vec();
    if let Some(session) = session {
        headers.push(("Mcp-Session-Id", session));
    }
    http(addr, "POST", "/mcp", bearer, &headers, body)
}

/// Ends `session` as `bearer`.
fn delete(addr: SocketAddr, bearer: &str, session: &str) -> Reply {
    http(
        addr,
        "DELETE",
        "/mcp",
        Some(bearer),
        &[("Mcp-Session-Id", session)],
        "",
    )
}

/// Opens a session as `bearer`; returns its id.
fn initialize(addr: SocketAddr, bearer: &str) -> String {
    let init = post(addr, Some(bearer), None, INIT);
    assert_eq!(init.status, 200, "{}", init.head);
    let session = init.header("mcp-session-id").expect("a session id");
    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    assert_eq!(post(addr, Some(bearer), Some(&session), note).status, 202);
    session
}

#[test]
fn missing_and_bad_tokens_get_401_with_a_challenge_naming_the_metadata() {
    let node = Node::start(auth_config(1));
    let addr = node.addr();
    let missing = post(addr, None, None, INIT);
    assert_eq!(missing.status, 401, "{}", missing.head);
    assert_eq!(
        missing.header("www-authenticate").as_deref(),
        Some(format!(r#"Bearer resource_metadata="{METADATA}", scope="mcp:tools""#).as_str())
    );
    let basic = http(
        addr,
        "POST",
        "/mcp",
        None,
        &[("Authorization", "Basic YTpi")],
        INIT,
    );
    assert_eq!(basic.status, 401, "another scheme is no token");

    let good = claims("alice");
    let with = |key: &str, value: serde_json::Value| {
        let mut claims = good.clone();
        claims[key] = value;
        claims
    };
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let real = token("alice");
    let cases = [
        ("malformed", "not-a-jwt".to_string()),
        (
            "bad signature",
            sign_with(Algorithm::RS256, "rsa-1", &good, "rogue-rsa-private.pem"),
        ),
        (
            "wrong issuer",
            sign_with(
                Algorithm::RS256,
                "rsa-1",
                &with("iss", json!("https://evil.test")),
                "rsa-private.pem",
            ),
        ),
        (
            "wrong audience",
            sign_with(
                Algorithm::RS256,
                "rsa-1",
                &with("aud", json!("https://other.test/mcp")),
                "rsa-private.pem",
            ),
        ),
        (
            "expired",
            sign_with(
                Algorithm::RS256,
                "rsa-1",
                &with("exp", json!(now() - 3_600)),
                "rsa-private.pem",
            ),
        ),
        (
            "unknown kid",
            sign_with(Algorithm::RS256, "rsa-9", &good, "rsa-private.pem"),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg":"none","kid":"rsa-1"})),
                b64(good.clone())
            ),
        ),
        (
            "HS256 keyed with the public key",
            sign_with(Algorithm::HS256, "rsa-1", &good, "rsa-public.pem"),
        ),
        (
            "a good signature over another payload",
            format!(
                "{}.{}.{}",
                real.split('.').next().unwrap(),
                token("mallory").split('.').nth(1).unwrap(),
                real.split('.').nth(2).unwrap()
            ),
        ),
    ];
    for (case, bad) in &cases {
        let reply = post(addr, Some(bad), None, INIT);
        assert_eq!(reply.status, 401, "{case}: {}", reply.head);
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer "), "{case}: {challenge}");
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{case}: {challenge}"
        );
        assert!(
            challenge.contains(&format!(r#"resource_metadata="{METADATA}""#)),
            "{case}"
        );
        assert!(
            !reply.body.contains(bad.as_str()),
            "{case}: the token is not echoed"
        );
    }
    assert_eq!(node.refusals("missing"), 2);
    assert_eq!(node.refusals("invalid_token"), cases.len() as u64);
    // The ES256 key works as well as the RSA one.
    let ec = sign_with(Algorithm::ES256, "ec-1", &good, "ec-private.pem");
    assert_eq!(post(addr, Some(&ec), None, INIT).status, 200);
}

#[test]
fn a_token_without_the_required_scope_gets_403() {
    let node = Node::start(auth_config(1));
    let addr = node.addr();
    let mut narrow = claims("alice");
    narrow["scope"] = json!("mcp:admin");
    let narrow = sign_with(Algorithm::RS256, "rsa-1", &narrow, "rsa-private.pem");
    let reply = post(addr, Some(&narrow), None, INIT);
    assert_eq!(reply.status, 403, "{}", reply.head);
    let challenge = reply.header("www-authenticate").unwrap();
    assert!(
        challenge.contains(r#"error="insufficient_scope""#),
        "{challenge}"
    );
    assert!(challenge.contains(r#"scope="mcp:tools""#), "{challenge}");
    assert!(challenge.contains(METADATA), "{challenge}");
    assert_eq!(node.refusals("insufficient_scope"), 1);
}

#[test]
fn a_session_answers_only_the_principal_that_opened_it_on_any_shard() {
    let node = Node::start(auth_config(2));
    let addr = node.addr();
    let alice = token("alice");
    let bob = token("bob");
    let session = initialize(addr, &alice);
    let listed = post(addr, Some(&alice), Some(&session), LIST);
    assert_eq!(listed.status, 200, "{}", listed.head);
    assert!(listed.body.contains(r#""tools""#));
    // A fresh connection lands on either shard: go on until requests for
    // this session have crossed the mesh, for Bob's token and Alice's.
    let mut rounds = 0;
    while rounds < 200 && (rounds < 8 || node.forwarded() < 2) {
        rounds += 1;
        let stolen = post(addr, Some(&bob), Some(&session), LIST);
        assert_eq!(stolen.status, 404, "another principal: as if unknown");
        let stream = http(
            addr,
            "GET",
            "/mcp",
            Some(&bob),
            &[
                ("Accept", "text/event-stream"),
                ("Mcp-Session-Id", &session),
            ],
            "",
        );
        assert_eq!(stream.status, 404, "nor its stream");
        let ended = delete(addr, &bob, &session);
        assert_eq!(ended.status, 404, "nor may it end the session");
        let mine = post(addr, Some(&alice), Some(&session), LIST);
        assert_eq!(mine.status, 200, "{}", mine.head);
    }
    assert!(node.forwarded() >= 2, "requests crossed the mesh");
    // The owner's DELETE works, from whichever shard.
    let ended = delete(addr, &alice, &session);
    assert_eq!(ended.status, 200);
    assert_eq!(post(addr, Some(&alice), Some(&session), LIST).status, 404);
}

#[test]
fn a_session_taken_up_after_its_pool_died_still_answers_only_its_owner() {
    let node = Node::start(auth_config(1));
    let addr = node.addr();
    let alice = token("alice");
    let bob = token("bob");
    let session = initialize(addr, &alice);
    assert_eq!(post(addr, Some(&alice), Some(&session), LIST).status, 200);
    let id = SessionId::parse(&session).unwrap();
    let pools = auth_config(1).runtime.pools;
    node.handle()
        .inject(ShardId(0), Fault::KillPool(id.pool_index(pools)))
        .unwrap();
    // Let the shard see the actor's outbox close (the link goes, the
    // record and the owner stay); Bob must not claim the session then.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let stolen = post(addr, Some(&bob), Some(&session), LIST);
    assert_eq!(stolen.status, 404, "{}", stolen.head);
    let ended = delete(addr, &bob, &session);
    assert_eq!(ended.status, 404, "nor end it");
    // Its owner carries on in a new actor.
    let mine = post(addr, Some(&alice), Some(&session), LIST);
    assert_eq!(mine.status, 200, "{}", mine.head);
    assert!(mine.body.contains(r#""tools""#));
    assert_eq!(post(addr, Some(&bob), Some(&session), LIST).status, 404);
}

#[test]
fn static_tokens_from_a_file() {
    let dir = std::env::temp_dir().join(format!("shardmcp-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens.json");
    let alice_token = "alice-token-0123456789";
    let text = json!({"tokens": [
        {"token": alice_token, "principal": "alice", "scopes": ["mcp:tools"]},
        {"token": "bob-token-0123456789", "principal": "bob", "scopes": ["mcp:tools"]},
        {"token": "carol-token-0123456789", "principal": "carol", "scopes": []},
    ]});
    std::fs::write(&file, text.to_string()).unwrap();
    let mut config = auth_config(1);
    config.auth.mode = AuthMode::Static;
    config.auth.jwks_file = String::new();
    config.auth.tokens_file = file.display().to_string();
    let node = Node::start(config);
    let _ = std::fs::remove_dir_all(&dir);
    let addr = node.addr();
    let session = initialize(addr, alice_token);
    assert_eq!(
        post(addr, Some(alice_token), Some(&session), LIST).status,
        200
    );
    let bob = post(addr, Some("bob-token-0123456789"), Some(&session), LIST);
    assert_eq!(bob.status, 404, "another principal");
    let unknown = post(addr, Some("mallory-token-0123456789"), None, INIT);
    assert_eq!(unknown.status, 401);
    assert!(unknown
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    let carol = post(addr, Some("carol-token-0123456789"), None, INIT);
    assert_eq!(carol.status, 403, "no mcp:tools");
}

#[test]
fn the_metadata_document_is_public_at_both_well_known_paths() {
    let node = Node::start(auth_config(1));
    let addr = node.addr();
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let reply = http(addr, "GET", path, None, &[], "");
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("application/json")
        );
        let document: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(
            document,
            json!({
                "resource": RESOURCE,
                "authorization_servers": [ISSUER],
                "scopes_supported": ["mcp:tools", "mcp:admin"],
                "bearer_methods_supported": ["header"],
            })
        );
    }
    let post = http(
        addr,
        "POST",
        "/.well-known/oauth-protected-resource",
        None,
        &[],
        "",
    );
    assert_eq!(post.status, 405);
    let other = http(
        addr,
        "GET",
        "/.well-known/oauth-protected-resource/other",
        None,
        &[],
        "",
    );
    assert_eq!(other.status, 404);
}

#[test]
fn a_token_in_the_query_string_is_refused() {
    let node = Node::start(auth_config(1));
    let addr = node.addr();
    let alice = token("alice");
    let path = format!("/mcp?access_token={alice}");
    let reply = http(addr, "POST", &path, None, &JSON, INIT);
    assert_eq!(reply.status, 400, "{}", reply.head);
    assert!(reply
        .header("www-authenticate")
        .unwrap()
        .contains(r#"error="invalid_request""#));
    // Even next to a good header.
    let reply = http(addr, "POST", &path, Some(&alice), &JSON, INIT);
    assert_eq!(reply.status, 400);
    let legacy = http(
        addr,
        "POST",
        &format!("/messages?sessionId=x&access_token={alice}"),
        Some(&alice),
        &JSON,
        LIST,
    );
    assert_eq!(legacy.status, 400);
    assert_eq!(node.refusals("invalid_request"), 3);
}

#[test]
fn legacy_sse_messages_and_websocket_need_a_token() {
    let node = Node::start(auth_config(1));
    let addr = node.addr();
    let alice = token("alice");
    let sse = http(
        addr,
        "GET",
        "/sse",
        None,
        &[("Accept", "text/event-stream")],
        "",
    );
    assert_eq!(sse.status, 401);
    let messages = http(addr, "POST", "/messages?sessionId=x", None, &JSON, LIST);
    assert_eq!(messages.status, 401);
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "mcp"),
    ];
    let ws = http(addr, "GET", "/ws", None, &upgrade, "");
    assert_eq!(ws.status, 401, "{}", ws.head);
    // With a token the WebSocket handshake goes through.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut request =
        format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {alice}\r\n");
    for (name, value) in upgrade {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    drop(stream);

    // A legacy SSE session opened by Alice: Bob cannot post to it.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET /sse HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {alice}\r\n\r\n"
    )
    .unwrap();
    let mut seen = String::new();
    let mut chunk = [0u8; 1024];
    while !seen.contains("sessionId=") || !seen[seen.find("sessionId=").unwrap()..].contains('\n') {
        let read = stream.read(&mut chunk).unwrap();
        assert!(read > 0, "stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&chunk[..read]));
    }
    let at = seen.find("/messages?sessionId=").unwrap();
    let endpoint = seen[at..].lines().next().unwrap().to_string();
    let bob = token("bob");
    let stolen = http(addr, "POST", &endpoint, Some(&bob), &JSON, LIST);
    assert_eq!(stolen.status, 404, "{}", stolen.head);
    let mine = http(addr, "POST", &endpoint, Some(&alice), &JSON, LIST);
    assert_eq!(mine.status, 202, "{}", mine.head);
}

#[test]
fn with_auth_off_nothing_changes() {
    let node = Node::start(test_config(1, 1));
    let addr = node.addr();
    let init = post(addr, None, None, INIT);
    assert_eq!(init.status, 200, "no token needed");
    let metadata = http(
        addr,
        "GET",
        "/.well-known/oauth-protected-resource",
        None,
        &[],
        "",
    );
    assert_eq!(metadata.status, 404, "no metadata served");
    assert_eq!(node.refusals("missing"), 0);
}

#[test]
fn a_bad_jwks_stops_the_start_with_the_key_named() {
    let mut config = auth_config(1);
    config.auth.jwks_file = fixture("rsa-public.pem").display().to_string();
    let error = runtime::start(config, demo::factory())
        .err()
        .expect("refused");
    let error = error.to_string();
    assert!(error.starts_with("config key `auth.jwks_file`"), "{error}");
    assert!(error.contains("not a JWKS"), "{error}");
}

#[test]
fn stateless_requests_are_authorized_one_by_one() {
    let node = Node::start(auth_config(1));
    let addr = node.addr();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;
    let headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "server/discover"),
    ];
    let refused = http(addr, "POST", "/mcp", None, &headers, body);
    assert_eq!(refused.status, 401);
    let alice = token("alice");
    let served = http(addr, "POST", "/mcp", Some(&alice), &headers, body);
    assert_eq!(served.status, 200, "{}", served.body);
    assert!(served.header("mcp-session-id").is_none());
    assert!(served.body.contains("supportedVersions"), "{}", served.body);
}
