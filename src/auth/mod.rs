//! Authorization as an MCP resource server (MCP 2025-11-25 authorization,
//! RFC 9728 protected resource metadata, RFC 6750 bearer tokens).
//!
//! - [`Policy`] is built once per node from `[auth]` (the JWKS or the tokens
//!   file is read and parsed there, so a bad file stops the start); it is
//!   immutable and shared by every shard.
//! - [`Guard`] is one shard's view of it: it checks a request's
//!   `Authorization` header and remembers verified JWTs in a bounded,
//!   shard-local cache (no lock, no atomic).
//! - A request that passes yields a [`PrincipalId`], a digest of who the
//!   token stands for (issuer + subject, or the static principal): the
//!   transport binds a session to it, and only that travels further. The
//!   token itself goes nowhere: not to handlers, not to logs, not over the
//!   mesh.
//!
//! Nothing here does I/O after [`Policy::load`] or knows a transport.

pub mod jwt;
pub mod tokens;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, AuthMode};

/// The root well-known path of protected resource metadata (RFC 9728 §3).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// Largest JWKS or tokens file read at start; they hold keys or digests,
/// so anything past this is a wrong file.
const FILE_BYTES_MAX: u64 = 16 << 20;

/// Who a request comes from, when authorization is on; `None` when off.
pub type Caller = Option<PrincipalId>;

/// A principal as a SHA-256 digest of its identity (`iss` + `sub` of a
/// JWT, or a static principal's name): fixed-size, `Copy` and `Send`, so it
/// crosses the mesh with a forwarded request at no cost.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrincipalId([u8; 32]);

impl PrincipalId {
    pub fn of_static(principal: &str) -> PrincipalId {
        PrincipalId(digest_parts(&[b"static", principal.as_bytes()]))
    }

    pub fn of_jwt(issuer: &str, subject: &str) -> PrincipalId {
        PrincipalId(digest_parts(&[
            b"jwt",
            issuer.as_bytes(),
            subject.as_bytes(),
        ]))
    }
}

impl std::fmt::Debug for PrincipalId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A short prefix is enough to tell principals apart in a log.
        write!(f, "PrincipalId(")?;
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, ")")
    }
}

/// SHA-256 over length-prefixed parts, so ("ab", "c") and ("a", "bc") differ.
fn digest_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("config key `auth.{key}` ({path}): {reason}")]
    File {
        key: &'static str,
        path: String,
        reason: String,
    },
}

/// Why a request was not let in. Each maps to the status and the
/// `WWW-Authenticate` error RFC 6750 §3.1 gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token (no header, or another scheme): 401 without an
    /// error code, as RFC 6750 asks.
    Missing,
    /// `access_token` in the query string, which MCP forbids: 400
    /// `invalid_request`.
    TokenInQuery,
    /// A token that is malformed, unknown, expired, for another audience or
    /// issuer, or badly signed: 401 `invalid_token`, with why.
    InvalidToken(&'static str),
    /// A valid token without `auth.scopes_required`: 403 `insufficient_scope`.
    InsufficientScope,
}

impl Refusal {
    pub fn status(&self) -> &'static str {
        match self {
            Refusal::Missing | Refusal::InvalidToken(_) => "401 Unauthorized",
            Refusal::TokenInQuery => "400 Bad Request",
            Refusal::InsufficientScope => "403 Forbidden",
        }
    }

    /// The RFC 6750 error code, which is also the metric label.
    pub fn error(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::TokenInQuery => "invalid_request",
            Refusal::InvalidToken(_) => "invalid_token",
            Refusal::InsufficientScope => "insufficient_scope",
        }
    }

    pub fn description(&self) -> &'static str {
        match self {
            Refusal::Missing => "a bearer token is required",
            Refusal::TokenInQuery => {
                "access tokens go in the Authorization header, never the query string"
            }
            Refusal::InvalidToken(why) => why,
            Refusal::InsufficientScope => "the token lacks a required scope",
        }
    }
}

enum Verifier {
    Static(tokens::StaticTokens),
    Jwt(jwt::JwtKeys),
}

/// The node's authorization settings and keys, read once at start.
pub struct Policy {
    /// `resource_metadata` of every challenge: the path-inserted
    /// well-known URL of `resource` (RFC 9728 §3.1).
    metadata_url: String,
    /// Paths this server answers with the metadata document.
    metadata_paths: Vec<String>,
    metadata_json: String,
    /// `scope` of every challenge: the required scopes, space-separated.
    challenge_scope: String,
    verifier: Verifier,
    leeway_secs: u64,
    cache_entries_max: usize,
}

impl Policy {
    /// Reads the tokens file or the JWKS `config` names. `None` when
    /// authorization is off. The config is assumed validated.
    pub fn load(config: &AuthConfig) -> Result<Option<Arc<Policy>>, AuthError> {
        let verifier = match config.mode {
            AuthMode::Off => return Ok(None),
            AuthMode::Static => {
                let text = read_file("tokens_file", &config.tokens_file)?;
                let json = config.tokens_file.ends_with(".json");
                let tokens = tokens::StaticTokens::parse(
                    &text,
                    json,
                    config.tokens_max,
                    &config.scopes_required,
                )
                .map_err(|reason| AuthError::File {
                    key: "tokens_file",
                    path: config.tokens_file.clone(),
                    reason,
                })?;
                Verifier::Static(tokens)
            }
            AuthMode::Jwt => {
                let text = read_file("jwks_file", &config.jwks_file)?;
                let keys =
                    jwt::JwtKeys::parse(&text, config).map_err(|reason| AuthError::File {
                        key: "jwks_file",
                        path: config.jwks_file.clone(),
                        reason,
                    })?;
                Verifier::Jwt(keys)
            }
        };
        Ok(Some(Arc::new(Policy::new(config, verifier))))
    }

    fn new(config: &AuthConfig, verifier: Verifier) -> Policy {
        let (origin, path) = split_resource(&config.resource);
        let mut metadata_paths = vec![METADATA_PATH.to_string()];
        // The path-inserted form for the resource's own path, and for
        // `/mcp`, where this server serves MCP whatever a proxy calls it.
        for suffix in [path, "/mcp"] {
            let inserted = format!("{METADATA_PATH}{suffix}");
            if !suffix.is_empty() && !metadata_paths.contains(&inserted) {
                metadata_paths.push(inserted);
            }
        }
        let mut document = serde_json::Map::new();
        document.insert("resource".into(), config.resource.clone().into());
        if !config.authorization_servers.is_empty() {
            document.insert(
                "authorization_servers".into(),
                config.authorization_servers.clone().into(),
            );
        }
        if !config.scopes_supported.is_empty() {
            document.insert(
                "scopes_supported".into(),
                config.scopes_supported.clone().into(),
            );
        }
        document.insert("bearer_methods_supported".into(), vec!["header"].into());
        Policy {
            metadata_url: format!("{origin}{METADATA_PATH}{path}"),
            metadata_paths,
            metadata_json: serde_json::Value::Object(document).to_string(),
            challenge_scope: config.scopes_required.join(" "),
            verifier,
            leeway_secs: config.leeway_secs,
            cache_entries_max: config.token_cache_entries_max,
        }
    }

    /// The `WWW-Authenticate` value for a refusal.
    pub fn challenge(&self, refusal: Refusal) -> String {
        let mut value = format!("Bearer resource_metadata=\"{}\"", self.metadata_url);
        if !self.challenge_scope.is_empty() {
            value.push_str(&format!(", scope=\"{}\"", self.challenge_scope));
        }
        if refusal != Refusal::Missing {
            value.push_str(&format!(
                ", error=\"{}\", error_description=\"{}\"",
                refusal.error(),
                refusal.description()
            ));
        }
        value
    }

    pub fn metadata_url(&self) -> &str {
        &self.metadata_url
    }
}

fn read_file(key: &'static str, path: &str) -> Result<String, AuthError> {
    let fail = |reason: String| AuthError::File {
        key,
        path: path.to_string(),
        reason,
    };
    let size = std::fs::metadata(Path::new(path))
        .map_err(|error| fail(error.to_string()))?
        .len();
    if size > FILE_BYTES_MAX {
        return Err(fail(format!(
            "{size} bytes; at most {FILE_BYTES_MAX} are read"
        )));
    }
    std::fs::read_to_string(path).map_err(|error| fail(error.to_string()))
}

/// `https://host:port/a/b/` → (`https://host:port`, `/a/b`).
fn split_resource(resource: &str) -> (&str, &str) {
    let after_scheme = resource.find("://").map(|at| at + 3).unwrap_or(0);
    let path_at = resource[after_scheme..]
        .find(['/', '?'])
        .map(|at| at + after_scheme)
        .unwrap_or(resource.len());
    let path = resource[path_at..].split('?').next().unwrap_or("");
    (&resource[..path_at], path.trim_end_matches('/'))
}

/// A verified JWT, remembered until it expires.
struct Cached {
    principal: PrincipalId,
    scoped: bool,
    expires_at_secs: u64,
}

/// Seconds since the Unix epoch, as tokens count them.
pub type WallClock = Box<dyn Fn() -> u64>;

fn system_wall_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// One shard's gate: checks requests against the [`Policy`].
pub struct Guard {
    policy: Arc<Policy>,
    /// Verified JWTs by the SHA-256 of the token (never the token itself).
    cache: RefCell<HashMap<[u8; 32], Cached>>,
    wall: WallClock,
}

impl Guard {
    pub fn new(policy: Arc<Policy>) -> Guard {
        Guard::with_wall_clock(policy, Box::new(system_wall_clock))
    }

    /// A guard whose cache expiry reads `wall` (tests move it by hand).
    pub fn with_wall_clock(policy: Arc<Policy>, wall: WallClock) -> Guard {
        Guard {
            policy,
            cache: RefCell::new(HashMap::new()),
            wall,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The metadata document when `path` is one of its well-known paths.
    pub fn metadata(&self, path: &str) -> Option<&str> {
        self.policy
            .metadata_paths
            .iter()
            .any(|known| known == path)
            .then_some(self.policy.metadata_json.as_str())
    }

    /// Checks one request: its `Authorization` header and its query string
    /// (which must not carry a token).
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        query: Option<&str>,
    ) -> Result<PrincipalId, Refusal> {
        if query.is_some_and(|query| {
            query
                .split('&')
                .any(|pair| pair.split('=').next() == Some("access_token"))
        }) {
            return Err(Refusal::TokenInQuery);
        }
        let token = bearer_token(authorization)?;
        let (principal, scoped) = match &self.policy.verifier {
            Verifier::Static(tokens) => tokens
                .lookup(token)
                .ok_or(Refusal::InvalidToken("unknown token"))?,
            Verifier::Jwt(keys) => self.verify_jwt(keys, token)?,
        };
        if !scoped {
            return Err(Refusal::InsufficientScope);
        }
        Ok(principal)
    }

    fn verify_jwt(&self, keys: &jwt::JwtKeys, token: &str) -> Result<(PrincipalId, bool), Refusal> {
        let key = sha256(token.as_bytes());
        let now = (self.wall)();
        if let Some(hit) = self.cache.borrow().get(&key) {
            if now <= hit.expires_at_secs.saturating_add(self.policy.leeway_secs) {
                return Ok((hit.principal, hit.scoped));
            }
        }
        let verified = keys.verify(token).map_err(Refusal::InvalidToken)?;
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= self.policy.cache_entries_max && !cache.contains_key(&key) {
            let leeway = self.policy.leeway_secs;
            cache.retain(|_, entry| now <= entry.expires_at_secs.saturating_add(leeway));
            if cache.len() >= self.policy.cache_entries_max {
                // Still full of live tokens: forget any one; it is only a cache.
                if let Some(victim) = cache.keys().next().copied() {
                    cache.remove(&victim);
                }
            }
        }
        cache.insert(
            key,
            Cached {
                principal: verified.principal,
                scoped: verified.scoped,
                expires_at_secs: verified.expires_at_secs,
            },
        );
        Ok((verified.principal, verified.scoped))
    }

    /// Verified tokens this shard remembers.
    pub fn cached_tokens(&self) -> usize {
        self.cache.borrow().len()
    }
}

/// The token of an `Authorization: Bearer …` header (RFC 6750 §2.1).
fn bearer_token(authorization: Option<&str>) -> Result<&str, Refusal> {
    let Some(value) = authorization else {
        return Err(Refusal::Missing);
    };
    let value = value.trim();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme is as good as none (RFC 6750 §3.1).
        return Err(Refusal::Missing);
    }
    let token = token.trim();
    // b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.trim_end_matches('=');
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
    {
        return Err(Refusal::InvalidToken("malformed bearer token"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests;
