use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use shardmcp::cli::{self, Cli, Command};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Serve(args) => {
            init_logging(args.log.as_deref());
            // Panics that supervision catches are logged as one line, not a dump.
            std::panic::set_hook(Box::new(|info| {
                tracing::error!(target: "shardmcp::panic", "{info}");
            }));
            cli::serve(args).map_err(|error| error.to_string())
        }
        Command::Load(args) => cli::load(args).map_err(|error| error.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shardmcp: error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: Option<&str>) {
    let filter = match filter {
        Some(filter) => EnvFilter::new(filter),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
