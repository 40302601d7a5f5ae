//! Identifier-free daily counters (per UTC day): sign-ups, verifications, closures,
//! reopenings, purges, expired sign-ups, and meeting usage. Bumped in the same
//! transaction as the event they count, so they survive every purge and count each
//! event once. `stats` adds the live counts an operator needs — aggregates only.

use jiff::Timestamp;
use serde::Serialize;
use sqlx::{Any, Row, Transaction};

use crate::clock::millis;
use crate::store::Store;

/// What a rollup counts. Stored by name; names are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    SignUps,
    Verifications,
    Closures,
    Reopenings,
    Purges,
    /// Sum over purges of (purged − deletion requested), seconds.
    PurgeWaitSeconds,
    ExpiredUnverified,
    MeetingSessions,
    MeetingSeconds,
    MeetingBytes,
}

impl Measure {
    pub const ALL: [Measure; 10] = [
        Measure::SignUps,
        Measure::Verifications,
        Measure::Closures,
        Measure::Reopenings,
        Measure::Purges,
        Measure::PurgeWaitSeconds,
        Measure::ExpiredUnverified,
        Measure::MeetingSessions,
        Measure::MeetingSeconds,
        Measure::MeetingBytes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Measure::SignUps => "sign_ups",
            Measure::Verifications => "verifications",
            Measure::Closures => "closures",
            Measure::Reopenings => "reopenings",
            Measure::Purges => "purges",
            Measure::PurgeWaitSeconds => "purge_wait_seconds",
            Measure::ExpiredUnverified => "expired_unverified",
            Measure::MeetingSessions => "meeting_sessions",
            Measure::MeetingSeconds => "meeting_seconds",
            Measure::MeetingBytes => "meeting_bytes",
        }
    }
}

/// The UTC day of `t`, `YYYY-MM-DD`.
pub fn day(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d").to_string()
}

/// Adds `by` to `measure` on the day of `at`, inside `tx`.
pub async fn bump(
    tx: &mut Transaction<'static, Any>,
    at: Timestamp,
    measure: Measure,
    by: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO daily_rollups (day, measure, value) VALUES ($1, $2, $3)
         ON CONFLICT (day, measure) DO UPDATE SET value = daily_rollups.value + excluded.value",
    )
    .bind(day(at))
    .bind(measure.as_str())
    .bind(by)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One day's counters.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DayRow {
    pub day: String,
    pub measure: String,
    pub value: i64,
}

/// Aggregates only: what `veil accounts stats` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub accounts_active: i64,
    pub accounts_in_trial: i64,
    pub accounts_unverified: i64,
    pub accounts_closed_pending_purge: i64,
    pub deletions_overdue: i64,
    /// Totals of every rollup measure over all days.
    pub totals: Vec<(String, i64)>,
    /// The last 30 days of rollups.
    pub recent_days: Vec<DayRow>,
}

/// A count; `now` is bound to `$1` when the query compares with it.
async fn count(store: &Store, sql: &'static str, now: Option<i64>) -> Result<i64, sqlx::Error> {
    let mut query = sqlx::query_scalar::<_, i64>(sql);
    if let Some(now) = now {
        query = query.bind(now);
    }
    query.fetch_one(store.pool()).await
}

pub async fn stats(store: &Store, now: Timestamp) -> Result<Stats, sqlx::Error> {
    let ms = millis(now);
    let accounts_active = count(
        store,
        "SELECT COUNT(*) FROM accounts WHERE closed_at IS NULL AND email_verified_at IS NOT NULL",
        None,
    )
    .await?;
    let accounts_in_trial = count(
        store,
        "SELECT COUNT(*) FROM accounts WHERE closed_at IS NULL AND email_verified_at IS NOT NULL AND trial_ends_at > $1",
        Some(ms),
    )
    .await?;
    let accounts_unverified = count(
        store,
        "SELECT COUNT(*) FROM accounts WHERE closed_at IS NULL AND email_verified_at IS NULL",
        None,
    )
    .await?;
    let accounts_closed_pending_purge =
        count(store, "SELECT COUNT(*) FROM deletion_requests", None).await?;
    let deletions_overdue = count(
        store,
        "SELECT COUNT(*) FROM deletion_requests WHERE due_at <= $1",
        Some(ms),
    )
    .await?;
    let totals = sqlx::query(
        "SELECT measure, CAST(SUM(value) AS BIGINT) FROM daily_rollups GROUP BY measure ORDER BY measure",
    )
    .fetch_all(store.pool())
    .await?
    .into_iter()
    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let since = day(now
        .saturating_sub(jiff::SignedDuration::from_hours(30 * 24))
        .unwrap_or(now));
    let recent_days = sqlx::query(
        "SELECT day, measure, value FROM daily_rollups WHERE day >= $1 ORDER BY day, measure",
    )
    .bind(since)
    .fetch_all(store.pool())
    .await?
    .into_iter()
    .map(|r| {
        Ok(DayRow {
            day: r.try_get(0)?,
            measure: r.try_get(1)?,
            value: r.try_get(2)?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Stats {
        accounts_active,
        accounts_in_trial,
        accounts_unverified,
        accounts_closed_pending_purge,
        deletions_overdue,
        totals,
        recent_days,
    })
}

/// The value of `measure` on the day of `at` (0 when absent).
pub async fn value_on(store: &Store, at: Timestamp, measure: Measure) -> Result<i64, sqlx::Error> {
    let v: Option<i64> =
        sqlx::query_scalar("SELECT value FROM daily_rollups WHERE day = $1 AND measure = $2")
            .bind(day(at))
            .bind(measure.as_str())
            .fetch_optional(store.pool())
            .await?;
    Ok(v.unwrap_or(0))
}
