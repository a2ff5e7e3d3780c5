//! `load --chaos SPEC`: which faults to inject how often during the
//! measured window. SPEC is a comma-separated list of `KIND=PERIOD`, with
//! `@LENGTH` for the kinds that last (`stall`, `fill`), e.g.
//! `pool=1s,shard=10s,session=100ms,stall=5s@20ms`. PERIOD and LENGTH are
//! a whole number followed by `us`, `ms`, `s` or `m`.

use std::time::Duration;

use super::Kind;

/// Shortest period one kind may be injected at (each injection is an
/// admin request, a connection of its own).
pub const PERIOD_MIN: Duration = Duration::from_millis(10);
/// Longest period or length.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3_600);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("--chaos is empty; give KIND=PERIOD[,...], e.g. pool=1s,shard=10s")]
    Empty,
    #[error("--chaos entry `{0}` is not KIND=PERIOD (e.g. pool=1s)")]
    NotAnEntry(String),
    #[error("--chaos: unknown kind `{0}`; one of session, pool, shard, stall, drop, fill")]
    UnknownKind(String),
    #[error("--chaos: {kind} is given twice")]
    Duplicate { kind: &'static str },
    #[error("--chaos {kind}: `{text}` is not a duration (a whole number and us, ms, s or m)")]
    BadDuration { kind: &'static str, text: String },
    #[error("--chaos {kind}: period {period:?} is shorter than the minimum {PERIOD_MIN:?}")]
    TooFrequent {
        kind: &'static str,
        period: Duration,
    },
    #[error("--chaos {kind}: {what} is longer than {DURATION_MAX:?}")]
    TooLong {
        kind: &'static str,
        what: &'static str,
    },
    #[error("--chaos {kind}: needs a length, e.g. {kind}=5s@20ms")]
    NeedsLength { kind: &'static str },
    #[error("--chaos {kind}: takes no length (only stall and fill last)")]
    NoLength { kind: &'static str },
}

/// One kind of fault, injected every `period` from the window's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub period: Duration,
    /// How long a `stall` or `fill` lasts.
    pub length: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub entries: Vec<Entry>,
}

impl Spec {
    pub fn parse(text: &str) -> Result<Spec, SpecError> {
        let mut entries: Vec<Entry> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| SpecError::NotAnEntry(part.to_string()))?;
            let kind = Kind::parse(name.trim())
                .ok_or_else(|| SpecError::UnknownKind(name.trim().to_string()))?;
            let k = kind.name();
            if entries.iter().any(|entry| entry.kind == kind) {
                return Err(SpecError::Duplicate { kind: k });
            }
            let (period, length) = match value.split_once('@') {
                Some((period, length)) => (period, Some(length)),
                None => (value, None),
            };
            let period = parse_duration(k, period)?;
            if period < PERIOD_MIN {
                return Err(SpecError::TooFrequent { kind: k, period });
            }
            if period > DURATION_MAX {
                return Err(SpecError::TooLong {
                    kind: k,
                    what: "the period",
                });
            }
            let lasts = matches!(kind, Kind::Stall | Kind::Fill);
            let length = match (length, lasts) {
                (Some(text), true) => {
                    let length = parse_duration(k, text)?;
                    if length.is_zero() {
                        return Err(SpecError::BadDuration {
                            kind: k,
                            text: text.to_string(),
                        });
                    }
                    if length > DURATION_MAX {
                        return Err(SpecError::TooLong {
                            kind: k,
                            what: "the length",
                        });
                    }
                    Some(length)
                }
                (None, true) => return Err(SpecError::NeedsLength { kind: k }),
                (Some(_), false) => return Err(SpecError::NoLength { kind: k }),
                (None, false) => None,
            };
            entries.push(Entry {
                kind,
                period,
                length,
            });
        }
        if entries.is_empty() {
            return Err(SpecError::Empty);
        }
        Ok(Spec { entries })
    }

    /// When each injection falls in a window of `window`: every period from
    /// the start (not at 0, so the run has a baseline first), by kind.
    pub fn times(&self, entry: &Entry, window: Duration) -> Vec<Duration> {
        let mut times = Vec::new();
        let mut at = entry.period;
        while at < window {
            times.push(at);
            at += entry.period;
        }
        times
    }
}

fn parse_duration(kind: &'static str, text: &str) -> Result<Duration, SpecError> {
    let text = text.trim();
    let bad = || SpecError::BadDuration {
        kind,
        text: text.to_string(),
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "us" => Duration::from_micros(number),
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.checked_mul(60).ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_parses_into_entries() {
        let spec = Spec::parse("pool=1s, shard=10s,session=100ms,stall=5s@20ms").unwrap();
        assert_eq!(
            spec.entries,
            vec![
                Entry {
                    kind: Kind::Pool,
                    period: Duration::from_secs(1),
                    length: None
                },
                Entry {
                    kind: Kind::Shard,
                    period: Duration::from_secs(10),
                    length: None
                },
                Entry {
                    kind: Kind::Session,
                    period: Duration::from_millis(100),
                    length: None
                },
                Entry {
                    kind: Kind::Stall,
                    period: Duration::from_secs(5),
                    length: Some(Duration::from_millis(20))
                },
            ]
        );
        let times = spec.times(&spec.entries[1], Duration::from_secs(35));
        assert_eq!(
            times,
            [10, 20, 30].map(Duration::from_secs).to_vec(),
            "every period from the start, none at 0"
        );
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let cases = [
            ("", "empty"),
            ("pool", "not KIND=PERIOD"),
            ("planet=1s", "unknown kind `planet`"),
            ("pool=1s,pool=2s", "pool is given twice"),
            ("pool=fast", "`fast` is not a duration"),
            ("pool=10", "`10` is not a duration"),
            ("pool=1h", "`1h` is not a duration"),
            ("pool=1ms", "shorter than the minimum"),
            ("stall=1s", "needs a length"),
            ("stall=1s@0ms", "`0ms` is not a duration"),
            ("pool=1s@5ms", "takes no length"),
            ("pool=99999m", "longer than"),
        ];
        for (text, expected) in cases {
            let error = Spec::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
