//! `shardmcp serve`.

use std::io::Write;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigError, LogConfig, LogFormat};
use crate::runtime::{self, NodeError};
use crate::transport::stdio;

use super::ServeArgs;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot bridge stdin and stdout: {0}")]
    Stdio(std::io::Error),
    #[error(transparent)]
    Otel(#[from] crate::observe::otel::OtelError),
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
    if let Some(admin) = &args.admin {
        config.listen.admin = admin.clone();
    }
    if args.chaos {
        config.chaos.enabled = true;
    }
    if args.stdio {
        // One session, so one shard; and no network unless asked for on the
        // command line, so a desktop client can start it beside a server
        // that already holds the configured ports.
        if args.shards.is_some_and(|shards| shards != 1) {
            return Err(ConfigError::Invalid {
                key: "runtime.shards",
                reason: "--stdio serves one session on one shard; drop --shards or give 1"
                    .to_string(),
            });
        }
        config.runtime.shards = 1;
        config.listen.tcp = args.tcp.clone().unwrap_or_default();
        config.listen.http = args.http.clone().unwrap_or_default();
        config.listen.admin = args.admin.clone().unwrap_or_default();
    }
    config.validate()?;
    Ok(config)
}

/// Logs on stderr: the filter is `--log`, else RUST_LOG, else `log.level`;
/// the format is `log.format`. Once per process.
pub fn init_logging(log: &LogConfig, flag: Option<&str>) {
    let filter = match flag {
        Some(filter) => EnvFilter::new(filter),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level)),
    };
    // Colours only for a person at a terminal: `--stdio` clients and
    // services keep stderr in files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // try_init: a second call (tests, embedding) keeps the first subscriber.
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

pub fn serve(args: &ServeArgs) -> Result<(), ServeError> {
    let config = effective_config(args)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    init_logging(&config.log, args.log.as_deref());
    // Before the shards start, so their first requests are traced.
    let otel = crate::observe::otel::start(&config.otel)?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(ServeError::Signals)?;

    let drain_deadline = Duration::from_millis(config.runtime.drain_deadline_ms);
    let (node, pumps) = if args.stdio {
        let (link, pumps) = stdio::attach().map_err(ServeError::Stdio)?;
        let node = runtime::start_with_stdio(config, crate::server::demo::factory(), link)?;
        (node, Some(pumps))
    } else {
        (
            runtime::start(config, crate::server::demo::factory())?,
            None,
        )
    };
    let shards = node.shard_count();
    {
        // With --stdio, stdout carries the session and nothing else.
        let mut out: Box<dyn Write> = if args.stdio {
            Box::new(std::io::stderr().lock())
        } else {
            Box::new(std::io::stdout().lock())
        };
        for listener in node.listeners() {
            let _ = if listener.kind == "admin" {
                writeln!(
                    out,
                    "shardmcp: admin listening on {} (/ live page, /metrics, /health/live, /health/ready, /admin/tree)",
                    listener.addr
                )
            } else {
                writeln!(
                    out,
                    "shardmcp: {} listening on {} ({shards} shards, SO_REUSEPORT)",
                    listener.kind, listener.addr
                )
            };
        }
        if args.stdio {
            let _ = writeln!(out, "shardmcp: serving one MCP session on stdin/stdout");
        } else if node.listeners().iter().all(|l| l.kind == "admin") {
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
    if let Some(pumps) = pumps {
        // The session's last answers may still be on their way to stdout.
        if !pumps.finish(drain_deadline) {
            tracing::warn!("stdout not fully written by the drain deadline");
        }
    }
    // The spans of the last requests go out before the process ends.
    if let Some(otel) = otel {
        otel.shutdown();
    }
    result?;
    tracing::info!("drained; bye");
    Ok(())
}
