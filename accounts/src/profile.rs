//! The person's own data (P5, P6): the profile they see, the corrections they make
//! (display name, e-mail with re-verification, password, survey opt-in), and the
//! export of everything held about them as one versioned JSON document.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::clock::{from_millis, millis};
use crate::mail::Purpose;
use crate::session::Session;
use crate::signup::{clean_email, hash_password, verify_password};
use crate::{AccountError, Accounts, password, token};

/// Version of the export document's layout.
pub const EXPORT_VERSION: u32 = 1;

/// A display name as shown to others: trimmed, 1–64 characters, no control characters.
pub fn clean_display_name(raw: &str) -> Option<String> {
    let name = raw.trim();
    let ok = !name.is_empty() && name.chars().count() <= 64 && !name.chars().any(char::is_control);
    ok.then(|| name.to_string())
}

/// `GET /api/account`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    pub id: String,
    pub email: String,
    pub display_name: String,
    pub created_at: Timestamp,
    pub email_verified_at: Option<Timestamp>,
    pub trial_ends_at: Timestamp,
    /// Whether the trial still lets this account host meetings.
    pub can_host: bool,
    pub survey_opt_in: bool,
    /// An e-mail change waiting for its verification link.
    pub pending_email: Option<String>,
}

/// `PATCH /api/account`: any subset. Changing the e-mail or the password needs the
/// current password.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileChange {
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub new_password: Option<String>,
    pub current_password: Option<String>,
    pub survey_opt_in: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConsentRecord {
    pub purpose: String,
    pub policy_version: Option<String>,
    pub given_at: Timestamp,
    pub withdrawn_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionRecord {
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    pub expires_at: Timestamp,
    /// The session this export was requested from.
    pub current: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingLink {
    pub purpose: String,
    /// The address the link was sent to.
    pub email: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsageRecord {
    pub started_at: Timestamp,
    pub ended_at: Timestamp,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub packets_in: i64,
    pub packets_out: i64,
    /// Share of packets lost, in thousandths.
    pub loss_permille: i64,
    pub rtt_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PasswordRecord {
    /// Only the hash's scheme and parameters: the hash itself is a secret of the
    /// service's, and the password is never kept.
    pub algorithm: String,
    pub parameters: String,
}

/// `GET /api/account/export`: everything Veil holds about the person.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Export {
    pub format: String,
    pub version: u32,
    pub exported_at: Timestamp,
    pub profile: Profile,
    pub password: PasswordRecord,
    pub consents: Vec<ConsentRecord>,
    pub opt_ins: OptIns,
    pub sessions: Vec<SessionRecord>,
    pub pending_links: Vec<PendingLink>,
    pub usage: Vec<UsageRecord>,
    /// Meetings the account created that are still open.
    #[serde(default)]
    pub hosted_rooms: Vec<crate::hosting::HostedRoomRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OptIns {
    pub survey_email: bool,
}

fn ts(ms: i64) -> Timestamp {
    from_millis(ms)
}

impl Accounts {
    pub async fn profile(&self, account_id: &str) -> Result<Profile, AccountError> {
        let row = sqlx::query(
            "SELECT id, email, display_name, created_at, email_verified_at, trial_ends_at
             FROM accounts WHERE id = $1 AND closed_at IS NULL",
        )
        .bind(account_id)
        .fetch_optional(self.store.pool())
        .await?
        .ok_or(AccountError::Unauthenticated)?;
        let verified: Option<i64> = row.try_get(4)?;
        let trial_ends = ts(row.try_get(5)?);
        let survey: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM consents WHERE account_id = $1 AND purpose = 'survey_email' AND withdrawn_at IS NULL",
        )
        .bind(account_id)
        .fetch_one(self.store.pool())
        .await?;
        let pending: Option<String> = sqlx::query_scalar(
            "SELECT email FROM email_tokens WHERE account_id = $1 AND purpose = 'change_email'
               AND expires_at > $2 ORDER BY created_at DESC LIMIT 1",
        )
        .bind(account_id)
        .bind(millis(self.now()))
        .fetch_optional(self.store.pool())
        .await?;
        Ok(Profile {
            id: row.try_get(0)?,
            email: row.try_get(1)?,
            display_name: row.try_get(2)?,
            created_at: ts(row.try_get(3)?),
            email_verified_at: verified.map(ts),
            trial_ends_at: trial_ends,
            can_host: verified.is_some() && self.now() < trial_ends,
            survey_opt_in: survey > 0,
            pending_email: pending,
        })
    }

    /// Applies a correction. An e-mail change takes effect when the link sent to the
    /// new address is followed; a password change ends every other session.
    pub async fn change_profile(
        &self,
        session: &Session,
        change: ProfileChange,
    ) -> Result<Profile, AccountError> {
        let id = &session.account_id;
        let name = match &change.display_name {
            Some(raw) => Some(clean_display_name(raw).ok_or_else(|| {
                AccountError::invalid(
                    "invalid_display_name",
                    "a display name is 1 to 64 characters without control characters",
                )
            })?),
            None => None,
        };
        let email = match &change.email {
            Some(raw) => Some(clean_email(raw)?),
            None => None,
        };
        if let Some(new) = &change.new_password {
            password::check(new).map_err(|e| AccountError::invalid(e.code(), e.to_string()))?;
        }
        let current_email: String = sqlx::query_scalar("SELECT email FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_one(self.store.pool())
            .await?;
        let email = email.filter(|e| *e != current_email);
        if email.is_some() || change.new_password.is_some() {
            let stored: String =
                sqlx::query_scalar("SELECT password_hash FROM accounts WHERE id = $1")
                    .bind(id)
                    .fetch_one(self.store.pool())
                    .await?;
            let current = change.current_password.as_deref().unwrap_or("");
            if !verify_password(current, &stored).await {
                return Err(AccountError::invalid(
                    "current_password_required",
                    "changing the e-mail address or the password needs the current password",
                ));
            }
        }
        if let Some(email) = &email {
            let taken: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE email = $1")
                .bind(email)
                .fetch_one(self.store.pool())
                .await?;
            if taken > 0 {
                return Err(AccountError::EmailTaken);
            }
        }
        let new_hash = match &change.new_password {
            Some(p) => Some(hash_password(p).await?),
            None => None,
        };
        let now = self.now();
        let link = token::secret()?;
        let mut tx = self.store.write().await?;
        if let Some(name) = &name {
            sqlx::query("UPDATE accounts SET display_name = $1 WHERE id = $2")
                .bind(name)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(hash) = &new_hash {
            sqlx::query("UPDATE accounts SET password_hash = $1 WHERE id = $2")
                .bind(hash)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM sessions WHERE account_id = $1 AND id_hash <> $2")
                .bind(id)
                .bind(&session.id_hash)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(opt_in) = change.survey_opt_in {
            let active: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM consents WHERE account_id = $1 AND purpose = 'survey_email' AND withdrawn_at IS NULL",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            if opt_in && active == 0 {
                sqlx::query(
                    "INSERT INTO consents (account_id, purpose, given_at) VALUES ($1, 'survey_email', $2)",
                )
                .bind(id)
                .bind(millis(now))
                .execute(&mut *tx)
                .await?;
            } else if !opt_in && active > 0 {
                sqlx::query(
                    "UPDATE consents SET withdrawn_at = $1 WHERE account_id = $2 AND purpose = 'survey_email' AND withdrawn_at IS NULL",
                )
                .bind(millis(now))
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
        }
        if let Some(email) = &email {
            // One pending change at a time: an earlier link stops working.
            sqlx::query(
                "DELETE FROM email_tokens WHERE account_id = $1 AND purpose = 'change_email'",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
            self.insert_link(
                &mut tx,
                id,
                Purpose::ChangeEmail,
                email,
                &link,
                SignedDuration::from_hours(48),
            )
            .await?;
        }
        tx.commit().await?;
        if let Some(email) = &email {
            self.send_link(id, Purpose::ChangeEmail, email, &link).await;
        }
        self.profile(id).await
    }

    /// Everything held about the account, as one document.
    pub async fn export(&self, session: &Session) -> Result<Export, AccountError> {
        let id = &session.account_id;
        let profile = self.profile(id).await?;
        let pool = self.store.pool();
        let stored: String = sqlx::query_scalar("SELECT password_hash FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?;
        // PHC: $algorithm$version$parameters$salt$hash — the first three are not secret.
        let mut parts = stored.split('$').skip(1);
        let algorithm = parts.next().unwrap_or("").to_string();
        let parameters = parts.take(2).collect::<Vec<_>>().join("$");
        let consents = sqlx::query(
            "SELECT purpose, policy_version, given_at, withdrawn_at FROM consents
             WHERE account_id = $1 ORDER BY given_at, purpose",
        )
        .bind(id)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| {
            let withdrawn: Option<i64> = r.try_get(3)?;
            Ok(ConsentRecord {
                purpose: r.try_get(0)?,
                policy_version: r.try_get(1)?,
                given_at: ts(r.try_get(2)?),
                withdrawn_at: withdrawn.map(ts),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let sessions = sqlx::query(
            "SELECT id_hash, created_at, last_seen_at, expires_at FROM sessions
             WHERE account_id = $1 ORDER BY created_at",
        )
        .bind(id)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| {
            let hash: String = r.try_get(0)?;
            Ok(SessionRecord {
                created_at: ts(r.try_get(1)?),
                last_seen_at: ts(r.try_get(2)?),
                expires_at: ts(r.try_get(3)?),
                current: hash == session.id_hash,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let pending_links = sqlx::query(
            "SELECT purpose, email, created_at, expires_at FROM email_tokens
             WHERE account_id = $1 ORDER BY created_at",
        )
        .bind(id)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(PendingLink {
                purpose: r.try_get(0)?,
                email: r.try_get(1)?,
                created_at: ts(r.try_get(2)?),
                expires_at: ts(r.try_get(3)?),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let usage = sqlx::query(
            "SELECT started_at, ended_at, bytes_in, bytes_out, packets_in, packets_out,
                    loss_permille, rtt_ms FROM usage_records WHERE account_id = $1 ORDER BY started_at",
        )
        .bind(id)
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(UsageRecord {
                started_at: ts(r.try_get(0)?),
                ended_at: ts(r.try_get(1)?),
                bytes_in: r.try_get(2)?,
                bytes_out: r.try_get(3)?,
                packets_in: r.try_get(4)?,
                packets_out: r.try_get(5)?,
                loss_permille: r.try_get(6)?,
                rtt_ms: r.try_get(7)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Export {
            format: "veil.account-export".into(),
            version: EXPORT_VERSION,
            exported_at: self.now(),
            opt_ins: OptIns {
                survey_email: profile.survey_opt_in,
            },
            profile,
            password: PasswordRecord {
                algorithm,
                parameters,
            },
            consents,
            sessions,
            pending_links,
            usage,
            hosted_rooms: self.hosted_rooms_of(id).await?,
        })
    }

    /// Stores one media session's metadata record for a logged-in account, and counts
    /// it in the identifier-free rollups.
    pub async fn record_usage(
        &self,
        account_id: &str,
        record: &veil_metrics::ConnectionRecord,
    ) -> Result<(), AccountError> {
        let record = record.clamped();
        let started =
            from_millis(i64::try_from(record.started_at.saturating_mul(1000)).unwrap_or(0));
        let ended = from_millis(i64::try_from(record.ended_at.saturating_mul(1000)).unwrap_or(0));
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut tx = self.store.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO usage_records (account_id, started_at, ended_at, bytes_in, bytes_out,
                 packets_in, packets_out, loss_permille, rtt_ms)
             SELECT id, $2, $3, $4, $5, $6, $7, $8, $9 FROM accounts WHERE id = $1 AND closed_at IS NULL",
        )
        .bind(account_id)
        .bind(millis(started))
        .bind(millis(ended))
        .bind(int(record.bytes_in))
        .bind(int(record.bytes_out))
        .bind(int(record.packets_in))
        .bind(int(record.packets_out))
        .bind((record.loss_ratio * 1000.0).round() as i64)
        .bind(record.rtt_seconds.map(|r| (r * 1000.0).round() as i64))
        .execute(&mut *tx)
        .await?;
        // A session that ended after its account closed is not kept (nor counted).
        if inserted.rows_affected() == 1 {
            use crate::rollup::{Measure, bump};
            bump(&mut tx, ended, Measure::MeetingSessions, 1).await?;
            bump(
                &mut tx,
                ended,
                Measure::MeetingSeconds,
                int(record.duration_seconds()),
            )
            .await?;
            bump(
                &mut tx,
                ended,
                Measure::MeetingBytes,
                int(record.bytes_in.saturating_add(record.bytes_out)),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names() {
        assert_eq!(clean_display_name("  Ann "), Some("Ann".into()));
        assert_eq!(clean_display_name("   "), None);
        assert_eq!(clean_display_name("a\u{7}b"), None);
        assert_eq!(clean_display_name(&"x".repeat(65)), None);
        assert_eq!(clean_display_name(&"é".repeat(64)), Some("é".repeat(64)));
    }
}
