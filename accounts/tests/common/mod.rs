//! What the accounts tests share: a fresh database of either kind (a temp SQLite file,
//! or a new PostgreSQL database on 127.0.0.1:5432 dropped afterwards), a manual clock,
//! an outbox folder, and a capture of every log line for the privacy checks.

#![allow(dead_code)]

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use futures::FutureExt;
use jiff::{SignedDuration, Timestamp};
use veil_accounts::clock::ManualClock;
use veil_accounts::mail::{Purpose, latest_link};
use veil_accounts::session::Session;
use veil_accounts::signup::SignUp;
use veil_accounts::store::Backend;
use veil_accounts::{AccountError, Accounts, AccountsConfig};
use veil_metrics::Metrics;

/// Runs a test body once per database kind.
#[macro_export]
macro_rules! on_both_databases {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                common::run(veil_accounts::store::Backend::Sqlite, $body).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                common::run(veil_accounts::store::Backend::Postgres, $body).await
            }
        }
    };
}

/// A Monday morning, so working-day arithmetic is easy to follow.
pub fn start_time() -> Timestamp {
    "2026-11-23T09:00:00Z".parse().expect("time")
}

/// One test's world.
pub struct Env {
    pub backend: Backend,
    pub url: String,
    pub dir: PathBuf,
    pub clock: Arc<ManualClock>,
    pub metrics: Arc<Metrics>,
    pub accounts: Arc<Accounts>,
}

impl Env {
    pub fn config(&self) -> AccountsConfig {
        config(&self.url, &self.dir)
    }

    /// Another service instance on the same database (a second purge worker).
    pub async fn second_instance(&self, config: AccountsConfig) -> Arc<Accounts> {
        Accounts::open(
            config,
            self.clock.clone(),
            Arc::new(Metrics::new().expect("metrics")),
        )
        .await
        .expect("second instance")
    }

    /// The same database reopened with other settings.
    pub async fn reopen_with(&mut self, config: AccountsConfig) {
        self.accounts = self.second_instance(config).await;
    }

    pub fn advance(&self, by: SignedDuration) {
        self.clock.advance(by);
    }

    pub fn outbox(&self) -> PathBuf {
        self.dir.join("outbox")
    }

    /// The secret of the newest link mailed to `account` for `purpose`.
    pub fn link(&self, account: &str, purpose: Purpose) -> String {
        let url = latest_link(&self.outbox(), account, purpose).expect("a mailed link");
        url.rsplit_once('#').expect("a fragment").1.to_string()
    }

    /// Signs up, verifies, and returns the account id.
    pub async fn verified(&self, email: &str, name: &str, password: &str) -> String {
        let id = self
            .accounts
            .sign_up(sign_up(email, name, password))
            .await
            .expect("sign up");
        self.accounts
            .verify(&self.link(&id, Purpose::Verify))
            .await
            .expect("verify");
        id
    }
}

pub fn sign_up(email: &str, name: &str, password: &str) -> SignUp {
    SignUp {
        email: email.into(),
        display_name: name.into(),
        password: password.into(),
        age_confirmed: true,
        accept_policy: true,
        survey_opt_in: false,
    }
}

pub fn config(url: &str, dir: &std::path::Path) -> AccountsConfig {
    let mut config = AccountsConfig {
        database_url: url.to_string(),
        time_zone: "Europe/Berlin".into(),
        public_url: "http://127.0.0.1:8080".into(),
        ..AccountsConfig::default()
    };
    config.mail.outbox_dir = dir.join("outbox");
    config
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The PostgreSQL server the tests use (trust auth on this machine).
pub fn postgres_admin_url() -> String {
    std::env::var("VEIL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn admin(sql: String) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (the test command starts it)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("admin statement");
}

/// Runs `body` against a fresh database of `backend`, then drops the database (also
/// when the body panics) and checks the captured logs for the test's secrets.
pub async fn run<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    capture_logs();
    let dir = std::env::temp_dir().join(unique("veil_accounts"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (url, pg_name) = match backend {
        Backend::Sqlite => (format!("sqlite://{}", dir.join("veil.db").display()), None),
        Backend::Postgres => {
            let name = unique("veil_test");
            admin(format!("CREATE DATABASE {name}")).await;
            let base = postgres_admin_url();
            let base = base
                .rsplit_once('/')
                .map_or(base.as_str(), |(b, _)| b)
                .to_string();
            (format!("{base}/{name}"), Some(name))
        }
    };
    let clock = Arc::new(ManualClock::new(start_time()));
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let accounts = Accounts::open(config(&url, &dir), clock.clone(), metrics.clone())
        .await
        .expect("open accounts");
    let env = Env {
        backend,
        url,
        dir: dir.clone(),
        clock,
        metrics,
        accounts,
    };
    let outcome = std::panic::AssertUnwindSafe(body(env)).catch_unwind().await;
    if let Some(name) = pg_name {
        admin(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The session a cookie value stands for, as a request carrying it would find it.
pub async fn session_of(env: &Env, cookie_value: &str) -> Result<Session, AccountError> {
    session_from_cookie(&env.accounts, cookie_value).await
}

/// The same for any instance of the service.
pub async fn session_from_cookie(
    accounts: &Accounts,
    cookie_value: &str,
) -> Result<Session, AccountError> {
    let cookie = format!("{}={cookie_value}", accounts.cookie.name);
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(axum::http::header::COOKIE, cookie.parse().expect("header"));
    accounts.session(&headers).await
}

/// Every log line of the test binary, at every level and from every crate.
pub fn logs() -> String {
    String::from_utf8_lossy(
        &LOG.get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    )
    .into_owned()
}

static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let buffer = LOG.get_or_init(Default::default).clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_ansi(false)
            .with_writer(move || Capture(buffer.clone()))
            .try_init();
    });
}

/// Fails if any of `secrets` appears in the captured logs.
pub fn assert_not_logged(secrets: &[&str]) {
    let logs = logs();
    assert!(!logs.is_empty(), "no log line was captured at all");
    for secret in secrets {
        assert!(!logs.contains(secret), "{secret:?} appears in the logs");
    }
}
