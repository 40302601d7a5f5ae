//! The accounts promises, each on SQLite and on PostgreSQL: sign-up to export, every
//! refusal storing nothing, sessions, closure and the purge (schema-wide scan, crash at
//! every step, two workers), trials, grace period and reopening, password reset.

mod common;

use std::collections::BTreeMap;

use jiff::SignedDuration;
use serde_json::Value;
use sqlx::{Column, Row};
use veil_accounts::AccountError;
use veil_accounts::mail::Purpose;
use veil_accounts::purge::{PurgeError, PurgeStep};
use veil_accounts::rollup::{self, Measure};
use veil_accounts::session::Session;
use veil_accounts::store::{Backend, Store};

use common::{Env, assert_not_logged, session_of, sign_up};

const PASSWORD: &str = "correct horse battery staple";

/// Every row of every table, as text, keyed by table (for before/after comparisons).
async fn snapshot(store: &Store) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    let tables: Vec<String> = store
        .text_columns()
        .await
        .expect("catalog")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    for table in tables {
        if out.contains_key(&table) || table == "schema_migrations" {
            continue;
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM \"{table}\"")))
            .fetch_all(store.pool())
            .await
            .expect("rows");
        let mut texts: Vec<String> = rows.iter().map(row_text).collect();
        texts.sort();
        out.insert(table, texts);
    }
    out
}

fn row_text(row: &sqlx::any::AnyRow) -> String {
    (0..row.columns().len())
        .map(|i| {
            row.try_get::<Option<String>, _>(i)
                .map(|v| v.unwrap_or_default())
                .or_else(|_| row.try_get::<Option<i64>, _>(i).map(|v| format!("{v:?}")))
                .unwrap_or_else(|_| "?".into())
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// Rows in any table that hold `needle`, as (table, column, count).
async fn traces(store: &Store, needle: &str) -> Vec<(String, String, i64)> {
    let mut found = Vec::new();
    for (table, column) in store.text_columns().await.expect("catalog") {
        let n = store
            .count_containing(&table, &column, needle)
            .await
            .expect("scan");
        if n > 0 {
            found.push((table, column, n));
        }
    }
    found
}

async fn session_for(env: &Env, email: &str) -> (Session, String) {
    let done = env
        .accounts
        .log_in(email, PASSWORD, None)
        .await
        .expect("log in");
    let session = session_of(env, &done.cookie_value).await.expect("session");
    (session, done.cookie_value)
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("json")
}

on_both_databases!(sign_up_to_export_to_purge, |env: Env| async move {
    let accounts = &env.accounts;
    let email = "ann.example@example.org";
    let id = accounts
        .sign_up(veil_accounts::signup::SignUp {
            survey_opt_in: true,
            ..sign_up("Ann.Example@Example.org", "Ann Example", PASSWORD)
        })
        .await
        .expect("sign up");
    // Unverified: log-in refused (after the password check), nothing else.
    assert!(matches!(
        accounts.log_in(email, PASSWORD, None).await,
        Err(AccountError::NotVerified)
    ));
    accounts
        .verify(&env.link(&id, Purpose::Verify))
        .await
        .expect("verify");
    let (session, cookie) = session_for(&env, email).await;
    let profile = accounts.profile(&id).await.expect("profile");
    assert_eq!(profile.email, email);
    assert!(profile.can_host && profile.survey_opt_in);

    // Corrections: name, opt-out, a new address (pending until verified).
    let changed = accounts
        .change_profile(
            &session,
            veil_accounts::profile::ProfileChange {
                display_name: Some("Ann E.".into()),
                survey_opt_in: Some(false),
                email: Some("ann.new@example.org".into()),
                current_password: Some(PASSWORD.into()),
                ..Default::default()
            },
        )
        .await
        .expect("change");
    assert_eq!(changed.display_name, "Ann E.");
    assert!(!changed.survey_opt_in);
    assert_eq!(changed.email, email, "the old address holds until verified");
    assert_eq!(
        changed.pending_email.as_deref(),
        Some("ann.new@example.org")
    );
    // Without the current password an e-mail change is refused.
    let refused = accounts
        .change_profile(
            &session,
            veil_accounts::profile::ProfileChange {
                email: Some("ann.other@example.org".into()),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        refused.err().map(|e| e.code()),
        Some("current_password_required")
    );
    let meeting = veil_metrics::ConnectionRecord {
        started_at: 1_795_000_000,
        ended_at: 1_795_000_600,
        bytes_in: 1_000_000,
        bytes_out: 3_000_000,
        packets_in: 1_000,
        packets_out: 3_000,
        loss_ratio: 0.012,
        rtt_seconds: Some(0.042),
    };
    accounts.record_usage(&id, &meeting).await.expect("usage");
    let hour = std::time::Duration::from_secs(3600);
    accounts
        .record_hosted_room("room-of-ann", "host-key-of-ann", &id, hour)
        .await
        .expect("hosted room");

    // The export holds every stored value of the person's rows (secrets' hashes aside).
    let export = accounts.export(&session).await.expect("export");
    let text = json(&export);
    assert_eq!(export.version, 1);
    assert_eq!(export.usage.len(), 1);
    assert_eq!(export.usage[0].loss_permille, 12);
    assert_eq!(export.usage[0].rtt_ms, Some(42));
    assert_eq!(export.pending_links.len(), 1);
    assert!(export.sessions.iter().any(|s| s.current));
    assert_eq!(export.password.algorithm, "argon2id");
    assert!(export.password.parameters.contains("m=19456,t=2,p=1"));
    let exported: Value = serde_json::from_str(&text).expect("export json");
    let mut strings = Vec::new();
    collect_scalars(&exported, &mut strings);
    let secret_columns = [
        "password_hash",
        "token_hash",
        "id_hash",
        "room_hash",
        "host_key_hash",
    ];
    assert_eq!(export.hosted_rooms.len(), 1);
    let pool = accounts.store.pool();
    for (table, key) in [
        ("accounts", "id"),
        ("consents", "account_id"),
        ("email_tokens", "account_id"),
        ("sessions", "account_id"),
        ("usage_records", "account_id"),
        ("hosted_rooms", "account_id"),
    ] {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM {table} WHERE {key} = $1"
        )))
        .bind(&id)
        .fetch_all(pool)
        .await
        .expect("rows");
        assert!(!rows.is_empty(), "{table} has rows for the account");
        for row in &rows {
            for (i, column) in row.columns().iter().enumerate() {
                let name = column.name();
                if secret_columns.contains(&name) || name == "account_id" {
                    continue;
                }
                let value = if let Ok(Some(s)) = row.try_get::<Option<String>, _>(i) {
                    s
                } else if let Ok(Some(n)) = row.try_get::<Option<i64>, _>(i) {
                    // Times are exported as RFC 3339; other integers as numbers.
                    if name.ends_with("_at") {
                        veil_accounts::clock::from_millis(n).to_string()
                    } else {
                        n.to_string()
                    }
                } else {
                    continue;
                };
                assert!(
                    strings.contains(&value),
                    "{table}.{name} = {value:?} is missing from the export"
                );
            }
        }
    }

    // The new address, once verified, replaces the old.
    let change_link = env.link(&id, Purpose::ChangeEmail);
    accounts.verify(&change_link).await.expect("verify change");
    assert_eq!(
        accounts.profile(&id).await.expect("profile").email,
        "ann.new@example.org"
    );

    // A second person, untouched by everything that follows.
    let other = env.verified("bo@example.org", "Bo Other", PASSWORD).await;

    // Closure: immediate.
    let closed = accounts.close(&session).await.expect("close");
    assert!(closed.deletion_due_at > closed.closed_at);
    assert!(matches!(
        session_of(&env, &cookie).await,
        Err(AccountError::Unauthenticated)
    ));
    assert!(matches!(
        accounts.log_in("ann.new@example.org", PASSWORD, None).await,
        Err(AccountError::Closed)
    ));
    assert!(matches!(
        accounts.export(&session).await,
        Err(AccountError::Unauthenticated)
    ));
    // Its meetings end with it: a restarted signaling would not bring them back.
    assert_eq!(
        accounts.hosted_room("room-of-ann").await.expect("lookup"),
        None
    );
    let due = accounts.list_due().await.expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].account_id, id);
    // Monday 09:00 Berlin + 7 working days = the next Wednesday but one.
    assert_eq!(due[0].due_at.to_string(), "2026-12-02T09:00:00Z");

    let report = accounts.purge().await.expect("purge");
    assert_eq!(report.closed, 1);
    for needle in [
        id.as_str(),
        email,
        "ann.new@example.org",
        "Ann E.",
        "Ann Example",
    ] {
        let found = traces(&accounts.store, needle).await;
        assert!(
            found.is_empty(),
            "{needle:?} survives the purge in {found:?}"
        );
    }
    // The scan can find things: the second account is all there.
    for needle in [other.as_str(), "bo@example.org", "Bo Other"] {
        assert!(
            !traces(&accounts.store, needle).await.is_empty(),
            "{needle:?} lost"
        );
    }
    assert!(env.accounts.profile(&other).await.is_ok());
    // The outbox held the addresses; it is cleared with the account.
    let outbox: Vec<String> = std::fs::read_dir(env.outbox())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(outbox.iter().all(|n| !n.contains(&id)), "{outbox:?}");
    // The rollups still count the first person.
    let day = common::start_time();
    assert_eq!(
        rollup::value_on(&accounts.store, day, Measure::SignUps)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        rollup::value_on(&accounts.store, day, Measure::Closures)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        rollup::value_on(&accounts.store, day, Measure::Purges)
            .await
            .unwrap(),
        1
    );
    let usage_day: jiff::Timestamp = "2026-11-18T12:00:00Z".parse().unwrap();
    assert_eq!(
        rollup::value_on(&accounts.store, usage_day, Measure::MeetingSeconds)
            .await
            .unwrap(),
        600
    );
    // A second run finds nothing more to do.
    assert_eq!(accounts.purge().await.expect("purge").closed, 0);
    assert_not_logged(&[
        email,
        "ann.new@example.org",
        PASSWORD,
        "Ann E.",
        "bo@example.org",
    ]);
});

fn collect_scalars(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(a) => a.iter().for_each(|v| collect_scalars(v, out)),
        Value::Object(o) => o.values().for_each(|v| collect_scalars(v, out)),
        _ => {}
    }
}

on_both_databases!(
    hosted_rooms_last_until_they_end_or_expire,
    |env: Env| async move {
        let accounts = &env.accounts;
        let host = env.verified("host@example.org", "Host", PASSWORD).await;
        let hour = std::time::Duration::from_secs(3600);
        accounts
            .record_hosted_room("room-a", "key-a", &host, hour)
            .await
            .expect("record a");
        accounts
            .record_hosted_room("room-b", "key-b", &host, 2 * hour)
            .await
            .expect("record b");
        let a = accounts
            .hosted_room("room-a")
            .await
            .expect("lookup")
            .expect("room a is open");
        assert_eq!(a.account_id, host);
        assert_eq!(a.host_key_hash, veil_accounts::token::hashed("key-a"));
        assert_eq!(a.expires_at, a.created_at + SignedDuration::from_hours(1));
        assert_eq!(accounts.hosted_room("room-c").await.expect("lookup"), None);
        // Only hashes are stored: neither the room id nor the host key is in any table.
        for needle in ["room-a", "key-a", "room-b", "key-b"] {
            assert!(traces(&accounts.store, needle).await.is_empty(), "{needle}");
        }
        // Ended by its host: gone.
        accounts.forget_hosted_room("room-a").await.expect("forget");
        assert_eq!(accounts.hosted_room("room-a").await.expect("lookup"), None);
        // Expired: not found, and swept at the next creation.
        env.clock.advance(SignedDuration::from_mins(121));
        assert_eq!(accounts.hosted_room("room-b").await.expect("lookup"), None);
        accounts
            .record_hosted_room("room-c", "key-c", &host, hour)
            .await
            .expect("record c");
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM hosted_rooms")
            .fetch_one(accounts.store.pool())
            .await
            .expect("count");
        assert_eq!(rows, 1, "the expired room was swept");
        assert!(
            accounts
                .hosted_room("room-c")
                .await
                .expect("lookup")
                .is_some()
        );
    }
);

on_both_databases!(refused_sign_ups_store_nothing, |env: Env| async move {
    let accounts = &env.accounts;
    env.verified("taken@example.org", "Taken", PASSWORD).await;
    let before = snapshot(&accounts.store).await;
    let base = || sign_up("new@example.org", "New Person", PASSWORD);
    let cases: Vec<(&str, veil_accounts::signup::SignUp)> = vec![
        (
            "age_required",
            veil_accounts::signup::SignUp {
                age_confirmed: false,
                ..base()
            },
        ),
        (
            "policy_required",
            veil_accounts::signup::SignUp {
                accept_policy: false,
                ..base()
            },
        ),
        (
            "weak_password",
            veil_accounts::signup::SignUp {
                password: "short".into(),
                ..base()
            },
        ),
        (
            "weak_password",
            veil_accounts::signup::SignUp {
                password: "1234567890".into(),
                ..base()
            },
        ),
        (
            "password_too_long",
            veil_accounts::signup::SignUp {
                password: "x1".repeat(600),
                ..base()
            },
        ),
        (
            "invalid_email",
            veil_accounts::signup::SignUp {
                email: "not-an-address".into(),
                ..base()
            },
        ),
        (
            "invalid_email",
            veil_accounts::signup::SignUp {
                email: "a@b".into(),
                ..base()
            },
        ),
        (
            "invalid_display_name",
            veil_accounts::signup::SignUp {
                display_name: " ".into(),
                ..base()
            },
        ),
        (
            "email_taken",
            veil_accounts::signup::SignUp {
                email: "Taken@Example.org".into(),
                ..base()
            },
        ),
    ];
    for (code, request) in cases {
        let result = accounts.sign_up(request).await;
        assert_eq!(result.err().map(|e| e.code()), Some(code));
        assert_eq!(
            snapshot(&accounts.store).await,
            before,
            "{code} stored something"
        );
    }
    let files = std::fs::read_dir(env.outbox())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(files, 1, "only the first sign-up mailed anything");
});

on_both_databases!(
    purge_survives_a_failure_at_every_step,
    |env: Env| async move {
        let accounts = &env.accounts;
        let keep = env.verified("keep@example.org", "Keep Me", PASSWORD).await;
        for (n, step) in PurgeStep::ALL.into_iter().enumerate() {
            let email = format!("crash{n}@example.org");
            let id = env.verified(&email, &format!("Crash {n}"), PASSWORD).await;
            let done = accounts
                .log_in(&email, PASSWORD, None)
                .await
                .expect("log in");
            let session = session_of(&env, &done.cookie_value).await.expect("session");
            accounts.close(&session).await.expect("close");
            let before = snapshot(&accounts.store).await;
            match accounts.purge_with_fault(Some(step)).await {
                Err(PurgeError::Injected(s)) => assert_eq!(s, step),
                other => panic!("expected the injected failure, got {other:?}"),
            }
            // All or nothing: the failed run changed no row.
            assert_eq!(
                snapshot(&accounts.store).await,
                before,
                "after failing at {step:?}"
            );
            let report = accounts.purge().await.expect("re-run");
            assert_eq!(report.closed, 1, "{step:?}");
            assert!(traces(&accounts.store, &id).await.is_empty());
            assert!(traces(&accounts.store, &email).await.is_empty());
        }
        let day = common::start_time();
        assert_eq!(
            rollup::value_on(&accounts.store, day, Measure::Purges)
                .await
                .unwrap(),
            PurgeStep::ALL.len() as i64,
            "each purge counted once"
        );
        assert!(accounts.profile(&keep).await.is_ok());
    }
);

on_both_databases!(
    two_purge_workers_purge_each_account_once,
    |env: Env| async move {
        const N: usize = 24;
        let accounts = &env.accounts;
        for n in 0..N {
            let email = format!("many{n}@example.org");
            env.verified(&email, "Many", PASSWORD).await;
            let done = accounts
                .log_in(&email, PASSWORD, None)
                .await
                .expect("log in");
            let session = session_of(&env, &done.cookie_value).await.expect("session");
            accounts.close(&session).await.expect("close");
        }
        let second = env.second_instance(env.config()).await;
        let (a, b) = tokio::join!(accounts.purge(), second.purge());
        let (a, b) = (a.expect("worker a"), b.expect("worker b"));
        assert_eq!(a.closed + b.closed, N as u64, "a {a:?}, b {b:?}");
        if env.backend == Backend::Postgres {
            // SKIP LOCKED lets both make progress (SQLite serialises them instead).
            eprintln!("two workers on PostgreSQL: {} + {}", a.closed, b.closed);
        }
        let day = common::start_time();
        assert_eq!(
            rollup::value_on(&accounts.store, day, Measure::Purges)
                .await
                .unwrap(),
            N as i64
        );
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
            .fetch_one(accounts.store.pool())
            .await
            .unwrap();
        assert_eq!(left, 0);
    }
);

on_both_databases!(
    unverified_sign_ups_expire_after_48_hours,
    |env: Env| async move {
        let accounts = &env.accounts;
        let id = accounts
            .sign_up(sign_up("late@example.org", "Late", PASSWORD))
            .await
            .expect("sign up");
        env.advance(SignedDuration::from_hours(47));
        assert_eq!(accounts.purge().await.unwrap().unverified, 0);
        // The link still works within 48 h… but not after.
        let link = env.link(&id, Purpose::Verify);
        env.advance(SignedDuration::from_hours(2));
        assert!(matches!(
            accounts.verify(&link).await,
            Err(AccountError::InvalidToken)
        ));
        assert_eq!(accounts.purge().await.unwrap().unverified, 1);
        assert!(traces(&accounts.store, "late@example.org").await.is_empty());
        assert!(
            std::fs::read_dir(env.outbox())
                .map(|d| d.count())
                .unwrap_or(0)
                == 0
        );
        let now = env.accounts.now();
        assert_eq!(
            rollup::value_on(&accounts.store, now, Measure::ExpiredUnverified)
                .await
                .unwrap(),
            1
        );
    }
);

on_both_databases!(sessions_end_when_they_should, |env: Env| async move {
    let accounts = &env.accounts;
    let id = env.verified("sam@example.org", "Sam", PASSWORD).await;
    // Rotated at log-in: logging in again from the same browser ends the old id.
    let first = accounts
        .log_in("sam@example.org", PASSWORD, None)
        .await
        .unwrap();
    let second = accounts
        .log_in("sam@example.org", PASSWORD, Some(&first.cookie_value))
        .await
        .unwrap();
    assert_ne!(first.cookie_value, second.cookie_value);
    assert!(session_of(&env, &first.cookie_value).await.is_err());
    let s2 = session_of(&env, &second.cookie_value).await.expect("live");
    // Only the hash is stored.
    assert!(
        traces(&accounts.store, &second.cookie_value)
            .await
            .is_empty()
    );
    // Idle timeout (24 h by default).
    env.advance(SignedDuration::from_hours(23));
    assert!(session_of(&env, &second.cookie_value).await.is_ok());
    env.advance(SignedDuration::from_hours(25));
    assert!(session_of(&env, &second.cookie_value).await.is_err());
    // Absolute timeout (7 days), however busy the session.
    let busy = accounts
        .log_in("sam@example.org", PASSWORD, None)
        .await
        .unwrap();
    for _ in 0..8 {
        env.advance(SignedDuration::from_hours(23));
        let _ = session_of(&env, &busy.cookie_value).await;
    }
    assert!(session_of(&env, &busy.cookie_value).await.is_err());
    // Log out; log out everywhere.
    let a = accounts
        .log_in("sam@example.org", PASSWORD, None)
        .await
        .unwrap();
    let b = accounts
        .log_in("sam@example.org", PASSWORD, None)
        .await
        .unwrap();
    let c = accounts
        .log_in("sam@example.org", PASSWORD, None)
        .await
        .unwrap();
    let sa = session_of(&env, &a.cookie_value).await.unwrap();
    accounts.log_out(&sa).await.unwrap();
    assert!(session_of(&env, &a.cookie_value).await.is_err());
    assert!(session_of(&env, &b.cookie_value).await.is_ok());
    let sb = session_of(&env, &b.cookie_value).await.unwrap();
    assert_eq!(accounts.log_out_everywhere(&sb).await.unwrap(), 2);
    assert!(session_of(&env, &c.cookie_value).await.is_err());
    // A password change ends the other sessions, not this one.
    let d = accounts
        .log_in("sam@example.org", PASSWORD, None)
        .await
        .unwrap();
    let e = accounts
        .log_in("sam@example.org", PASSWORD, None)
        .await
        .unwrap();
    let sd = session_of(&env, &d.cookie_value).await.unwrap();
    accounts
        .change_profile(
            &sd,
            veil_accounts::profile::ProfileChange {
                new_password: Some("another long passphrase".into()),
                current_password: Some(PASSWORD.into()),
                ..Default::default()
            },
        )
        .await
        .expect("password change");
    assert!(session_of(&env, &d.cookie_value).await.is_ok());
    assert!(session_of(&env, &e.cookie_value).await.is_err());
    assert!(matches!(
        accounts.log_in("sam@example.org", PASSWORD, None).await,
        Err(AccountError::InvalidCredentials)
    ));
    assert!(
        accounts
            .log_in("sam@example.org", "another long passphrase", None)
            .await
            .is_ok()
    );
    let _ = (s2, id);
});

on_both_databases!(
    an_ended_trial_can_log_in_export_and_close_but_not_host,
    |env: Env| async move {
        let accounts = &env.accounts;
        env.verified("tia@example.org", "Tia", PASSWORD).await;
        let (session, _) = session_for(&env, "tia@example.org").await;
        assert!(accounts.may_host(&session).await.is_ok());
        env.advance(SignedDuration::from_hours(14 * 24));
        assert!(matches!(
            accounts.may_host(&session).await,
            Err(AccountError::TrialEnded)
        ));
        let (session, _) = session_for(&env, "tia@example.org").await;
        assert!(
            !accounts
                .profile(&session.account_id)
                .await
                .unwrap()
                .can_host
        );
        assert!(accounts.export(&session).await.is_ok());
        assert!(accounts.close(&session).await.is_ok());
    }
);

on_both_databases!(
    a_grace_period_allows_reopening_until_it_ends,
    |mut env: Env| async move {
        let mut config = env.config();
        config.grace_hours = 48;
        env.reopen_with(config).await;
        let accounts = env.accounts.clone();
        env.verified("gus@example.org", "Gus", PASSWORD).await;
        let (session, _) = session_for(&env, "gus@example.org").await;
        let closed = accounts.close(&session).await.unwrap();
        assert_eq!(
            closed.reopen_until.duration_since(closed.closed_at),
            SignedDuration::from_hours(48)
        );
        // Within the grace period nothing is purged, and the person may come back.
        env.advance(SignedDuration::from_hours(24));
        assert_eq!(accounts.purge().await.unwrap().closed, 0);
        let reopen = |accept: bool| veil_accounts::closure::Reopen {
            email: "gus@example.org".into(),
            password: PASSWORD.into(),
            accept_policy: accept,
        };
        assert_eq!(
            accounts.reopen(reopen(false)).await.err().map(|e| e.code()),
            Some("policy_required")
        );
        assert_eq!(accounts.metrics.account_deletions_pending.get(), 1);
        accounts.reopen(reopen(true)).await.expect("reopen");
        // Nothing awaits deletion any more, and the gauge says so at once.
        assert_eq!(accounts.metrics.account_deletions_pending.get(), 0);
        let (session, _) = session_for(&env, "gus@example.org").await;
        // Closed again, and this time the grace period runs out.
        accounts.close(&session).await.unwrap();
        env.advance(SignedDuration::from_hours(49));
        assert!(matches!(
            accounts.reopen(reopen(true)).await,
            Err(AccountError::ReopenTooLate)
        ));
        assert_eq!(accounts.purge().await.unwrap().closed, 1);
        assert!(traces(&accounts.store, "gus@example.org").await.is_empty());
    }
);

on_both_databases!(password_reset_by_mailed_link, |env: Env| async move {
    let accounts = &env.accounts;
    let id = env.verified("rae@example.org", "Rae", PASSWORD).await;
    let (_, cookie) = session_for(&env, "rae@example.org").await;
    // Unknown addresses get the same answer and no mail.
    accounts
        .request_password_reset("nobody@example.org")
        .await
        .unwrap();
    accounts
        .request_password_reset("rae@example.org")
        .await
        .unwrap();
    let link = env.link(&id, Purpose::PasswordReset);
    assert_eq!(
        accounts
            .reset_password(&link, "short")
            .await
            .err()
            .map(|e| e.code()),
        Some("weak_password")
    );
    accounts
        .reset_password(&link, "a brand new passphrase")
        .await
        .expect("reset");
    assert!(
        session_of(&env, &cookie).await.is_err(),
        "sessions end on reset"
    );
    assert!(matches!(
        accounts
            .reset_password(&link, "yet another passphrase")
            .await,
        Err(AccountError::InvalidToken)
    ));
    assert!(
        accounts
            .log_in("rae@example.org", "a brand new passphrase", None)
            .await
            .is_ok()
    );
});

on_both_databases!(
    old_password_hashes_are_upgraded_at_log_in,
    |env: Env| async move {
        let accounts = &env.accounts;
        let id = env.verified("old@example.org", "Old", PASSWORD).await;
        let weak = veil_accounts::password::hash(
            PASSWORD,
            veil_accounts::password::Cost {
                memory_kib: 8 * 1024,
                passes: 1,
                lanes: 1,
            },
        )
        .unwrap();
        sqlx::query("UPDATE accounts SET password_hash = $1 WHERE id = $2")
            .bind(&weak)
            .bind(&id)
            .execute(accounts.store.pool())
            .await
            .unwrap();
        accounts
            .log_in("old@example.org", PASSWORD, None)
            .await
            .expect("log in");
        let stored: String = sqlx::query_scalar("SELECT password_hash FROM accounts WHERE id = $1")
            .bind(&id)
            .fetch_one(accounts.store.pool())
            .await
            .unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
    }
);

on_both_databases!(
    deletion_gauges_track_pending_and_overdue,
    |env: Env| async move {
        let accounts = &env.accounts;
        env.verified("gia@example.org", "Gia", PASSWORD).await;
        let (session, _) = session_for(&env, "gia@example.org").await;
        accounts.close(&session).await.unwrap();
        // The closure itself updates the gauges, before any purge run.
        assert_eq!(env.metrics.account_deletions_pending.get(), 1);
        assert_eq!(env.metrics.account_deletions_overdue.get(), 0);
        // Were the purge never to run: overdue after the deadline.
        env.advance(SignedDuration::from_hours(10 * 24));
        accounts.refresh_deletion_gauges().await.unwrap();
        assert_eq!(env.metrics.account_deletions_overdue.get(), 1);
        assert!(env.metrics.account_purge_lag_seconds.get() >= 10.0 * 24.0 * 3600.0);
        accounts.purge().await.unwrap();
        assert_eq!(env.metrics.account_deletions_pending.get(), 0);
        assert_eq!(env.metrics.account_deletions_overdue.get(), 0);
        assert_eq!(env.metrics.account_purge_lag_seconds.get(), 0.0);
    }
);
