//! `shardmcp doctor`: prints the host checks; the caller exits 1 when one
//! fails.

use std::io::Write;

use crate::config::{Config, ConfigError};
use crate::doctor::{render, run_checks, HostFacts, Level, Recommended};

use super::DoctorArgs;

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Runs every check and prints the report; Ok(false) when a check failed.
pub fn doctor(args: &DoctorArgs) -> Result<bool, DoctorError> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(shards) = args.shards {
        config.runtime.shards = shards;
    }
    config.validate()?;
    let facts = HostFacts::gather(&config);
    let checks = run_checks(&facts, &config, &Recommended::shipped());
    let shards = config.shard_count(facts.cpus.len());
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(render(&checks, shards).as_bytes());
    let _ = out.flush();
    Ok(checks.iter().all(|check| check.level != Level::Fail))
}
