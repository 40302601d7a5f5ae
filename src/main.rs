//! `veil`: the binary. With no arguments it runs everything in one process on
//! localhost with defaults that work on a laptop.

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use veil::config::{AccountsTask, Cli, Command, Config, Role};

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
        Command::Accounts { task } => run_accounts(config, task).await,
    }
}

async fn run_accounts(config: Config, task: AccountsTask) -> anyhow::Result<()> {
    init_logs(&config)?;
    let metrics = std::sync::Arc::new(veil_metrics::Metrics::new()?);
    let accounts = veil::open_accounts(&config, config.signaling.http_addr, metrics).await?;
    match task {
        AccountsTask::Purge => {
            let report = accounts.purge().await?;
            println!(
                "purged {} closed account(s) and {} expired sign-up(s)",
                report.closed, report.unverified
            );
        }
        AccountsTask::ListDue => {
            let due = accounts.list_due().await?;
            println!(
                "{:<24} {:<26} {:<26} {:<26} overdue",
                "account", "requested", "purge after", "due"
            );
            for d in &due {
                println!(
                    "{:<24} {:<26} {:<26} {:<26} {}",
                    d.account_id,
                    d.requested_at.to_string(),
                    d.purge_after.to_string(),
                    d.due_at.to_string(),
                    if d.overdue { "yes" } else { "no" }
                );
            }
            println!("{} deletion request(s)", due.len());
        }
        AccountsTask::Stats => {
            let stats = veil_accounts::rollup::stats(&accounts.store, accounts.now()).await?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
        }
    }
    Ok(())
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
    shutdown().await?;
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
        r = shutdown() => r?,
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
        "  HTTP API and WebSocket: {}  (/api/openapi.json describes it; /healthz, /metrics)",
        running.base_url()
    );
    println!(
        "  Media (UDP, every participant): {}",
        running.sfu.media_addr()
    );
    println!(
        "  Accounts: {}  (sign up at /signup; without an SMTP relay, e-mails land in {})",
        config.accounts.database_url,
        config.accounts.mail.outbox_dir.display()
    );
    println!("Press Ctrl-C to stop.");
    shutdown().await?;
    println!("Stopping.");
    running.stop().await?;
    Ok(())
}

/// Until Ctrl-C (SIGINT) or SIGTERM, the signal `docker stop` and service managers send:
/// either way Veil stops cleanly (sessions closed, the database left consistent).
async fn shutdown() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
