//! `shardmcp serve`.

use std::io::Write;

use crate::config::{Config, ConfigError};
use crate::runtime::{self, NodeError};

use super::ServeArgs;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// The effective configuration: file (or defaults), then flags, validated.
pub fn effective_config(args: &ServeArgs) -> Result<Config, ConfigError> {
    let mut config = match args.config_path() {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(shards) = args.shards {
        config.runtime.shards = shards;
    }
    if let Some(pools) = args.pools {
        config.runtime.pools = pools;
    }
    if let Some(tcp) = &args.tcp {
        config.listen.tcp = tcp.clone();
    }
    if let Some(http) = &args.http {
        config.listen.http = http.clone();
    }
    config.validate()?;
    Ok(config)
}

pub fn serve(args: &ServeArgs) -> Result<(), ServeError> {
    let config = effective_config(args)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(ServeError::Signals)?;

    let node = runtime::start(config, crate::server::demo::factory())?;
    let shards = node.shard_count();
    {
        let mut out = std::io::stdout().lock();
        for listener in node.listeners() {
            let _ = writeln!(
                out,
                "shardmcp: {} listening on {} ({shards} shards, SO_REUSEPORT)",
                listener.kind, listener.addr
            );
        }
        if node.listeners().is_empty() {
            let _ = writeln!(out, "shardmcp: running {shards} shards with no listeners");
        }
        let _ = out.flush();
    }

    let drainer = node.drainer();
    let signal_handle = signals.handle();
    let signal_thread = std::thread::spawn(move || {
        let mut seen = 0;
        for signal in signals.forever() {
            seen += 1;
            if seen == 1 {
                tracing::info!(
                    signal,
                    "signal received; draining (send it again to exit at once)"
                );
                drainer.drain();
            } else {
                tracing::warn!(signal, "second signal; exiting without waiting");
                std::process::exit(130);
            }
        }
    });
    let result = node.join();
    signal_handle.close();
    let _ = signal_thread.join();
    result?;
    tracing::info!("drained; bye");
    Ok(())
}
