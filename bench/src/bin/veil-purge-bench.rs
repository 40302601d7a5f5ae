//! `veil-purge-bench`: how many closed accounts per second the purge deletes, on
//! SQLite (a scratch file, the default) or PostgreSQL (`--database-url`; use a
//! database made for the run, as it is filled with test accounts).

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "veil-purge-bench",
    about = "Measures the account purge's throughput"
)]
struct Cli {
    /// `sqlite://…` or `postgres://…`; default: a scratch SQLite file.
    #[arg(long)]
    database_url: Option<String>,
    /// Closed accounts to seed and purge.
    #[arg(long, default_value_t = 2000)]
    accounts: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let scratch = std::env::temp_dir().join(format!("veil-purge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).context("scratch folder")?;
    let url = cli
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", scratch.join("veil.db").display()));
    let run = veil_bench::purge::run(&url, cli.accounts, &scratch.join("outbox")).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let run = run?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        println!(
            "{}: purged {} accounts ({} rows each) in {:.2} s = {:.0} accounts/s (seeding took {:.2} s)",
            run.backend,
            run.accounts,
            run.rows_per_account,
            run.purge_seconds,
            run.accounts_per_second,
            run.seed_seconds
        );
    }
    Ok(())
}
