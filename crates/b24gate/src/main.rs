//! The `b24gate` binary: parse arguments, load the configuration, run the
//! command. Everything else lives in the library crates.

use std::process::ExitCode;

use b24gate::{cli, commands};
use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    commands::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("b24gate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("b24gate: {e:#}");
            ExitCode::from(e.exit_code())
        }
    }
}
