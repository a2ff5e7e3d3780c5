//! How a chaos run's failures are told apart: inside the killed domain or
//! outside it, and each kind's recovery times.
//!
//! A failure is **inside** when it happened within a kill's window and its
//! session was in the killed domain; every other failure is **outside**.
//! A kill's window runs from the moment its admin request was sent until
//! `grace` after its answer came back (the answer comes once the domain
//! accepts work again, so the window covers the whole outage plus the time
//! a client takes to see its request fail). The domain of each kind:
//!
//! - `session`: that session; `pool`: the sessions of that shard whose
//!   pool (the id's high 64 random bits modulo the pool count) is the one
//!   killed; `shard` and `stall`: every session the shard owns; `fill`: the
//!   sessions of both shards of the channel;
//! - `drop`: connections, not sessions (the client cannot tell which shard
//!   accepted its connection), so any failure within its window.
//!
//! A failure with no session (an initialization that failed) is inside
//! when it falls within any kill's window.

use serde::{Deserialize, Serialize};

use super::{ChaosAnswer, Kind};

/// A session as the generator knows it from its id: the owning shard (the
/// first 4 hex digits) and the 128 random bits (the other 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionKey {
    pub shard: u16,
    pub high: u64,
    pub low: u64,
}

impl SessionKey {
    /// Parses a shardmcp session id; None for anything else (another
    /// server's ids are not placed).
    pub fn parse(text: &str) -> Option<SessionKey> {
        if text.len() != 36 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        Some(SessionKey {
            shard: u16::from_str_radix(&text[..4], 16).ok()?,
            high: u64::from_str_radix(&text[4..20], 16).ok()?,
            low: u64::from_str_radix(&text[20..], 16).ok()?,
        })
    }

    /// The session's pool among `pools` (as the server places it).
    pub fn pool(&self, pools: usize) -> usize {
        (self.high % pools.max(1) as u64) as usize
    }
}

/// One failed request or initialization in the measured window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Wall-clock time, µs since the Unix epoch (shared by the generator's
    /// processes and the schedule).
    pub at_us: u64,
    pub session: Option<SessionKey>,
}

/// One injection as the schedule saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kill {
    pub kind: Kind,
    /// Wall-clock µs: request sent, answer received.
    pub sent_us: u64,
    pub answered_us: u64,
    /// The server's answer, or why there was none.
    pub answer: Option<ChaosAnswer>,
    pub error: Option<String>,
}

impl Kill {
    fn covers(&self, failure: &Failure, grace_us: u64) -> bool {
        failure.at_us >= self.sent_us && failure.at_us <= self.answered_us.saturating_add(grace_us)
    }

    /// Whether `session` was in the killed domain.
    fn holds(&self, session: &SessionKey) -> bool {
        let Some(answer) = &self.answer else {
            return false;
        };
        match self.kind {
            Kind::Session => answer
                .session
                .as_deref()
                .and_then(SessionKey::parse)
                .is_some_and(|killed| killed == *session),
            Kind::Pool => {
                session.shard == answer.shard
                    && answer
                        .pool
                        .is_some_and(|pool| session.pool(answer.pools) == pool)
            }
            Kind::Shard | Kind::Stall => session.shard == answer.shard,
            Kind::Fill => session.shard == answer.shard || Some(session.shard) == answer.to,
            Kind::Drop => true,
        }
    }
}

/// Recovery times of one kind, µs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    pub kind: Kind,
    /// Injections answered by the server, and those that were not (error).
    pub injected: u64,
    pub failed: u64,
    /// Injections whose domain did not accept work within the server's
    /// `chaos.recovery_timeout_ms`.
    pub unrecovered: u64,
    pub sessions_affected: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<u64>,
}

/// The chaos part of a load report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub grace_us: u64,
    /// Failures inside a killed domain (within its window), and the rest.
    pub failed_inside: u64,
    pub failed_outside: u64,
    /// Failures not recorded one by one (past the generator's bound): not
    /// classified.
    pub failed_unclassified: u64,
    pub recovery: Vec<Recovery>,
}

/// Classifies `failures` against `kills` (see the module doc).
pub fn summarize(failures: &[Failure], unrecorded: u64, kills: &[Kill], grace_us: u64) -> Summary {
    let (mut inside, mut outside) = (0, 0);
    for failure in failures {
        let hit = kills.iter().any(|kill| {
            kill.covers(failure, grace_us)
                && match &failure.session {
                    Some(session) => kill.holds(session),
                    None => true,
                }
        });
        if hit {
            inside += 1;
        } else {
            outside += 1;
        }
    }
    let mut recovery = Vec::new();
    for kind in Kind::ALL {
        let of_kind: Vec<&Kill> = kills.iter().filter(|kill| kill.kind == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        let answers: Vec<&ChaosAnswer> = of_kind.iter().filter_map(|k| k.answer.as_ref()).collect();
        let mut times: Vec<u64> = answers.iter().filter_map(|a| a.recovery_us).collect();
        times.sort_unstable();
        recovery.push(Recovery {
            kind,
            injected: answers.len() as u64,
            failed: (of_kind.len() - answers.len()) as u64,
            unrecovered: if kind == Kind::Drop {
                0
            } else {
                (answers.len() - times.len()) as u64
            },
            sessions_affected: answers.iter().map(|a| a.sessions_affected as u64).sum(),
            p50_us: percentile(&times, 0.50),
            p99_us: percentile(&times, 0.99),
            max_us: times.last().copied(),
        });
    }
    Summary {
        grace_us,
        failed_inside: inside,
        failed_outside: outside,
        failed_unclassified: unrecorded,
        recovery,
    }
}

/// Nearest-rank percentile of sorted `values`.
pub fn percentile(sorted: &[u64], quantile: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(shard: u16, high: u64) -> SessionKey {
        SessionKey {
            shard,
            high,
            low: 7,
        }
    }

    fn kill(kind: Kind, shard: u16, pool: Option<usize>, sent_us: u64, answered_us: u64) -> Kill {
        Kill {
            kind,
            sent_us,
            answered_us,
            answer: Some(ChaosAnswer {
                kind: Some(kind),
                shard,
                pool,
                pools: 4,
                sessions_affected: 3,
                recovery_us: Some(answered_us - sent_us),
                ..ChaosAnswer::default()
            }),
            error: None,
        }
    }

    #[test]
    fn session_ids_give_shard_and_pool() {
        let key = SessionKey::parse("000200000000000000050000000000000abc").unwrap();
        assert_eq!(key.shard, 2);
        assert_eq!(key.high, 5);
        assert_eq!(key.low, 0xabc);
        assert_eq!(key.pool(4), 1);
        assert!(SessionKey::parse("0002").is_none());
        assert!(SessionKey::parse("000200000000000000050000000000000ABC").is_none());
    }

    #[test]
    fn failures_are_inside_only_in_the_killed_domain_and_window() {
        // Pool 1 of shard 0 killed from 1000 µs, answered at 2000; grace 500.
        let kills = vec![kill(Kind::Pool, 0, Some(1), 1_000, 2_000)];
        let failures = [
            // In the pool, in the window: inside.
            Failure {
                at_us: 1_500,
                session: Some(session(0, 5)),
            },
            // In the pool, within the grace: inside.
            Failure {
                at_us: 2_400,
                session: Some(session(0, 1)),
            },
            // In the pool, after the grace: outside.
            Failure {
                at_us: 2_600,
                session: Some(session(0, 1)),
            },
            // Another pool of the same shard: outside.
            Failure {
                at_us: 1_500,
                session: Some(session(0, 2)),
            },
            // The same pool number on another shard: outside.
            Failure {
                at_us: 1_500,
                session: Some(session(1, 1)),
            },
            // Before the kill: outside.
            Failure {
                at_us: 900,
                session: Some(session(0, 1)),
            },
            // No session (a failed initialization) in the window: inside.
            Failure {
                at_us: 1_200,
                session: None,
            },
        ];
        let summary = summarize(&failures, 3, &kills, 500);
        assert_eq!(summary.failed_inside, 3);
        assert_eq!(summary.failed_outside, 4);
        assert_eq!(summary.failed_unclassified, 3);
        assert_eq!(summary.recovery.len(), 1);
        assert_eq!(summary.recovery[0].p99_us, Some(1_000));
    }

    #[test]
    fn shard_and_session_kills_have_their_own_domains() {
        let mut session_kill = kill(Kind::Session, 1, Some(0), 0, 100);
        if let Some(answer) = &mut session_kill.answer {
            answer.session = Some("000100000000000000090000000000000007".to_string());
        }
        let kills = vec![kill(Kind::Shard, 0, None, 1_000, 2_000), session_kill];
        let failures = [
            Failure {
                at_us: 1_100,
                session: Some(session(0, 3)),
            },
            Failure {
                at_us: 1_100,
                session: Some(session(1, 3)),
            },
            Failure {
                at_us: 50,
                session: Some(session(1, 9)),
            },
            Failure {
                at_us: 50,
                session: Some(session(1, 8)),
            },
        ];
        let summary = summarize(&failures, 0, &kills, 0);
        assert_eq!((summary.failed_inside, summary.failed_outside), (2, 2));
    }

    #[test]
    fn recovery_percentiles_per_kind_count_what_did_not_recover() {
        let mut kills: Vec<Kill> = (1..=100)
            .map(|i| kill(Kind::Pool, 0, Some(0), 0, i * 10))
            .collect();
        kills.push(Kill {
            kind: Kind::Pool,
            sent_us: 0,
            answered_us: 0,
            answer: None,
            error: Some("refused".into()),
        });
        let mut slow = kill(Kind::Shard, 0, None, 0, 1);
        if let Some(answer) = &mut slow.answer {
            answer.recovery_us = None;
        }
        kills.push(slow);
        let summary = summarize(&[], 0, &kills, 0);
        let pool = &summary.recovery[0];
        assert_eq!(pool.kind, Kind::Pool);
        assert_eq!((pool.injected, pool.failed), (100, 1));
        assert_eq!(pool.p50_us, Some(500));
        assert_eq!(pool.p99_us, Some(990));
        assert_eq!(pool.max_us, Some(1_000));
        assert_eq!(summary.recovery[1].unrecovered, 1);
        assert_eq!(summary.recovery[1].p99_us, None);
        assert_eq!(percentile(&[], 0.5), None);
    }
}
