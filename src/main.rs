//! `veil`: the binary. With no arguments it runs everything in one process on
//! localhost with defaults that work on a laptop.

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use veil::config::{Cli, Command, Config, Role};

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
        Command::Signaling => run_signaling(config).await,
        Command::Fingerprint { role } => {
            let dir = match role {
                Role::Signaling => &config.signaling.identity_dir,
                Role::Sfu => &config.node.identity_dir,
            };
            let identity = veil_sfu::identity::Identity::load_or_create(dir)?;
            println!("{}", identity.fingerprint());
            Ok(())
        }
        Command::Sfu => run_sfu(config).await,
    }
}

fn init_logs(config: &Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(config.log.filter()).context("invalid log filter")?)
        .init();
    Ok(())
}

async fn run_signaling(config: Config) -> anyhow::Result<()> {
    init_logs(&config)?;
    let running = veil::split::start_signaling(&config).await?;
    println!("Veil signaling is running.");
    println!("  HTTP API and WebSocket: http://{}", running.http_addr);
    println!("  SFU nodes connect to: {} (QUIC)", running.node_addr);
    println!(
        "  Link certificate fingerprint (the nodes' node.signaling_fingerprint): {}",
        running.fingerprint
    );
    if config.signaling.node_fingerprints.is_empty() {
        println!(
            "  No SFU node is pinned yet: add each node's fingerprint to signaling.node_fingerprints."
        );
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    running.stop().await?;
    Ok(())
}

async fn run_sfu(config: Config) -> anyhow::Result<()> {
    init_logs(&config)?;
    let running = veil::split::start_sfu(&config).await?;
    println!("Veil SFU node {:?} is running.", config.node.name);
    println!("  Media (UDP): {}", running.sfu.media_addr());
    println!("  Metrics and health: http://{}", running.http_addr);
    println!(
        "  Link certificate fingerprint (for signaling.node_fingerprints): {}",
        running.fingerprint
    );
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        // The link only ends on its own when signaling refuses this node.
        r = &mut { running.link } => {
            match r {
                Ok(Err(e)) => return Err(e.into()),
                _ => anyhow::bail!("node link ended"),
            }
        }
    }
    Ok(())
}

async fn run_all(config: Config) -> anyhow::Result<()> {
    init_logs(&config)?;
    let running = veil::start(&config).await?;
    println!("Veil is running.");
    println!(
        "  Open {}/ in a browser to start a meeting.",
        running.base_url()
    );
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
