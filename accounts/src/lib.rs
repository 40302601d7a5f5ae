//! Trial accounts and the promises made about them (P4–P8): sign-up, log-in, the
//! person's view, correction and export of their data, consent, closure, and the purge
//! that deletes a closed account's records within seven working days.
//!
//! Must never: store an IP address, a plain password or a session id in the clear; log
//! an email, name, password, token or address; keep anything that names or links to a
//! person past the purge deadline, except identifier-free daily aggregates (`rollup`).
//!
//! The HTTP surface (`http`) is mounted by the signaling service; `Accounts` is the
//! state it shares with signaling, which asks it who may host a meeting and keeps the
//! meetings an account hosts here (`hosting`, as hashes) so that they outlive a restart.

pub mod clock;
pub mod closure;
pub mod deadline;
pub mod hosting;
pub mod http;
pub mod mail;
pub mod password;
pub mod profile;
pub mod purge;
pub mod ratelimit;
pub mod rollup;
pub mod session;
pub mod signup;
pub mod store;
pub mod token;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use veil_metrics::Metrics;

use crate::clock::Clock;
use crate::deadline::{CalendarError, WorkingCalendar};
use crate::mail::Mailer;
use crate::ratelimit::{Action, RateLimits, Verdict};
use crate::session::CookiePolicy;
use crate::store::{Store, StoreError};

/// Account settings; defaults run on a laptop.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccountsConfig {
    /// `sqlite://data/veil.db` (created when missing) or `postgres://user@host/db`.
    pub database_url: String,
    /// Where people reach Veil: the origin of links in e-mails, and whether the session
    /// cookie can be `Secure` (https, or a loopback address browsers treat as secure).
    /// Empty: `http://` and the address signaling listens on.
    pub public_url: String,
    /// Version of the privacy policy people accept at sign-up.
    pub policy_version: String,
    /// Length of the free trial from sign-up.
    pub trial_days: u32,
    /// A session unused this long ends.
    pub session_idle_secs: u64,
    /// A session ends this long after log-in, used or not.
    pub session_max_secs: u64,
    /// Accounts whose e-mail is not verified within this time are deleted.
    pub unverified_ttl_hours: u64,
    /// Time zone of the working days that count toward the deletion deadline.
    pub time_zone: String,
    /// Days off (YYYY-MM-DD) that are not working days.
    pub holidays: Vec<String>,
    /// How long a closed account can still be reopened before it is purged. Must end
    /// before the deletion deadline can (shorter than 9 days).
    pub grace_hours: u64,
    /// How often the purge job runs.
    pub purge_interval_secs: u64,
    pub mail: mail::MailConfig,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        AccountsConfig {
            database_url: "sqlite://data/veil.db".into(),
            public_url: String::new(),
            policy_version: "2026-11".into(),
            trial_days: 14,
            session_idle_secs: 24 * 3600,
            session_max_secs: 7 * 24 * 3600,
            unverified_ttl_hours: 48,
            time_zone: "UTC".into(),
            holidays: Vec::new(),
            grace_hours: 0,
            purge_interval_secs: 300,
            mail: mail::MailConfig::default(),
        }
    }
}

impl AccountsConfig {
    pub fn grace(&self) -> SignedDuration {
        SignedDuration::from_hours(i64::try_from(self.grace_hours).unwrap_or(i64::MAX / 3600))
    }

    /// Refuses settings that would break a promise or cannot work.
    pub fn check(&self) -> Result<WorkingCalendar, OpenError> {
        WorkingCalendar::check_grace(self.grace())?;
        if self.trial_days == 0 || self.session_idle_secs == 0 || self.session_max_secs == 0 {
            return Err(OpenError::Setting(
                "trial_days, session_idle_secs and session_max_secs must be above zero",
            ));
        }
        if self.purge_interval_secs == 0 || self.purge_interval_secs > 24 * 3600 {
            return Err(OpenError::Setting(
                "purge_interval_secs must be between 1 second and 1 day",
            ));
        }
        Ok(WorkingCalendar::new(&self.time_zone, &self.holidays)?)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("accounts: {0}")]
    Setting(&'static str),
    #[error("accounts: {0}")]
    Calendar(#[from] CalendarError),
    #[error("accounts database: {0}")]
    Store(#[from] StoreError),
    #[error("accounts mail: {0}")]
    Mail(#[from] mail::MailError),
}

/// Why an account operation was refused or failed. Each has a stable code and status.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("an account with this e-mail address exists already")]
    EmailTaken,
    #[error("the e-mail address or the password is wrong")]
    InvalidCredentials,
    #[error("verify your e-mail address first: follow the link we sent")]
    NotVerified,
    #[error("this account is closed")]
    Closed,
    #[error("log in first")]
    Unauthenticated,
    #[error("the link is invalid or has expired")]
    InvalidToken,
    #[error("the trial has ended: hosting meetings needs an active trial")]
    TrialEnded,
    #[error("the account can no longer be reopened")]
    ReopenTooLate,
    #[error("too many attempts; try again later")]
    RateLimited { retry_after_secs: u64 },
    #[error("the e-mail could not be sent; try again later")]
    Mail,
    #[error("internal error")]
    Internal,
    #[error("the account store is unavailable")]
    Database(#[from] sqlx::Error),
}

impl AccountError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        AccountError::Invalid {
            code,
            message: message.into(),
        }
    }

    /// The stable error code answered to clients (and counted).
    pub fn code(&self) -> &'static str {
        match self {
            AccountError::Invalid { code, .. } => code,
            AccountError::EmailTaken => "email_taken",
            AccountError::InvalidCredentials => "invalid_credentials",
            AccountError::NotVerified => "email_not_verified",
            AccountError::Closed => "account_closed",
            AccountError::Unauthenticated => "unauthenticated",
            AccountError::InvalidToken => "invalid_token",
            AccountError::TrialEnded => "trial_ended",
            AccountError::ReopenTooLate => "reopen_too_late",
            AccountError::RateLimited { .. } => "rate_limited",
            AccountError::Mail => "mail_failed",
            AccountError::Internal => "internal",
            AccountError::Database(_) => "unavailable",
        }
    }
}

impl From<token::RandomError> for AccountError {
    fn from(_: token::RandomError) -> Self {
        AccountError::Internal
    }
}

/// Called with an account id when the account closes (signaling closes its rooms).
pub type ClosureHook = Arc<dyn Fn(&str) + Send + Sync>;

/// The accounts service: its store, clock, calendar, mail, limits and metrics.
pub struct Accounts {
    pub config: AccountsConfig,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub calendar: WorkingCalendar,
    pub mailer: Mailer,
    pub cookie: CookiePolicy,
    pub metrics: Arc<Metrics>,
    limits: Mutex<RateLimits>,
    on_close: OnceLock<ClosureHook>,
}

impl Accounts {
    /// Opens the store (creating and migrating it) and checks the settings.
    pub async fn open(
        config: AccountsConfig,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Accounts>, OpenError> {
        let calendar = config.check()?;
        let mailer = Mailer::new(&config.mail)?;
        let cookie = CookiePolicy::for_public_url(&config.public_url);
        if !cookie.secure {
            tracing::warn!(
                "public_url is plain http on a non-loopback host: the session cookie cannot be Secure; serve Veil over https"
            );
        }
        let store = Store::open(&config.database_url).await?;
        Ok(Arc::new(Accounts {
            config,
            store,
            clock,
            calendar,
            mailer,
            cookie,
            metrics,
            limits: Mutex::new(RateLimits::new()),
            on_close: OnceLock::new(),
        }))
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Registers what to do when an account closes (once).
    pub fn on_close(&self, hook: ClosureHook) {
        let _ = self.on_close.set(hook);
    }

    pub(crate) fn closed(&self, account_id: &str) {
        if let Some(hook) = self.on_close.get() {
            hook(account_id);
        }
    }

    /// Counts one attempt against the in-memory limits of `action`.
    pub fn limit(
        &self,
        action: Action,
        ip: IpAddr,
        email: Option<&str>,
    ) -> Result<(), AccountError> {
        let now = Instant::now();
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        if limits.len() > 100_000 {
            limits.sweep(now);
        }
        match limits.check(action, ip, email, now) {
            Verdict::Allowed => Ok(()),
            Verdict::Limited { retry_after } => {
                self.metrics.error("rate_limited");
                Err(AccountError::RateLimited {
                    retry_after_secs: retry_after.as_secs(),
                })
            }
        }
    }

    /// Where e-mails go in development (and in tests).
    pub fn outbox(&self) -> Option<PathBuf> {
        self.mailer.outbox().map(PathBuf::from)
    }
}
