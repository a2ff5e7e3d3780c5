//! Static bearer tokens from a file: each names a principal and its
//! scopes. Only SHA-256 digests are kept; a presented token is hashed and
//! its digest compared in constant time.

use std::collections::HashMap;

use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{sha256, PrincipalId};

/// Shortest plain token accepted: shorter ones can be guessed.
pub const TOKEN_CHARS_MIN: usize = 16;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tokens: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    token: Option<String>,
    token_sha256: Option<String>,
    principal: String,
    #[serde(default)]
    scopes: Vec<String>,
}

struct Holder {
    digest: [u8; 32],
    principal: PrincipalId,
    scoped: bool,
}

pub struct StaticTokens {
    /// Keyed by digest: the lookup leaks at most how much of a digest
    /// matched, which says nothing about a token (SHA-256 has no known
    /// preimages); the final comparison is constant-time.
    by_digest: HashMap<[u8; 32], Holder>,
}

impl StaticTokens {
    /// Parses a tokens file (TOML, or JSON when `json`); errors name the
    /// entry at fault, never a token.
    pub fn parse(
        text: &str,
        json: bool,
        tokens_max: usize,
        scopes_required: &[String],
    ) -> Result<StaticTokens, String> {
        let file: File = if json {
            serde_json::from_str(text).map_err(|error| format!("not a tokens file: {error}"))?
        } else {
            toml::from_str(text).map_err(|error| {
                format!(
                    "not a tokens file: {}",
                    error.to_string().trim_end().replace('\n', " ")
                )
            })?
        };
        if file.tokens.len() > tokens_max {
            return Err(format!(
                "{} tokens; auth.tokens_max allows {tokens_max}",
                file.tokens.len()
            ));
        }
        let mut by_digest = HashMap::with_capacity(file.tokens.len());
        for (index, entry) in file.tokens.into_iter().enumerate() {
            let at = format!("tokens[{index}]");
            let digest = match (&entry.token, &entry.token_sha256) {
                (Some(token), None) => {
                    if token.len() < TOKEN_CHARS_MIN {
                        return Err(format!("{at}.token: at least {TOKEN_CHARS_MIN} characters"));
                    }
                    if token
                        .bytes()
                        .any(|b| b.is_ascii_whitespace() || !b.is_ascii_graphic())
                    {
                        return Err(format!("{at}.token: printable ASCII without spaces"));
                    }
                    sha256(token.as_bytes())
                }
                (None, Some(hex)) => {
                    parse_hex(hex).ok_or_else(|| format!("{at}.token_sha256: 64 hex digits"))?
                }
                _ => return Err(format!("{at}: exactly one of token and token_sha256")),
            };
            if entry.principal.is_empty() {
                return Err(format!("{at}.principal: must not be empty"));
            }
            let scoped = scopes_required
                .iter()
                .all(|needed| entry.scopes.contains(needed));
            let holder = Holder {
                digest,
                principal: PrincipalId::of_static(&entry.principal),
                scoped,
            };
            if by_digest.insert(digest, holder).is_some() {
                return Err(format!("{at}: the same token appears twice"));
            }
        }
        Ok(StaticTokens { by_digest })
    }

    /// The principal `token` stands for, and whether it holds the required
    /// scopes.
    pub fn lookup(&self, token: &str) -> Option<(PrincipalId, bool)> {
        let digest = sha256(token.as_bytes());
        let holder = self.by_digest.get(&digest)?;
        bool::from(holder.digest.ct_eq(&digest)).then_some((holder.principal, holder.scoped))
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *slot = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}
