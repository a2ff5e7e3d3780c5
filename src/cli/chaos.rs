//! `shardmcp chaos`: one fault through a running server's admin listener.

use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::chaos::{client, Kind, Params};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// Kill one session actor (--session ID, or a random one on --shard);
    /// a new actor takes the session up from the shard's record.
    Session,
    /// Kill a pool (--shard, --pool, or random) with all its session actors.
    Pool,
    /// Kill a whole shard (a panic outside supervision); the node restarts it.
    Shard,
    /// Block a shard's thread for --ms milliseconds.
    Stall,
    /// Shut down a shard's open client connections (--fraction of them).
    Drop,
    /// Hold the mesh channel --shard -> --to full for --ms milliseconds.
    Fill,
}

impl KindArg {
    fn kind(self) -> Kind {
        match self {
            KindArg::Session => Kind::Session,
            KindArg::Pool => Kind::Pool,
            KindArg::Shard => Kind::Shard,
            KindArg::Stall => Kind::Stall,
            KindArg::Drop => Kind::Drop,
            KindArg::Fill => Kind::Fill,
        }
    }
}

#[derive(Debug, Args)]
#[command(after_long_help = CHAOS_HELP)]
pub struct ChaosArgs {
    /// What to break.
    #[arg(value_enum)]
    pub kind: KindArg,
    /// The server's admin listener (`listen.admin`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Shard to hit [default: a random shard that is up].
    #[arg(long, value_name = "N")]
    pub shard: Option<u16>,
    /// Pool to kill (pool) [default: random].
    #[arg(long, value_name = "N")]
    pub pool: Option<usize>,
    /// Session to kill (session): its Mcp-Session-Id; its shard is read
    /// off the id.
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// How long a stall or fill lasts, in milliseconds (required for them).
    #[arg(long, value_name = "MS")]
    pub ms: Option<u64>,
    /// Share of the shard's connections to drop, in (0, 1] [default: 1].
    #[arg(long, value_name = "F")]
    pub fraction: Option<f64>,
    /// Receiving shard of the filled channel [default: the next shard].
    #[arg(long, value_name = "N")]
    pub to: Option<u16>,
    /// Print the server's JSON answer instead of the line.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the answer (it comes once the domain accepts
    /// work again), in seconds.
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub timeout: u64,
}

const CHAOS_HELP: &str = "\
The server must run with --chaos (config chaos.enabled = true); otherwise
every request is refused with 403. Each run prints one line, e.g.

  pool shard=1 pool=3 sessions_affected=917 recovery=4.652ms

recovery is measured on the server, from the fault to the domain accepting
work again (see README, Chaos). The same requests as HTTP:

  curl -X POST 'http://127.0.0.1:9090/admin/chaos/pool?shard=1&pool=3'";

#[derive(Debug, thiserror::Error)]
pub enum ChaosCliError {
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error("{0}")]
    Invalid(String),
}

pub fn chaos(args: &ChaosArgs) -> Result<(), ChaosCliError> {
    let kind = args.kind.kind();
    let session_shard = match &args.session {
        Some(id) => Some(
            crate::chaos::classify::SessionKey::parse(id)
                .ok_or_else(|| {
                    ChaosCliError::Invalid(format!(
                        "--session `{id}` is not a shardmcp session id (36 lowercase hex digits)"
                    ))
                })?
                .shard,
        ),
        None => None,
    };
    let params = Params {
        shard: args.shard.or(session_shard),
        pool: args.pool,
        session: args.session.clone(),
        ms: args.ms,
        fraction: args.fraction,
        to: args.to,
    };
    // The server checks too; this catches a typo before a round trip.
    Params::parse_query(kind, &params.to_query())
        .map_err(|error| ChaosCliError::Invalid(error.to_string()))?;
    let admin = client::resolve(&args.admin)?;
    let answer = client::inject(
        admin,
        kind,
        &params,
        Duration::from_secs(args.timeout.max(1)),
    )?;
    let line = if args.json {
        serde_json::to_string(&answer).unwrap_or_default()
    } else {
        answer.line()
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    Ok(())
}
