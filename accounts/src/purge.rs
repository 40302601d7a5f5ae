//! The purge (P4): hard-deletes every row that names or links to a closed account once
//! its grace period is over (always before its deadline), and unverified sign-ups after
//! 48 hours. One transaction per account, so a crash at any step leaves the account
//! either untouched or gone, and a re-run finishes the job; on PostgreSQL `FOR UPDATE
//! SKIP LOCKED` lets several workers run at once without purging anyone twice. The
//! rollups are bumped in the same transaction, so each purge is counted exactly once.

use std::time::{Duration, SystemTime};

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use sqlx::{Any, Row, Transaction};

use crate::clock::{from_millis, millis};
use crate::mail::{outbox_account, outbox_messages};
use crate::rollup::{self, Measure};
use crate::store::Backend;
use crate::{AccountError, Accounts};

/// The steps of purging one account, in order. Tests inject a failure after each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeStep {
    Claim,
    HostedRooms,
    Usage,
    Sessions,
    EmailTokens,
    Consents,
    DeletionRequest,
    Account,
    Rollup,
}

impl PurgeStep {
    pub const ALL: [PurgeStep; 9] = [
        PurgeStep::Claim,
        PurgeStep::HostedRooms,
        PurgeStep::Usage,
        PurgeStep::Sessions,
        PurgeStep::EmailTokens,
        PurgeStep::Consents,
        PurgeStep::DeletionRequest,
        PurgeStep::Account,
        PurgeStep::Rollup,
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("purge: database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("purge: failure injected after step {0:?}")]
    Injected(PurgeStep),
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// Closed accounts deleted.
    pub closed: u64,
    /// Never-verified sign-ups deleted.
    pub unverified: u64,
}

/// A deletion request as the operator's CLI lists it.
#[derive(Debug, Clone, Serialize)]
pub struct DueDeletion {
    /// The account's random id (the operator's handle for support questions).
    pub account_id: String,
    pub requested_at: Timestamp,
    pub purge_after: Timestamp,
    pub due_at: Timestamp,
    pub overdue: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Closed { requested_at: i64 },
    Unverified,
}

/// Tables that link to an account, with the step that empties each.
const LINKED: [(PurgeStep, &str); 6] = [
    (
        PurgeStep::HostedRooms,
        "DELETE FROM hosted_rooms WHERE account_id = $1",
    ),
    (
        PurgeStep::Usage,
        "DELETE FROM usage_records WHERE account_id = $1",
    ),
    (
        PurgeStep::Sessions,
        "DELETE FROM sessions WHERE account_id = $1",
    ),
    (
        PurgeStep::EmailTokens,
        "DELETE FROM email_tokens WHERE account_id = $1",
    ),
    (
        PurgeStep::Consents,
        "DELETE FROM consents WHERE account_id = $1",
    ),
    (
        PurgeStep::DeletionRequest,
        "DELETE FROM deletion_requests WHERE account_id = $1",
    ),
];

impl Accounts {
    /// Purges every account that is due now; returns what it did.
    pub async fn purge(&self) -> Result<PurgeReport, PurgeError> {
        self.purge_with_fault(None).await
    }

    /// As [`Accounts::purge`], failing on purpose after `fail_after` (for the
    /// crash-safety tests).
    pub async fn purge_with_fault(
        &self,
        fail_after: Option<PurgeStep>,
    ) -> Result<PurgeReport, PurgeError> {
        let mut report = PurgeReport::default();
        while let Some(kind) = self.purge_one(fail_after).await? {
            match kind {
                Kind::Closed { .. } => report.closed += 1,
                Kind::Unverified => report.unverified += 1,
            }
        }
        self.sweep_outbox().await;
        self.refresh_deletion_gauges().await?;
        self.metrics.account_purge_runs.inc();
        self.metrics
            .account_purge_last_run_seconds
            .set(self.now().as_second() as f64);
        Ok(report)
    }

    /// Purges the next due account, if any, in one transaction.
    async fn purge_one(&self, fail_after: Option<PurgeStep>) -> Result<Option<Kind>, PurgeError> {
        let now = self.now();
        let step = |done: PurgeStep| -> Result<(), PurgeError> {
            if fail_after == Some(done) {
                Err(PurgeError::Injected(done))
            } else {
                Ok(())
            }
        };
        let mut tx = self.store.write().await?;
        let Some((id, kind)) = self.claim(&mut tx, now).await? else {
            return Ok(None);
        };
        // Roll back explicitly on failure: a dropped transaction rolls back only when
        // its pooled connection is next used, holding the claim's row lock till then.
        if let Err(e) = self.delete_claimed(&mut tx, &id, kind, now, step).await {
            let _ = tx.rollback().await;
            return Err(e);
        }
        tx.commit().await?;
        let label = match kind {
            Kind::Closed { .. } => "closed",
            Kind::Unverified => "unverified",
        };
        self.metrics
            .account_purges
            .with_label_values(&[label])
            .inc();
        self.forget_outbox(&id);
        Ok(Some(kind))
    }

    /// Deletes the claimed account's rows and bumps the rollups, inside `tx`.
    async fn delete_claimed(
        &self,
        tx: &mut Transaction<'static, Any>,
        id: &str,
        kind: Kind,
        now: Timestamp,
        step: impl Fn(PurgeStep) -> Result<(), PurgeError>,
    ) -> Result<(), PurgeError> {
        step(PurgeStep::Claim)?;
        for (done, sql) in LINKED {
            sqlx::query(sql).bind(id).execute(&mut **tx).await?;
            step(done)?;
        }
        sqlx::query("DELETE FROM accounts WHERE id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        step(PurgeStep::Account)?;
        match kind {
            Kind::Closed { requested_at } => {
                let waited = now
                    .duration_since(from_millis(requested_at))
                    .as_secs()
                    .max(0);
                rollup::bump(tx, now, Measure::Purges, 1).await?;
                rollup::bump(tx, now, Measure::PurgeWaitSeconds, waited).await?;
            }
            Kind::Unverified => {
                rollup::bump(tx, now, Measure::ExpiredUnverified, 1).await?;
            }
        }
        step(PurgeStep::Rollup)
    }

    /// Picks the next account to purge and locks it against other workers.
    async fn claim(
        &self,
        tx: &mut Transaction<'static, Any>,
        now: Timestamp,
    ) -> Result<Option<(String, Kind)>, sqlx::Error> {
        // SQLite's write transaction (BEGIN IMMEDIATE) already excludes other workers.
        let (closed_sql, unverified_sql) = match self.store.backend() {
            Backend::Postgres => (
                "SELECT account_id, requested_at FROM deletion_requests WHERE purge_after <= $1
                 ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                "SELECT id FROM accounts WHERE email_verified_at IS NULL AND closed_at IS NULL
                   AND created_at <= $1 ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
            ),
            Backend::Sqlite => (
                "SELECT account_id, requested_at FROM deletion_requests WHERE purge_after <= $1
                 ORDER BY due_at LIMIT 1",
                "SELECT id FROM accounts WHERE email_verified_at IS NULL AND closed_at IS NULL
                   AND created_at <= $1 ORDER BY created_at LIMIT 1",
            ),
        };
        if let Some(row) = sqlx::query(closed_sql)
            .bind(millis(now))
            .fetch_optional(&mut **tx)
            .await?
        {
            let id: String = row.try_get(0)?;
            let requested_at: i64 = row.try_get(1)?;
            return Ok(Some((id, Kind::Closed { requested_at })));
        }
        let ttl = SignedDuration::from_hours(
            i64::try_from(self.config.unverified_ttl_hours).unwrap_or(48),
        );
        let cutoff = now.saturating_sub(ttl).unwrap_or(now);
        let id: Option<String> = sqlx::query_scalar(unverified_sql)
            .bind(millis(cutoff))
            .fetch_optional(&mut **tx)
            .await?;
        Ok(id.map(|id| (id, Kind::Unverified)))
    }

    /// Updates the pending, overdue and lag gauges from the deletion requests.
    pub async fn refresh_deletion_gauges(&self) -> Result<(), sqlx::Error> {
        let now = millis(self.now());
        let row = sqlx::query(
            "SELECT COUNT(*),
                    CAST(COALESCE(SUM(CASE WHEN due_at <= $1 THEN 1 ELSE 0 END), 0) AS BIGINT),
                    MIN(CASE WHEN purge_after <= $1 THEN purge_after END)
             FROM deletion_requests",
        )
        .bind(now)
        .fetch_one(self.store.pool())
        .await?;
        let pending: i64 = row.try_get(0)?;
        let overdue: i64 = row.try_get(1)?;
        let oldest: Option<i64> = row.try_get(2)?;
        self.metrics.account_deletions_pending.set(pending);
        self.metrics.account_deletions_overdue.set(overdue);
        self.metrics
            .account_purge_lag_seconds
            .set(oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0));
        Ok(())
    }

    /// Deletion requests, soonest deadline first.
    pub async fn list_due(&self) -> Result<Vec<DueDeletion>, AccountError> {
        let now = self.now();
        let rows = sqlx::query(
            "SELECT account_id, requested_at, purge_after, due_at FROM deletion_requests ORDER BY due_at",
        )
        .fetch_all(self.store.pool())
        .await?;
        rows.into_iter()
            .map(|r| {
                let due_at = from_millis(r.try_get(3)?);
                Ok(DueDeletion {
                    account_id: r.try_get(0)?,
                    requested_at: from_millis(r.try_get(1)?),
                    purge_after: from_millis(r.try_get(2)?),
                    due_at,
                    overdue: due_at <= now,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(AccountError::from)
    }

    /// Deletes outbox messages of a purged account (they hold its address).
    fn forget_outbox(&self, account_id: &str) {
        let Some(dir) = self.mailer.outbox() else {
            return;
        };
        for (path, _) in outbox_messages(dir) {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if name.as_deref().and_then(outbox_account) == Some(account_id) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Deletes outbox messages whose links have expired or whose account is gone
    /// (a crash between a purge's commit and its outbox clean-up leaves some).
    async fn sweep_outbox(&self) {
        let Some(dir) = self.mailer.outbox() else {
            return;
        };
        let ttl = Duration::from_secs(self.config.unverified_ttl_hours.saturating_mul(3600));
        for (path, modified) in outbox_messages(dir) {
            let expired = SystemTime::now()
                .duration_since(modified)
                .is_ok_and(|age| age > ttl);
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let orphan = match name.as_deref().and_then(outbox_account) {
                Some(id) => matches!(
                    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM accounts WHERE id = $1")
                        .bind(id)
                        .fetch_one(self.store.pool())
                        .await,
                    Ok(0)
                ),
                None => true,
            };
            if expired || orphan {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Runs the purge every `purge_interval_secs` until the task is dropped.
    pub fn spawn_purge_job(self: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let accounts = self.clone();
        tokio::spawn(async move {
            let period = Duration::from_secs(accounts.config.purge_interval_secs);
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                match accounts.purge().await {
                    Ok(report) if report.closed + report.unverified > 0 => {
                        tracing::info!(
                            closed = report.closed,
                            unverified = report.unverified,
                            "purge run"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "purge run failed; retrying next period"),
                }
            }
        })
    }
}
