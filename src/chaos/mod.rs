//! Chaos injection, the client's side and the shared vocabulary: what can
//! be killed ([`Action`]), what the server answers ([`ChaosAnswer`]), the
//! admin client ([`client`]), `load --chaos` schedules ([`spec`]) and how a
//! run's failures are classified against its kills ([`classify`]).
//!
//! The server's side (running an action on a shard, measuring recovery)
//! lives in `runtime::chaos`; it is reachable only through the admin
//! listener, and refused (403) unless `chaos.enabled`. This module imports
//! no other part of the crate, so the load generator can use it.

pub mod classify;
pub mod client;
pub mod schedule;
pub mod spec;

use serde::{Deserialize, Serialize};

/// The kinds of fault, by the name used in paths, specs and the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Kill one session actor.
    Session,
    /// Kill one pool (its supervisor and every session actor in it).
    Pool,
    /// Kill a whole shard (a panic outside supervision).
    Shard,
    /// Block a shard's thread for some milliseconds.
    Stall,
    /// Shut down a shard's open client connections (or a fraction).
    Drop,
    /// Hold a mesh channel (shard a to b) full for some milliseconds.
    Fill,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Session,
        Kind::Pool,
        Kind::Shard,
        Kind::Stall,
        Kind::Drop,
        Kind::Fill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Session => "session",
            Kind::Pool => "pool",
            Kind::Shard => "shard",
            Kind::Stall => "stall",
            Kind::Drop => "drop",
            Kind::Fill => "fill",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.name() == text)
    }
}

/// One chaos request: the kind and its parameters (None: the server picks
/// at random, or its default).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Params {
    pub shard: Option<u16>,
    pub pool: Option<usize>,
    /// A session id (36 hex digits), for `session`.
    pub session: Option<String>,
    /// Milliseconds, for `stall` and `fill`.
    pub ms: Option<u64>,
    /// Share of the connections, in (0, 1], for `drop` (default 1).
    pub fraction: Option<f64>,
    /// The receiving shard, for `fill`.
    pub to: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("unknown chaos kind `{0}`; one of session, pool, shard, stall, drop, fill")]
    UnknownKind(String),
    #[error("unknown parameter `{0}`; known: shard, pool, session, ms, fraction, to")]
    UnknownParam(String),
    #[error("parameter `{name}`: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error("`{name}` is required for {kind}")]
    Missing {
        name: &'static str,
        kind: &'static str,
    },
}

impl Params {
    /// Parses a query string (`shard=0&pool=3`), as the admin listener gets it.
    pub fn parse_query(kind: Kind, query: &str) -> Result<Params, ParamError> {
        let mut params = Params::default();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let invalid = |name: &'static str, reason: &str| ParamError::Invalid {
                name,
                reason: format!("{reason}, got `{value}`"),
            };
            match name {
                "shard" => {
                    params.shard = Some(
                        value
                            .parse()
                            .map_err(|_| invalid("shard", "must be a shard number"))?,
                    )
                }
                "pool" => {
                    params.pool = Some(
                        value
                            .parse()
                            .map_err(|_| invalid("pool", "must be a pool number"))?,
                    )
                }
                "session" => {
                    let valid = value.len() == 36
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                    if !valid {
                        return Err(invalid("session", "must be a session id (36 hex digits)"));
                    }
                    params.session = Some(value.to_string());
                }
                "ms" => {
                    let ms: u64 = value
                        .parse()
                        .map_err(|_| invalid("ms", "must be a whole number of milliseconds"))?;
                    if ms == 0 {
                        return Err(invalid("ms", "must be at least 1"));
                    }
                    params.ms = Some(ms);
                }
                "fraction" => {
                    let fraction: f64 = value
                        .parse()
                        .map_err(|_| invalid("fraction", "must be a number in (0, 1]"))?;
                    if !(fraction > 0.0 && fraction <= 1.0) {
                        return Err(invalid("fraction", "must be a number in (0, 1]"));
                    }
                    params.fraction = Some(fraction);
                }
                "to" => {
                    params.to = Some(
                        value
                            .parse()
                            .map_err(|_| invalid("to", "must be a shard number"))?,
                    )
                }
                other => return Err(ParamError::UnknownParam(other.to_string())),
            }
        }
        if matches!(kind, Kind::Stall | Kind::Fill) && params.ms.is_none() {
            return Err(ParamError::Missing {
                name: "ms",
                kind: kind.name(),
            });
        }
        Ok(params)
    }

    /// The query string for these parameters (what the client sends).
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(shard) = self.shard {
            parts.push(format!("shard={shard}"));
        }
        if let Some(pool) = self.pool {
            parts.push(format!("pool={pool}"));
        }
        if let Some(session) = &self.session {
            parts.push(format!("session={session}"));
        }
        if let Some(ms) = self.ms {
            parts.push(format!("ms={ms}"));
        }
        if let Some(fraction) = self.fraction {
            parts.push(format!("fraction={fraction}"));
        }
        if let Some(to) = self.to {
            parts.push(format!("to={to}"));
        }
        parts.join("&")
    }
}

/// What the server did, as JSON: exactly what was hit and, once the domain
/// accepted work again, how long that took (server-side monotonic clock).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChaosAnswer {
    pub kind: Option<Kind>,
    pub shard: u16,
    /// The pool hit (`pool`), or the killed session's pool (`session`).
    pub pool: Option<usize>,
    /// Pools per shard, so a client can place its sessions.
    pub pools: usize,
    /// The session killed (`session`).
    pub session: Option<String>,
    /// Sessions whose actor died (or, for `shard`, that the shard held).
    pub sessions_affected: usize,
    /// Client connections shut down (`drop`).
    pub connections_dropped: Option<usize>,
    /// The receiving shard (`fill`) and messages queued to keep it full.
    pub to: Option<u16>,
    pub messages_queued: Option<u64>,
    /// How long the stall or fill lasted.
    pub ms: Option<u64>,
    /// Death to the domain accepting work again, µs (see the README for
    /// what "accepting work" means for each kind); None if it did not
    /// within `chaos.recovery_timeout_ms`, or the kind has none (`drop`).
    pub recovery_us: Option<u64>,
    /// What "accepting work" was checked by.
    pub accepting: Option<String>,
}

impl ChaosAnswer {
    /// One line for the CLI.
    pub fn line(&self) -> String {
        let mut line = format!("{} shard={}", self.kind.map_or("?", Kind::name), self.shard);
        if let Some(pool) = self.pool {
            line.push_str(&format!(" pool={pool}"));
        }
        if let Some(session) = &self.session {
            line.push_str(&format!(" session={session}"));
        }
        line.push_str(&format!(" sessions_affected={}", self.sessions_affected));
        if let Some(dropped) = self.connections_dropped {
            line.push_str(&format!(" connections_dropped={dropped}"));
        }
        if let Some(to) = self.to {
            line.push_str(&format!(" to={to}"));
        }
        if let Some(queued) = self.messages_queued {
            line.push_str(&format!(" messages_queued={queued}"));
        }
        if let Some(ms) = self.ms {
            line.push_str(&format!(" ms={ms}"));
        }
        match self.recovery_us {
            Some(us) => line.push_str(&format!(" recovery={:.3}ms", us as f64 / 1e3)),
            None if matches!(self.kind, Some(Kind::Drop)) => {}
            None => line.push_str(" recovery=none (not within chaos.recovery_timeout_ms)"),
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_round_trip() {
        let params = Params::parse_query(Kind::Pool, "shard=1&pool=3").unwrap();
        assert_eq!(params.shard, Some(1));
        assert_eq!(params.pool, Some(3));
        assert_eq!(params.to_query(), "shard=1&pool=3");
        let fill = Params::parse_query(Kind::Fill, "shard=0&to=1&ms=50").unwrap();
        assert_eq!(
            Params::parse_query(Kind::Fill, &fill.to_query()).unwrap(),
            fill
        );
        assert_eq!(
            Params::parse_query(Kind::Shard, "").unwrap(),
            Params::default()
        );
    }

    #[test]
    fn bad_queries_name_the_parameter() {
        let cases = [
            (Kind::Pool, "pool=x", "pool"),
            (Kind::Pool, "shard=-1", "shard"),
            (Kind::Session, "session=zz", "session"),
            (Kind::Drop, "fraction=0", "fraction"),
            (Kind::Drop, "fraction=1.5", "fraction"),
            (Kind::Stall, "ms=0", "ms"),
            (Kind::Stall, "shard=0", "ms"),
            (Kind::Pool, "color=red", "color"),
        ];
        for (kind, query, name) in cases {
            let error = Params::parse_query(kind, query).unwrap_err().to_string();
            assert!(error.contains(name), "{query}: {error}");
        }
        assert_eq!(Kind::parse("pool"), Some(Kind::Pool));
        assert_eq!(Kind::parse("everything"), None);
    }

    #[test]
    fn an_answer_prints_as_one_line() {
        let answer = ChaosAnswer {
            kind: Some(Kind::Pool),
            shard: 1,
            pool: Some(3),
            pools: 8,
            sessions_affected: 12,
            recovery_us: Some(1_500),
            ..ChaosAnswer::default()
        };
        assert_eq!(
            answer.line(),
            "pool shard=1 pool=3 sessions_affected=12 recovery=1.500ms"
        );
    }
}
