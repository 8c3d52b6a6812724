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
    /// Call a REST method on a portal and print the result as JSON
    /// (`--all` streams a whole list as JSON lines).
    Call {
        /// An incoming webhook URL (https://portal/rest/USER/CODE/).
        #[arg(long, conflicts_with = "portal")]
        webhook: Option<String>,
        /// A stored portal's member_id (uses its tokens, refreshes them).
        #[arg(long)]
        portal: Option<String>,
        /// Stream every item of a list method, one JSON line each.
        #[arg(long)]
        all: bool,
        /// Allow a plain-http webhook URL (an emulator on loopback).
        #[arg(long)]
        allow_http: bool,
        method: String,
        /// Parameters as a JSON object.
        params: Option<String>,
    },
    /// List the portals and their status.
    Portals {
        #[arg(long)]
        json: bool,
    },
    /// The binding matrix: expected and actual bindings per portal.
    Bindings {
        #[arg(long)]
        portal: Option<String>,
        /// What the manifest asks for, without any portal.
        #[arg(long)]
        manifest: bool,
        #[arg(long)]
        json: bool,
        #[arg(long, conflicts_with = "json")]
        markdown: bool,
    },
    /// Reconcile bindings (and run due migrations) now.
    Reconcile {
        #[arg(long, conflicts_with = "all")]
        portal: Option<String>,
        #[arg(long)]
        all: bool,
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run the recovery playbook; `--fix` repairs what it can.
    Doctor {
        #[arg(long)]
        portal: Option<String>,
        #[arg(long)]
        fix: bool,
        #[arg(long)]
        json: bool,
    },
    /// The audit log.
    Audit {
        #[arg(long)]
        portal: Option<String>,
        /// Unix time in seconds, or a duration back from now (`2h`, `7d`).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The job queue: list, retry (replay a dead letter), discard.
    Jobs {
        #[command(subcommand)]
        action: JobsAction,
    },
    /// Events in the inbox.
    Events {
        #[command(subcommand)]
        action: EventsAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsAction {
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        portal: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Put a dead-lettered or cancelled job back in the queue.
    Retry { id: i64 },
    /// Move a waiting job to the dead letter.
    Discard { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// Forward a portal's stored events again (same webhook-id: the app
    /// deduplicates), from `--since` on.
    Replay {
        #[arg(long)]
        portal: String,
        /// Unix time in seconds, or a duration back from now (`2h`, `7d`).
        #[arg(long)]
        since: String,
        #[arg(long)]
        json: bool,
    },
}
