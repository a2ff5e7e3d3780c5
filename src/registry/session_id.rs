//! Session ids: the owning shard in a fixed-width prefix, then 128 bits from a
//! CSPRNG. Text form: 4 lowercase hex digits of shard, 32 of randomness, 36
//! visible ASCII characters in all (valid as an `Mcp-Session-Id`).

use std::fmt;
use std::hash::{Hash, Hasher};

use crate::ids::ShardId;

pub const SESSION_ID_LEN: usize = 36;
const SHARD_DIGITS: usize = 4;

/// ```
/// use shardmcp::ids::ShardId;
/// use shardmcp::registry::SessionId;
///
/// let id = SessionId::new(ShardId(2), 0xabc);
/// let text = id.to_string();
/// assert_eq!(text, "000200000000000000000000000000000abc");
/// assert_eq!(SessionId::parse(&text).unwrap().shard(), ShardId(2));
/// assert!(SessionId::parse("0002ABC").is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionId {
    shard: ShardId,
    random: u128,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionIdError {
    #[error("session id must be {SESSION_ID_LEN} characters, got {0}")]
    WrongLength(usize),
    #[error("session id has a character that is not lowercase hex at position {0}")]
    NotHex(usize),
}

impl SessionId {
    pub fn new(shard: ShardId, random: u128) -> Self {
        SessionId { shard, random }
    }

    /// The shard that owns this session: where every request for it runs.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    pub fn random(&self) -> u128 {
        self.random
    }

    /// Which of `pools` pools the session lives in. Uses the high half of the
    /// random bits; hash tables use the low half, so the two stay independent.
    pub fn pool_index(&self, pools: usize) -> usize {
        debug_assert!(pools > 0);
        ((self.random >> 64) as u64 % pools.max(1) as u64) as usize
    }

    pub fn encode(&self) -> [u8; SESSION_ID_LEN] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; SESSION_ID_LEN];
        let shard = self.shard.0;
        for (i, byte) in out[..SHARD_DIGITS].iter_mut().enumerate() {
            *byte = HEX[usize::from((shard >> (4 * (SHARD_DIGITS - 1 - i))) & 0xf)];
        }
        for (i, byte) in out[SHARD_DIGITS..].iter_mut().enumerate() {
            *byte = HEX[((self.random >> (4 * (31 - i))) & 0xf) as usize];
        }
        out
    }

    /// Parses the text form; anything but exactly 36 lowercase hex digits is refused.
    pub fn parse(text: &str) -> Result<SessionId, SessionIdError> {
        Self::parse_bytes(text.as_bytes())
    }

    pub fn parse_bytes(bytes: &[u8]) -> Result<SessionId, SessionIdError> {
        if bytes.len() != SESSION_ID_LEN {
            return Err(SessionIdError::WrongLength(bytes.len()));
        }
        let mut shard: u16 = 0;
        let mut random: u128 = 0;
        for (position, &byte) in bytes.iter().enumerate() {
            let digit = match byte {
                b'0'..=b'9' => byte - b'0',
                b'a'..=b'f' => byte - b'a' + 10,
                _ => return Err(SessionIdError::NotHex(position)),
            };
            if position < SHARD_DIGITS {
                shard = (shard << 4) | u16::from(digit);
            } else {
                random = (random << 4) | u128::from(digit);
            }
        }
        Ok(SessionId {
            shard: ShardId(shard),
            random,
        })
    }
}

impl Hash for SessionId {
    /// The random half is already uniform: hand it to the table as is.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.random as u64);
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let encoded = self.encode();
        // encode() writes only ASCII hex digits.
        f.write_str(std::str::from_utf8(&encoded).map_err(|_| fmt::Error)?)
    }
}

impl std::str::FromStr for SessionId {
    type Err = SessionIdError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        SessionId::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        for (shard, random) in [
            (0u16, 0u128),
            (3, u128::MAX),
            (0xffff, 0x0123_4567_89ab_cdef),
        ] {
            let id = SessionId::new(ShardId(shard), random);
            let text = id.to_string();
            assert_eq!(text.len(), SESSION_ID_LEN);
            assert_eq!(SessionId::parse(&text), Ok(id));
            assert_eq!(id.shard(), ShardId(shard));
        }
        let id = SessionId::new(ShardId(2), 0xabc);
        assert_eq!(id.to_string(), "000200000000000000000000000000000abc");
    }

    #[test]
    fn rejects_malformed_ids() {
        assert_eq!(SessionId::parse(""), Err(SessionIdError::WrongLength(0)));
        assert_eq!(
            SessionId::parse("0001abc"),
            Err(SessionIdError::WrongLength(7))
        );
        let too_long = "0".repeat(SESSION_ID_LEN + 1);
        assert_eq!(
            SessionId::parse(&too_long),
            Err(SessionIdError::WrongLength(37))
        );
        let upper = "0001ABCDEF0000000000000000000000abcd";
        assert_eq!(SessionId::parse(upper), Err(SessionIdError::NotHex(4)));
        let spaced = "0001 000000000000000000000000000abcd";
        assert_eq!(SessionId::parse(spaced), Err(SessionIdError::NotHex(4)));
        let unicode = "0001é0000000000000000000000000000ab";
        assert!(SessionId::parse(unicode).is_err());
    }

    #[test]
    fn pool_index_is_in_range_and_spreads() {
        let mut counts = [0usize; 8];
        for i in 0..8_000u128 {
            // Spread the test input over the high half like a CSPRNG would.
            let random = i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
            counts[SessionId::new(ShardId(0), random).pool_index(8)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 500), "{counts:?}");
    }
}
