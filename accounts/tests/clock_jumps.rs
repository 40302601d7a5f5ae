//! Fault injection: the clock jumps (a wrong system clock corrected by NTP, a machine
//! suspended for days, a VM restored from a snapshot). Every account rule reads the
//! injected clock and every limit is stored as an absolute time when it is set, so a
//! jump may move *when* a rule applies but must never purge before the grace period
//! stored at closure ends, move a deletion deadline, break the purge or its gauges,
//! or let a session or an e-mail link outlive the expiry it was given. Each test runs
//! on SQLite and on PostgreSQL.

mod common;

use jiff::{SignedDuration, Timestamp, Zoned};
use sqlx::Row;
use veil_accounts::AccountError;
use veil_accounts::closure::Closed;
use veil_accounts::mail::Purpose;
use veil_accounts::rollup::{self, Measure};

use common::{Env, session_of, sign_up};

const PASSWORD: &str = "correct horse battery staple";
const GRACE_HOURS: i64 = 48;
const MS: SignedDuration = SignedDuration::from_millis(1);

fn hours(h: i64) -> SignedDuration {
    SignedDuration::from_hours(h)
}

fn days(d: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * d)
}

fn berlin(local: &str) -> Timestamp {
    format!("{local}[Europe/Berlin]")
        .parse::<Zoned>()
        .expect("a Berlin time")
        .timestamp()
}

/// The same database served with a grace period (closures can be reopened for a while,
/// so the purge waits for `purge_after` and the tests can tell "early" from "on time").
async fn with_grace(env: &mut Env, holidays: &[&str]) {
    let mut config = env.config();
    config.grace_hours = GRACE_HOURS as u64;
    config.holidays = holidays.iter().map(|h| h.to_string()).collect();
    env.reopen_with(config).await;
}

/// Signs up, verifies, logs in: the cookie's value.
async fn logged_in(env: &Env, email: &str) -> String {
    env.verified(email, "Jumper", PASSWORD).await;
    let done = env.accounts.log_in(email, PASSWORD, None).await;
    done.expect("log in").cookie_value
}

/// A verified account closed now; returns its id and what closing answered.
async fn closed_now(env: &Env, email: &str) -> (String, Closed) {
    let cookie = logged_in(env, email).await;
    let session = session_of(env, &cookie).await.expect("session");
    let closed = env.accounts.close(&session).await.expect("close");
    (session.account_id, closed)
}

/// (pending, overdue, lag seconds) after refreshing the deletion gauges at the clock's
/// time, as a purge run or a closure would.
async fn gauges(env: &Env) -> (i64, i64, f64) {
    env.accounts
        .refresh_deletion_gauges()
        .await
        .expect("the gauges refresh whatever the clock says");
    // The instance's own metrics: `with_grace` replaced the first instance.
    let m = &env.accounts.metrics;
    (
        m.account_deletions_pending.get(),
        m.account_deletions_overdue.get(),
        m.account_purge_lag_seconds.get(),
    )
}

async fn purged_closed(env: &Env) -> u64 {
    env.accounts.purge().await.expect("purge run").closed
}

/// Whether the account still has a row.
async fn exists(env: &Env, id: &str) -> bool {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE id = $1")
        .bind(id)
        .fetch_one(env.accounts.store.pool())
        .await
        .expect("count");
    n == 1
}

on_both_databases!(
    a_backward_jump_neither_purges_early_nor_breaks_the_gauges,
    |mut env: Env| async move {
        with_grace(&mut env, &[]).await;
        let t0 = common::start_time();
        let (id, closed) = closed_now(&env, "back@example.org").await;
        assert_eq!(closed.reopen_until, t0 + hours(GRACE_HOURS));
        // Two hours past the grace period, the purge not yet run: 2 h of lag.
        env.clock.set(t0 + hours(GRACE_HOURS + 2));
        assert_eq!(gauges(&env).await, (1, 0, 7200.0));
        // The clock falls back three days: the grace period has not ended by the
        // clock's reckoning, so nothing is purged; the lag is 0, never negative.
        env.advance(-days(3));
        assert_eq!(gauges(&env).await, (1, 0, 0.0));
        assert_eq!(purged_closed(&env).await, 0);
        assert!(exists(&env, &id).await);
        let due = env.accounts.list_due().await.expect("list due");
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].due_at, closed.deletion_due_at,
            "stored, not recomputed"
        );
        assert_eq!(due[0].purge_after, closed.reopen_until);
        assert!(!due[0].overdue);
        // Time moves on: purged exactly when the stored grace period ends.
        env.clock.set(closed.reopen_until - MS);
        assert_eq!(purged_closed(&env).await, 0);
        env.clock.set(closed.reopen_until);
        assert_eq!(purged_closed(&env).await, 1);
        assert!(!exists(&env, &id).await);
        assert_eq!(gauges(&env).await, (0, 0, 0.0));
        // The wait is counted from the stored closure time, not from the jump.
        let waited = rollup::value_on(
            &env.accounts.store,
            env.accounts.now(),
            Measure::PurgeWaitSeconds,
        )
        .await
        .expect("rollup");
        assert_eq!(waited, GRACE_HOURS * 3600);
    }
);

on_both_databases!(
    a_forward_jump_purges_what_is_due_and_spares_the_grace_period,
    |mut env: Env| async move {
        with_grace(&mut env, &[]).await;
        let t0 = common::start_time();
        let (late, late_closed) = closed_now(&env, "late@example.org").await;
        let active = logged_in(&env, "stays@example.org").await;
        // The machine was off for ten days: past the deadline of the first closure.
        env.advance(days(10));
        assert!(env.accounts.now() > late_closed.deletion_due_at);
        // Closed after the jump: still within its grace period.
        let (fresh, fresh_closed) = closed_now(&env, "fresh@example.org").await;
        // Before the next run, the late one counts as overdue, the fresh one not.
        let lag = env
            .accounts
            .now()
            .duration_since(late_closed.reopen_until)
            .as_secs_f64();
        assert_eq!(gauges(&env).await, (2, 1, lag));
        let due = env.accounts.list_due().await.expect("list due");
        let overdue: Vec<_> = due
            .iter()
            .map(|d| (d.account_id.as_str(), d.overdue))
            .collect();
        assert_eq!(overdue, [(late.as_str(), true), (fresh.as_str(), false)]);
        let stats = rollup::stats(&env.accounts.store, env.accounts.now())
            .await
            .expect("stats");
        assert_eq!(stats.deletions_overdue, 1);
        // The next run purges the late one only.
        assert_eq!(purged_closed(&env).await, 1);
        assert!(!exists(&env, &late).await);
        assert!(exists(&env, &fresh).await);
        assert_eq!(gauges(&env).await, (1, 0, 0.0));
        // The people who did not close are untouched, their session's idle time aside.
        assert!(
            session_of(&env, &active).await.is_err(),
            "idle for ten days"
        );
        env.accounts
            .log_in("stays@example.org", PASSWORD, None)
            .await
            .expect("the active account is whole");
        // The fresh closure keeps its own grace period, counted from its closure.
        assert_eq!(
            fresh_closed.reopen_until,
            t0 + days(10) + hours(GRACE_HOURS)
        );
        env.clock.set(fresh_closed.reopen_until - MS);
        assert_eq!(purged_closed(&env).await, 0);
        env.clock.set(fresh_closed.reopen_until);
        assert_eq!(purged_closed(&env).await, 1);
        assert_eq!(gauges(&env).await, (0, 0, 0.0));
    }
);

on_both_databases!(
    deadlines_fixed_at_closure_survive_jumps_across_weekends_and_holidays,
    |mut env: Env| async move {
        with_grace(&mut env, &[]).await;
        // Closed on a Thursday: seven working days end on the Monday after next.
        env.clock.set(berlin("2026-11-26T10:00"));
        let (thursday, closed) = closed_now(&env, "thu@example.org").await;
        let deadline = berlin("2026-12-07T10:00");
        assert_eq!(closed.deletion_due_at, deadline);
        // Across the weekend, and the operator then declares the whole next week
        // holidays: a new closure gets the new calendar, the earlier one keeps the
        // deadline it was promised.
        env.clock.set(berlin("2026-11-28T12:00"));
        with_grace(
            &mut env,
            &[
                "2026-11-30",
                "2026-12-01",
                "2026-12-02",
                "2026-12-03",
                "2026-12-04",
            ],
        )
        .await;
        let (saturday, closed_saturday) = closed_now(&env, "sat@example.org").await;
        assert_eq!(closed_saturday.deletion_due_at, berlin("2026-12-15T12:00"));
        // Back across the weekend, to before the first closure.
        env.clock.set(berlin("2026-11-25T08:00"));
        let due = env.accounts.list_due().await.expect("list due");
        let deadlines: Vec<_> = due
            .iter()
            .map(|d| (d.account_id.as_str(), d.due_at, d.overdue))
            .collect();
        assert_eq!(
            deadlines,
            [
                (thursday.as_str(), deadline, false),
                (saturday.as_str(), closed_saturday.deletion_due_at, false),
            ]
        );
        assert_eq!(gauges(&env).await, (2, 0, 0.0));
        // Overdue exactly at the stored deadline, were the purge never to run.
        env.clock.set(deadline - MS);
        assert_eq!(gauges(&env).await.1, 0);
        env.clock.set(deadline);
        assert_eq!(gauges(&env).await.1, 1);
        let due = env.accounts.list_due().await.expect("list due");
        assert!(due[0].overdue && !due[1].overdue);
        // Both grace periods are over by then: one run purges both.
        assert_eq!(purged_closed(&env).await, 2);
        assert_eq!(gauges(&env).await, (0, 0, 0.0));
    }
);

on_both_databases!(
    a_backward_jump_does_not_lengthen_a_session,
    |env: Env| async move {
        let t0 = common::start_time();
        let busy = logged_in(&env, "busy@example.org").await;
        let quiet = env
            .accounts
            .log_in("busy@example.org", PASSWORD, None)
            .await
            .expect("second log-in")
            .cookie_value;
        let stored = |cookie: String| {
            let pool = env.accounts.store.pool().clone();
            async move {
                let row =
                    sqlx::query("SELECT last_seen_at, expires_at FROM sessions WHERE id_hash = $1")
                        .bind(veil_accounts::token::hashed(&cookie))
                        .fetch_optional(&pool)
                        .await
                        .expect("session row");
                row.map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1)))
            }
        };
        let lifetime = hours(7 * 24);
        env.clock.set(t0 + hours(20));
        assert!(session_of(&env, &busy).await.is_ok());
        let before = stored(busy.clone()).await.expect("busy session");
        // Three days back: both still valid, and the stored times do not move, so the
        // jump buys neither idle time nor lifetime.
        env.advance(-days(3));
        assert!(session_of(&env, &busy).await.is_ok());
        assert!(session_of(&env, &quiet).await.is_ok());
        assert_eq!(stored(busy.clone()).await, Some(before));
        // Forward again: the quiet one, last used at t0 as stored (the use during the
        // jump did not count as later), is idle a day after t0.
        env.clock.set(t0 + hours(24));
        assert!(session_of(&env, &quiet).await.is_err());
        // The busy one, used every 20 hours, ends at its absolute lifetime from t0.
        let mut now = t0 + hours(40);
        while now < t0 + lifetime {
            env.clock.set(now);
            assert!(session_of(&env, &busy).await.is_ok(), "at {now}");
            now += hours(20);
        }
        env.clock.set(t0 + lifetime - MS);
        assert!(session_of(&env, &busy).await.is_ok());
        env.clock.set(t0 + lifetime);
        assert!(session_of(&env, &busy).await.is_err());
        assert_eq!(
            stored(busy).await,
            None,
            "ended sessions are deleted on sight"
        );
    }
);

on_both_databases!(
    a_backward_jump_does_not_lengthen_mailed_links,
    |env: Env| async move {
        let t0 = common::start_time();
        let accounts = &env.accounts;
        // Verification links (48 h) of two sign-ups, reset links (1 h) of two accounts.
        let mut verify = Vec::new();
        for email in ["v1@example.org", "v2@example.org"] {
            let id = accounts.sign_up(sign_up(email, "Link", PASSWORD)).await;
            verify.push(env.link(&id.expect("sign up"), Purpose::Verify));
        }
        let mut reset = Vec::new();
        for email in ["r1@example.org", "r2@example.org"] {
            let id = env.verified(email, "Reset", PASSWORD).await;
            accounts
                .request_password_reset(email)
                .await
                .expect("reset mail");
            reset.push(env.link(&id, Purpose::PasswordReset));
        }
        env.advance(-days(3));
        // Forward again: each link works until its stored expiry and not after.
        env.clock.set(t0 + hours(1) - MS);
        accounts
            .reset_password(&reset[0], "a brand new passphrase")
            .await
            .expect("reset within the hour");
        env.clock.set(t0 + hours(1));
        assert!(matches!(
            accounts
                .reset_password(&reset[1], "a brand new passphrase")
                .await,
            Err(AccountError::InvalidToken)
        ));
        env.clock.set(t0 + hours(48) - MS);
        accounts
            .verify(&verify[0])
            .await
            .expect("verify within 48 h");
        // The unverified sign-up is purged at its stored age, not before.
        assert_eq!(accounts.purge().await.expect("purge").unverified, 0);
        env.clock.set(t0 + hours(48));
        assert!(matches!(
            accounts.verify(&verify[1]).await,
            Err(AccountError::InvalidToken)
        ));
        assert_eq!(accounts.purge().await.expect("purge").unverified, 1);
    }
);
