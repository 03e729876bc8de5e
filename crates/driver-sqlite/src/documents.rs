//! Documents: `kernel_documents` keyed by `(namespace, key BLOB)`, so listing is an index range
//! scan in byte-wise order. Writes are writer jobs; reads run on the read connections.

use std::time::Instant;

use async_trait::async_trait;
use kernel_core::validate::{self, MAX_BATCH_SIZE, escape};
use kernel_core::{
    Applied, BatchDelete, BatchPut, Capabilities, DeleteCondition, Entry, Error, ErrorCode, Filter,
    Isolation, Limits, ListOptions, ListPage, Metadata, MetadataMode, NamespaceInfo, OperationId,
    Outcome, PutOptions, Query, Result, Status, StorageDriver, Transaction, Value, Write,
};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use crate::error::{Db, corrupted};
use crate::transaction::SqliteTransaction;
use crate::writer::WriteCtx;
use crate::{SqliteDriver, from_micros, from_sql_int, sql_int, unix_micros_now};

/// The columns every entry query selects, in the order [`decode`] reads them.
pub(crate) const COLS: &str =
    "key, value, metadata, version, created_at, updated_at, expires_at, stamp";

/// The live-row condition; `?2` is now in microseconds.
const LIVE: &str = "(expires_at IS NULL OR expires_at > ?2)";

/// Decodes a row selected with [`COLS`]: the entry and its write stamp.
pub(crate) fn decode(ns: &str, row: &Row<'_>) -> Result<(Entry, i64)> {
    let key = row.get_ref(0).db()?.as_blob().db()?;
    let key = std::str::from_utf8(key)
        .map_err(|e| corrupted("document key", e).with_context("namespace", ns))?
        .to_owned();
    let ctx = |e: Error| {
        e.with_context("namespace", ns)
            .with_context("key", escape(&key))
    };
    let value: Value = serde_json::from_str(row.get_ref(1).db()?.as_str().db()?)
        .map_err(|e| ctx(corrupted("document value", e)))?;
    let metadata: Metadata = serde_json::from_str(row.get_ref(2).db()?.as_str().db()?)
        .map_err(|e| ctx(corrupted("document metadata", e)))?;
    let version = from_sql_int(row.get(3).db()?, "document version").map_err(ctx)?;
    let created_at = from_micros(row.get(4).db()?);
    let updated_at = from_micros(row.get(5).db()?);
    let expires_at = row.get::<_, Option<i64>>(6).db()?.map(from_micros);
    let stamp: i64 = row.get(7).db()?;
    Ok((
        Entry {
            namespace: ns.to_owned(),
            key,
            value,
            metadata,
            version,
            created_at,
            updated_at,
            expires_at,
        },
        stamp,
    ))
}

/// The live entry at `(ns, key)` and its stamp.
pub(crate) fn load_live(
    conn: &Connection,
    ns: &str,
    key: &str,
    now: i64,
) -> Result<Option<(Entry, i64)>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLS} FROM kernel_documents WHERE namespace = ?1 AND key = ?3 AND {LIVE}"
        ))
        .db()?;
    let mut rows = stmt.query(params![ns, now, key.as_bytes()]).db()?;
    match rows.next().db()? {
        Some(row) => decode(ns, row).map(Some),
        None => Ok(None),
    }
}

/// Decides a put against the current live entry: checks the condition, computes the entry.
pub(crate) fn plan_put(
    current: Option<&Entry>,
    ns: &str,
    key: &str,
    value: Value,
    options: PutOptions,
    now_us: i64,
) -> Result<Entry> {
    options
        .condition
        .check(ns, key, current.map(|e| e.version))?;
    let now = from_micros(now_us);
    let expires_at = options.ttl.map(|ttl| {
        let ttl_us = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        from_micros(now_us.saturating_add(ttl_us.max(1)))
    });
    Ok(Entry::after_put(
        current,
        ns,
        key,
        value,
        options.metadata,
        now,
        expires_at,
    ))
}

fn json_text(v: &impl serde::Serialize, what: &str) -> Result<String> {
    serde_json::to_string(v)
        .map_err(|e| Error::invalid_input(format!("{what} cannot be serialized as JSON: {e}")))
}

/// Writes `entry` (replacing any row at its key, expired or not) with a fresh stamp, creating
/// its namespace if needed.
pub(crate) fn store(ctx: &mut WriteCtx<'_>, entry: &Entry, now_us: i64) -> Result<()> {
    ensure_namespace(ctx.conn, &entry.namespace, now_us)?;
    let stamp = ctx.stamp()?;
    ctx.conn
        .prepare_cached(
            "INSERT OR REPLACE INTO kernel_documents
                 (namespace, key, value, metadata, version, created_at, updated_at, expires_at,
                  stamp)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .db()?
        .execute(params![
            entry.namespace,
            entry.key.as_bytes(),
            json_text(&entry.value, "value")?,
            json_text(&entry.metadata, "metadata")?,
            sql_int(entry.version),
            crate::to_micros(entry.created_at),
            crate::to_micros(entry.updated_at),
            entry.expires_at.map(crate::to_micros),
            stamp,
        ])
        .db()?;
    Ok(())
}

/// Deletes the row at `(ns, key)`, live or expired.
pub(crate) fn remove(conn: &Connection, ns: &str, key: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM kernel_documents WHERE namespace = ?1 AND key = ?2")
        .db()?
        .execute(params![ns, key.as_bytes()])
        .db()?;
    Ok(())
}

/// The checks of `put_many`, before any I/O.
pub(crate) fn validate_put_many(ns: &str, items: &[BatchPut], limits: &Limits) -> Result<()> {
    validate::batch(ns, items.iter().map(|i| i.key.as_str()), true)?;
    for i in items {
        validate::put(ns, &i.key, &i.value, &i.options, limits)?;
    }
    Ok(())
}

/// The checks of `delete_many`, before any I/O.
pub(crate) fn validate_delete_many(ns: &str, items: &[BatchDelete]) -> Result<()> {
    validate::batch(ns, items.iter().map(|i| i.key.as_str()), true)
}

/// A put inside a writer job: the body of [`StorageDriver::put`] (and of its `write_once`).
pub(crate) fn apply_put(
    ctx: &mut WriteCtx<'_>,
    ns: &str,
    key: &str,
    value: Value,
    options: PutOptions,
) -> Result<Entry> {
    let now = unix_micros_now();
    let current = load_live(ctx.conn, ns, key, now)?.map(|(e, _)| e);
    let entry = plan_put(current.as_ref(), ns, key, value, options, now)?;
    store(ctx, &entry, now)?;
    Ok(entry)
}

/// A delete inside a writer job; `true` if a live entry was removed.
pub(crate) fn apply_delete(
    ctx: &mut WriteCtx<'_>,
    ns: &str,
    key: &str,
    condition: DeleteCondition,
) -> Result<bool> {
    let now = unix_micros_now();
    let current = load_live(ctx.conn, ns, key, now)?.map(|(e, _)| e.version);
    condition.check(ns, key, current)?;
    remove(ctx.conn, ns, key)?;
    Ok(current.is_some())
}

/// A `put_many` inside a writer job: the entries as written, in request order.
pub(crate) fn apply_put_many(
    ctx: &mut WriteCtx<'_>,
    ns: &str,
    items: Vec<BatchPut>,
) -> Result<Vec<Entry>> {
    let now = unix_micros_now();
    // Decide every item before writing any; a failed condition rolls the job's savepoint back
    // anyway, so nothing of the batch is written.
    let mut planned = Vec::with_capacity(items.len());
    for i in items {
        let current = load_live(ctx.conn, ns, &i.key, now)?.map(|(e, _)| e);
        planned.push(plan_put(
            current.as_ref(),
            ns,
            &i.key,
            i.value,
            i.options,
            now,
        )?);
    }
    for entry in &planned {
        store(ctx, entry, now).map_err(doc_ctx(ns, &entry.key))?;
    }
    Ok(planned)
}

/// A `delete_many` inside a writer job: how many live entries went.
pub(crate) fn apply_delete_many(
    ctx: &mut WriteCtx<'_>,
    ns: &str,
    items: &[BatchDelete],
) -> Result<u64> {
    let now = unix_micros_now();
    let mut removed = 0;
    for i in items {
        let current = load_live(ctx.conn, ns, &i.key, now)?.map(|(e, _)| e.version);
        i.condition.check(ns, &i.key, current)?;
        removed += u64::from(current.is_some());
    }
    for i in items {
        remove(ctx.conn, ns, &i.key)?;
    }
    Ok(removed)
}

fn ensure_namespace(conn: &Connection, ns: &str, now_us: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO kernel_namespaces (name, metadata, created_at) VALUES (?1, '{}', ?2)",
    )
    .db()?
    .execute(params![ns, now_us])
    .db()?;
    Ok(())
}

fn count_live(conn: &Connection, ns: &str, now: i64) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached(&format!(
            "SELECT COUNT(*) FROM kernel_documents WHERE namespace = ?1 AND {LIVE}"
        ))
        .db()?
        .query_row(params![ns, now], |r| r.get(0))
        .db()?;
    from_sql_int(n, "count")
}

/// Every live entry of a namespace in key order, decoded.
fn scan(conn: &Connection, ns: &str, now: i64) -> Result<Vec<Entry>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLS} FROM kernel_documents WHERE namespace = ?1 AND {LIVE} ORDER BY key"
        ))
        .db()?;
    let mut rows = stmt.query(params![ns, now]).db()?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().db()? {
        out.push(decode(ns, row)?.0);
    }
    Ok(out)
}

fn decode_namespace(row: &Row<'_>) -> Result<NamespaceInfo> {
    let name: String = row.get(0).db()?;
    let metadata: Metadata = serde_json::from_str(row.get_ref(1).db()?.as_str().db()?)
        .map_err(|e| corrupted("namespace metadata", e).with_context("namespace", &name))?;
    Ok(NamespaceInfo {
        name,
        metadata,
        created_at: from_micros(row.get(2).db()?),
    })
}

/// The smallest byte string greater than every string starting with `prefix`, if any.
fn prefix_upper(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut v = prefix.to_vec();
    while let Some(last) = v.pop() {
        if last < 0xFF {
            v.push(last + 1);
            return Some(v);
        }
    }
    None
}

pub(crate) fn doc_ctx(ns: &str, key: &str) -> impl Fn(Error) -> Error {
    let ns = ns.to_owned();
    let key = escape(key);
    move |e| e.with_context("namespace", &ns).with_context("key", &key)
}

#[async_trait]
impl StorageDriver for SqliteDriver {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.transactions = true;
        caps.isolation = Some(Isolation::Serializable);
        caps.native_query = false;
        caps.ttl = true;
        caps.atomic_batch = true;
        caps.single_round_trip_batch = true;
        caps.max_value_bytes = self.inner.limits().max_value_bytes;
        caps.max_depth = self.inner.limits().max_depth;
        caps.max_batch_size = MAX_BATCH_SIZE;
        caps.durable = true;
        caps
    }

    async fn status(&self) -> Result<Status> {
        let started = Instant::now();
        let path = self.inner.path.clone();
        let synchronous = self.inner.config.synchronous.as_str();
        // O(1) in the data size (health probes call it every few seconds): the schema version
        // proves the file is readable; no COUNT(*).
        let generation = self.inner.generation.clone();
        let checked = generation.clone();
        let (schema, check) = self
            .inner
            .read("status", move |conn| {
                let schema = crate::migrations::current_version(conn)?;
                // A data-loss check reads one row and the rowid maximum: O(1) as well.
                Ok((schema, checked.check(conn, "status", true)))
            })
            .await?;
        let lost = generation.lost();
        if lost.is_none() {
            // Not a loss: the file could not be read.
            check.map_err(|e| crate::error::with_path(e, &self.inner.path))?;
        }
        let mut status = Status::new("sqlite", lost.is_none(), started.elapsed());
        status
            .details
            .insert("generation".to_owned(), generation.expected());
        status
            .details
            .insert("seen_position".to_owned(), generation.seen().to_string());
        if let Some(lost) = lost {
            status.details.insert("error".to_owned(), lost.to_string());
        }
        status.details.insert("path".to_owned(), path);
        status
            .details
            .insert("sqlite_version".to_owned(), rusqlite::version().to_owned());
        status
            .details
            .insert("schema_version".to_owned(), schema.to_string());
        status
            .details
            .insert("synchronous".to_owned(), synchronous.to_lowercase());
        Ok(status)
    }

    async fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>> {
        validate::document(ns, key)?;
        let (n, k) = (ns.to_owned(), key.to_owned());
        self.inner
            .read("get", move |conn| {
                Ok(load_live(conn, &n, &k, unix_micros_now())?.map(|(e, _)| e))
            })
            .await
            .map_err(doc_ctx(ns, key))
    }

    async fn put(&self, ns: &str, key: &str, value: Value, options: PutOptions) -> Result<Entry> {
        validate::put(ns, key, &value, &options, self.inner.limits())?;
        let (n, k) = (ns.to_owned(), key.to_owned());
        self.inner
            .write("put", move |ctx| apply_put(ctx, &n, &k, value, options))
            .await
            .map_err(doc_ctx(ns, key))
    }

    async fn delete(&self, ns: &str, key: &str, condition: DeleteCondition) -> Result<bool> {
        validate::document(ns, key)?;
        let (n, k) = (ns.to_owned(), key.to_owned());
        self.inner
            .write("delete", move |ctx| apply_delete(ctx, &n, &k, condition))
            .await
            .map_err(doc_ctx(ns, key))
    }

    async fn exists(&self, ns: &str, key: &str) -> Result<bool> {
        validate::document(ns, key)?;
        let (n, k) = (ns.to_owned(), key.to_owned());
        self.inner
            .read("exists", move |conn| {
                let found: Option<i64> = conn
                    .prepare_cached(&format!(
                        "SELECT 1 FROM kernel_documents WHERE namespace = ?1 AND key = ?3 AND {LIVE}"
                    ))
                    .db()?
                    .query_row(params![n, unix_micros_now(), k.as_bytes()], |r| r.get(0))
                    .optional()
                    .db()?;
                Ok(found.is_some())
            })
            .await
            .map_err(doc_ctx(ns, key))
    }

    async fn get_many(&self, ns: &str, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        validate::batch(ns, keys.iter().map(String::as_str), false)?;
        let n = ns.to_owned();
        let keys = keys.to_vec();
        self.inner
            .read("get_many", move |conn| {
                let now = unix_micros_now();
                let tx = conn.unchecked_transaction().db()?;
                let mut out = Vec::with_capacity(keys.len());
                for k in &keys {
                    out.push(load_live(&tx, &n, k, now)?.map(|(e, _)| e));
                }
                drop(tx);
                Ok(out)
            })
            .await
            .map_err(|e| e.with_context("namespace", ns))
    }

    async fn put_many(&self, ns: &str, items: Vec<BatchPut>) -> Result<Vec<Entry>> {
        validate_put_many(ns, &items, self.inner.limits())?;
        let n = ns.to_owned();
        self.inner
            .write("put_many", move |ctx| apply_put_many(ctx, &n, items))
            .await
            .map_err(|e| e.with_context("namespace", ns))
    }

    async fn delete_many(&self, ns: &str, items: Vec<BatchDelete>) -> Result<u64> {
        validate_delete_many(ns, &items)?;
        let n = ns.to_owned();
        self.inner
            .write("delete_many", move |ctx| apply_delete_many(ctx, &n, &items))
            .await
            .map_err(|e| e.with_context("namespace", ns))
    }

    async fn list(&self, ns: &str, options: &ListOptions) -> Result<ListPage> {
        validate::namespace(ns)?;
        let glob = options
            .validate()
            .map_err(|e| e.with_context("namespace", ns))?;
        let n = ns.to_owned();
        let options = options.clone();
        self.inner
            .read("list", move |conn| {
                // Narrow the range to the prefix (a glob's literal prefix counts too).
                let mut prefix = options.prefix.clone().unwrap_or_default();
                if let Some(g) = &glob {
                    let lp = g.literal_prefix();
                    if lp.starts_with(prefix.as_str()) {
                        prefix = lp;
                    }
                }
                let mut sql =
                    format!("SELECT {COLS} FROM kernel_documents WHERE namespace = ?1 AND {LIVE}");
                let mut args: Vec<SqlValue> = vec![
                    SqlValue::Text(n.clone()),
                    SqlValue::Integer(unix_micros_now()),
                ];
                if !prefix.is_empty() {
                    args.push(SqlValue::Blob(prefix.as_bytes().to_vec()));
                    sql.push_str(&format!(" AND key >= ?{}", args.len()));
                    if let Some(upper) = prefix_upper(prefix.as_bytes()) {
                        args.push(SqlValue::Blob(upper));
                        sql.push_str(&format!(" AND key < ?{}", args.len()));
                    }
                }
                if let Some(after) = &options.after {
                    args.push(SqlValue::Blob(after.as_bytes().to_vec()));
                    let op = if options.reverse { "<" } else { ">" };
                    sql.push_str(&format!(" AND key {op} ?{}", args.len()));
                }
                sql.push_str(if options.reverse {
                    " ORDER BY key DESC"
                } else {
                    " ORDER BY key ASC"
                });
                let want = options
                    .limit
                    .map(|l| l.saturating_add(1))
                    .unwrap_or(usize::MAX);
                let mut stmt = conn.prepare_cached(&sql).db()?;
                let mut rows = stmt.query(params_from_iter(args)).db()?;
                let mut entries = Vec::new();
                let mut skipped = 0usize;
                while entries.len() < want {
                    let Some(row) = rows.next().db()? else { break };
                    // Check the key before decoding the value: skipped rows cost no JSON parse.
                    let key = row.get_ref(0).db()?.as_blob().db()?;
                    let key = std::str::from_utf8(key)
                        .map_err(|e| corrupted("document key", e).with_context("namespace", &n))?;
                    if !options.admits(key, glob.as_ref()) {
                        continue;
                    }
                    if skipped < options.offset {
                        skipped += 1;
                        continue;
                    }
                    entries.push(decode(&n, row)?.0);
                }
                Ok(ListPage::from_overfetch(entries, options.limit))
            })
            .await
            .map_err(|e| e.with_context("namespace", ns))
    }

    async fn query(&self, ns: &str, query: &Query) -> Result<Vec<Entry>> {
        validate::namespace(ns)?;
        query
            .validate()
            .map_err(|e| e.with_context("namespace", ns))?;
        let n = ns.to_owned();
        let query = query.clone();
        self.inner
            .read("query", move |conn| {
                let all = scan(conn, &n, unix_micros_now())?;
                Ok(query.apply(all, |e| &e.key, |e| &e.value))
            })
            .await
            .map_err(|e| e.with_context("namespace", ns))
    }

    async fn count(&self, ns: &str, filter: Option<&Filter>) -> Result<u64> {
        validate::namespace(ns)?;
        if let Some(f) = filter {
            f.validate().map_err(|e| e.with_context("namespace", ns))?;
        }
        let n = ns.to_owned();
        let filter = filter.cloned();
        self.inner
            .read("count", move |conn| {
                let now = unix_micros_now();
                match filter {
                    None => count_live(conn, &n, now),
                    Some(f) => {
                        let mut stmt = conn
                            .prepare_cached(&format!(
                                "SELECT value FROM kernel_documents WHERE namespace = ?1 AND {LIVE}"
                            ))
                            .db()?;
                        let mut rows = stmt.query(params![n, now]).db()?;
                        let mut count = 0u64;
                        while let Some(row) = rows.next().db()? {
                            let v: Value = serde_json::from_str(
                                row.get_ref(0).db()?.as_str().db()?,
                            )
                            .map_err(|e| {
                                corrupted("document value", e).with_context("namespace", &n)
                            })?;
                            count += u64::from(f.matches(&v));
                        }
                        Ok(count)
                    }
                }
            })
            .await
            .map_err(|e| e.with_context("namespace", ns))
    }

    async fn clear(&self, ns: &str) -> Result<u64> {
        validate::namespace(ns)?;
        let n = ns.to_owned();
        self.inner
            .write("clear", move |ctx| {
                let live = count_live(ctx.conn, &n, unix_micros_now())?;
                ctx.conn
                    .prepare_cached("DELETE FROM kernel_documents WHERE namespace = ?1")
                    .db()?
                    .execute([&n])
                    .db()?;
                Ok(live)
            })
            .await
            .map_err(|e| e.with_context("namespace", ns))
    }

    async fn create_namespace(&self, ns: &str, metadata: Metadata) -> Result<NamespaceInfo> {
        validate::namespace(ns)?;
        validate::metadata(&metadata, self.inner.limits())
            .map_err(|e| e.with_context("namespace", ns))?;
        let n = ns.to_owned();
        self.inner
            .write("create_namespace", move |ctx| {
                let now = unix_micros_now();
                let inserted = ctx
                    .conn
                    .prepare_cached(
                        "INSERT OR IGNORE INTO kernel_namespaces (name, metadata, created_at)
                         VALUES (?1, ?2, ?3)",
                    )
                    .db()?
                    .execute(params![n, json_text(&metadata, "metadata")?, now])
                    .db()?;
                if inserted == 0 {
                    return Err(Error::new(
                        ErrorCode::AlreadyExists,
                        "the namespace already exists",
                    ));
                }
                Ok(NamespaceInfo {
                    name: n,
                    metadata,
                    created_at: from_micros(now),
                })
            })
            .await
            .map_err(|e| e.with_context("namespace", ns))
    }

    async fn drop_namespace(&self, ns: &str, recursive: bool) -> Result<bool> {
        validate::namespace(ns)?;
        let n = ns.to_owned();
        self.inner
            .write("drop_namespace", move |ctx| {
                let exists: Option<i64> = ctx
                    .conn
                    .prepare_cached("SELECT 1 FROM kernel_namespaces WHERE name = ?1")
                    .db()?
                    .query_row([&n], |r| r.get(0))
                    .optional()
                    .db()?;
                if exists.is_none() {
                    return Ok(false);
                }
                let live = count_live(ctx.conn, &n, unix_micros_now())?;
                if live > 0 && !recursive {
                    return Err(Error::conflict(format!(
                        "the namespace holds {live} entries; drop it with recursive to remove them"
                    )));
                }
                ctx.conn
                    .prepare_cached("DELETE FROM kernel_documents WHERE namespace = ?1")
                    .db()?
                    .execute([&n])
                    .db()?;
                ctx.conn
                    .prepare_cached("DELETE FROM kernel_namespaces WHERE name = ?1")
                    .db()?
                    .execute([&n])
                    .db()?;
                Ok(true)
            })
            .await
            .map_err(|e| e.with_context("namespace", ns))
    }

    async fn list_namespaces(&self) -> Result<Vec<NamespaceInfo>> {
        self.inner
            .read("list_namespaces", |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT name, metadata, created_at FROM kernel_namespaces ORDER BY name",
                    )
                    .db()?;
                let mut rows = stmt.query([]).db()?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().db()? {
                    out.push(decode_namespace(row)?);
                }
                Ok(out)
            })
            .await
    }

    async fn set_metadata(
        &self,
        ns: &str,
        key: &str,
        metadata: Metadata,
        mode: MetadataMode,
    ) -> Result<Entry> {
        validate::document(ns, key)?;
        let (n, k) = (ns.to_owned(), key.to_owned());
        let limits = *self.inner.limits();
        self.inner
            .write("set_metadata", move |ctx| {
                let now = unix_micros_now();
                let Some((mut next, _)) = load_live(ctx.conn, &n, &k, now)? else {
                    return Err(Error::not_found("no live entry to set metadata on"));
                };
                mode.apply(&mut next.metadata, metadata);
                validate::metadata(&next.metadata, &limits)?;
                next.version += 1;
                next.updated_at = from_micros(now);
                store(ctx, &next, now)?;
                Ok(next)
            })
            .await
            .map_err(doc_ctx(ns, key))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        if self.inner.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(crate::error::shut_down().with_operation("begin"));
        }
        Ok(Box::new(SqliteTransaction::new(self.clone())))
    }

    async fn write_once(&self, ns: &str, id: &OperationId, write: Write) -> Result<Applied> {
        self.write_once_impl(ns, id, write).await
    }

    async fn operation(&self, ns: &str, id: &OperationId) -> Result<Option<Outcome>> {
        self.operation_impl(ns, id).await
    }
}

impl SqliteDriver {
    pub(crate) fn inner(&self) -> &crate::Inner {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_upper;

    #[test]
    fn prefix_upper_bounds() {
        assert_eq!(prefix_upper(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_upper(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_upper(b"\xff\xff"), None);
    }
}
