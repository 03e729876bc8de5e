//! The driver value: connection pool, scripts, key layout, the subscription wake-up, status and
//! shutdown.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use fred::clients::{Client, Pool};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface, ServerInterface};
use fred::types::config::{Config as FredConfig, Options, ReconnectPolicy};
use fred::types::{Builder, ClusterHash, ConnectHandle, InfoKind, Value as RedisValue};
use fred::util::redis_keyslot;
use kernel_core::subscription::{HeadSender, HeadSignal, SubscriptionConfig};
use kernel_core::{Error, ErrorCode, ErrorStatus, Result, Status};
use tokio::sync::broadcast::error::RecvError;

use crate::config::RedisConfig;
use crate::error::{map_err, map_write_err};
use crate::generation::GenerationState;
use crate::keys::KeySpace;
use crate::scripts::{Lua, Scripts};

/// The Redis driver: every kernel trait on one pool. Cheap to clone; clones share the pool.
///
/// Create it with [`RedisDriver::connect`]; end it with [`RedisDriver::shutdown`], which ends
/// subscriptions and closes the connections.
#[derive(Clone)]
pub struct RedisDriver {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: RedisConfig,
    fred_config: FredConfig,
    pub(crate) pool: Pool,
    pub(crate) keys: KeySpace,
    pub(crate) scripts: Scripts,
    pub(crate) head: HeadSender,
    pub(crate) subscription: SubscriptionConfig,
    notifier: tokio::sync::OnceCell<Notifier>,
    closed: AtomicBool,
    connection: Mutex<Option<ConnectHandle>>,
    pub(crate) generation: GenerationState,
    /// Puts sent, to purge expired entries on one in `storage::PURGE_EVERY`.
    pub(crate) puts: AtomicU64,
}

/// The dedicated pub/sub connection that turns append notifications into wake-ups.
struct Notifier {
    client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for RedisDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDriver")
            .field("url", &self.inner.config.redacted_url())
            .field("key_prefix", &self.inner.config.key_prefix)
            .field("pool_size", &self.inner.config.pool_size)
            .finish_non_exhaustive()
    }
}

impl RedisDriver {
    /// Connects a pool to the server in `config.url`, loads the scripts and checks the server
    /// answers.
    ///
    /// A malformed setting is a `Config` error naming it; an unreachable server is
    /// `Unavailable` naming the backend and the (redacted) URL.
    pub async fn connect(config: RedisConfig) -> Result<RedisDriver> {
        config.validate()?;
        let shown = config.redacted_url();
        // fred reads the plain form of the URL; the TLS connector is ours (the CA settings).
        let tls = crate::tls::fred_tls(&config)?;
        let mut fred_config = FredConfig::from_url(&crate::tls::plain_scheme(&config.url))
            .map_err(|e| {
                Error::config(
                    "redis.url",
                    format!("malformed Redis URL {shown}: {}", e.details()),
                )
            })?;
        let uses_tls = tls.is_some();
        fred_config.tls = tls;
        let pool = builder(&fred_config, &config)
            .build_pool(config.pool_size)
            .map_err(|e| {
                Error::config(
                    "redis.url",
                    format!("cannot build a Redis client for {shown}: {}", e.details()),
                )
            })?;
        let unreachable = |why: String| {
            Error::unavailable(format!("Redis at {shown} is unreachable: {why}"))
                .with_context("backend", "redis")
                .with_context("url", &shown)
        };
        // fred's own connect timeout applies per attempt; this bounds the whole handshake.
        let deadline = config.connect_timeout + Duration::from_millis(500);
        let handle = match tokio::time::timeout(deadline, pool.init()).await {
            Ok(Ok(handle)) => handle,
            Ok(Err(e)) => {
                if uses_tls {
                    if let Some(err) =
                        crate::tls::handshake_error(e.details(), &crate::tls::host_of(&config.url))
                    {
                        if let Err(close) = pool.quit().await {
                            tracing::debug!(error = %close, "closing the half-open Redis pool failed");
                        }
                        return Err(err.with_context("url", &shown));
                    }
                }
                if uses_tls && crate::tls::speaks_clear_text(&config.url, deadline).await {
                    if let Err(close) = pool.quit().await {
                        tracing::debug!(error = %close, "closing the half-open Redis pool failed");
                    }
                    return Err(crate::tls::not_offered(&crate::tls::host_of(&config.url))
                        .with_context("url", &shown));
                }
                let mapped = map_err(e, "connect");
                return Err(if mapped.code() == ErrorCode::Config {
                    mapped.with_context("url", &shown)
                } else {
                    unreachable(mapped.to_string())
                });
            }
            Err(_) => {
                // The half-open pool is discarded; the error that matters is the timeout.
                if let Err(e) = pool.quit().await {
                    tracing::debug!(error = %e, "closing the half-open Redis pool failed");
                }
                if uses_tls && crate::tls::speaks_clear_text(&config.url, deadline).await {
                    return Err(crate::tls::not_offered(&crate::tls::host_of(&config.url))
                        .with_context("url", &shown));
                }
                return Err(unreachable(format!(
                    "no connection within {} ms",
                    deadline.as_millis()
                )));
            }
        };
        let (head, _) = tokio::sync::watch::channel(HeadSignal::default());
        let driver = RedisDriver {
            inner: Arc::new(Inner {
                keys: KeySpace::new(&config.key_prefix),
                config,
                fred_config,
                pool,
                scripts: Scripts::new(),
                head,
                subscription: SubscriptionConfig::default(),
                notifier: tokio::sync::OnceCell::new(),
                closed: AtomicBool::new(false),
                connection: Mutex::new(Some(handle)),
                generation: GenerationState::default(),
                puts: AtomicU64::new(0),
            }),
        };
        // Loading every script now fails fast on a server without scripting, and spares the
        // first call of each its NOSCRIPT round trip.
        let loads = driver
            .inner
            .scripts
            .all()
            .map(|s| s.load(driver.inner.pool.next()));
        for result in futures::future::join_all(loads).await {
            if let Err(e) = result {
                let err = map_err(e, "script load");
                if let Err(close) = driver.shutdown().await {
                    tracing::debug!(error = %close, "closing the Redis pool after a failed script load failed");
                }
                return Err(err.with_context("url", driver.inner.config.redacted_url()));
            }
        }
        if let Err(e) = driver.adopt_generation("connect").await {
            if let Err(close) = driver.shutdown().await {
                tracing::debug!(error = %close, "closing the Redis pool after a failed connect failed");
            }
            return Err(e.with_context("url", driver.inner.config.redacted_url()));
        }
        tracing::debug!(url = %driver.inner.config.redacted_url(), "connected to Redis");
        Ok(driver)
    }

    /// Ends every subscription (after it yields what is stored) and closes the connections.
    /// Later calls on this driver (and its clones) fail with `Unavailable`. Calling it again is
    /// harmless.
    pub async fn shutdown(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.head.send_modify(|s| s.closed = true);
        if let Some(n) = self.inner.notifier.get() {
            n.task.abort();
            n.client.quit().await.map_err(|e| map_err(e, "shutdown"))?;
        }
        self.inner
            .pool
            .quit()
            .await
            .map_err(|e| map_err(e, "shutdown"))?;
        let handle = self
            .inner
            .connection
            .lock()
            .map_err(|_| Error::internal("the connection handle lock is poisoned"))?
            .take();
        if let Some(handle) = handle {
            // The connection task ends once every connection has closed.
            match tokio::time::timeout(Duration::from_secs(5), handle).await {
                Ok(Ok(Ok(()))) | Err(_) => {}
                Ok(Ok(Err(e))) => {
                    tracing::debug!(error = %e, "Redis connection task ended with an error")
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "Redis connection task failed"),
            }
        }
        Ok(())
    }

    /// The configured key prefix.
    pub fn key_prefix(&self) -> &str {
        self.inner.keys.prefix()
    }

    /// Fails with `Unavailable` once the driver has been shut down.
    pub(crate) fn ensure_open(&self, operation: &'static str) -> Result<()> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::unavailable("the Redis driver has been shut down")
                .with_context("backend", "redis")
                .with_operation(operation)
                .with_retryable(false));
        }
        Ok(())
    }

    /// Runs one of the driver's scripts by SHA (reloading it on `NOSCRIPT`). A script that
    /// writes and loses its answer fails as `MaybeApplied`.
    pub(crate) async fn run(
        &self,
        lua: &Lua,
        operation: &'static str,
        keys: Vec<String>,
        args: Vec<RedisValue>,
    ) -> Result<RedisValue> {
        self.run_as(lua, lua.writes, operation, keys, args).await
    }

    /// [`RedisDriver::run`] for a script whose call changes data or not depending on its
    /// arguments (`writes`), like a rate-limit check that spends nothing.
    pub(crate) async fn run_as(
        &self,
        lua: &Lua,
        writes: bool,
        operation: &'static str,
        keys: Vec<String>,
        args: Vec<RedisValue>,
    ) -> Result<RedisValue> {
        self.ensure_open(operation)?;
        // WAIT must follow the write on the same connection (it waits for that client's own
        // replication offset), hence one client for both.
        let client = self.inner.pool.next_connected();
        let slot = keys.first().map(|k| redis_keyslot(k.as_bytes()));
        let reply = lua
            .script
            .evalsha_with_reload::<RedisValue, _, _>(client, keys, args)
            .await
            .map_err(|e| {
                if writes {
                    map_write_err(e, operation)
                } else {
                    map_err(e, operation)
                }
            })?;
        if writes {
            self.confirm_replicas(client, slot, operation).await?;
        }
        Ok(reply)
    }

    /// WAIT-based durability ([`RedisConfig::wait_replicas`]): after a write sent on `client`,
    /// `WAIT n timeout` on the same connection — in cluster mode on the connection to the
    /// master of `slot`, the written key's. Fewer confirmations than asked is a
    /// `MaybeApplied` `Unavailable` error: the write is applied on the primary but could be
    /// lost if it fails before a replica has it. Does nothing when `wait_replicas` is 0.
    pub(crate) async fn confirm_replicas(
        &self,
        client: &Client,
        slot: Option<u16>,
        operation: &'static str,
    ) -> Result<()> {
        let config = &self.inner.config;
        let wanted = config.wait_replicas;
        if wanted == 0 {
            return Ok(());
        }
        let wait_ms = config.wait_timeout.as_millis().max(1);
        let mut options = Options {
            timeout: Some(config.wait_timeout + config.operation_timeout),
            ..Options::default()
        };
        if client.is_clustered() {
            options.cluster_hash = slot.map(ClusterHash::Custom);
        }
        let confirmed: i64 = client
            .with_options(&options)
            .wait(
                i64::from(wanted),
                i64::try_from(wait_ms).unwrap_or(i64::MAX),
            )
            .await
            .map_err(|e| {
                map_err(e, operation)
                    .with_message(
                        "the write is applied on the Redis primary, but asking for its \
                         replication (WAIT) failed: it is not confirmed on any replica",
                    )
                    .with_status(ErrorStatus::MaybeApplied)
                    .with_context("outcome", "applied_unconfirmed")
                    .with_context("replicas_required", wanted)
            })?;
        if confirmed < i64::from(wanted) {
            return Err(Error::unavailable(format!(
                "the write is applied on the Redis primary but only {confirmed} of {wanted} \
                 replicas confirmed it within {wait_ms} ms (WAIT): it could be lost if the \
                 primary fails before they catch up"
            ))
            .with_status(ErrorStatus::MaybeApplied)
            .with_context("backend", "redis")
            .with_operation(operation)
            .with_context("outcome", "applied_unconfirmed")
            .with_context("replicas_confirmed", confirmed)
            .with_context("replicas_required", wanted));
        }
        Ok(())
    }

    /// Health and server details: `PING` latency, memory, key count, version.
    pub(crate) async fn server_status(&self) -> Result<Status> {
        self.ensure_open("status")?;
        let pool = &self.inner.pool;
        let started = Instant::now();
        let ping: std::result::Result<String, _> = pool.ping(None).await;
        let latency = started.elapsed();
        let mut details = BTreeMap::new();
        details.insert(
            "key_prefix".to_owned(),
            self.inner.config.key_prefix.clone(),
        );
        if let Err(e) = ping {
            details.insert("error".to_owned(), map_err(e, "status").to_string());
            let mut status = Status::new("redis", false, latency);
            status.details = details;
            return Ok(status);
        }
        let info: String = pool
            .info(Some(InfoKind::All))
            .await
            .map_err(|e| map_err(e, "status"))?;
        for line in info.lines() {
            if let Some((k, v)) = line.trim().split_once(':') {
                if matches!(
                    k,
                    "redis_version"
                        | "redis_mode"
                        | "used_memory"
                        | "used_memory_human"
                        | "maxmemory"
                        | "maxmemory_policy"
                        | "aof_enabled"
                        | "rdb_last_bgsave_status"
                        | "role"
                ) {
                    details.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        let dbsize: u64 = pool.dbsize().await.map_err(|e| map_err(e, "status"))?;
        // Every key of the database, all prefixes: counting this prefix's entries is a scan.
        details.insert("dbsize".to_owned(), dbsize.to_string());
        details.insert("generation".to_owned(), self.expected_generation());
        if let Err(lost) = self.verify_generation("status", true).await {
            details.insert("error".to_owned(), lost.to_string());
            let mut status = Status::new("redis", false, latency);
            status.details = details;
            return Ok(status);
        }
        let mut status = Status::new("redis", true, latency);
        status.details = details;
        Ok(status)
    }

    /// Starts (once) the pub/sub connection that wakes subscriptions when an append commits.
    pub(crate) async fn ensure_notifier(&self) -> Result<()> {
        let inner = &self.inner;
        inner
            .notifier
            .get_or_try_init(|| async {
                let client = builder(&inner.fred_config, &inner.config)
                    .build()
                    .map_err(|e| map_err(e, "subscribe"))?;
                client.init().await.map_err(|e| map_err(e, "subscribe"))?;
                let channel = inner.keys.notify_channel();
                let messages = client.message_rx();
                let reconnects = client.reconnect_rx();
                client
                    .subscribe(channel.clone())
                    .await
                    .map_err(|e| map_err(e, "subscribe"))?;
                let task = tokio::spawn(listen(
                    Arc::downgrade(inner),
                    client.clone(),
                    channel,
                    messages,
                    reconnects,
                ));
                Ok::<_, Error>(Notifier { client, task })
            })
            .await?;
        Ok(())
    }
}

/// Forwards notifications to the driver's head signal until the driver or the connection goes.
async fn listen(
    inner: Weak<Inner>,
    client: Client,
    channel: String,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    mut reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
) {
    let wake = |position: u64| match inner.upgrade() {
        Some(inner) => {
            inner
                .head
                .send_modify(|s| s.position = s.position.max(position));
            true
        }
        None => false,
    };
    loop {
        let alive = tokio::select! {
            message = messages.recv() => match message {
                Ok(m) => wake(m.value.as_u64().unwrap_or(0)),
                // Dropped notifications: wake anyway, subscribers re-read from their position.
                Err(RecvError::Lagged(_)) => wake(0),
                Err(RecvError::Closed) => false,
            },
            reconnect = reconnects.recv() => match reconnect {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    // A new connection has no subscriptions, and appends may have gone by.
                    if let Err(e) = client.subscribe(channel.clone()).await {
                        tracing::warn!(error = %e, "re-subscribing to Redis notifications failed; subscriptions fall back to polling");
                    }
                    wake(0)
                }
                Err(RecvError::Closed) => false,
            },
        };
        if !alive {
            return;
        }
    }
}

fn builder(fred_config: &FredConfig, config: &RedisConfig) -> Builder {
    let mut builder = Builder::from_config(fred_config.clone());
    let connect_timeout = config.connect_timeout;
    let operation_timeout = config.operation_timeout;
    builder
        .with_connection_config(|c| {
            c.connection_timeout = connect_timeout;
            c.internal_command_timeout = connect_timeout;
            // No silent re-sends after a dropped connection: a script may have run before the
            // reply was lost. The caller sees a retryable `Unavailable` and the retry layer
            // repeats only what is safe to repeat.
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = operation_timeout;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
    builder
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.head.send_modify(|s| s.closed = true);
        if let Some(n) = self.notifier.get() {
            n.task.abort();
        }
        if !self.closed.load(Ordering::SeqCst) {
            // Dropped without `shutdown`: close the connections if a runtime is still around.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let pool = self.pool.clone();
                let notifier = self.notifier.get().map(|n| n.client.clone());
                runtime.spawn(async move {
                    if let Some(client) = notifier {
                        if let Err(e) = client.quit().await {
                            tracing::debug!(error = %e, "closing the Redis notification connection failed");
                        }
                    }
                    if let Err(e) = pool.quit().await {
                        tracing::debug!(error = %e, "closing the Redis pool failed");
                    }
                });
            }
        }
    }
}
