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
mod jsonb;
mod listener;
mod lock;
pub mod migrations;
mod operations;
mod rate_limit;
mod rows;
mod sequencer;
mod sql;
mod storage;
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

pub use config::PostgresConfig;
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
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            // The most recently used connection first: its server process is awake with warm
            // caches. Rotating through every pooled connection (FIFO, the default) measured
            // about 0.35 ms slower per append on an idle server.
            .queue_mode(QueueMode::Lifo)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.pool_wait_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| {
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
        let migrator = migrations::Migrator::new();
        if config.migrate_on_boot {
            migrator.up(&client).await?;
        } else if !migrator.is_current(&client).await? {
            tracing::warn!(
                url = %config.redacted_url(),
                "the postgres schema is not up to date and migrate_on_boot is off: run `kernelctl migrate up`"
            );
        }
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
        let mut listener_pg = pg;
        listener_pg.application_name(format!("{}-listener", config.application_name));
        let listener = listener::spawn(listener::ListenerSetup {
            pg: listener_pg,
            tls: tls.clone(),
            pool: pool.clone(),
            pool_size: config.pool_size,
            head: head.clone(),
            shutdown: shutdown_rx,
            tick: config.subscription.poll_interval,
            pending: Arc::default(),
        });
        let committed = Arc::new(tokio::sync::Notify::new());
        tracing::debug!(url = %config.redacted_url(), pool_size = config.pool_size, "postgres driver connected");
        Ok(PostgresDriver {
            inner: Arc::new(Inner {
                sequencer: sequencer::Sequencer::spawn(
                    pool.clone(),
                    config.pool_size,
                    committed.clone(),
                ),
                writer: writer::AppendWriter::spawn(pool.clone(), config.pool_size, committed),
                pool,
                config,
                head,
                shutdown,
                listener: Mutex::new(Some(listener)),
                operations: AtomicU64::new(0),
                generation,
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

    pub(crate) async fn client(&self) -> Result<Object> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| error::pool(e, self.inner.config.pool_size))
    }
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
