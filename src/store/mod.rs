//! The database: one [`Store`] over SQLite (embedded default) or PostgreSQL
//! (several gateway replicas), with the same queries for both through sqlx's
//! `Any` driver. Uniqueness lives in the schema, so racing writers cannot
//! both win; multi-step changes are one transaction.

mod accounts;
mod credentials;
mod enrollment;
mod infra;
mod projects;
mod revocations;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyPool, Transaction};

pub use accounts::{Account, KeyRecord};
pub use credentials::{ClusterCredential, StoredCredential};
pub use enrollment::{AskingNode, KeyHolder};
pub use infra::{Cluster, ClusterConfigChange, Node, Volume};
pub use projects::{Member, Membership, ProjectDeleted, ProjectSummary};
pub use revocations::{ChannelFacts, Revocation};

/// Which database is behind the store; a few statements differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What can go wrong in the store, sorted by what the user should do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Not enough free nodes, or a rule such as "keep one admin".
    #[error("{0}")]
    Refused(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A row [`Store::lock`] can take.
#[derive(Clone, Copy)]
enum Row {
    Project,
    Cluster,
}

/// True when `e` is a unique-constraint violation, on either backend.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Maps a unique violation to a Conflict with `msg`, passing other errors on.
fn conflict_on_unique(e: sqlx::Error, msg: impl FnOnce() -> String) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict(msg())
    } else {
        StoreError::Db(e)
    }
}

/// How long a key added over SSH waits for its holder's first login, in ms.
pub const PENDING_KEY_MAX_AGE_MS: i64 = 3_600_000;

/// Milliseconds since the Unix epoch: the one time format in the database.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Formats a database time for people (UTC, RFC 3339, seconds).
pub fn format_time(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Store {
    /// Connects to `url` and brings the schema up to date. A SQLite file
    /// (and its folder) is created when missing.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Store> {
        use anyhow::Context;
        install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            let file = path.split('?').next().unwrap_or_default();
            if let Some(dir) = std::path::Path::new(file).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create database folder {}", dir.display()))?;
            }
            // Whoever can read the database learns every account and key,
            // and whoever can write it owns the gateway: refuse one that
            // group or others can read, as the host key is refused.
            crate::secret_file::refuse_shared(std::path::Path::new(file), "database file")?;
            // Created private; SQLite gives its -wal and -shm files the same mode.
            if !file.is_empty() && file != ":memory:" && !std::path::Path::new(file).exists() {
                use std::os::unix::fs::OpenOptionsExt;
                let created = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(file);
                if let Err(e) = created
                    && e.kind() != std::io::ErrorKind::AlreadyExists
                {
                    return Err(e)
                        .with_context(|| format!("cannot create the database file {file}"));
                }
            }
            let url = if path.contains("mode=") {
                url.to_string()
            } else if path.contains('?') {
                format!("{url}&mode=rwc")
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else {
            (Backend::Postgres, url.to_string())
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .with_context(|| format!("cannot connect to the database at {}", redact_url(&url)))?;
        let store = Store { pool, backend };
        if backend == Backend::Sqlite {
            // WAL lets readers (every login) proceed while a writer commits;
            // the mode is stored in the file, so once is enough.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&store.pool)
                .await
                .context("cannot switch the SQLite database to WAL mode")?;
        }
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        // Read first: the migrator's own bookkeeping takes SQLite's write
        // lock, which an operator command (say `audit`) could wait for
        // behind a gateway that commits without pause.
        if !store.schema_is_current(migrator).await {
            migrator
                .run(&store.pool)
                .await
                .context("cannot bring the database schema up to date")?;
        }
        Ok(store)
    }

    /// True when every migration is applied, by a read-only query; false
    /// when unsure (no bookkeeping table yet, or a query error).
    async fn schema_is_current(&self, migrator: &sqlx::migrate::Migrator) -> bool {
        let Some(newest) = migrator.iter().map(|m| m.version).max() else {
            return true;
        };
        let applied: Result<(i64, i64), _> = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success",
        )
        .fetch_one(&self.pool)
        .await;
        matches!(applied, Ok((count, max)) if max == newest && count == migrator.iter().count() as i64)
    }

    /// Cheap liveness probe for health checks and fail-closed decisions.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Starts a write transaction. On SQLite it takes the write lock up front
    /// (`BEGIN IMMEDIATE`) so two writers queue instead of one failing on
    /// lock upgrade.
    async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Serialises changes to one row's dependants across transactions on
    /// PostgreSQL (SQLite already holds the database write lock): a
    /// project's memberships and clusters, or a cluster's API server and
    /// credential.
    async fn lock(&self, tx: &mut Transaction<'static, Any>, row: Row, id: i64) -> Result<()> {
        if self.backend == Backend::Postgres {
            let sql = match row {
                Row::Project => "SELECT id FROM projects WHERE id = $1 FOR UPDATE",
                Row::Cluster => "SELECT id FROM clusters WHERE id = $1 FOR UPDATE",
            };
            sqlx::query(sql).bind(id).execute(&mut **tx).await?;
        }
        Ok(())
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// A database URL fit for an error message: the password is hidden.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or_default();
            format!("{}://{}:***@{}", &url[..s], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            super::redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redact_url("sqlite:///x/y.db"), "sqlite:///x/y.db");
    }
}
