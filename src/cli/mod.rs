//! The `shardmcp` command line. Subcommands turn their errors into one line
//! and an exit code; the logic lives in the library.

mod chaos;
mod doctor;
mod load;
mod serve;
mod tree;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use chaos::{chaos, ChaosArgs, ChaosCliError};
pub use doctor::{doctor, DoctorError};
pub use load::{load, LoadArgs, LoadCliError};
pub use serve::{effective_config, init_logging, serve, ServeError};
pub use tree::{fetch_tree, tree, TreeError};

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
    /// Run the server until SIGINT/SIGTERM (with --stdio: until stdin
    /// closes), then drain and exit 0.
    Serve(ServeArgs),
    /// Drive real, initialized MCP sessions against any MCP server and
    /// report throughput, latency percentiles, errors and availability.
    Load(LoadArgs),
    /// Print the live supervision tree of a running server (node, shards,
    /// supervisors with their strategies and restart counts), fetched from
    /// its admin listener.
    Tree(TreeArgs),
    /// Check this host against what `serve` needs and what tuning/
    /// recommends (kernel, io_uring, limits, sysctls, cores, huge pages);
    /// prints ok / warn / fail per check with its fix, and exits 1 when
    /// something would stop `serve` from working.
    Doctor(DoctorArgs),
    /// Inject a fault into a running server started with --chaos (through
    /// its admin listener) and print one line: what was hit and how long
    /// the domain took to accept work again.
    Chaos(ChaosArgs),
}

#[derive(Debug, Args)]
pub struct TreeArgs {
    /// The server's admin listener (`listen.admin`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Print the JSON of `/admin/tree` as it came instead of the tree.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The configuration `serve` will run with (shards, io memory, backlog
    /// and listen addresses are checked against the host) [default: the
    /// embedded defaults].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Shards `serve` will run [default: runtime.shards, or one per core].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file; unknown keys are errors. Without it the
    /// embedded defaults are used (see --print-config). Its `[auth]` section
    /// turns on bearer-token authorization of HTTP clients (JWT against a
    /// JWKS file, or static tokens; needs `listen.tcp = ""`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Shards to run, one pinned executor each [default: one per available core].
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Session pools per shard [default: 8].
    #[arg(long, value_name = "P")]
    pub pools: Option<usize>,
    /// TCP listen address for newline-delimited JSON-RPC; "" disables it
    /// [default: 127.0.0.1:8081; with --stdio: off].
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<String>,
    /// HTTP listen address: Streamable HTTP at `/mcp`, WebSocket (subprotocol
    /// `mcp`) at `/ws`; "" disables it [default: 127.0.0.1:8080; with
    /// --stdio: off].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Admin listen address (`/metrics`, `/health/live`, `/health/ready`,
    /// `/admin/tree`, the live page at `/`); "" disables it [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Serve one MCP session over stdin/stdout (newline-delimited JSON-RPC)
    /// on one shard, and exit 0 once stdin closes and in-flight requests are
    /// done. Only MCP messages are written to stdout; logs and listener lines
    /// go to stderr. Network listeners are off unless --tcp or --http is
    /// given (the config file's listen addresses are ignored); --shards, if
    /// given, must be 1.
    #[arg(long)]
    pub stdio: bool,
    /// Accept fault injection (`POST /admin/chaos/...` on the admin
    /// listener, `shardmcp chaos`, `shardmcp load --chaos`): kill session
    /// actors, pools and shards, stall shards, drop connections, fill mesh
    /// channels. Off by default; without it chaos requests get 403.
    #[arg(long)]
    pub chaos: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Log filter for stderr, e.g. "info" or "shardmcp=debug" [default:
    /// RUST_LOG when set, else log.level of the config, "info"]. The format
    /// (text or json) is log.format.
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

impl ServeArgs {
    pub fn config_path(&self) -> Option<&PathBuf> {
        self.config.as_ref()
    }
}
