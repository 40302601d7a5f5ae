//! `veil`: the binary. With no arguments it runs everything in one process on
//! localhost with defaults that work on a laptop.

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use veil::config::{Cli, Command, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(&cli.overrides)?;
    match cli.command.unwrap_or(Command::All) {
        Command::Config => {
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(())
        }
        Command::All => run_all(config).await,
    }
}

async fn run_all(config: Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&config.log.level).context("invalid log filter")?)
        .init();
    let running = veil::start(&config).await?;
    println!("Veil is running.");
    println!(
        "  HTTP API and WebSocket: {}  (POST /api/rooms, GET /ws, /healthz, /metrics)",
        running.base_url()
    );
    println!(
        "  Media (UDP, every participant): {}",
        running.sfu.media_addr()
    );
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    println!("Stopping.");
    running.stop().await?;
    Ok(())
}
