//! Closing an account (P4, P6): immediate — sessions revoked, consents withdrawn, log-in
//! refused, the person's rooms closed — with a durable deletion request due seven
//! working days later. Within the optional grace period the person may reopen.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::clock::{from_millis, millis};
use crate::rollup::{self, Measure};
use crate::session::Session;
use crate::signup::{checkbox, clean_email, verify_password};
use crate::{AccountError, Accounts};

/// What the person is told when they close their account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Closed {
    pub closed_at: Timestamp,
    /// Every record naming the person is deleted by then.
    pub deletion_due_at: Timestamp,
    /// Until then the account can be reopened (equal to `closed_at` without a grace
    /// period).
    pub reopen_until: Timestamp,
}

/// `POST /api/account/reopen`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reopen {
    pub email: String,
    pub password: String,
    /// Reopening accepts the current policy again.
    #[serde(default, deserialize_with = "checkbox")]
    pub accept_policy: bool,
}

impl Accounts {
    /// Closes the session's account now and files its deletion request.
    pub async fn close(&self, session: &Session) -> Result<Closed, AccountError> {
        let id = &session.account_id;
        let now = self.now();
        let due = self.calendar.due_at(now);
        let reopen_until = now.saturating_add(self.config.grace()).unwrap_or(now);
        let mut tx = self.store.write().await?;
        let closed =
            sqlx::query("UPDATE accounts SET closed_at = $1 WHERE id = $2 AND closed_at IS NULL")
                .bind(millis(now))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        if closed.rows_affected() == 0 {
            return Err(AccountError::Closed);
        }
        for sql in [
            "DELETE FROM sessions WHERE account_id = $1",
            // Links in flight would otherwise still act on a closed account.
            "DELETE FROM email_tokens WHERE account_id = $1",
            // Its meetings end with it; signaling's closure hook tells the people in them.
            "DELETE FROM hosted_rooms WHERE account_id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        // The age confirmation is a statement of fact, not a consent to withdraw.
        sqlx::query(
            "UPDATE consents SET withdrawn_at = $1
             WHERE account_id = $2 AND withdrawn_at IS NULL AND purpose <> 'age_13_or_older'",
        )
        .bind(millis(now))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO deletion_requests (account_id, requested_at, due_at, purge_after) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(millis(now))
        .bind(millis(due))
        .bind(millis(reopen_until))
        .execute(&mut *tx)
        .await?;
        rollup::bump(&mut tx, now, Measure::Closures, 1).await?;
        tx.commit().await?;
        self.metrics.account_closures.inc();
        self.closed(id);
        self.refresh_gauges_after_commit().await;
        Ok(Closed {
            closed_at: now,
            deletion_due_at: due,
            reopen_until,
        })
    }

    /// Reopens a closed account within its grace period; the person logs in afterwards.
    pub async fn reopen(&self, request: Reopen) -> Result<(), AccountError> {
        let email = clean_email(&request.email).map_err(|_| AccountError::InvalidCredentials)?;
        let row = sqlx::query(
            "SELECT a.id, a.password_hash, d.purge_after FROM accounts a
             JOIN deletion_requests d ON d.account_id = a.id WHERE a.email = $1",
        )
        .bind(&email)
        .fetch_optional(self.store.pool())
        .await?
        .ok_or(AccountError::InvalidCredentials)?;
        let id: String = row.try_get(0)?;
        let stored: String = row.try_get(1)?;
        let purge_after = from_millis(row.try_get(2)?);
        if !verify_password(&request.password, &stored).await {
            return Err(AccountError::InvalidCredentials);
        }
        let now = self.now();
        if now >= purge_after {
            return Err(AccountError::ReopenTooLate);
        }
        if !request.accept_policy {
            return Err(AccountError::invalid(
                "policy_required",
                "accept the privacy policy to reopen the account",
            ));
        }
        let mut tx = self.store.write().await?;
        // Deleting the request first fails (0 rows) if a purge got there meanwhile.
        let removed =
            sqlx::query("DELETE FROM deletion_requests WHERE account_id = $1 AND purge_after > $2")
                .bind(&id)
                .bind(millis(now))
                .execute(&mut *tx)
                .await?;
        if removed.rows_affected() == 0 {
            return Err(AccountError::ReopenTooLate);
        }
        sqlx::query("UPDATE accounts SET closed_at = NULL WHERE id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO consents (account_id, purpose, policy_version, given_at)
             VALUES ($1, 'privacy_policy', $2, $3)",
        )
        .bind(&id)
        .bind(&self.config.policy_version)
        .bind(millis(now))
        .execute(&mut *tx)
        .await?;
        rollup::bump(&mut tx, now, Measure::Reopenings, 1).await?;
        tx.commit().await?;
        self.refresh_gauges_after_commit().await;
        Ok(())
    }

    /// Admins see a closure or reopening in the pending gauge at once, not at the next
    /// purge run. The change is already committed, so a failure here is only logged.
    async fn refresh_gauges_after_commit(&self) {
        if let Err(error) = self.refresh_deletion_gauges().await {
            tracing::warn!(%error, "deletion gauges not refreshed");
        }
    }
}
