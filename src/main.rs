use std::process::ExitCode;

use clap::Parser;

use shardmcp::cli::{self, Cli, Command};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Panics that supervision catches are logged as one line, not a dump.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(target: "shardmcp::panic", "{info}");
    }));
    let result = match &cli.command {
        // `serve` sets up logging once its configuration is known.
        Command::Serve(args) => cli::serve(args).map_err(|error| error.to_string()),
        Command::Tree(args) => cli::tree(args).map_err(|error| error.to_string()),
        Command::Doctor(args) => match cli::doctor(args) {
            Ok(true) => Ok(()),
            // The report already says what fails.
            Ok(false) => return ExitCode::FAILURE,
            Err(error) => Err(error.to_string()),
        },
        Command::Load(args) => cli::load(args).map_err(|error| error.to_string()),
        Command::Chaos(args) => cli::chaos(args).map_err(|error| error.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shardmcp: error: {error}");
            ExitCode::FAILURE
        }
    }
}
