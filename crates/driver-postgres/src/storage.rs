//! `StorageDriver` on `kernel_documents` and `kernel_namespaces`.

use std::collections::HashMap;
use std::time::Instant;

use async_trait::async_trait;
use deadpool_postgres::{Object, Transaction as PgTx};
use kernel_core::companion::{self, Companion};
use kernel_core::document::already_exists;
use kernel_core::glob::prefix_upper_bound;
use kernel_core::validate::{self, MAX_BATCH_SIZE};
use kernel_core::{
    Applied, BatchDelete, BatchPut, Capabilities, DeleteCondition, Entry, Error, Filter, IndexInfo,
    IndexSpec, Isolation, ListOptions, ListPage, Metadata, MetadataMode, NamespaceInfo,
    OperationId, Outcome, PutOptions, Query, Result, Status, StorageDriver, Transaction, Value,
    Write,
};
use serde::Serialize;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use crate::PostgresDriver;
use crate::codes::{KernelSqlState, PutCode};
use crate::error::{BACKEND, kernel_state, pg, pg_write};
use crate::jsonb::Jsonb;
use crate::rows::{
    self, ENTRY_COLUMNS, LIVE, entry, entry_columns, limit_i64, live, micros, to_i64,
};
use crate::sql::SqlBuilder;
use crate::statement::{On, Statements};
use crate::transaction::PgTransaction;

impl PostgresDriver {
    /// The statement of [`StorageDriver::query`] (validated input): the namespace's declared
    /// indexes decide how it is written (see `sql.rs`).
    pub(crate) async fn query_sql(
        &self,
        client: &Object,
        namespace: &str,
        query: &Query,
    ) -> Result<SqlBuilder> {
        let indexed = self.indexed_fields(client, namespace).await;
        let mut b = SqlBuilder::new(&format!(
            "SELECT {ENTRY_COLUMNS} FROM kernel_documents d WHERE "
        ));
        b.namespace(namespace, indexed, LIVE);
        if let Some(f) = &query.filter {
            b.push(" AND ");
            b.filter(f)
                .map_err(|e| e.with_context("namespace", namespace))?;
        }
        b.order_by(&query.sort);
        let offset = b.bind(limit_i64(query.offset), Type::INT8);
        let limit = b.bind(query.limit.map(limit_i64), Type::INT8);
        b.push(&format!(" OFFSET {offset} LIMIT {limit}"));
        Ok(b)
    }
}

/// One call of `kernel_put` (migration 0008: one set-based statement for the whole batch):
/// every batched put, plain or with an operation id.
pub(crate) const PUT: &str = "SELECT o_key, o_metadata, o_version, o_created_at, o_updated_at, o_expires_at \
     FROM kernel_put($1, $2, $3, $4, $5, $6, $7)";

/// The live-row condition on the row an upsert or update found, at the statement's clock (one
/// value for the whole statement, so `created_at`, `updated_at` and the expiry agree).
macro_rules! live_at_statement {
    () => {
        "(d.expires_at IS NULL OR d.expires_at > statement_timestamp())"
    };
}

/// A single put that may create the key (`Always`, `IfAbsent` when `$6`): one upsert, the
/// semantics of `kernel_put` for one row without its PL/pgSQL call, flag lookups and joins.
/// The namespace row is created on the way (a `WITH` clause: same statement, same atomicity).
/// The conflict arm works on the locked newest version of the row: an expired row counts as
/// absent (version 1, fresh `created_at`, metadata `{}` unless given); `IfAbsent` over a live
/// row writes and returns nothing, and the caller raises `AlreadyExists`.
/// `$1` namespace, `$2` key, `$3` value, `$4` metadata (NULL: keep), `$5` TTL in µs (NULL:
/// none), `$6` only if absent.
const PUT_ONE: &str = concat!(
    "WITH ns AS (INSERT INTO kernel_namespaces (name) VALUES ($1) ON CONFLICT DO NOTHING) \
     INSERT INTO kernel_documents AS d \
     (namespace, key, value, metadata, version, created_at, updated_at, expires_at) \
     VALUES ($1, $2, $3, coalesce($4::jsonb, '{}'::jsonb), 1, statement_timestamp(), \
     statement_timestamp(), statement_timestamp() + $5::bigint * interval '1 microsecond') \
     ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value, \
     metadata = CASE WHEN $4::jsonb IS NULL AND ",
    live_at_statement!(),
    " THEN d.metadata ELSE EXCLUDED.metadata END, \
     version = CASE WHEN ",
    live_at_statement!(),
    " THEN d.version + 1 ELSE 1 END, \
     created_at = CASE WHEN ",
    live_at_statement!(),
    " THEN d.created_at ELSE EXCLUDED.created_at END, \
     updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at \
     WHERE NOT ($6::boolean AND ",
    live_at_statement!(),
    ") RETURNING d.key, d.metadata, d.version, d.created_at, d.updated_at, d.expires_at"
);

/// A single `IfVersion` put: the compare-and-set `UPDATE`. READ COMMITTED re-checks the
/// version on the newest row if a concurrent writer changed it; an absent or expired key
/// matches nothing (and its namespace is not created: the key must be live). Nothing
/// returned means a conflict. `$1`..`$5` as [`PUT_ONE`], `$6` the expected version.
const CAS_ONE: &str = concat!(
    "UPDATE kernel_documents d SET value = $3, metadata = coalesce($4::jsonb, d.metadata), \
     version = d.version + 1, updated_at = statement_timestamp(), \
     expires_at = statement_timestamp() + $5::bigint * interval '1 microsecond' \
     WHERE d.namespace = $1 AND d.key = $2 AND d.version = $6::bigint AND ",
    live_at_statement!(),
    " RETURNING d.key, d.metadata, d.version, d.created_at, d.updated_at, d.expires_at"
);

/// The live entry `($1, $2)`.
const GET: &str = concat!(
    "SELECT ",
    entry_columns!(),
    " FROM kernel_documents d WHERE d.namespace = $1 AND d.key = $2 AND ",
    live!()
);

/// The live entries of namespace `$1` among keys `$2` (any order).
const FETCH: &str = concat!(
    "SELECT ",
    entry_columns!(),
    " FROM kernel_documents d WHERE d.namespace = $1 AND d.key = ANY ($2) AND ",
    live!()
);

/// Whether `($1, $2)` is live.
const EXISTS: &str = concat!(
    "SELECT EXISTS (SELECT 1 FROM kernel_documents d WHERE d.namespace = $1 AND d.key = $2 AND ",
    live!(),
    ")"
);

/// The live version of `($1, $2)`: the current version a refused `IfVersion` reports.
const CURRENT_VERSION: &str = concat!(
    "SELECT d.version FROM kernel_documents d WHERE d.namespace = $1 AND d.key = $2 AND ",
    live!()
);

/// One call of `kernel_delete`: every delete, single or batched, plain or with an operation id.
pub(crate) const DELETE: &str = "SELECT kernel_delete($1, $2, $3)";

/// Parallel arrays for one call of `kernel_put`.
#[derive(Default)]
pub(crate) struct PutArrays {
    keys: Vec<String>,
    values: Vec<Jsonb<Value>>,
    metadata: Vec<Option<Jsonb<Value>>>,
    ttl_us: Vec<Option<i64>>,
    cond: Vec<i16>,
    cond_version: Vec<Option<i64>>,
}

impl PutArrays {
    fn push(&mut self, key: String, value: Value, options: PutOptions) -> Result<()> {
        let (cond, version) = PutCode::of(options.condition)?;
        self.keys.push(key);
        self.values.push(Jsonb(value));
        self.metadata
            .push(options.metadata.map(|m| Jsonb(Value::Object(m))));
        self.ttl_us.push(options.ttl.map(micros));
        self.cond.push(cond.code());
        self.cond_version.push(version);
        Ok(())
    }

    /// A validated single put.
    pub(crate) fn one(
        driver: &PostgresDriver,
        namespace: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<PutArrays> {
        validate_put(driver, namespace, key, &value, &options)?;
        let mut arrays = PutArrays::default();
        arrays.push(key.to_owned(), value, options)?;
        Ok(arrays)
    }

    /// A validated batch of puts (possibly empty).
    pub(crate) fn many(
        driver: &PostgresDriver,
        namespace: &str,
        items: Vec<BatchPut>,
    ) -> Result<PutArrays> {
        validate::batch(namespace, items.iter().map(|i| i.key.as_str()), true)?;
        for item in &items {
            validate_put(driver, namespace, &item.key, &item.value, &item.options)?;
        }
        let mut arrays = PutArrays::default();
        for item in items {
            arrays.push(item.key, item.value, item.options)?;
        }
        Ok(arrays)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The parameters of [`PUT`].
    pub(crate) fn params<'a>(&'a self, namespace: &'a &'a str) -> [&'a (dyn ToSql + Sync); 7] {
        [
            namespace,
            &self.keys,
            &self.values,
            &self.metadata,
            &self.ttl_us,
            &self.cond,
            &self.cond_version,
        ]
    }

    /// Writes the puts on `on` and returns the entries as written. One key goes as
    /// [`PUT_ONE`] or [`CAS_ONE`], more as one call of [`PUT`]. `other` maps every error that
    /// is not the kernel's own (see [`write_error_with`]).
    pub(crate) async fn write(
        self,
        st: Statements,
        on: On<'_>,
        namespace: &str,
        other: fn(tokio_postgres::Error) -> Error,
    ) -> Result<Vec<Entry>> {
        if self.keys.len() != 1 {
            let rows = st
                .query(on, PUT, &self.params(&namespace))
                .await
                .map_err(|e| write_error_with(e, namespace, other))?;
            return self.entries(namespace, &rows);
        }
        let cas = self.cond[0] == PutCode::IfVersion.code();
        let if_absent = self.cond[0] == PutCode::IfAbsent.code();
        let last: &(dyn ToSql + Sync) = if cas {
            &self.cond_version[0]
        } else {
            &if_absent
        };
        let params: [&(dyn ToSql + Sync); 6] = [
            &namespace,
            &self.keys[0],
            &self.values[0],
            &self.metadata[0],
            &self.ttl_us[0],
            last,
        ];
        let rows = st
            .query(on, if cas { CAS_ONE } else { PUT_ONE }, &params)
            .await
            .map_err(|e| write_error_with(e, namespace, other))?;
        if rows.is_empty() {
            let key = &self.keys[0];
            return Err(if if_absent {
                already_exists(namespace, key).with_context("backend", BACKEND)
            } else if cas {
                // Read after the refusal, on the same connection (and transaction): the
                // version that made the condition fail, or a newer one.
                let row = st
                    .query_opt(on, CURRENT_VERSION, &[&namespace, key])
                    .await
                    .map_err(|e| {
                        other(e)
                            .with_context("namespace", namespace)
                            .with_context("key", validate::escape(key))
                    })?;
                let current = match row {
                    Some(r) => Some(rows::version(r.try_get(0).map_err(pg)?)?),
                    None => None,
                };
                version_conflict(namespace, key, current)
            } else {
                Error::internal("an unconditional put wrote no row")
                    .with_context("namespace", namespace)
                    .with_context("key", validate::escape(key))
            });
        }
        self.entries(namespace, &rows)
    }

    /// The entries [`PUT`] wrote, from its rows (one per key, in order).
    pub(crate) fn entries(self, namespace: &str, rows: &[Row]) -> Result<Vec<Entry>> {
        if rows.len() != self.keys.len() {
            return Err(Error::internal(format!(
                "kernel_put returned {} rows for {} keys",
                rows.len(),
                self.keys.len()
            ))
            .with_context("namespace", namespace));
        }
        rows.iter()
            .zip(self.values)
            .map(|(row, value)| {
                Ok(Entry {
                    namespace: namespace.to_owned(),
                    key: row.try_get(0).map_err(pg)?,
                    value: value.0,
                    metadata: rows::metadata(row.try_get(1).map_err(pg)?)?,
                    version: rows::version(row.try_get(2).map_err(pg)?)?,
                    created_at: row.try_get(3).map_err(pg)?,
                    updated_at: row.try_get(4).map_err(pg)?,
                    expires_at: row.try_get(5).map_err(pg)?,
                })
            })
            .collect()
    }
}

/// Parallel arrays for one call of `kernel_delete`.
pub(crate) struct DeleteArrays {
    keys: Vec<String>,
    versions: Vec<Option<i64>>,
}

impl DeleteArrays {
    /// A validated single delete.
    pub(crate) fn one(
        namespace: &str,
        key: &str,
        condition: DeleteCondition,
    ) -> Result<DeleteArrays> {
        validate::document(namespace, key)?;
        Ok(DeleteArrays {
            versions: vec![delete_version(condition)?],
            keys: vec![key.to_owned()],
        })
    }

    /// A validated batch of deletes (possibly empty).
    pub(crate) fn many(namespace: &str, items: Vec<BatchDelete>) -> Result<DeleteArrays> {
        validate::batch(namespace, items.iter().map(|i| i.key.as_str()), true)?;
        let mut keys = Vec::with_capacity(items.len());
        let mut versions = Vec::with_capacity(items.len());
        for item in items {
            versions.push(delete_version(item.condition)?);
            keys.push(item.key);
        }
        Ok(DeleteArrays { keys, versions })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The parameters of [`DELETE`].
    pub(crate) fn params<'a>(&'a self, namespace: &'a &'a str) -> [&'a (dyn ToSql + Sync); 3] {
        [namespace, &self.keys, &self.versions]
    }

    /// How many live entries [`DELETE`] removed, from its row.
    pub(crate) fn count(row: &Row) -> Result<u64> {
        rows::version(row.try_get(0).map_err(pg)?)
    }
}

/// Checks one put's input: kernel-core's rules, plus JSON strings without U+0000 (JSONB cannot
/// store it).
pub(crate) fn validate_put(
    driver: &PostgresDriver,
    namespace: &str,
    key: &str,
    value: &Value,
    options: &PutOptions,
) -> Result<()> {
    validate::put(namespace, key, value, options, &driver.inner.config.limits)?;
    rows::check_nul(Some(value), options.metadata.as_ref()).map_err(|e| {
        e.with_context("namespace", namespace)
            .with_context("key", validate::escape(key))
    })
}

/// Turns a `KR001` / `KR002` raised by the write functions into the kernel's error.
pub(crate) fn write_error(err: tokio_postgres::Error, namespace: &str) -> Error {
    write_error_with(err, namespace, pg_write)
}

/// [`write_error`], with `other` mapping every error that is not the kernel's own: `pg_write`
/// for a statement that commits by itself, `pg` for one inside a transaction not yet
/// committed (a broken connection there rolls it back, so nothing was applied).
pub(crate) fn write_error_with(
    err: tokio_postgres::Error,
    namespace: &str,
    other: fn(tokio_postgres::Error) -> Error,
) -> Error {
    match kernel_state(&err) {
        Some(s) if s.state == KernelSqlState::AlreadyExists => {
            already_exists(namespace, &s.detail).with_context("backend", BACKEND)
        }
        Some(s) if s.state == KernelSqlState::VersionConflict => {
            version_conflict(namespace, &s.detail, s.current_version())
        }
        _ => other(err).with_context("namespace", namespace),
    }
}

/// The `Conflict` of a refused `IfVersion` put of `key`, carrying the live version (`None`:
/// absent).
fn version_conflict(namespace: &str, key: &str, current: Option<u64>) -> Error {
    Error::conflict("the key is not at the expected version")
        .with_context("namespace", namespace)
        .with_context("key", validate::escape(key))
        .with_context("backend", BACKEND)
        .with_current_version(current)
}

impl PostgresDriver {
    async fn put_batch(&self, namespace: &str, arrays: PutArrays) -> Result<Vec<Entry>> {
        let mut client = self.client().await?;
        let companion = companion::current();
        let mut tx = None;
        let on = match &companion {
            Some(c) => On::from(&*tx.insert(self.begin_with(&mut client, c).await?)),
            None => On::from(&client),
        };
        let entries = arrays
            .write(self.statements(), on, namespace, pg_write)
            .await?;
        if let (Some(c), Some(tx)) = (companion, tx) {
            tx.commit().await.map_err(|e| write_error(e, namespace))?;
            c.mark_written();
        }
        Ok(entries)
    }

    /// A transaction on `client` whose first write is a layer's companion event
    /// ([`kernel_core::companion`]: the audit record of the write that follows), appended with
    /// `kernel_append` (which takes the stream's lock, is idempotent on the event id, and has
    /// the event numbered after commit). The caller commits and marks the companion written.
    async fn begin_with<'c>(&self, client: &'c mut Object, c: &Companion) -> Result<PgTx<'c>> {
        #[derive(Serialize)]
        struct AppendedEvent<'a> {
            id: kernel_core::Uuid,
            #[serde(rename = "type")]
            event_type: &'a str,
            payload: &'a Value,
            metadata: &'a kernel_core::Metadata,
            // kernel_append refuses a JSON null where a string may be: absent ones stay out.
            #[serde(skip_serializing_if = "Option::is_none")]
            correlation_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            causation_id: Option<&'a str>,
        }
        let e = c.event();
        let events = [AppendedEvent {
            id: e.id,
            event_type: &e.event_type,
            payload: &e.payload,
            metadata: &e.metadata,
            correlation_id: e.correlation_id.as_deref(),
            causation_id: e.causation_id.as_deref(),
        }];
        let tx = client.transaction().await.map_err(pg)?;
        self.statements()
            .query(
                &tx,
                "SELECT * FROM kernel_append($1, NULL, $2)",
                &[&c.stream(), &Jsonb(&events)],
            )
            .await
            .map_err(|err| {
                pg_write(err)
                    .with_context("stream", c.stream())
                    .with_context("event_id", e.id)
            })?;
        Ok(tx)
    }

    async fn delete_batch(&self, namespace: &str, arrays: DeleteArrays) -> Result<u64> {
        let mut client = self.client().await?;
        let params = arrays.params(&namespace);
        let companion = companion::current();
        let mut tx = None;
        let on = match &companion {
            Some(c) => On::from(&*tx.insert(self.begin_with(&mut client, c).await?)),
            None => On::from(&client),
        };
        let row = self
            .statements()
            .query_one(on, DELETE, &params)
            .await
            .map_err(|e| write_error(e, namespace))?;
        if let (Some(c), Some(tx)) = (companion, tx) {
            tx.commit().await.map_err(|e| write_error(e, namespace))?;
            c.mark_written();
        }
        DeleteArrays::count(&row)
    }

    /// Reads live entries of `keys` (any order).
    pub(crate) async fn fetch(&self, namespace: &str, keys: &[String]) -> Result<Vec<Entry>> {
        let client = self.client().await?;
        let rows = self
            .statements()
            .query(&client, FETCH, &[&namespace, &keys])
            .await
            .map_err(|e| pg(e).with_context("namespace", namespace))?;
        rows.iter().map(|r| entry(namespace, r)).collect()
    }
}

#[async_trait]
impl StorageDriver for PostgresDriver {
    fn capabilities(&self) -> Capabilities {
        let limits = self.inner.config.limits;
        let mut c = Capabilities::default();
        c.transactions = true;
        c.isolation = Some(Isolation::Serializable);
        c.native_query = true;
        c.ttl = true;
        c.atomic_batch = true;
        c.single_round_trip_batch = true;
        c.max_value_bytes = limits.max_value_bytes;
        c.max_depth = limits.max_depth;
        c.max_batch_size = MAX_BATCH_SIZE;
        c.durable = true;
        c.field_indexes = self.may_index();
        c
    }

    async fn status(&self) -> Result<Status> {
        let started = Instant::now();
        let client = self.client().await?;
        // O(1) in the data size: health probes call this every few seconds, and a count(*) over
        // a large table would turn a healthy server into a false 503. The planner's estimates
        // (`reltuples`, refreshed by autovacuum / ANALYZE; -1 before the first) stand in.
        let row = client
            .query_typed_one(
                "SELECT current_setting('server_version'), \
                 (SELECT c.reltuples::bigint FROM pg_class c WHERE c.oid = 'kernel_namespaces'::regclass), \
                 (SELECT c.reltuples::bigint FROM pg_class c WHERE c.oid = 'kernel_documents'::regclass)",
                &[],
            )
            .await
            .map_err(pg)?;
        let latency = started.elapsed();
        let pool = self.inner.pool.status();
        let mut details = std::collections::BTreeMap::new();
        details.insert(
            "server_version".to_owned(),
            row.try_get::<_, String>(0).map_err(pg)?,
        );
        details.insert("url".to_owned(), self.inner.config.redacted_url());
        details.insert("pool_max".to_owned(), pool.max_size.to_string());
        details.insert("pool_open".to_owned(), pool.size.to_string());
        details.insert("pool_idle".to_owned(), pool.available.to_string());
        for (column, name) in [(1, "namespaces_estimate"), (2, "documents_estimate")] {
            let estimate: Option<i64> = row.try_get(column).map_err(pg)?;
            if let Some(n) = estimate.filter(|n| *n >= 0) {
                details.insert(name.to_owned(), n.to_string());
            }
        }
        if let Some(marker) = self.inner.generation.expected() {
            details.insert("generation".to_owned(), marker);
        }
        // At once, not at most once a second: a health probe must see a loss when it happens.
        let checked = match self.inner.generation.due("status", true) {
            Ok(true) => self.inner.generation.verify(&client, "status").await,
            Ok(false) => Ok(()),
            Err(lost) => Err(lost),
        };
        if let Err(lost) = checked {
            if lost.code() != kernel_core::ErrorCode::Corrupted {
                return Err(lost);
            }
            details.insert("error".to_owned(), lost.to_string());
            let mut status = Status::new(BACKEND, false, latency);
            status.details = details;
            return Ok(status);
        }
        let mut status = Status::new(BACKEND, true, latency);
        status.details = details;
        Ok(status)
    }

    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Entry>> {
        validate::document(namespace, key)?;
        let client = self.client().await?;
        let row = self
            .statements()
            .query_opt(&client, GET, &[&namespace, &key])
            .await
            .map_err(|e| {
                pg(e)
                    .with_context("namespace", namespace)
                    .with_context("key", validate::escape(key))
            })?;
        row.map(|r| entry(namespace, &r)).transpose()
    }

    async fn put(
        &self,
        namespace: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry> {
        let arrays = PutArrays::one(self, namespace, key, value, options)?;
        let mut entries = self.put_batch(namespace, arrays).await?;
        entries.pop().ok_or_else(|| {
            Error::internal("kernel_put returned no row").with_context("namespace", namespace)
        })
    }

    async fn delete(&self, namespace: &str, key: &str, condition: DeleteCondition) -> Result<bool> {
        let arrays = DeleteArrays::one(namespace, key, condition)?;
        Ok(self.delete_batch(namespace, arrays).await? > 0)
    }

    async fn exists(&self, namespace: &str, key: &str) -> Result<bool> {
        validate::document(namespace, key)?;
        let client = self.client().await?;
        let row = self
            .statements()
            .query_one(&client, EXISTS, &[&namespace, &key])
            .await
            .map_err(|e| {
                pg(e)
                    .with_context("namespace", namespace)
                    .with_context("key", validate::escape(key))
            })?;
        row.try_get(0).map_err(pg)
    }

    async fn get_many(&self, namespace: &str, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        validate::batch(namespace, keys.iter().map(String::as_str), false)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut found: HashMap<String, Entry> = self
            .fetch(namespace, keys)
            .await?
            .into_iter()
            .map(|e| (e.key.clone(), e))
            .collect();
        // Each entry moves to the last request for its key; only a key asked for twice (and
        // answered twice) is cloned.
        let mut left: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
        for k in keys {
            *left.entry(k.as_str()).or_default() += 1;
        }
        Ok(keys
            .iter()
            .map(|k| match left.get_mut(k.as_str()) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    found.get(k).cloned()
                }
                _ => found.remove(k),
            })
            .collect())
    }

    async fn put_many(&self, namespace: &str, items: Vec<BatchPut>) -> Result<Vec<Entry>> {
        let arrays = PutArrays::many(self, namespace, items)?;
        if arrays.is_empty() {
            return Ok(Vec::new());
        }
        self.put_batch(namespace, arrays).await
    }

    async fn delete_many(&self, namespace: &str, items: Vec<BatchDelete>) -> Result<u64> {
        let arrays = DeleteArrays::many(namespace, items)?;
        if arrays.is_empty() {
            return Ok(0);
        }
        self.delete_batch(namespace, arrays).await
    }

    async fn list(&self, namespace: &str, options: &ListOptions) -> Result<ListPage> {
        validate::namespace(namespace)?;
        let glob = options
            .validate()
            .map_err(|e| e.with_context("namespace", namespace))?;
        let mut b = SqlBuilder::new(&format!(
            "SELECT {ENTRY_COLUMNS} FROM kernel_documents d WHERE "
        ));
        let ns = b.bind(namespace.to_owned(), Type::TEXT);
        b.push(&format!("d.namespace = {ns} AND {LIVE}"));
        if let Some(prefix) = options.prefix.as_deref().filter(|p| !p.is_empty()) {
            // A byte range, not LIKE: exact for every character and served by the key index.
            let low = b.bind(prefix.to_owned(), Type::TEXT);
            b.push(&format!(" AND d.key >= {low}"));
            if let Some(upper) = prefix_upper_bound(prefix) {
                let high = b.bind(upper, Type::TEXT);
                b.push(&format!(" AND d.key < {high}"));
            }
        }
        if let Some(glob) = &glob {
            let like = b.bind(glob.to_sql_like(), Type::TEXT);
            b.push(&format!(" AND d.key LIKE {like} ESCAPE '\\'"));
        }
        if let Some(after) = &options.after {
            let c = b.bind(after.clone(), Type::TEXT);
            let cmp = if options.reverse { "<" } else { ">" };
            b.push(&format!(" AND d.key {cmp} {c}"));
        }
        b.push(if options.reverse {
            " ORDER BY d.key DESC"
        } else {
            " ORDER BY d.key ASC"
        });
        let offset = b.bind(limit_i64(options.offset), Type::INT8);
        let limit = b.bind(
            options.limit.map(|l| limit_i64(l).saturating_add(1)),
            Type::INT8,
        );
        b.push(&format!(" OFFSET {offset} LIMIT {limit}"));
        let client = self.client().await?;
        let rows = client
            .query_typed(&b.sql, &b.params())
            .await
            .map_err(|e| pg(e).with_context("namespace", namespace))?;
        let entries = rows
            .iter()
            .map(|r| entry(namespace, r))
            .collect::<Result<Vec<_>>>()?;
        Ok(ListPage::from_overfetch(entries, options.limit))
    }

    async fn query(&self, namespace: &str, query: &Query) -> Result<Vec<Entry>> {
        validate::namespace(namespace)?;
        query
            .validate()
            .map_err(|e| e.with_context("namespace", namespace))?;
        let client = self.client().await?;
        let b = self.query_sql(&client, namespace, query).await?;
        let rows = client
            .query_typed(&b.sql, &b.params())
            .await
            .map_err(|e| pg(e).with_context("namespace", namespace))?;
        rows.iter().map(|r| entry(namespace, r)).collect()
    }

    async fn count(&self, namespace: &str, filter: Option<&Filter>) -> Result<u64> {
        validate::namespace(namespace)?;
        if let Some(f) = filter {
            f.validate()
                .map_err(|e| e.with_context("namespace", namespace))?;
        }
        let client = self.client().await?;
        let indexed = match filter {
            Some(_) => self.indexed_fields(&client, namespace).await,
            None => None,
        };
        let mut b = SqlBuilder::new("SELECT count(*) FROM kernel_documents d WHERE ");
        b.namespace(namespace, indexed, LIVE);
        if let Some(f) = filter {
            b.push(" AND ");
            b.filter(f)
                .map_err(|e| e.with_context("namespace", namespace))?;
        }
        let rows = client
            .query_typed(&b.sql, &b.params())
            .await
            .map_err(|e| pg(e).with_context("namespace", namespace))?;
        let row = rows
            .first()
            .ok_or_else(|| Error::internal("count returned no row"))?;
        rows::version(row.try_get(0).map_err(pg)?)
    }

    async fn clear(&self, namespace: &str) -> Result<u64> {
        validate::namespace(namespace)?;
        let client = self.client().await?;
        let row = self
            .statements()
            .query_one(
                &client,
                "WITH gone AS (DELETE FROM kernel_documents d WHERE d.namespace = $1 \
                 RETURNING (d.expires_at IS NULL OR d.expires_at > clock_timestamp()) AS live) \
                 SELECT count(*) FILTER (WHERE live) FROM gone",
                &[&namespace],
            )
            .await
            .map_err(|e| pg_write(e).with_context("namespace", namespace))?;
        rows::version(row.try_get(0).map_err(pg)?)
    }

    async fn create_namespace(&self, namespace: &str, metadata: Metadata) -> Result<NamespaceInfo> {
        validate::namespace(namespace)?;
        validate::metadata(&metadata, &self.inner.config.limits)
            .and_then(|()| rows::check_nul(None, Some(&metadata)))
            .map_err(|e| e.with_context("namespace", namespace))?;
        let client = self.client().await?;
        let row = self
            .statements()
            .query_opt(
                &client,
                "INSERT INTO kernel_namespaces (name, metadata) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING RETURNING name, metadata, created_at",
                &[&namespace, &Jsonb(Value::Object(metadata))],
            )
            .await
            .map_err(|e| pg_write(e).with_context("namespace", namespace))?;
        match row {
            Some(r) => namespace_info(&r),
            None => Err(Error::new(
                kernel_core::ErrorCode::AlreadyExists,
                "the namespace already exists",
            )
            .with_context("namespace", namespace)),
        }
    }

    async fn drop_namespace(&self, namespace: &str, recursive: bool) -> Result<bool> {
        validate::namespace(namespace)?;
        let client = self.client().await?;
        let row = self
            .statements()
            .query_one(
                &client,
                "SELECT kernel_drop_namespace($1, $2)",
                &[&namespace, &recursive],
            )
            .await
            .map_err(|e| match kernel_state(&e) {
                Some(s) if s.state == KernelSqlState::NamespaceNotEmpty => Error::conflict(
                    "the namespace is not empty: drop it recursively or clear it first",
                )
                .with_context("namespace", namespace),
                _ => pg_write(e).with_context("namespace", namespace),
            })?;
        let dropped = row.try_get(0).map_err(pg)?;
        // Also when it did not exist: indexes may be declared before the first write.
        self.drop_namespace_indexes(&client, namespace)
            .await
            .map_err(|e| {
                e.with_context("namespace", namespace)
                    .with_context("step", "dropping the namespace's field indexes")
            })?;
        Ok(dropped)
    }

    async fn list_namespaces(&self) -> Result<Vec<NamespaceInfo>> {
        let client = self.client().await?;
        let rows = self
            .statements()
            .query(
                &client,
                "SELECT name, metadata, created_at FROM kernel_namespaces ORDER BY name",
                &[],
            )
            .await
            .map_err(pg)?;
        rows.iter().map(namespace_info).collect()
    }

    async fn set_metadata(
        &self,
        namespace: &str,
        key: &str,
        metadata: Metadata,
        mode: MetadataMode,
    ) -> Result<Entry> {
        validate::document(namespace, key)?;
        validate::metadata(&metadata, &self.inner.config.limits)
            .and_then(|()| rows::check_nul(None, Some(&metadata)))
            .map_err(|e| {
                e.with_context("namespace", namespace)
                    .with_context("key", validate::escape(key))
            })?;
        // Merge: members set to null are removed, the others overwrite or add.
        let (merge, remove, set): (bool, Vec<String>, Metadata) = match mode {
            MetadataMode::Replace => (false, Vec::new(), metadata),
            MetadataMode::Merge => {
                let (nulls, set): (Vec<_>, Vec<_>) =
                    metadata.into_iter().partition(|(_, v)| v.is_null());
                (
                    true,
                    nulls.into_iter().map(|(k, _)| k).collect(),
                    set.into_iter().collect(),
                )
            }
            other => {
                return Err(Error::unsupported_variant("metadata mode", &other)
                    .with_context("backend", BACKEND)
                    .with_context("namespace", namespace)
                    .with_context("key", validate::escape(key)));
            }
        };
        let client = self.client().await?;
        let row = self
            .statements()
            .query_opt(
                &client,
                &format!(
                    "UPDATE kernel_documents d SET \
                 metadata = CASE WHEN $3 THEN (d.metadata - $4::text[]) || $5 ELSE $5 END, \
                 version = d.version + 1, updated_at = clock_timestamp() \
                 WHERE d.namespace = $1 AND d.key = $2 AND {LIVE} RETURNING {ENTRY_COLUMNS}"
                ),
                &[
                    &namespace,
                    &key,
                    &merge,
                    &remove,
                    &Jsonb(Value::Object(set)),
                ],
            )
            .await
            .map_err(|e| {
                pg_write(e)
                    .with_context("namespace", namespace)
                    .with_context("key", validate::escape(key))
            })?;
        match row {
            Some(r) => entry(namespace, &r),
            None => Err(Error::not_found("no live entry to set metadata on")
                .with_context("namespace", namespace)
                .with_context("key", validate::escape(key))),
        }
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(PgTransaction::new(self.clone())))
    }

    async fn write_once(&self, namespace: &str, id: &OperationId, write: Write) -> Result<Applied> {
        self.apply_once(namespace, id, write).await
    }

    async fn operation(&self, namespace: &str, id: &OperationId) -> Result<Option<Outcome>> {
        self.recorded_operation(namespace, id).await
    }

    async fn create_index(&self, namespace: &str, spec: &IndexSpec) -> Result<IndexInfo> {
        self.create_field_index(namespace, spec).await
    }

    async fn drop_index(&self, namespace: &str, field: &str) -> Result<bool> {
        self.drop_field_index(namespace, field).await
    }

    async fn list_indexes(&self, namespace: &str) -> Result<Vec<IndexInfo>> {
        self.list_field_indexes(namespace).await
    }
}

/// `kernel_delete`'s `p_cond_version[i]`: NULL deletes unconditionally.
fn delete_version(condition: DeleteCondition) -> Result<Option<i64>> {
    match condition {
        DeleteCondition::Always => Ok(None),
        DeleteCondition::IfVersion(v) => Ok(Some(to_i64(v))),
        other => {
            Err(Error::unsupported_variant("delete condition", &other)
                .with_context("backend", BACKEND))
        }
    }
}

fn namespace_info(row: &tokio_postgres::Row) -> Result<NamespaceInfo> {
    Ok(NamespaceInfo {
        name: row.try_get(0).map_err(pg)?,
        metadata: rows::metadata(row.try_get(1).map_err(pg)?)?,
        created_at: row.try_get(2).map_err(pg)?,
    })
}
