//! `store`: the only crate that knows SQL (BRIEF §3 invariant 7).
//!
//! One interface, two real databases: SQLite (embedded default, one process)
//! and PostgreSQL (several `b24gate serve` instances sharing the work). Queries
//! are runtime queries — no database is needed to compile — written once where
//! both dialects agree (`$1` placeholders work in both) and per dialect where
//! they do not. Migrations are embedded per dialect under `migrations/`.
//!
//! Map:
//! - [`Store`]: opening, migrating, the pools; [`Backend`].
//! - [`crypto::Keyring`]: tokens sealed with XChaCha20-Poly1305, application
//!   tokens kept only as HMAC-SHA256.
//! - [`PortalStatus`]: the status machine, enforced in [`Store::set_status`].
//! - `portals`: identity, endpoints, profile, install/uninstall/purge.
//! - `credentials`: sealed OAuth tokens, cross-process refresh lock.
//! - `audit`: the append-only audit log (survives every purge).
//! - `bindings`: expected and actual bindings — the binding matrix.
//! - `progress`: migrations applied, offline drain reservations, parked calls.
//! - `inbox`: every acknowledged delivery, appended in group commits.
//! - `jobs`: the job queue (claims, leases, rescue, retries, dead letter).
//! - `rate`: the shared per-portal leaky bucket (GCRA in one upsert).
//! - `leases`: named leases for work that must run in one place at a time.
//!
//! Every function takes `now` (Unix milliseconds) from the caller, so tests
//! control time and nothing here reads a clock.

pub mod audit;
pub mod bindings;
pub mod credentials;
pub mod crypto;
pub mod inbox;
pub mod jobs;
mod leases;
pub mod portals;
pub mod progress;
mod rate;
pub mod status;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use audit::{AuditEntry, AuditFilter, NewAudit};
pub use bindings::{BindingKey, BindingRecord, BringUpRecord, MatrixRow, ProbedProfile};
pub use credentials::{Credentials, TokenSet};
pub use crypto::{CryptoError, Keyring};
pub use inbox::{Appended, InboxEvent, NewInboxEvent};
pub use jobs::{Enqueued, FailOutcome, Job, JobFilter, NewJob};
pub use portals::{InstallOutcome, Portal, TokenCheck, VerifiedInstall};
pub use progress::{DrainState, DrainUpdate, MigrationState, PendingCall};
pub use rate::RateRequest;
pub use status::PortalStatus;

/// Unix time in milliseconds, as every timestamp column holds it.
pub type UnixMillis = i64;

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Everything that can go wrong in the store. Messages never contain a
/// secret: sqlx errors carry SQL text, never bound values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL: expected sqlite:… or postgres://…")]
    BadUrl,
    #[error("portal {0} not found")]
    PortalNotFound(String),
    #[error("portal {member_id}: invalid status transition {from} -> {to}")]
    InvalidTransition {
        member_id: String,
        from: PortalStatus,
        to: PortalStatus,
    },
    #[error("portal {member_id} is {status}: {action} is not allowed")]
    NotAllowed {
        member_id: String,
        status: PortalStatus,
        action: &'static str,
    },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("corrupt value in {table}.{column}")]
    Corrupt {
        table: &'static str,
        column: &'static str,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Pool sizes and timeouts. The defaults suit one gateway process.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// PostgreSQL connections per process (× instances must fit `max_connections`).
    pub pg_max_connections: u32,
    /// SQLite read connections (writes always go through one connection).
    pub sqlite_readers: u32,
    /// How long SQLite waits on a lock held by another process.
    pub busy_timeout: Duration,
    /// How long a portal's status and token hash may be answered from memory
    /// by [`Store::check_app_token`] before the database is read again; zero
    /// turns the cache off. Changes made through this handle (or its clones)
    /// take effect at once; this bounds how long a change made by another
    /// process goes unseen. See `portals::PortalCache`.
    pub portal_cache_ttl: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            pg_max_connections: 10,
            sqlite_readers: 4,
            busy_timeout: Duration::from_secs(5),
            portal_cache_ttl: portals::DEFAULT_PORTAL_CACHE_TTL,
        }
    }
}

#[derive(Clone)]
pub(crate) enum Db {
    /// One writer connection serialises writes in this process (and makes
    /// group commit possible); writes still begin `IMMEDIATE` so another
    /// process waits on `busy_timeout` instead of failing with
    /// `SQLITE_BUSY_SNAPSHOT` (analogs §B.2).
    Sqlite {
        write: SqlitePool,
        read: SqlitePool,
    },
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the right pool of either backend. The body
/// is type-checked once per backend, so the same SQL and binds serve both.
macro_rules! with_pool {
    ($store:expr, read, |$p:ident| $body:expr) => {
        match &$store.db {
            $crate::Db::Sqlite { read: $p, .. } => $body,
            $crate::Db::Postgres($p) => $body,
        }
    };
    ($store:expr, write, |$p:ident| $body:expr) => {
        match &$store.db {
            $crate::Db::Sqlite { write: $p, .. } => $body,
            $crate::Db::Postgres($p) => $body,
        }
    };
}
pub(crate) use with_pool;

/// Runs `$body` inside a write transaction of either backend (`$tx` is the
/// transaction; use `&mut *$tx` as the executor). The body is an async block
/// evaluating to a `Result`, so `return` leaves the block, not the function:
/// the transaction commits on `Ok` (early returns included) and rolls back on
/// `Err`.
macro_rules! with_tx {
    ($store:expr, |$tx:ident| $body:expr) => {
        match &$store.db {
            $crate::Db::Sqlite { write, .. } => {
                let mut $tx = write.begin_with("BEGIN IMMEDIATE").await?;
                let out = async { $body }.await;
                if out.is_ok() {
                    $tx.commit().await?;
                }
                out
            }
            $crate::Db::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                let out = async { $body }.await;
                if out.is_ok() {
                    $tx.commit().await?;
                }
                out
            }
        }
    };
}
pub(crate) use with_tx;

/// A handle on the database. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Db,
    pub(crate) keys: Keyring,
    /// Portal lookups of the hot path, shared by every clone of this handle.
    pub(crate) portal_cache: std::sync::Arc<portals::PortalCache>,
    /// What it was opened with, for [`Store::reopen`].
    url: std::sync::Arc<(String, OpenOptions)>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish()
    }
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Store {
    /// Opens `url` (`sqlite:path`, `sqlite://path`, `postgres://…`). Does not
    /// migrate; call [`Store::migrate`].
    pub async fn open(url: &str, keys: Keyring, opts: &OpenOptions) -> Result<Store> {
        let db = if url.starts_with("sqlite:") {
            let base = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // An acknowledged event must survive power loss (issue
                // "Runtime": acknowledged means fsynced).
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(opts.busy_timeout)
                .foreign_keys(true);
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let write = SqlitePoolOptions::new()
                .max_connections(1)
                // A task cancelled between `BEGIN IMMEDIATE` and the moment
                // its transaction handle existed hands the connection back
                // still inside the transaction, holding SQLite's write lock
                // for good (every other writer then waits out its busy
                // timeout). Roll back whatever a connection brings back
                // before it is used again; outside a transaction this is a
                // no-op error, ignored.
                .before_acquire(|conn, _| {
                    Box::pin(async move {
                        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                        Ok(true)
                    })
                })
                .connect_with(base.clone())
                .await?;
            let read = if in_memory {
                write.clone()
            } else {
                SqlitePoolOptions::new()
                    .max_connections(opts.sqlite_readers.max(1))
                    .connect_with(base.read_only(true))
                    .await?
            };
            Db::Sqlite { write, read }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(opts.pg_max_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            Db::Postgres(pool)
        } else {
            return Err(StoreError::BadUrl);
        };
        Ok(Store {
            db,
            keys,
            portal_cache: std::sync::Arc::new(portals::PortalCache::new(opts.portal_cache_ttl)),
            url: std::sync::Arc::new((url.to_owned(), opts.clone())),
        })
    }

    /// A handle on the same database with pools (and a portal cache) of its
    /// own, as another process would open it.
    pub async fn reopen(&self) -> Result<Store> {
        let (url, opts) = &*self.url;
        Store::open(url, self.keys.clone(), opts).await
    }

    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite { .. } => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    fn migrator(&self) -> &'static sqlx::migrate::Migrator {
        match self.db {
            Db::Sqlite { .. } => &SQLITE_MIGRATIONS,
            Db::Postgres(_) => &POSTGRES_MIGRATIONS,
        }
    }

    /// Applies every embedded migration not yet applied; returns how many ran.
    /// Safe to run concurrently from several processes (sqlx takes a lock).
    pub async fn migrate(&self) -> Result<usize> {
        let before = self.applied_migrations().await?;
        with_pool!(self, write, |p| self.migrator().run(p).await)?;
        Ok(self.applied_migrations().await?.saturating_sub(before))
    }

    /// Migrations embedded in this binary and not yet applied to the database.
    pub async fn pending_migrations(&self) -> Result<usize> {
        let applied = self.applied_migrations().await?;
        Ok(self.migrator().iter().count().saturating_sub(applied))
    }

    async fn applied_migrations(&self) -> Result<usize> {
        let exists: bool = match &self.db {
            Db::Sqlite { read, .. } => sqlx::query_scalar(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            )
            .fetch_one(read)
            .await?,
            Db::Postgres(p) => sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(p)
                .await?,
        };
        if !exists {
            return Ok(0);
        }
        let n: i64 = with_pool!(self, read, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM _sqlx_migrations WHERE success"
        )
        .fetch_one(p)
        .await)?;
        Ok(n as usize)
    }

    /// Cheap liveness probe for `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        with_pool!(self, read, |p| sqlx::query("SELECT 1")
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Closes the pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite { write, read } => {
                write.close().await;
                read.close().await;
            }
            Db::Postgres(p) => p.close().await,
        }
    }
}
