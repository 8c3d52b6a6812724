use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// b24gate — a lifecycle gateway for Bitrix24 REST applications.
#[derive(Debug, Parser)]
#[command(name = "b24gate", version, about, long_about = None)]
pub struct Args {
    /// The configuration file (TOML). Without one, defaults and B24GATE_*
    /// environment variables apply.
    #[arg(long, short, global = true, env = "B24GATE_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every lifecycle stage against an in-process emulated Bitrix24
    /// farm on fresh SQLite files, and report. Exits 0 only if all passed.
    Demo {
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run the gateway: Bitrix24-facing routes, the engine and its workers.
    /// Needs B24GATE_MASTER_KEY.
    Serve,
    /// Apply the database migrations embedded in this binary.
    Migrate {
        /// Only report how many migrations are pending; change nothing.
        #[arg(long)]
        status: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and print it (secrets shown only as set/unset).
    Config {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}
