//! The `shardmcp` command line. Subcommands turn their errors into one line
//! and an exit code; the logic lives in the library.

mod load;
mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use load::{load, LoadArgs, LoadCliError};
pub use serve::{serve, ServeError};

#[derive(Debug, Parser)]
#[command(
    name = "shardmcp",
    version,
    about = "A thread-per-core Model Context Protocol server with OTP-style supervision",
    long_about = "shardmcp runs one shard per CPU core: a glommio executor pinned to the core, \
with its own session pools, registry and io_uring sockets, under Erlang/OTP-style supervisors. \
A failure stays inside its pool and its core."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server until SIGINT/SIGTERM, then drain and exit 0.
    Serve(ServeArgs),
    /// Drive real, initialized MCP sessions against any MCP server and
    /// report throughput, latency percentiles, errors and availability.
    Load(LoadArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file; unknown keys are errors. Without it the
    /// embedded defaults are used (see --print-config).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Shards to run, one pinned executor each [default: one per available core].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Session pools per shard [default: 8].
    #[arg(long, value_name = "P")]
    pub pools: Option<usize>,
    /// TCP listen address for newline-delimited JSON-RPC; "" disables it
    /// [default: 127.0.0.1:8081].
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<String>,
    /// Streamable HTTP listen address (`/mcp`); "" disables it
    /// [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Log filter for stderr, e.g. "info" or "shardmcp=debug" [default: info,
    /// or RUST_LOG when set].
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

impl ServeArgs {
    pub fn config_path(&self) -> Option<&PathBuf> {
        self.config.as_ref()
    }
}
