//! `veil-abuse`: runs each attack of `tests/abuse.rs` against an all-in-one Veil started
//! in this process, while a well-behaved pair of members measures a state round trip,
//! and prints p50/p99 of that round trip before (baseline) and during each attack.
//!
//! Must never: point anything but loopback, or run without a bound.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use veil_bench::abuse::{self, Attack, Target};
use veil_bench::load::{self, InProcessVeil};

#[derive(Debug, Parser)]
#[command(
    name = "veil-abuse",
    version,
    about = "Latency of a well-behaved client while Veil is under attack"
)]
struct Cli {
    /// Attacks to run, in order (default: all, the baseline first). One of: baseline,
    /// idle-flood, slow-reader, huge-messages, expired-grants, login-guessing, signup-flood.
    #[arg(long = "attack")]
    attacks: Vec<String>,
    /// Measuring window per attack, seconds (with the warm-up at most 25).
    #[arg(long, short = 'd', default_value_t = 5.0)]
    duration: f64,
    /// Time the attack runs before the window opens, seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Attacker and probe runtime worker threads.
    #[arg(long, default_value_t = 2)]
    generator_threads: usize,
    /// In-process Veil runtime worker threads.
    #[arg(long, default_value_t = 2)]
    sfu_threads: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let attacks = if cli.attacks.is_empty() {
        Attack::ALL.to_vec()
    } else {
        let mut out = Vec::new();
        for name in &cli.attacks {
            match Attack::ALL.iter().find(|a| a.name() == name) {
                Some(a) => out.push(*a),
                None => bail!("unknown attack {name}"),
            }
        }
        out
    };
    let window = Duration::try_from_secs_f64(cli.duration).context("--duration")?;
    let warmup = Duration::try_from_secs_f64(cli.warmup).context("--warmup")?;
    if warmup + window > abuse::MAX_PHASE {
        bail!(
            "--warmup + --duration must be at most {:?}",
            abuse::MAX_PHASE
        );
    }
    let veil = InProcessVeil::start_with(cli.sfu_threads, |_| {})?;
    let target = Target {
        server: veil.target(cli.generator_threads)?.server,
        signaling: veil.signaling().context("veil stopped")?,
    };
    let runtime = load::generator_runtime(cli.generator_threads)?;
    let phases = runtime.block_on(abuse::run(&target, &attacks, warmup, window));
    runtime.shutdown_timeout(Duration::from_secs(2));
    veil.stop();
    print!("{}", abuse::render(&phases?));
    Ok(())
}
