//! Sign-up and the e-mail links that follow it: verification (sign-up and e-mail
//! change) and password reset. A refused sign-up stores nothing (P7: under 13 or no
//! policy acceptance is refused before any write).

use jiff::SignedDuration;
use serde::Deserialize;
use sqlx::Row;

use crate::clock::millis;
use crate::mail::Purpose;
use crate::password;
use crate::rollup::{self, Measure};
use crate::{AccountError, Accounts, token};

/// Longest e-mail address accepted (RFC 5321's path limit).
pub const MAX_EMAIL: usize = 254;

/// `POST /api/accounts`. Check boxes arrive as booleans in JSON and as `on` (or are
/// absent) from an HTML form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignUp {
    pub email: String,
    pub display_name: String,
    pub password: String,
    #[serde(default, deserialize_with = "checkbox")]
    pub age_confirmed: bool,
    #[serde(default, deserialize_with = "checkbox")]
    pub accept_policy: bool,
    #[serde(default, deserialize_with = "checkbox")]
    pub survey_opt_in: bool,
}

/// A boolean from JSON (`true`) or from a form field (`on`, `true`, `1`).
pub fn checkbox<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Bool(bool),
        Text(String),
    }
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => b,
        Value::Text(t) => matches!(t.as_str(), "on" | "true" | "1" | "yes"),
    })
}

/// The normalised form of an e-mail address (trimmed, lower case), if it is one.
pub fn clean_email(raw: &str) -> Result<String, AccountError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= MAX_EMAIL
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email.parse::<lettre::Address>().is_ok()
        // A domain without a dot cannot receive mail from the internet.
        && email.rsplit_once('@').is_some_and(|(_, d)| d.contains('.') && !d.ends_with('.'));
    if valid {
        Ok(email)
    } else {
        Err(AccountError::invalid(
            "invalid_email",
            "that is not an e-mail address we can send to",
        ))
    }
}

fn display_name(raw: &str) -> Result<String, AccountError> {
    crate::profile::clean_display_name(raw).ok_or_else(|| {
        AccountError::invalid(
            "invalid_display_name",
            "a display name is 1 to 64 characters without control characters",
        )
    })
}

/// Hashes off the async workers: argon2id at OWASP cost takes tens of milliseconds.
pub(crate) async fn hash_password(password: &str) -> Result<String, AccountError> {
    let password = password.to_string();
    tokio::task::spawn_blocking(move || password::hash(&password, password::Cost::OWASP))
        .await
        .map_err(|_| AccountError::Internal)?
        .map_err(|e| AccountError::invalid(e.code(), e.to_string()))
}

pub(crate) async fn verify_password(password: &str, stored: &str) -> bool {
    let (password, stored) = (password.to_string(), stored.to_string());
    tokio::task::spawn_blocking(move || password::verify(&password, &stored))
        .await
        .unwrap_or(false)
}

/// Whether an insert failed on a unique constraint (the e-mail is taken).
pub(crate) fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Accounts {
    /// Creates an unverified account and sends its verification link. Returns the id.
    pub async fn sign_up(&self, request: SignUp) -> Result<String, AccountError> {
        if !request.age_confirmed {
            return Err(AccountError::invalid(
                "age_required",
                "Veil accounts are for people aged 13 or older",
            ));
        }
        if !request.accept_policy {
            return Err(AccountError::invalid(
                "policy_required",
                "accept the privacy policy to create an account",
            ));
        }
        let email = clean_email(&request.email)?;
        let name = display_name(&request.display_name)?;
        password::check(&request.password)
            .map_err(|e| AccountError::invalid(e.code(), e.to_string()))?;
        let hash = hash_password(&request.password).await?;
        let now = self.now();
        let id = token::account_id()?;
        let link = token::secret()?;
        let trial = SignedDuration::from_hours(24 * i64::from(self.config.trial_days));
        let ttl = self.unverified_ttl();
        let mut tx = self.store.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO accounts (id, email, display_name, password_hash, created_at, trial_ends_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(&email)
        .bind(&name)
        .bind(&hash)
        .bind(millis(now))
        .bind(millis(now.saturating_add(trial).unwrap_or(now)))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if unique_violation(&e) => return Err(AccountError::EmailTaken),
            other => other?,
        };
        let mut consents = vec![
            ("privacy_policy", Some(self.config.policy_version.as_str())),
            ("age_13_or_older", None),
        ];
        if request.survey_opt_in {
            consents.push(("survey_email", None));
        }
        for (purpose, version) in consents {
            sqlx::query(
                "INSERT INTO consents (account_id, purpose, policy_version, given_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&id)
            .bind(purpose)
            .bind(version)
            .bind(millis(now))
            .execute(&mut *tx)
            .await?;
        }
        self.insert_link(&mut tx, &id, Purpose::Verify, &email, &link, ttl)
            .await?;
        rollup::bump(&mut tx, now, Measure::SignUps, 1).await?;
        tx.commit().await?;
        self.metrics.account_signups.inc();
        self.send_link(&id, Purpose::Verify, &email, &link).await;
        Ok(id)
    }

    fn unverified_ttl(&self) -> SignedDuration {
        SignedDuration::from_hours(i64::try_from(self.config.unverified_ttl_hours).unwrap_or(48))
    }

    pub(crate) async fn insert_link(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        account_id: &str,
        purpose: Purpose,
        email: &str,
        link: &str,
        ttl: SignedDuration,
    ) -> Result<(), sqlx::Error> {
        let now = self.now();
        sqlx::query(
            "INSERT INTO email_tokens (token_hash, account_id, purpose, email, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token::hashed(link))
        .bind(account_id)
        .bind(purpose.as_str())
        .bind(email)
        .bind(millis(now))
        .bind(millis(now.saturating_add(ttl).unwrap_or(now)))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Sends a link; a failure is logged and counted, never fatal to what was stored
    /// (the person can ask for the link again).
    pub(crate) async fn send_link(&self, account_id: &str, purpose: Purpose, to: &str, link: &str) {
        let base = self.config.public_url.trim_end_matches('/');
        let (subject, path, what) = match purpose {
            Purpose::Verify => (
                "Confirm your e-mail address for Veil",
                "verify",
                "confirm your e-mail address",
            ),
            Purpose::ChangeEmail => (
                "Confirm your new e-mail address for Veil",
                "verify",
                "confirm your new e-mail address",
            ),
            Purpose::PasswordReset => {
                ("Reset your Veil password", "reset", "choose a new password")
            }
        };
        // The secret travels in the fragment, which browsers never send to a server.
        let body = format!(
            "Hello,\r\n\r\nOpen this link to {what}:\r\n\r\n{base}/{path}#{link}\r\n\r\nIf you did not ask for this, ignore this message.\r\n"
        );
        if let Err(e) = self
            .mailer
            .send(account_id, purpose, to, subject, body)
            .await
        {
            tracing::warn!(purpose = purpose.as_str(), error = %e, "mail not sent");
            self.metrics.error("mail_failed");
        }
    }

    /// Follows a verification link (sign-up or e-mail change).
    pub async fn verify(&self, link: &str) -> Result<(), AccountError> {
        if !token::well_formed(link) {
            return Err(AccountError::InvalidToken);
        }
        let now = self.now();
        let mut tx = self.store.write().await?;
        let row = sqlx::query(
            "SELECT t.account_id, t.purpose, t.email FROM email_tokens t
             JOIN accounts a ON a.id = t.account_id
             WHERE t.token_hash = $1 AND t.expires_at > $2 AND a.closed_at IS NULL
               AND t.purpose IN ('verify', 'change_email')",
        )
        .bind(token::hashed(link))
        .bind(millis(now))
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(AccountError::InvalidToken)?;
        let account: String = row.try_get(0)?;
        let purpose: String = row.try_get(1)?;
        let email: String = row.try_get(2)?;
        if purpose == "change_email" {
            let updated =
                sqlx::query("UPDATE accounts SET email = $1, email_verified_at = $2 WHERE id = $3")
                    .bind(&email)
                    .bind(millis(now))
                    .bind(&account)
                    .execute(&mut *tx)
                    .await;
            match updated {
                Err(e) if unique_violation(&e) => return Err(AccountError::EmailTaken),
                other => other?,
            };
            sqlx::query(
                "DELETE FROM email_tokens WHERE account_id = $1 AND purpose = 'change_email'",
            )
            .bind(&account)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "UPDATE accounts SET email_verified_at = $1 WHERE id = $2 AND email_verified_at IS NULL",
            )
            .bind(millis(now))
            .bind(&account)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM email_tokens WHERE account_id = $1 AND purpose = 'verify'")
                .bind(&account)
                .execute(&mut *tx)
                .await?;
            rollup::bump(&mut tx, now, Measure::Verifications, 1).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sends a fresh verification link to an unverified account. Answers the same
    /// whether or not the address has an account.
    pub async fn resend_verification(&self, email: &str) -> Result<(), AccountError> {
        self.mail_fresh_link(
            email,
            "SELECT id FROM accounts WHERE email = $1 AND email_verified_at IS NULL AND closed_at IS NULL",
            Purpose::Verify,
            self.unverified_ttl(),
        )
        .await
    }

    /// Sends a password-reset link (valid one hour). Same answer for unknown addresses.
    pub async fn request_password_reset(&self, email: &str) -> Result<(), AccountError> {
        self.mail_fresh_link(
            email,
            "SELECT id FROM accounts WHERE email = $1 AND closed_at IS NULL",
            Purpose::PasswordReset,
            SignedDuration::from_hours(1),
        )
        .await
    }

    /// Mails a new `purpose` link to the account `find` names for `email`, if any.
    async fn mail_fresh_link(
        &self,
        email: &str,
        find: &'static str,
        purpose: Purpose,
        ttl: SignedDuration,
    ) -> Result<(), AccountError> {
        let email = clean_email(email)?;
        let Some(id) = sqlx::query_scalar::<_, String>(find)
            .bind(&email)
            .fetch_optional(self.store.pool())
            .await?
        else {
            return Ok(());
        };
        let link = token::secret()?;
        let mut tx = self.store.write().await?;
        self.insert_link(&mut tx, &id, purpose, &email, &link, ttl)
            .await?;
        tx.commit().await?;
        self.send_link(&id, purpose, &email, &link).await;
        Ok(())
    }

    /// Sets a new password from a reset link; every session of the account ends.
    pub async fn reset_password(&self, link: &str, new_password: &str) -> Result<(), AccountError> {
        if !token::well_formed(link) {
            return Err(AccountError::InvalidToken);
        }
        password::check(new_password)
            .map_err(|e| AccountError::invalid(e.code(), e.to_string()))?;
        let hash = hash_password(new_password).await?;
        let now = self.now();
        let mut tx = self.store.write().await?;
        let account: String = sqlx::query_scalar(
            "SELECT t.account_id FROM email_tokens t JOIN accounts a ON a.id = t.account_id
             WHERE t.token_hash = $1 AND t.purpose = 'password_reset' AND t.expires_at > $2
               AND a.closed_at IS NULL",
        )
        .bind(token::hashed(link))
        .bind(millis(now))
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(AccountError::InvalidToken)?;
        // Receiving the link proves the address, as verification would.
        sqlx::query(
            "UPDATE accounts SET password_hash = $1,
                 email_verified_at = COALESCE(email_verified_at, $2) WHERE id = $3",
        )
        .bind(&hash)
        .bind(millis(now))
        .bind(&account)
        .execute(&mut *tx)
        .await?;
        for sql in [
            "DELETE FROM email_tokens WHERE account_id = $1 AND purpose = 'password_reset'",
            "DELETE FROM sessions WHERE account_id = $1",
        ] {
            sqlx::query(sql).bind(&account).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_or_refused() {
        assert_eq!(
            clean_email("  Ann@Example.ORG ").unwrap(),
            "ann@example.org"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.org",
            "ann@localhost",
            "a b@example.org",
            "ann\n@example.org",
            "ann@@example.org",
        ] {
            assert!(clean_email(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.org", "a".repeat(250));
        assert!(clean_email(&long).is_err());
    }
}
