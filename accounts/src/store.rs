//! Where accounts are kept: one sqlx pool over SQLite (the embedded default, a file
//! under `./data`) or PostgreSQL, the schema migrations, and the catalog queries the
//! privacy tests use to scan every table. Queries are checked at run time, written in
//! the SQL both databases share, with `$n` placeholders (SQLite accepts them too).

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Connection, Row};

/// Which database a store talks to; a few statements differ (locking, catalog).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL (expected sqlite://… or postgres://…)")]
    Url,
    #[error("cannot create the database folder {0}: {1}")]
    Folder(String, std::io::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the database schema is newer ({found}) than this Veil knows ({known})")]
    SchemaTooNew { found: i64, known: i64 },
}

/// Schema migrations, applied in order, each in its own transaction.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "accounts",
        include_str!("../migrations/0001_accounts.sql"),
    ),
    (
        2,
        "hosted_rooms",
        include_str!("../migrations/0002_hosted_rooms.sql"),
    ),
];

/// A connection pool with its backend.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens (creating when missing) the database at `url` and brings its schema up
    /// to date.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            let file = path.split('?').next().unwrap_or(path);
            if let Some(dir) = Path::new(file)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Folder(dir.display().to_string(), e))?;
            }
            let url = if path.contains("mode=") {
                url.to_string()
            } else if path.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::Url);
        };
        let pool = AnyPoolOptions::new()
            // SQLite has one writer at a time anyway; a few readers beside it suffice.
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 10,
            })
            .acquire_timeout(Duration::from_secs(10))
            // When the disk is full (or on an I/O error) SQLite rolls the transaction
            // back by itself; sqlx's own ROLLBACK then fails and the connection keeps
            // believing it is inside a transaction, so every later `BEGIN IMMEDIATE`
            // on it would fail and the pool would stay broken after space is freed.
            // Such a connection is closed and replaced instead of being handed out
            // (the release already flushed any rollback still queued on it).
            .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
            .connect(&url)
            .await?;
        if backend == Backend::Sqlite {
            // WAL lets readers proceed beside the writer; it is a property of the file.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let store = Store { pool, backend };
        store.migrate().await?;
        Ok(store)
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A write transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`), so two writers wait for each other instead of failing on upgrade.
    pub async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY,
                name TEXT NOT NULL
            )",
        )
        .execute(&self.pool)
        .await?;
        let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
        for (version, name, sql) in MIGRATIONS {
            let mut tx = self.write().await?;
            if self.backend == Backend::Postgres {
                // Two services starting at once must not both apply a migration.
                sqlx::query("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await?;
            }
            let found: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
                    .fetch_one(&mut *tx)
                    .await?;
            let found = found.unwrap_or(0);
            if found > known {
                return Err(StoreError::SchemaTooNew { found, known });
            }
            if found >= *version {
                continue;
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)")
                .bind(*version)
                .bind(*name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Every (table, column) of the schema that can hold text or bytes, read from the
    /// database's own catalog, so a scan covers tables added later without edits.
    pub async fn text_columns(&self) -> Result<Vec<(String, String)>, sqlx::Error> {
        let mut out = Vec::new();
        match self.backend {
            Backend::Postgres => {
                let rows = sqlx::query(
                    "SELECT CAST(table_name AS TEXT), CAST(column_name AS TEXT) FROM information_schema.columns
                     WHERE table_schema = current_schema()
                       AND data_type IN ('text', 'character varying', 'character', 'bytea', 'json', 'jsonb')
                     ORDER BY table_name, column_name",
                )
                .fetch_all(&self.pool)
                .await?;
                for row in rows {
                    out.push((row.try_get(0)?, row.try_get(1)?));
                }
            }
            Backend::Sqlite => {
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
                )
                .fetch_all(&self.pool)
                .await?;
                for table in tables {
                    // SQLite stores any value in any column: every column is scanned.
                    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SELECT name FROM pragma_table_info('{table}')"
                    )))
                    .fetch_all(&self.pool)
                    .await?;
                    for row in rows {
                        out.push((table.clone(), row.try_get(0)?));
                    }
                }
            }
        }
        Ok(out)
    }

    /// How many rows of `table` hold `needle` anywhere in `column` (cast to text).
    /// For the privacy scans; `table` and `column` come from [`Store::text_columns`].
    pub async fn count_containing(
        &self,
        table: &str,
        column: &str,
        needle: &str,
    ) -> Result<i64, sqlx::Error> {
        // Case-sensitive substring search; callers pass the forms they stored.
        let test = match self.backend {
            Backend::Postgres => format!("strpos(CAST(\"{column}\" AS TEXT), $1) > 0"),
            Backend::Sqlite => format!("instr(CAST(\"{column}\" AS TEXT), $1) > 0"),
        };
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM \"{table}\" WHERE {test}"
        )))
        .bind(needle)
        .fetch_one(&self.pool)
        .await
    }
}
