//! Log-in sessions and the one cookie Veil sets (P8): `__Host-veil_session`, HttpOnly,
//! SameSite=Lax, Secure, no Max-Age (it ends with the browser session). Its value is a
//! 256-bit random id stored only as a hash, replaced at every log-in, ended by idle and
//! absolute timeouts, by log-out, and by "log out everywhere".

use axum::http::HeaderMap;
use axum::http::header::COOKIE;
use jiff::SignedDuration;
use sqlx::Row;

use crate::clock::{from_millis, millis};
use crate::signup::{clean_email, hash_password, verify_password};
use crate::{AccountError, Accounts, password, token};

/// How the session cookie is named and flagged for this deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookiePolicy {
    pub name: &'static str,
    /// Browsers keep `Secure` cookies only from https origins and from loopback
    /// addresses (which they treat as secure contexts).
    pub secure: bool,
}

impl CookiePolicy {
    /// `__Host-veil_session` (Secure) for https and loopback origins. Plain http on
    /// another host (a LAN trial without TLS) cannot keep a Secure cookie, so the
    /// cookie is then `veil_session` without Secure — documented as unsafe beyond a
    /// trusted network.
    pub fn for_public_url(public_url: &str) -> CookiePolicy {
        let (scheme, rest) = public_url.split_once("://").unwrap_or(("http", public_url));
        let authority = rest.split('/').next().unwrap_or("");
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => authority.split(':').next().unwrap_or(""),
        };
        let loopback = host == "localhost"
            || host.ends_with(".localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let secure = scheme.eq_ignore_ascii_case("https") || loopback;
        CookiePolicy {
            name: if secure {
                "__Host-veil_session"
            } else {
                "veil_session"
            },
            secure,
        }
    }

    /// The `Set-Cookie` value carrying a new session.
    pub fn set(&self, value: &str) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax{secure}",
            self.name
        )
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn clear(&self) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Lax{secure}; Max-Age=0",
            self.name
        )
    }

    /// This deployment's session cookie in a request, when well-formed.
    pub fn read<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == self.name)
            .map(|(_, value)| value)
            .filter(|value| token::well_formed(value))
    }
}

/// A logged-in request's session.
#[derive(Debug, Clone)]
pub struct Session {
    pub account_id: String,
    /// The hash of the cookie's id (what the database knows the session by).
    pub id_hash: String,
}

/// What a successful log-in hands back: the cookie's value (shown once).
pub struct LoggedIn {
    pub account_id: String,
    pub cookie_value: String,
}

/// A well-formed hash that matches no password: log-ins for unknown addresses spend
/// the same work as for known ones, so timing does not reveal who has an account.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$kOXfMW3Eo5Tq4S9jhM4Q9gJ9cm1CqMXlqOYC1HhQ2Uo";

impl Accounts {
    /// Checks credentials and opens a new session, ending `previous` (the id the
    /// browser held before, if any).
    pub async fn log_in(
        &self,
        email: &str,
        password_text: &str,
        previous: Option<&str>,
    ) -> Result<LoggedIn, AccountError> {
        let email = clean_email(email).map_err(|_| AccountError::InvalidCredentials)?;
        let row = sqlx::query(
            "SELECT id, password_hash, email_verified_at, closed_at FROM accounts WHERE email = $1",
        )
        .bind(&email)
        .fetch_optional(self.store.pool())
        .await?;
        let Some(row) = row else {
            let _ = verify_password(password_text, DUMMY_HASH).await;
            return Err(AccountError::InvalidCredentials);
        };
        let id: String = row.try_get(0)?;
        let stored: String = row.try_get(1)?;
        let verified: Option<i64> = row.try_get(2)?;
        let closed: Option<i64> = row.try_get(3)?;
        if !verify_password(password_text, &stored).await {
            return Err(AccountError::InvalidCredentials);
        }
        if closed.is_some() {
            return Err(AccountError::Closed);
        }
        if verified.is_none() {
            return Err(AccountError::NotVerified);
        }
        let rehash = if password::needs_rehash(&stored, password::Cost::OWASP) {
            Some(hash_password(password_text).await?)
        } else {
            None
        };
        let now = self.now();
        let cookie_value = token::secret()?;
        let max = SignedDuration::from_secs(
            i64::try_from(self.config.session_max_secs).unwrap_or(i64::MAX / 2),
        );
        let mut tx = self.store.write().await?;
        if let Some(previous) = previous {
            sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                .bind(token::hashed(previous))
                .execute(&mut *tx)
                .await?;
        }
        if let Some(hash) = rehash {
            sqlx::query("UPDATE accounts SET password_hash = $1 WHERE id = $2")
                .bind(hash)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO sessions (id_hash, account_id, created_at, last_seen_at, expires_at)
             VALUES ($1, $2, $3, $3, $4)",
        )
        .bind(token::hashed(&cookie_value))
        .bind(&id)
        .bind(millis(now))
        .bind(millis(now.saturating_add(max).unwrap_or(now)))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(LoggedIn {
            account_id: id,
            cookie_value,
        })
    }

    /// The live session named by the request's cookie. Idle or expired sessions are
    /// deleted on sight; closed accounts have none.
    pub async fn session(&self, headers: &HeaderMap) -> Result<Session, AccountError> {
        let value = self
            .cookie
            .read(headers)
            .ok_or(AccountError::Unauthenticated)?;
        let id_hash = token::hashed(value);
        let row = sqlx::query(
            "SELECT s.account_id, s.last_seen_at, s.expires_at FROM sessions s
             JOIN accounts a ON a.id = s.account_id
             WHERE s.id_hash = $1 AND a.closed_at IS NULL",
        )
        .bind(&id_hash)
        .fetch_optional(self.store.pool())
        .await?
        .ok_or(AccountError::Unauthenticated)?;
        let account_id: String = row.try_get(0)?;
        let last_seen = from_millis(row.try_get(1)?);
        let expires = from_millis(row.try_get(2)?);
        let now = self.now();
        let idle = SignedDuration::from_secs(
            i64::try_from(self.config.session_idle_secs).unwrap_or(i64::MAX / 2),
        );
        if now >= expires || now.duration_since(last_seen) >= idle {
            sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                .bind(&id_hash)
                .execute(self.store.pool())
                .await?;
            return Err(AccountError::Unauthenticated);
        }
        // Writing on every request would make reads into writes; a minute's
        // precision is plenty for an idle timeout.
        if now.duration_since(last_seen) >= SignedDuration::from_secs(60) {
            sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2")
                .bind(millis(now))
                .bind(&id_hash)
                .execute(self.store.pool())
                .await?;
        }
        Ok(Session {
            account_id,
            id_hash,
        })
    }

    /// Ends one session.
    pub async fn log_out(&self, session: &Session) -> Result<(), AccountError> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(&session.id_hash)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    /// Ends every session of the account, this one included.
    pub async fn log_out_everywhere(&self, session: &Session) -> Result<u64, AccountError> {
        let done = sqlx::query("DELETE FROM sessions WHERE account_id = $1")
            .bind(&session.account_id)
            .execute(self.store.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Whether the session's account may host a meeting: verified, open, in trial.
    pub async fn may_host(&self, session: &Session) -> Result<(), AccountError> {
        let trial_ends: i64 = sqlx::query_scalar(
            "SELECT trial_ends_at FROM accounts WHERE id = $1 AND closed_at IS NULL",
        )
        .bind(&session.account_id)
        .fetch_optional(self.store.pool())
        .await?
        .ok_or(AccountError::Unauthenticated)?;
        if self.now() >= from_millis(trial_ends) {
            return Err(AccountError::TrialEnded);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cookie_is_secure_on_https_and_loopback_only() {
        for url in [
            "https://meet.example.org",
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://[::1]:8080/",
        ] {
            let p = CookiePolicy::for_public_url(url);
            assert!(p.secure, "{url}");
            assert_eq!(p.name, "__Host-veil_session");
            let set = p.set("v");
            assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax"));
            assert!(set.contains("; Secure") && set.contains("Path=/"));
            assert!(!set.contains("Max-Age") && !set.contains("Domain"));
        }
        let lan = CookiePolicy::for_public_url("http://192.168.1.5:8080");
        assert!(!lan.secure);
        assert_eq!(lan.name, "veil_session");
        assert!(!lan.set("v").contains("Secure"));
    }

    #[test]
    fn reads_only_its_own_well_formed_cookie() {
        let p = CookiePolicy::for_public_url("https://x.example");
        let good = token::secret().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("other=1; __Host-veil_session={good}")).unwrap(),
        );
        assert_eq!(p.read(&headers), Some(good.as_str()));
        headers.insert(COOKIE, HeaderValue::from_static("__Host-veil_session=junk"));
        assert_eq!(p.read(&headers), None);
    }
}
