//! Purge throughput: fills an accounts database with closed accounts whose grace
//! period is over — each with the rows a real one has (consents, a session, a pending
//! e-mail change, usage records, the deletion request) — then times one purge run.
//! Rows are written directly, so seeding does not spend argon2 time per account.

use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_accounts::clock::{SystemClock, millis};
use veil_accounts::{Accounts, AccountsConfig};

#[derive(Debug, thiserror::Error)]
pub enum PurgeBenchError {
    #[error("{0}")]
    Open(#[from] veil_accounts::OpenError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Purge(#[from] veil_accounts::purge::PurgeError),
    #[error("the purge deleted {purged} of {seeded} accounts")]
    Incomplete { purged: u64, seeded: usize },
}

/// One measured run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PurgeRun {
    pub backend: String,
    pub accounts: usize,
    /// Rows deleted per account (all tables).
    pub rows_per_account: usize,
    pub seed_seconds: f64,
    pub purge_seconds: f64,
    pub accounts_per_second: f64,
}

const ROWS_PER_ACCOUNT: usize = 9;

/// Seeds `n` closed accounts into `database_url` and purges them.
pub async fn run(
    database_url: &str,
    n: usize,
    outbox: &std::path::Path,
) -> Result<PurgeRun, PurgeBenchError> {
    let mut config = AccountsConfig {
        database_url: database_url.to_string(),
        public_url: "http://127.0.0.1:8080".into(),
        ..AccountsConfig::default()
    };
    config.mail.outbox_dir = outbox.to_path_buf();
    let metrics = Arc::new(
        veil_metrics::Metrics::new()
            .map_err(|_| veil_accounts::OpenError::Setting("metrics registry"))?,
    );
    let accounts = Accounts::open(config, Arc::new(SystemClock), metrics).await?;
    let now = millis(accounts.now());
    let seeding = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(250) {
        let mut tx = accounts.store.write().await?;
        for i in chunk {
            let id = format!("bench-{i:016}-{now:x}");
            let email = format!("bench{i}-{now}@example.org");
            sqlx::query(
                "INSERT INTO accounts (id, email, display_name, password_hash, created_at, email_verified_at, trial_ends_at, closed_at)
                 VALUES ($1, $2, 'Bench Person', '$argon2id$v=19$m=19456,t=2,p=1$x$y', $3, $3, $3, $3)",
            )
            .bind(&id)
            .bind(&email)
            .bind(now - 1)
            .execute(&mut *tx)
            .await?;
            for purpose in ["privacy_policy", "age_13_or_older"] {
                sqlx::query(
                    "INSERT INTO consents (account_id, purpose, given_at) VALUES ($1, $2, $3)",
                )
                .bind(&id)
                .bind(purpose)
                .bind(now - 1)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("INSERT INTO sessions (id_hash, account_id, created_at, last_seen_at, expires_at) VALUES ($1, $2, $3, $3, $3)")
                .bind(format!("{id}-session"))
                .bind(&id)
                .bind(now - 1)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO email_tokens (token_hash, account_id, purpose, email, created_at, expires_at) VALUES ($1, $2, 'change_email', $3, $4, $4)")
                .bind(format!("{id}-token"))
                .bind(&id)
                .bind(&email)
                .bind(now - 1)
                .execute(&mut *tx)
                .await?;
            for _ in 0..3 {
                sqlx::query("INSERT INTO usage_records (account_id, started_at, ended_at, bytes_in, bytes_out, packets_in, packets_out, loss_permille) VALUES ($1, $2, $2, 1000, 1000, 10, 10, 0)")
                    .bind(&id)
                    .bind(now - 1)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("INSERT INTO deletion_requests (account_id, requested_at, due_at, purge_after) VALUES ($1, $2, $3, $2)")
                .bind(&id)
                .bind(now - 1)
                .bind(now + 9 * 86_400_000)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    let seed_seconds = seeding.elapsed().as_secs_f64();
    let purging = Instant::now();
    let report = accounts.purge().await?;
    let purge_seconds = purging
        .elapsed()
        .max(Duration::from_micros(1))
        .as_secs_f64();
    if report.closed as usize != n {
        return Err(PurgeBenchError::Incomplete {
            purged: report.closed,
            seeded: n,
        });
    }
    Ok(PurgeRun {
        backend: format!("{:?}", accounts.store.backend()),
        accounts: n,
        rows_per_account: ROWS_PER_ACCOUNT,
        seed_seconds,
        purge_seconds,
        accounts_per_second: n as f64 / purge_seconds,
    })
}
