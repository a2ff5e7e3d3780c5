//! Protocol versions and the two eras.
//!
//! The handshake era (2024-11-05 … 2025-11-25) opens a session with
//! `initialize`; the stateless era (2026-07-28) carries an envelope in every
//! request's `_meta`.

/// The newest handshake-era version; offered when a client asks for one we
/// do not serve.
pub const LATEST_HANDSHAKE: &str = "2025-11-25";

/// Handshake-era versions served, newest first.
pub const HANDSHAKE_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// The stateless revision.
pub const STATELESS: &str = "2026-07-28";

/// Which era a version belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    Handshake,
    Stateless,
}

pub fn era_of(version: &str) -> Option<Era> {
    if HANDSHAKE_VERSIONS.contains(&version) {
        Some(Era::Handshake)
    } else if version == STATELESS {
        Some(Era::Stateless)
    } else {
        None
    }
}

/// Version negotiation at `initialize` (2025-11-25 lifecycle): the server
/// answers with the requested version if it supports it, otherwise with the
/// latest version it supports; the client then decides whether to go on.
pub fn negotiate(requested: &str) -> &'static str {
    HANDSHAKE_VERSIONS
        .iter()
        .copied()
        .find(|&served| served == requested)
        .unwrap_or(LATEST_HANDSHAKE)
}

/// Only 2025-03-26 allowed JSON-RPC batches.
pub fn allows_batches(version: &str) -> bool {
    version == "2025-03-26"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_echoes_served_versions_and_offers_the_latest_otherwise() {
        for version in HANDSHAKE_VERSIONS {
            assert_eq!(negotiate(version), version);
        }
        assert_eq!(negotiate("2023-01-01"), LATEST_HANDSHAKE);
        assert_eq!(
            negotiate(STATELESS),
            LATEST_HANDSHAKE,
            "2026 never negotiates by initialize"
        );
        assert_eq!(negotiate(""), LATEST_HANDSHAKE);
    }

    #[test]
    fn eras_and_batches() {
        assert_eq!(era_of("2024-11-05"), Some(Era::Handshake));
        assert_eq!(era_of(STATELESS), Some(Era::Stateless));
        assert_eq!(era_of("2099-01-01"), None);
        assert!(allows_batches("2025-03-26"));
        assert!(!allows_batches("2025-06-18"));
    }
}
