//! `requestState` for multi-round-trip requests (2026-07-28): sealed with an
//! HMAC so a client cannot forge it, bound to the method, the target and the
//! arguments, with an expiry and a round count.
//!
//! Text form: `v1.<hex payload>.<hex mac>`; the payload is JSON.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The node-wide sealing key: every shard must open what any shard sealed,
/// because a retry may land on any of them.
#[derive(Clone)]
pub struct StateKey([u8; 32]);

impl StateKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        StateKey(bytes)
    }

    /// A fresh random key (from the OS CSPRNG).
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut bytes);
        StateKey(bytes)
    }
}

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(..)")
    }
}

/// What a request state vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundState {
    pub method: String,
    /// The tool or prompt name, or the resource URI.
    pub target: String,
    /// SHA-256 of the arguments, hex.
    pub arguments_digest: String,
    pub expires_at_ms: u64,
    /// Rounds already answered with input requests.
    pub round: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("malformed requestState")]
    Malformed,
    #[error("requestState was not issued by this server")]
    Forged,
    #[error("requestState has expired")]
    Expired,
    #[error("requestState belongs to another request")]
    Mismatch,
}

/// SHA-256 of a JSON value's canonical text (keys sorted), hex.
pub fn digest(value: &Value) -> String {
    hex(&Sha256::digest(value.to_string().as_bytes()))
}

pub fn seal(key: &StateKey, state: &RoundState) -> String {
    let payload = json!({
        "m": state.method, "t": state.target, "d": state.arguments_digest,
        "e": state.expires_at_ms, "r": state.round
    })
    .to_string();
    let payload = hex(payload.as_bytes());
    format!("v1.{payload}.{}", hex(&mac(key, &payload)))
}

/// Opens a state and checks it was sealed here, is fresh at `now_ms`, and
/// belongs to this method, target and arguments.
pub fn open(
    key: &StateKey,
    text: &str,
    now_ms: u64,
    method: &str,
    target: &str,
    arguments_digest: &str,
) -> Result<RoundState, StateError> {
    let rest = text.strip_prefix("v1.").ok_or(StateError::Malformed)?;
    let (payload, tag) = rest.split_once('.').ok_or(StateError::Malformed)?;
    let tag = unhex(tag).ok_or(StateError::Malformed)?;
    let mut check = HmacSha256::new_from_slice(&key.0).map_err(|_| StateError::Malformed)?;
    check.update(payload.as_bytes());
    check.verify_slice(&tag).map_err(|_| StateError::Forged)?;
    let payload = unhex(payload).ok_or(StateError::Malformed)?;
    let value: Value = serde_json::from_slice(&payload).map_err(|_| StateError::Malformed)?;
    let field = |name: &str| value.get(name).cloned().ok_or(StateError::Malformed);
    let state = RoundState {
        method: field("m")?
            .as_str()
            .ok_or(StateError::Malformed)?
            .to_string(),
        target: field("t")?
            .as_str()
            .ok_or(StateError::Malformed)?
            .to_string(),
        arguments_digest: field("d")?
            .as_str()
            .ok_or(StateError::Malformed)?
            .to_string(),
        expires_at_ms: field("e")?.as_u64().ok_or(StateError::Malformed)?,
        round: field("r")?
            .as_u64()
            .and_then(|r| u32::try_from(r).ok())
            .ok_or(StateError::Malformed)?,
    };
    if state.expires_at_ms <= now_ms {
        return Err(StateError::Expired);
    }
    if state.method != method
        || state.target != target
        || state.arguments_digest != arguments_digest
    {
        return Err(StateError::Mismatch);
    }
    Ok(state)
}

fn mac(key: &StateKey, payload: &str) -> Vec<u8> {
    // HMAC accepts keys of any length; 32 bytes cannot fail.
    let mut mac = match HmacSha256::new_from_slice(&key.0) {
        Ok(mac) => mac,
        Err(_) => return Vec::new(),
    };
    mac.update(payload.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> RoundState {
        RoundState {
            method: "tools/call".into(),
            target: "confirm".into(),
            arguments_digest: digest(&json!({"thing": "delete"})),
            expires_at_ms: 10_000,
            round: 1,
        }
    }

    #[test]
    fn a_sealed_state_opens_with_the_same_key_and_request() {
        let key = StateKey::new([7; 32]);
        let sealed = seal(&key, &state());
        assert!(sealed.starts_with("v1."));
        let opened = open(
            &key,
            &sealed,
            5_000,
            "tools/call",
            "confirm",
            &state().arguments_digest,
        );
        assert_eq!(opened, Ok(state()));
    }

    #[test]
    fn forged_expired_mismatched_and_garbled_states_are_refused() {
        let key = StateKey::new([7; 32]);
        let sealed = seal(&key, &state());
        let d = state().arguments_digest;
        assert_eq!(
            open(
                &StateKey::new([8; 32]),
                &sealed,
                5_000,
                "tools/call",
                "confirm",
                &d
            ),
            Err(StateError::Forged)
        );
        assert_eq!(
            open(&key, &sealed, 10_000, "tools/call", "confirm", &d),
            Err(StateError::Expired)
        );
        assert_eq!(
            open(&key, &sealed, 5_000, "tools/call", "other", &d),
            Err(StateError::Mismatch)
        );
        assert_eq!(
            open(
                &key,
                &sealed,
                5_000,
                "tools/call",
                "confirm",
                &digest(&json!({}))
            ),
            Err(StateError::Mismatch)
        );
        let mut tampered = sealed.clone();
        tampered.replace_range(5..6, if &sealed[5..6] == "0" { "1" } else { "0" });
        assert_eq!(
            open(&key, &tampered, 5_000, "tools/call", "confirm", &d),
            Err(StateError::Forged)
        );
        for garbage in ["", "v1.", "v2.ab.cd", "v1.zz.zz", "v1.abc"] {
            assert!(
                open(&key, garbage, 5_000, "tools/call", "confirm", &d).is_err(),
                "{garbage}"
            );
        }
    }
}
