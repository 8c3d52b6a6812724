//! `b24emu serve`: runs a farm and prints one JSON ready line with its base URLs.

use std::net::SocketAddr;
use std::path::PathBuf;

use b24emu::{Emulator, EmulatorConfig};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "b24emu",
    version,
    about = "Emulator of Bitrix24 portals and their OAuth server"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a farm until interrupted.
    Serve {
        /// Portals and control API (port 0 = any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: Option<SocketAddr>,
        /// HTTPS listener for the same router.
        #[arg(long)]
        https_listen: Option<SocketAddr>,
        /// Where `ca.pem` is written.
        #[arg(long)]
        cert_dir: Option<PathBuf>,
        /// The OAuth server listener.
        #[arg(long)]
        oauth_listen: Option<SocketAddr>,
        /// Seed for deterministic tokens, ids and faults.
        #[arg(long)]
        seed: Option<u64>,
        /// TOML configuration (flags override it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("B24EMU_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let Cmd::Serve {
        listen,
        https_listen,
        cert_dir,
        oauth_listen,
        seed,
        config,
    } = Cli::parse().cmd;
    let mut cfg = match config {
        Some(path) => EmulatorConfig::from_toml(&std::fs::read_to_string(path)?)?,
        None => EmulatorConfig::default(),
    };
    if let Some(l) = listen {
        cfg.listen = l;
    }
    cfg.https_listen = https_listen.or(cfg.https_listen);
    cfg.cert_dir = cert_dir.or(cfg.cert_dir);
    cfg.oauth_listen = oauth_listen.unwrap_or(cfg.oauth_listen);
    cfg.seed = seed.or(cfg.seed);
    let emu = Emulator::start(cfg).await?;
    println!("{}", emu.ready_line());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    emu.shutdown().await;
    Ok(())
}
