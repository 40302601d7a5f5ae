//! Fault injection: the PostgreSQL server restarted under the accounts service, once
//! during a stream of sign-ups and once during a purge. No sign-up that was
//! acknowledged is lost, no account is ever half purged, every account is purged
//! exactly once, and the service works again without a restart of its own.
//!
//! Restarts the cluster that serves 127.0.0.1:5432 (`pg_lsclusters`, `pg_ctlcluster …
//! restart -m fast`; the tests run as root). This file holds one test, and cargo runs
//! test binaries one at a time, so no other test is using PostgreSQL meanwhile.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use veil_accounts::store::{Backend, Store};

use common::*;

const PASSWORD: &str = "a long enough passphrase";

/// Restarts the PostgreSQL cluster listening on port 5432 and waits until it answers.
fn restart_postgres() {
    let clusters = Command::new("pg_lsclusters")
        .arg("--no-header")
        .output()
        .expect("pg_lsclusters (postgresql-common; the test command installs PostgreSQL)");
    let listing = String::from_utf8_lossy(&clusters.stdout);
    let (version, name) = listing
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"5432"))
        .map(|f| (f[0].to_string(), f[1].to_string()))
        .unwrap_or_else(|| panic!("no PostgreSQL cluster on port 5432: {listing}"));
    let status = Command::new("pg_ctlcluster")
        .args([&version, &name, "restart", "-m", "fast"])
        .status()
        .expect("pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {version} {name} restart");
    let started = Instant::now();
    while !Command::new("pg_isready")
        .args(["-h", "127.0.0.1", "-p", "5432", "-q"])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "PostgreSQL did not come back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn rows(store: &Store, table: &str, column: &str, id: &str) -> i64 {
    // A failed count (the server still restarting) is retried by the caller's loop.
    store
        .count_containing(table, column, id)
        .await
        .expect("count rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_postgres_loses_no_acknowledged_sign_up_and_half_purges_nothing() {
    run(Backend::Postgres, |env: Env| async move {
        let accounts = env.accounts.clone();

        // 1. Sign-ups keep coming while the server restarts.
        let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn({
            let (accounts, acknowledged, refused, stop) = (
                accounts.clone(),
                acknowledged.clone(),
                refused.clone(),
                stop.clone(),
            );
            async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let email = format!("person{i}@example.org");
                    match accounts.sign_up(sign_up(&email, "P", PASSWORD)).await {
                        Ok(_) => acknowledged.lock().expect("list").push(email),
                        Err(_) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        });
        let count = |list: &Arc<Mutex<Vec<String>>>| list.lock().expect("list").len();
        let deadline = Instant::now() + Duration::from_secs(60);
        while count(&acknowledged) < 3 {
            assert!(Instant::now() < deadline, "no sign-up before the restart");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::task::spawn_blocking(restart_postgres)
            .await
            .expect("restart");
        let after_restart = count(&acknowledged);
        while count(&acknowledged) < after_restart + 3 {
            assert!(
                Instant::now() < deadline,
                "sign-ups did not resume after the restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Relaxed);
        writer.await.expect("writer");
        let acknowledged = acknowledged.lock().expect("list").clone();
        for email in &acknowledged {
            assert_eq!(
                rows(&accounts.store, "accounts", "email", email).await,
                1,
                "acknowledged sign-up {email} is lost"
            );
        }
        println!(
            "sign-ups: {} acknowledged and all kept, {} refused while the server restarted",
            acknowledged.len(),
            refused.load(Ordering::Relaxed)
        );

        // 2. A purge running while the server restarts.
        let mut closed = Vec::new();
        for i in 0..12 {
            let email = format!("closing{i}@example.org");
            let id = env.verified(&email, "C", PASSWORD).await;
            let login = accounts
                .log_in(&email, PASSWORD, None)
                .await
                .expect("log in");
            let session = session_from_cookie(&accounts, &login.cookie_value)
                .await
                .expect("session");
            accounts.close(&session).await.expect("close");
            closed.push(id);
        }
        let restart = tokio::task::spawn_blocking(restart_postgres);
        let mut purged = 0;
        let mut failed_runs = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match accounts.purge().await {
                Ok(report) => {
                    purged += report.closed;
                    if restart.is_finished() && report.closed == 0 {
                        break;
                    }
                }
                Err(_) => failed_runs += 1,
            }
            // Whatever the server's state, an account is all there or all gone.
            for id in &closed {
                let Ok(account) = accounts.store.count_containing("accounts", "id", id).await
                else {
                    continue;
                };
                let Ok(request) = accounts
                    .store
                    .count_containing("deletion_requests", "account_id", id)
                    .await
                else {
                    continue;
                };
                assert_eq!(account, request, "account {id} is half purged");
            }
            assert!(Instant::now() < deadline, "the purge did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        restart.await.expect("restart");
        // Nothing names a closed account any more.
        for id in &closed {
            for (table, column) in accounts.store.text_columns().await.expect("catalog") {
                let n = rows(&accounts.store, &table, &column, id).await;
                assert_eq!(n, 0, "{table}.{column} still names purged account {id}");
            }
        }
        // A run that failed midway does not report what it had already committed, and a
        // commit whose answer the restart cut off is not counted either; but no account
        // can be purged twice: the counter never exceeds the accounts closed.
        let counted = env
            .metrics
            .account_purges
            .with_label_values(&["closed"])
            .get();
        assert!(
            purged <= counted && counted <= closed.len() as u64,
            "{purged} purges reported, {counted} counted, {} accounts closed",
            closed.len()
        );
        println!(
            "purge: all {} accounts gone after the restart ({purged} reported by runs that \
             completed, {counted} counted, {failed_runs} runs failed while it was down)",
            closed.len()
        );
        // The acknowledged sign-ups are still there after the second restart too.
        for email in &acknowledged {
            assert_eq!(rows(&accounts.store, "accounts", "email", email).await, 1);
        }
    })
    .await;
}
