//! # driver-postgres
//!
//! The PostgreSQL driver of the kernel storage subsystem: one [`PostgresDriver`] implements
//! [`StorageDriver`](kernel_core::StorageDriver), [`EventStore`](kernel_core::EventStore),
//! [`Lock`](kernel_core::Lock) and [`RateLimiter`](kernel_core::RateLimiter) over one
//! deadpool-postgres pool, with the schema and its SQL functions in this crate's `migrations/`
//! folder (embedded, run by [`migrations::Migrator`] or `kernelctl migrate`, which also run
//! an application's own migrations in a version space of their own).
//!
//! * Documents: one table keyed `(namespace, key)` under `COLLATE "C"`, JSONB values; writes
//!   and batches are single calls of SQL functions (atomic, one round trip); queries are
//!   translated to parameterised SQL with the exact semantics of [`kernel_core::query`].
//! * Events: appends that arrive together are written in one transaction (group commit), with
//!   no lock across streams; a sequencer pass gives global positions only to events of
//!   transactions older than every running one, so readers never skip a late commit (see
//!   `docs/postgres.md`). Subscriptions pull pages and wake on LISTEN/NOTIFY received on a
//!   dedicated connection that reconnects by itself.
//! * Locks: a lease table with a per-key fencing counter. Rate limits: GCRA in SQL.
//! * Operation ids (`write_once`, `commit_once`): a record per id in `kernel_operations`,
//!   claimed first and written in the same transaction as the write.
//! * Poolers ([`Pooler`]): direct, or through PgBouncer / Supavisor in session mode, or in
//!   transaction mode with unnamed statements only, no session setting and LISTEN on a direct
//!   [`PostgresConfig::listen_url`]; what cannot work there is refused at connect (`Config`).
//! * Data-loss detection: a generation marker row and the highest position seen; a database
//!   that was replaced or went back refuses appends, locks and subscriptions until
//!   [`PostgresDriver::acknowledge_data_loss`].
//!
//! ```no_run
//! # async fn demo() -> kernel_core::Result<()> {
//! use driver_postgres::{PostgresConfig, PostgresDriver};
//! use kernel_core::{PutOptions, StorageDriver};
//!
//! let driver = PostgresDriver::connect(PostgresConfig::new("postgres://postgres@127.0.0.1/app")).await?;
//! driver.put("users", "alice", serde_json::json!({"age": 30}), PutOptions::new()).await?;
//! driver.shutdown().await;
//! # Ok(()) }
//! ```

pub mod advisory;
pub mod codes;
mod config;
mod error;
mod events;
mod generation;
mod indexes;
mod jsonb;
mod listener;
mod lock;
pub mod migrations;
mod operations;
mod rate_limit;
mod rows;
mod sequencer;
mod sql;
mod statement;
mod storage;
mod tenancy;
pub mod tls;
mod transaction;
mod writer;

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, QueueMode, RecyclingMethod, Runtime,
};
use kernel_core::subscription::HeadSignal;
use kernel_core::{Error, ErrorCode, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{Pooler, PostgresConfig, Tenancy};
pub use error::classify_sqlstate;
pub use kernel_core::redact::redact_url;

use crate::error::BACKEND;

/// The PostgreSQL driver: documents, events, locks and rate limits over one connection pool.
///
/// Cheap to clone (an `Arc` inside); every clone shares the pool and the listener.
#[derive(Clone)]
pub struct PostgresDriver {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    config: PostgresConfig,
    head: Arc<watch::Sender<HeadSignal>>,
    shutdown: watch::Sender<bool>,
    listener: Mutex<Option<JoinHandle<()>>>,
    sequencer: sequencer::Sequencer,
    writer: writer::AppendWriter,
    /// Operations recorded by this driver, which paces the purge of expired ones.
    operations: AtomicU64,
    /// The marker and head this driver expects: data-loss detection.
    generation: Arc<generation::Generation>,
    /// Prepared and cached, or unnamed through a transaction pooler.
    statements: statement::Statements,
    /// The declared field indexes, per namespace.
    indexes: indexes::IndexCache,
    /// Whether the connected role may create indexes on the kernel's tables (owns them).
    can_index: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The listener holds no reference to the driver; tell it to stop with it.
        self.shutdown.send_replace(true);
    }
}

impl PostgresDriver {
    /// Connects, checks the server answers, runs pending migrations when
    /// [`PostgresConfig::migrate_on_boot`] is set, and starts the notification listener.
    ///
    /// Fails loudly, naming the backend: `Config` for a malformed URL or bad settings (and for
    /// refused credentials or a missing database), `Unavailable` when no server answers, and
    /// the migration error when the schema cannot be brought up to date.
    pub async fn connect(config: PostgresConfig) -> Result<PostgresDriver> {
        let (pg, tls) = config.pg_config()?;
        let manager = Manager::from_config(
            pg.clone(),
            tls.connector(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let builder = Pool::builder(manager)
            .max_size(config.pool_size)
            // The most recently used connection first: its server process is awake with warm
            // caches. Rotating through every pooled connection (FIFO, the default) measured
            // about 0.35 ms slower per append on an idle server.
            .queue_mode(QueueMode::Lifo)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.pool_wait_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout));
        // Through a session pooler, which refuses startup `options`, the statement timeout is
        // set on each new connection; the session keeps it until the driver disconnects.
        let builder = if config.pooler == Pooler::Session {
            builder.post_create(session_settings(config.statement_timeout_ms()))
        } else {
            builder
        };
        let statements = if config.pooler == Pooler::Transaction {
            statement::Statements::Unnamed
        } else {
            statement::Statements::Cached
        };
        let listen = config.listen_config()?;
        let pool = builder.build().map_err(|e| {
            Error::config(
                "postgres.pool_size",
                format!("cannot build the postgres pool: {e}"),
            )
            .with_context("backend", BACKEND)
        })?;
        let client = pool.get().await.map_err(|e| {
            // A TLS failure says which (certificate, name, no TLS) rather than "unavailable".
            if let deadpool_postgres::PoolError::Backend(backend) = &e {
                if let Some(err) = tls::connect_error(backend, &tls::host_of(&pg)) {
                    return err.with_context("url", config.redacted_url());
                }
            }
            let err = error::pool(e, config.pool_size);
            let err = if err.code() == ErrorCode::Timeout {
                Error::unavailable(format!(
                    "postgres did not answer within the connect timeout of {} ms",
                    config.connect_timeout.as_millis()
                ))
                .with_source(err)
            } else {
                err
            };
            err.with_context("backend", BACKEND)
                .with_context("url", config.redacted_url())
        })?;
        if config.pooler == Pooler::Transaction {
            check_server_statement_timeout(&client, &config)
                .await
                .map_err(|e| e.with_context("url", config.redacted_url()))?;
        }
        let migrator = migrations::Migrator::new();
        if config.migrate_on_boot {
            migrator.up(&client).await?;
        } else if !migrator.is_current(&client).await? {
            tracing::warn!(
                url = %config.redacted_url(),
                "the postgres schema is not up to date and migrate_on_boot is off: run `kernelctl migrate up`"
            );
        }
        tenancy::check(&client, config.tenancy, config.migrate_on_boot)
            .await
            .map_err(|e| e.with_context("url", config.redacted_url()))?;
        let can_index = indexes::may_create(&client).await?;
        let rls = config.tenancy == Tenancy::Rls;
        let generation = Arc::new(generation::Generation::default());
        if generation.adopt(&client).await?.is_none() {
            tracing::warn!(
                url = %config.redacted_url(),
                "the postgres schema has no kernel_generation table: data-loss detection is off \
                 until `kernelctl migrate up` runs and the driver reconnects"
            );
        }
        drop(client);
        let (head, _) = watch::channel(HeadSignal::default());
        let head = Arc::new(head);
        let (shutdown, shutdown_rx) = watch::channel(false);
        // LISTEN on `listen_url` when set (a direct connection next to a transaction pooler).
        let (mut listener_pg, listener_tls) = listen.unwrap_or((pg, tls));
        listener_pg.application_name(format!("{}-listener", config.application_name));
        let listener = listener::spawn(listener::ListenerSetup {
            pg: listener_pg,
            tls: listener_tls,
            pool: pool.clone(),
            pool_size: config.pool_size,
            head: head.clone(),
            shutdown: shutdown_rx,
            tick: config.subscription.poll_interval,
            pending: Arc::default(),
            rls,
        });
        let committed = Arc::new(tokio::sync::Notify::new());
        tracing::debug!(url = %config.redacted_url(), pool_size = config.pool_size, "postgres driver connected");
        Ok(PostgresDriver {
            inner: Arc::new(Inner {
                sequencer: sequencer::Sequencer::spawn(
                    pool.clone(),
                    config.pool_size,
                    committed.clone(),
                    statements,
                ),
                writer: writer::AppendWriter::spawn(
                    pool.clone(),
                    config.pool_size,
                    committed,
                    rls,
                    statements,
                ),
                pool,
                config,
                head,
                shutdown,
                listener: Mutex::new(Some(listener)),
                operations: AtomicU64::new(0),
                generation,
                statements,
                indexes: indexes::IndexCache::default(),
                can_index,
            }),
        })
    }

    /// Runs the kernel's pending migrations now; returns the versions applied. An
    /// application's own migrations run with [`migrations::Migrator::from_dir`] or
    /// [`migrations::Migrator::embedded`] on a client of [`PostgresDriver::pool`].
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        let client = self.client().await?;
        migrations::Migrator::new().up(&client).await
    }

    /// Ends subscriptions (after they yield what they have read), stops the listener and closes
    /// the pool. Later operations fail with `Unavailable`.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        self.inner.head.send_modify(|s| s.closed = true);
        let handle = match self.inner.listener.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            if let Err(e) = handle.await {
                if e.is_panic() {
                    tracing::error!("the postgres listener task panicked");
                }
            }
        }
        self.inner.pool.close();
    }

    /// The settings it runs with.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// The connection pool, for SQL of your own next to the kernel's tables.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The loss of data this driver found and nobody acknowledged yet, if any: while there is
    /// one, appends, lock operations and subscriptions fail with it (`Corrupted`) and
    /// `status()` reports the backend unhealthy. See `docs/postgres.md`, "Data-loss detection".
    pub fn data_loss(&self) -> Option<Error> {
        self.inner.generation.lost()
    }

    /// Accepts a loss of data this driver found: adopts the database's current generation
    /// marker (creating one if there is none) and its current event head, and lets appends,
    /// lock operations and new subscriptions through again. Global positions continue from the
    /// database's head, which may be below positions handed out before the loss: tell
    /// consumers that keep positions outside the database to reset them. Harmless without a
    /// loss.
    ///
    /// Returns the marker now expected; `Config` if the schema has no `kernel_generation`
    /// table (run the migrations).
    pub async fn acknowledge_data_loss(&self) -> Result<String> {
        let client = self
            .client()
            .await
            .map_err(|e| e.with_operation("acknowledge_data_loss"))?;
        let lost = self.data_loss();
        let marker = self
            .inner
            .generation
            .adopt(&client)
            .await
            .map_err(|e| e.with_operation("acknowledge_data_loss"))?
            .ok_or_else(|| {
                Error::config(
                    "migrations",
                    "the postgres schema has no kernel_generation table: run `kernelctl migrate up`",
                )
                .with_context("backend", BACKEND)
                .with_operation("acknowledge_data_loss")
            })?;
        if let Some(lost) = lost {
            tracing::warn!(generation = %marker, loss = %lost, "PostgreSQL data loss acknowledged");
        }
        Ok(marker)
    }

    /// Fails with a recorded loss, or checks the generation when the last check is older than
    /// [`generation::RECHECK`] (on `client`, or one from the pool).
    pub(crate) async fn guard(
        &self,
        client: Option<&Object>,
        operation: &'static str,
    ) -> Result<()> {
        if !self.inner.generation.due(operation, false)? {
            return Ok(());
        }
        match client {
            Some(c) => self.inner.generation.verify(c, operation).await,
            None => {
                let c = self.client().await?;
                self.inner.generation.verify(&c, operation).await
            }
        }
    }

    /// A pooled connection for the call being made: with [`Tenancy::Rls`] it carries the
    /// call's tenant.
    pub(crate) async fn client(&self) -> Result<Object> {
        let client = self
            .inner
            .pool
            .get()
            .await
            .map_err(|e| error::pool(e, self.inner.config.pool_size))?;
        if self.rls() {
            tenancy::enter(&client, kernel_core::tenancy::current().as_deref()).await?;
        }
        Ok(client)
    }

    /// How statements are sent: prepared and cached, or unnamed (transaction pooler).
    pub(crate) fn statements(&self) -> statement::Statements {
        self.inner.statements
    }

    /// Whether calls carry their tenant to the database ([`Tenancy::Rls`]).
    pub(crate) fn rls(&self) -> bool {
        self.inner.config.tenancy == Tenancy::Rls
    }
}

/// The `post_create` hook of a pool behind a session pooler: `SET statement_timeout`, which a
/// direct connection gets from its startup `options`.
fn session_settings(statement_ms: u128) -> deadpool_postgres::Hook {
    deadpool_postgres::Hook::async_fn(move |client, _| {
        Box::pin(async move {
            client
                .batch_execute(&format!("SET statement_timeout = {statement_ms}"))
                .await
                .map_err(deadpool_postgres::HookError::Backend)
        })
    })
}

/// Through a transaction pooler the driver cannot set `statement_timeout` (a session setting
/// would stay on a server session other clients get next, and not reach the sessions this
/// client's next transactions run on), so the server's own — the role's or the database's —
/// must be the configured one. `Config` naming `postgres.statement_timeout_ms` otherwise.
async fn check_server_statement_timeout(client: &Object, config: &PostgresConfig) -> Result<()> {
    let row = client
        .query_typed_one(
            "SELECT setting::bigint, current_user::text FROM pg_settings \
             WHERE name = 'statement_timeout'",
            &[],
        )
        .await
        .map_err(error::pg)?;
    let server: i64 = row.try_get(0).map_err(error::pg)?;
    let user: String = row.try_get(1).map_err(error::pg)?;
    let wanted = config.statement_timeout_ms();
    if u128::try_from(server).ok() == Some(wanted) {
        return Ok(());
    }
    let or_setting = if server > 0 {
        format!(
            ", or set postgres.statement_timeout_ms (KERNEL_POSTGRES_STATEMENT_TIMEOUT_MS) to \
             {server} to match the server"
        )
    } else {
        String::new()
    };
    Err(Error::config(
        "postgres.statement_timeout_ms",
        format!(
            "postgres.pooler = transaction: the driver cannot set statement_timeout per session \
             through a transaction pooler, so the server's own must be the configured one, but \
             the server's is {server} ms (0 = none) and postgres.statement_timeout_ms is \
             {wanted} ms. Set it on the role: ALTER ROLE \"{}\" SET statement_timeout = \
             '{wanted}ms' (or ALTER DATABASE .. SET ..){or_setting}",
            user.replace('"', "\"\"")
        ),
    )
    .with_context("backend", BACKEND))
}

impl fmt::Debug for PostgresDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.inner.pool.status();
        f.debug_struct("PostgresDriver")
            .field("url", &self.inner.config.redacted_url())
            .field("pool_size", &status.max_size)
            .field("pool_open", &status.size)
            .field("pool_idle", &status.available)
            .finish()
    }
}
