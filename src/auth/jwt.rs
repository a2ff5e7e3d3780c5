//! JWT access tokens checked against a JWKS read at start: the header's
//! `kid` picks the key, the key fixes which algorithms may sign with it
//! (so a public key is never an HMAC secret and `none` never passes), and
//! `iss`, `aud` (this server), `exp`, `nbf` and `sub` are checked.

use std::str::FromStr;

use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::PrincipalId;
use crate::config::AuthConfig;

struct Key {
    kid: Option<String>,
    key: DecodingKey,
    /// The issuer, audience and time checks, with the algorithms this key
    /// may verify.
    validation: Validation,
}

/// The signing keys of a JWKS and the checks every token must pass.
pub struct JwtKeys {
    keys: Vec<Key>,
    scopes_required: Vec<String>,
}

/// What a verified token says.
pub struct Verified {
    pub principal: PrincipalId,
    /// Whether it holds every `auth.scopes_required`.
    pub scoped: bool,
    pub expires_at_secs: u64,
}

/// A `scope` claim is one space-separated string (RFC 8693, RFC 9068);
/// some servers send `scp` as a list instead.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scopes {
    Text(String),
    List(Vec<String>),
}

/// Optional here so that a missing one is reported as missing by the
/// validation (which requires exp, iss, aud and sub), not as malformed.
#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    exp: Option<f64>,
    scope: Option<Scopes>,
    scp: Option<Scopes>,
}

impl JwtKeys {
    /// Parses a JWKS; every error names the key at fault.
    pub fn parse(text: &str, config: &AuthConfig) -> Result<JwtKeys, String> {
        let set: JwkSet =
            serde_json::from_str(text).map_err(|error| format!("not a JWKS: {error}"))?;
        if set.keys.is_empty() {
            return Err("the JWKS holds no keys".into());
        }
        if set.keys.len() > config.jwks_keys_max {
            return Err(format!(
                "{} keys; auth.jwks_keys_max allows {}",
                set.keys.len(),
                config.jwks_keys_max
            ));
        }
        let allowed: Vec<Algorithm> = config
            .algorithms
            .iter()
            .filter_map(|name| Algorithm::from_str(name).ok())
            .collect();
        let mut keys: Vec<Key> = Vec::new();
        for (index, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone();
            let name = match &kid {
                Some(kid) => format!("key `{kid}`"),
                None => format!("key {index}"),
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                // An encryption key never verifies a signature.
                continue;
            }
            if kid.is_some() && keys.iter().any(|known| known.kid == kid) {
                return Err(format!("{name} appears twice"));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|error| format!("{name}: {error}"))?;
            if key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
                return Err(format!(
                    "{name} is a symmetric key; only public keys are accepted"
                ));
            }
            let mut algorithms: Vec<Algorithm> = allowed
                .iter()
                .copied()
                .filter(|alg| alg.family() == key.family())
                .collect();
            if let Some(named) = jwk.common.key_algorithm {
                let named = Algorithm::try_from(named)
                    .map_err(|error| format!("{name}: alg {named}: {error}"))?;
                algorithms.retain(|alg| *alg == named);
            }
            let Some(&first) = algorithms.first() else {
                return Err(format!(
                    "{name} fits none of auth.algorithms ({})",
                    config.algorithms.join(", ")
                ));
            };
            let mut validation = Validation::new(first);
            validation.algorithms = algorithms;
            validation.set_issuer(&[&config.issuer]);
            validation.set_audience(&[config.audience()]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            validation.leeway = config.leeway_secs;
            validation.validate_nbf = true;
            keys.push(Key {
                kid,
                key,
                validation,
            });
        }
        if keys.is_empty() {
            return Err("the JWKS holds no signing keys".into());
        }
        Ok(JwtKeys {
            keys,
            scopes_required: config.scopes_required.clone(),
        })
    }

    /// Verifies `token`; the error says why it is refused (never echoing it).
    pub fn verify(&self, token: &str) -> Result<Verified, &'static str> {
        let header =
            decode_header(token).map_err(|_| "malformed token or algorithm not accepted")?;
        let key = match &header.kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|key| key.kid.as_deref() == Some(kid.as_str()))
                .ok_or("unknown key id")?,
            // Without a kid only a single-key set says which key to use.
            None if self.keys.len() == 1 => &self.keys[0],
            None => return Err("the token names no key id"),
        };
        let data = decode::<Claims>(token, &key.key, &key.validation).map_err(|error| {
            use jsonwebtoken::errors::ErrorKind;
            match error.kind() {
                ErrorKind::ExpiredSignature => "expired",
                ErrorKind::ImmatureSignature => "not valid yet",
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::InvalidIssuer => "wrong issuer",
                ErrorKind::InvalidAudience => "wrong audience",
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                    "algorithm not accepted for this key"
                }
                ErrorKind::MissingRequiredClaim(_) => {
                    "a required claim (exp, iss, aud, sub) is missing"
                }
                _ => "malformed token",
            }
        })?;
        let claims = data.claims;
        let missing = "a required claim (exp, iss, aud, sub) is missing";
        let (Some(issuer), Some(subject), Some(exp)) = (&claims.iss, &claims.sub, claims.exp)
        else {
            return Err(missing);
        };
        let granted: Vec<&str> = match claims.scope.as_ref().or(claims.scp.as_ref()) {
            Some(Scopes::Text(text)) => text.split(' ').filter(|s| !s.is_empty()).collect(),
            Some(Scopes::List(list)) => list.iter().map(String::as_str).collect(),
            None => Vec::new(),
        };
        let scoped = self
            .scopes_required
            .iter()
            .all(|needed| granted.contains(&needed.as_str()));
        Ok(Verified {
            principal: PrincipalId::of_jwt(issuer, subject),
            scoped,
            expires_at_secs: if exp.is_finite() && exp > 0.0 {
                exp as u64
            } else {
                0
            },
        })
    }
}
