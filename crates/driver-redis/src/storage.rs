//! `StorageDriver` on Redis: one hash of encoded entries per namespace, a sorted set for
//! byte-wise ordered listing, a sorted set of expiries, all changed by Lua scripts.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use fred::interfaces::{ClientLike, HashesInterface};
use fred::types::Value as RedisValue;
use futures::StreamExt;
use kernel_core::document::{already_exists, version_conflict};
use kernel_core::glob::prefix_upper_bound;
use kernel_core::validate::{self, MAX_BATCH_SIZE, escape};
use kernel_core::{
    Applied, BatchDelete, BatchPut, Capabilities, DeleteCondition, Entry, Error, ErrorCode, Filter,
    Glob, Isolation, ListOptions, ListPage, Metadata, MetadataMode, NamespaceInfo, OperationId,
    Outcome, PutCondition, PutOptions, Query, Result, Status, StorageDriver, Transaction, Value,
    Write,
};

use crate::RedisDriver;
use crate::codec::{Reply, StoredEntry, decode_entry, from_micros, micros, to_json};
use crate::error::map_err;
use crate::transaction::RedisTransaction;

/// Keys read per script call when scanning a namespace.
const SCAN_BATCH: usize = 1000;
/// How often a metadata merge is retried when the entry changes under it.
const MERGE_ATTEMPTS: usize = 32;
/// One put in this many (per driver) asks `put.lua` to purge expired entries of its namespace;
/// the others skip that ZRANGEBYSCORE unless they set a TTL themselves. Expired entries are
/// invisible either way: the purge only gives their memory back, and a write that adds
/// expiries always purges (up to 100), so purging keeps pace with whatever expires.
const PURGE_EVERY: u64 = 16;

fn ttl_arg(ttl: Option<Duration>) -> String {
    ttl.map(|t| micros(t).max(1).to_string())
        .unwrap_or_default()
}

/// One page of a namespace scan.
struct ScanPage {
    scanned: usize,
    last: Option<String>,
    entries: Vec<StoredEntry>,
}

impl RedisDriver {
    /// Whether this put should purge expired entries (one in [`PURGE_EVERY`]).
    pub(crate) fn purge_due(&self) -> bool {
        self.inner.puts.fetch_add(1, Ordering::Relaxed) % PURGE_EVERY == 0
    }

    /// Reads the live entries at `keys` (in order).
    ///
    /// One plain `HMGET` of the encoded entries: an absent field is an absent document, and an
    /// entry without a TTL is live whatever the clock says, so neither needs the server's time.
    /// Only when an entry read carries an expiry is the answer taken again from the get script,
    /// which compares it with `TIME` atomically (a client-side clock, or a `TIME` read beside
    /// the `HMGET`, could be off by the gap between them); the TTL stays exact.
    pub(crate) async fn fetch(
        &self,
        ns: &str,
        keys: &[String],
    ) -> Result<Vec<Option<StoredEntry>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_open("get")?;
        let data = self.inner.keys.data(ns);
        let reply: RedisValue = self
            .inner
            .pool
            .next_connected()
            .hmget(data.as_str(), keys.to_vec())
            .await
            .map_err(|e| map_err(e, "get").with_context("namespace", ns))?;
        let mut reply = Reply::new(reply, "get");
        if reply.remaining() != keys.len() {
            return Err(crate::error::bad_reply(
                "get",
                format!(
                    "HMGET returned {} values for {} fields",
                    reply.remaining(),
                    keys.len()
                ),
            )
            .with_context("namespace", ns));
        }
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let found = match reply.opt_bytes()? {
                Some(raw) => Some(decode_entry(ns, key, &raw)?),
                None => None,
            };
            if found.as_ref().is_some_and(|s| s.entry.expires_at.is_some()) {
                return self.fetch_by_script(ns, data, keys).await;
            }
            out.push(found);
        }
        Ok(out)
    }

    /// [`RedisDriver::fetch`] through the get script: expiry checked against the server clock
    /// in the same atomic step as the read.
    async fn fetch_by_script(
        &self,
        ns: &str,
        data: String,
        keys: &[String],
    ) -> Result<Vec<Option<StoredEntry>>> {
        let args = keys.iter().map(|k| RedisValue::from(k.as_str())).collect();
        let reply = self
            .run(&self.inner.scripts.get, "get", vec![data], args)
            .await
            .map_err(|e| e.with_context("namespace", ns))?;
        let mut reply = Reply::new(reply, "get");
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(match reply.opt_bytes()? {
                Some(raw) => Some(decode_entry(ns, key, &raw)?),
                None => None,
            });
        }
        Ok(out)
    }

    /// Puts a batch in one script call; returns the entries as written.
    async fn put_batch(&self, ns: &str, items: Vec<BatchPut>) -> Result<Vec<Entry>> {
        let nk = self.inner.keys.namespace(ns);
        let args = put_args(ns, &items, self.purge_due())?;
        let reply = self
            .run(&self.inner.scripts.put, "put", nk.all(), args)
            .await
            .map_err(|e| e.with_context("namespace", ns))?;
        put_outcome(ns, items, Reply::new(reply, "put"))
    }

    /// Deletes a batch in one script call; returns how many live entries went.
    async fn delete_batch(&self, ns: &str, items: &[BatchDelete]) -> Result<u64> {
        let nk = self.inner.keys.namespace(ns);
        let args = delete_args(ns, items)?;
        let reply = self
            .run(&self.inner.scripts.delete, "delete", nk.all(), args)
            .await
            .map_err(|e| e.with_context("namespace", ns))?;
        delete_outcome(ns, items, Reply::new(reply, "delete"))
    }

    /// One page of live entries between two ZRANGEBYLEX bounds.
    async fn scan_page(
        &self,
        ns: &str,
        reverse: bool,
        min: &str,
        max: &str,
        count: usize,
    ) -> Result<ScanPage> {
        let nk = self.inner.keys.namespace(ns);
        let args = vec![
            RedisValue::from(if reverse { "r" } else { "f" }),
            min.into(),
            max.into(),
            RedisValue::from(count as i64),
        ];
        let reply = self
            .run(
                &self.inner.scripts.scan,
                "list",
                vec![nk.data, nk.idx, nk.ttl],
                args,
            )
            .await
            .map_err(|e| e.with_context("namespace", ns))?;
        let mut reply = Reply::new(reply, "list");
        let scanned = usize::try_from(reply.u64()?).unwrap_or(usize::MAX);
        let last = match reply.opt_bytes()? {
            Some(b) => Some(String::from_utf8(b).map_err(|_| {
                Error::corrupted("an index member is not UTF-8").with_context("namespace", ns)
            })?),
            None => None,
        };
        let mut entries = Vec::with_capacity(reply.remaining() / 2);
        while reply.remaining() > 0 {
            let key = reply.string()?;
            let raw = reply.bytes()?;
            entries.push(decode_entry(ns, &key, &raw)?);
        }
        Ok(ScanPage {
            scanned,
            last,
            entries,
        })
    }

    /// Walks live entries between bounds in order, feeding each to `visit` until it says stop.
    async fn walk(
        &self,
        ns: &str,
        reverse: bool,
        mut min: String,
        mut max: String,
        batch: usize,
        mut visit: impl FnMut(StoredEntry) -> bool + Send,
    ) -> Result<()> {
        loop {
            let page = self.scan_page(ns, reverse, &min, &max, batch).await?;
            for e in page.entries {
                if !visit(e) {
                    return Ok(());
                }
            }
            match page.last {
                Some(last) if page.scanned >= batch => {
                    if reverse {
                        max = format!("({last}");
                    } else {
                        min = format!("({last}");
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// Every live entry of a namespace, in key order.
    async fn scan_all(&self, ns: &str) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        self.walk(ns, false, "-".into(), "+".into(), SCAN_BATCH, |e| {
            out.push(e.entry);
            true
        })
        .await?;
        Ok(out)
    }

    async fn namespace_info(&self, ns: &str) -> Result<Option<NamespaceInfo>> {
        let nk = self.inner.keys.namespace(ns);
        let fields: Vec<Option<String>> = self
            .inner
            .pool
            .hmget(nk.meta, vec!["created", "meta"])
            .await
            .map_err(|e| map_err(e, "list_namespaces").with_context("namespace", ns))?;
        let [created, meta] = fields.as_slice() else {
            return Err(crate::error::bad_reply(
                "list_namespaces",
                "HMGET returned the wrong arity",
            ));
        };
        let (Some(created), Some(meta)) = (created, meta) else {
            // Dropped between the scan and this read.
            return Ok(None);
        };
        let bad = |what: &str| {
            Error::corrupted(format!("namespace record cannot be decoded: {what}"))
                .with_context("backend", "redis")
                .with_context("namespace", ns)
        };
        let created: u64 = created.parse().map_err(|_| bad("created"))?;
        let metadata: Metadata =
            serde_json::from_str(meta).map_err(|e| bad("metadata").with_source(e))?;
        Ok(Some(NamespaceInfo {
            name: ns.to_owned(),
            metadata,
            created_at: from_micros(created),
        }))
    }
}

/// The arguments of `put.lua` for a batch: the count, seven per item, then the purge flag
/// (last, so an operation record keeps all but the last argument; see `operation.rs`).
pub(crate) fn put_args(ns: &str, items: &[BatchPut], purge: bool) -> Result<Vec<RedisValue>> {
    let mut args: Vec<RedisValue> = Vec::with_capacity(2 + items.len() * 7);
    args.push(RedisValue::from(items.len() as i64));
    for item in items {
        let (cond, version) = match item.options.condition {
            PutCondition::Always => ("a", String::new()),
            PutCondition::IfAbsent => ("n", String::new()),
            PutCondition::IfVersion(v) => ("v", v.to_string()),
            other => {
                return Err(Error::unsupported_variant("put condition", &other)
                    .with_context("namespace", ns)
                    .with_context("key", escape(&item.key)));
            }
        };
        args.push(item.key.as_str().into());
        args.push(cond.into());
        args.push(version.into());
        args.push(ttl_arg(item.options.ttl).into());
        match &item.options.metadata {
            Some(m) => {
                args.push("1".into());
                args.push(to_json(m)?.into());
            }
            None => {
                args.push("0".into());
                args.push("".into());
            }
        }
        args.push(to_json(&item.value)?.into());
    }
    args.push(if purge { "1" } else { "0" }.into());
    Ok(args)
}

/// The entries `put.lua` wrote for `items`, or the error of the condition that failed. Also
/// reads a reply replayed from an operation record (`operation.rs`).
pub(crate) fn put_outcome(ns: &str, items: Vec<BatchPut>, mut reply: Reply) -> Result<Vec<Entry>> {
    match reply.string()?.as_str() {
        "ok" => {}
        "exists" => {
            let i = item_index(&mut reply, items.len(), "put")?;
            return Err(already_exists(ns, &items[i].key));
        }
        "conflict" => {
            let i = item_index(&mut reply, items.len(), "put")?;
            let current = reply.opt_u64()?;
            let expected = match items[i].options.condition {
                PutCondition::IfVersion(v) => v,
                _ => 0,
            };
            return Err(version_conflict(ns, &items[i].key, expected, current));
        }
        other => {
            return Err(crate::error::bad_reply(
                "put",
                format!("unknown status {other:?}"),
            ));
        }
    }
    let now = from_micros(reply.u64()?);
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let version = reply.u64()?;
        let created = reply.u64()?;
        let expires = reply.opt_u64()?;
        let meta_raw = reply.bytes()?;
        let metadata = match item.options.metadata {
            Some(m) => m,
            None => serde_json::from_slice(&meta_raw).map_err(|e| {
                Error::corrupted("stored metadata is not a JSON object")
                    .with_context("namespace", ns)
                    .with_context("key", escape(&item.key))
                    .with_source(e)
            })?,
        };
        out.push(Entry {
            namespace: ns.to_owned(),
            key: item.key,
            value: item.value,
            metadata,
            version,
            created_at: from_micros(created),
            updated_at: now,
            expires_at: expires.map(from_micros),
        });
    }
    Ok(out)
}

fn item_index(reply: &mut Reply, len: usize, op: &'static str) -> Result<usize> {
    let i = reply.u64()?;
    usize::try_from(i)
        .ok()
        .and_then(|i| i.checked_sub(1))
        .filter(|i| *i < len)
        .ok_or_else(|| crate::error::bad_reply(op, format!("item index {i} out of range")))
}

/// The arguments of `delete.lua` for a batch.
pub(crate) fn delete_args(ns: &str, items: &[BatchDelete]) -> Result<Vec<RedisValue>> {
    let mut args: Vec<RedisValue> = Vec::with_capacity(1 + items.len() * 3);
    args.push(RedisValue::from(items.len() as i64));
    for item in items {
        let (cond, version) = match item.condition {
            DeleteCondition::Always => ("a", String::new()),
            DeleteCondition::IfVersion(v) => ("v", v.to_string()),
            other => {
                return Err(Error::unsupported_variant("delete condition", &other)
                    .with_context("namespace", ns)
                    .with_context("key", escape(&item.key)));
            }
        };
        args.push(item.key.as_str().into());
        args.push(cond.into());
        args.push(version.into());
    }
    Ok(args)
}

/// How many live entries `delete.lua` removed, or the error of the condition that failed.
pub(crate) fn delete_outcome(ns: &str, items: &[BatchDelete], mut reply: Reply) -> Result<u64> {
    match reply.string()?.as_str() {
        "ok" => reply.u64(),
        "conflict" => {
            let i = item_index(&mut reply, items.len(), "delete")?;
            let current = reply.opt_u64()?;
            let expected = match items[i].condition {
                DeleteCondition::IfVersion(v) => v,
                _ => 0,
            };
            Err(version_conflict(ns, &items[i].key, expected, current))
        }
        other => Err(crate::error::bad_reply(
            "delete",
            format!("unknown status {other:?}"),
        )),
    }
}

/// The ZRANGEBYLEX bounds `(min, max)` covering every key a listing can return.
fn list_bounds(options: &ListOptions, glob: Option<&Glob>) -> (String, String) {
    // A glob's literal prefix narrows the range like an explicit prefix.
    let mut prefix = options.prefix.clone().unwrap_or_default();
    if let Some(g) = glob {
        let lp = g.literal_prefix();
        if lp.starts_with(prefix.as_str()) {
            prefix = lp;
        }
    }
    let upper = if prefix.is_empty() {
        None
    } else {
        prefix_upper_bound(&prefix)
    };
    let mut min = if prefix.is_empty() {
        "-".to_owned()
    } else {
        format!("[{prefix}")
    };
    let mut max = upper
        .as_ref()
        .map_or_else(|| "+".to_owned(), |u| format!("({u}"));
    if let Some(after) = &options.after {
        if options.reverse {
            if upper
                .as_ref()
                .is_none_or(|u| after.as_bytes() < u.as_bytes())
            {
                max = format!("({after}");
            }
        } else if after.as_bytes() >= prefix.as_bytes() {
            min = format!("({after}");
        }
    }
    (min, max)
}

#[async_trait]
impl StorageDriver for RedisDriver {
    fn capabilities(&self) -> Capabilities {
        let limits = &self.inner.config.limits;
        let mut caps = Capabilities::default();
        caps.transactions = true;
        caps.isolation = Some(Isolation::OptimisticWatch);
        caps.native_query = false;
        caps.ttl = true;
        caps.atomic_batch = true;
        caps.single_round_trip_batch = true;
        caps.max_value_bytes = limits.max_value_bytes;
        caps.max_depth = limits.max_depth;
        caps.max_batch_size = MAX_BATCH_SIZE;
        caps.durable = true;
        caps
    }

    async fn status(&self) -> Result<Status> {
        self.server_status().await
    }

    async fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>> {
        validate::document(ns, key)?;
        let mut found = self
            .fetch(ns, &[key.to_owned()])
            .await
            .map_err(|e| e.with_context("key", escape(key)))?;
        Ok(found.pop().flatten().map(|s| s.entry))
    }

    async fn put(&self, ns: &str, key: &str, value: Value, options: PutOptions) -> Result<Entry> {
        validate::put(ns, key, &value, &options, &self.inner.config.limits)?;
        let mut written = self
            .put_batch(ns, vec![BatchPut::new(key, value).with_options(options)])
            .await
            .map_err(|e| {
                if e.context_value("key").is_some() {
                    e
                } else {
                    e.with_context("key", escape(key))
                }
            })?;
        written
            .pop()
            .ok_or_else(|| crate::error::bad_reply("put", "no entry in the reply"))
    }

    async fn delete(&self, ns: &str, key: &str, condition: DeleteCondition) -> Result<bool> {
        validate::document(ns, key)?;
        let removed = self
            .delete_batch(
                ns,
                &[BatchDelete {
                    key: key.to_owned(),
                    condition,
                }],
            )
            .await
            .map_err(|e| {
                if e.context_value("key").is_some() {
                    e
                } else {
                    e.with_context("key", escape(key))
                }
            })?;
        Ok(removed > 0)
    }

    async fn exists(&self, ns: &str, key: &str) -> Result<bool> {
        Ok(self.get(ns, key).await?.is_some())
    }

    async fn get_many(&self, ns: &str, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        validate::batch(ns, keys.iter().map(String::as_str), false)?;
        Ok(self
            .fetch(ns, keys)
            .await?
            .into_iter()
            .map(|s| s.map(|s| s.entry))
            .collect())
    }

    async fn put_many(&self, ns: &str, items: Vec<BatchPut>) -> Result<Vec<Entry>> {
        validate::batch(ns, items.iter().map(|i| i.key.as_str()), true)?;
        for i in &items {
            validate::put(ns, &i.key, &i.value, &i.options, &self.inner.config.limits)?;
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.put_batch(ns, items).await
    }

    async fn delete_many(&self, ns: &str, items: Vec<BatchDelete>) -> Result<u64> {
        validate::batch(ns, items.iter().map(|i| i.key.as_str()), true)?;
        if items.is_empty() {
            return Ok(0);
        }
        self.delete_batch(ns, &items).await
    }

    async fn list(&self, ns: &str, options: &ListOptions) -> Result<ListPage> {
        validate::namespace(ns)?;
        let glob = options
            .validate()
            .map_err(|e| e.with_context("namespace", ns))?;
        let want = options.limit.map_or(usize::MAX, |l| l.saturating_add(1));
        let batch = want.saturating_add(options.offset).clamp(16, SCAN_BATCH);
        let (min, max) = list_bounds(options, glob.as_ref());
        let mut skipped = 0usize;
        let mut entries = Vec::new();
        if want > 0 {
            self.walk(ns, options.reverse, min, max, batch, |s| {
                if !options.admits(&s.entry.key, glob.as_ref()) {
                    return true;
                }
                if skipped < options.offset {
                    skipped += 1;
                    return true;
                }
                entries.push(s.entry);
                entries.len() < want
            })
            .await?;
        }
        Ok(ListPage::from_overfetch(entries, options.limit))
    }

    async fn query(&self, ns: &str, query: &Query) -> Result<Vec<Entry>> {
        validate::namespace(ns)?;
        query
            .validate()
            .map_err(|e| e.with_context("namespace", ns))?;
        let all = self.scan_all(ns).await?;
        Ok(query.apply(all, |e| &e.key, |e| &e.value))
    }

    async fn count(&self, ns: &str, filter: Option<&Filter>) -> Result<u64> {
        validate::namespace(ns)?;
        match filter {
            Some(f) => {
                f.validate().map_err(|e| e.with_context("namespace", ns))?;
                let mut n = 0u64;
                self.walk(ns, false, "-".into(), "+".into(), SCAN_BATCH, |e| {
                    if f.matches(&e.entry.value) {
                        n += 1;
                    }
                    true
                })
                .await?;
                Ok(n)
            }
            None => {
                let nk = self.inner.keys.namespace(ns);
                let reply = self
                    .run(
                        &self.inner.scripts.count,
                        "count",
                        vec![nk.idx, nk.ttl],
                        vec![],
                    )
                    .await
                    .map_err(|e| e.with_context("namespace", ns))?;
                Reply::new(reply, "count").u64()
            }
        }
    }

    async fn clear(&self, ns: &str) -> Result<u64> {
        validate::namespace(ns)?;
        let nk = self.inner.keys.namespace(ns);
        let reply = self
            .run(&self.inner.scripts.clear, "clear", nk.all(), vec![])
            .await
            .map_err(|e| e.with_context("namespace", ns))?;
        Reply::new(reply, "clear").u64()
    }

    async fn create_namespace(&self, ns: &str, metadata: Metadata) -> Result<NamespaceInfo> {
        validate::namespace(ns)?;
        validate::metadata(&metadata, &self.inner.config.limits)
            .map_err(|e| e.with_context("namespace", ns))?;
        let nk = self.inner.keys.namespace(ns);
        let reply = self
            .run(
                &self.inner.scripts.ns_create,
                "create_namespace",
                vec![nk.meta],
                vec![to_json(&metadata)?.into()],
            )
            .await
            .map_err(|e| e.with_context("namespace", ns))?;
        let mut reply = Reply::new(reply, "create_namespace");
        match reply.string()?.as_str() {
            "ok" => Ok(NamespaceInfo {
                name: ns.to_owned(),
                metadata,
                created_at: from_micros(reply.u64()?),
            }),
            "exists" => Err(
                Error::new(ErrorCode::AlreadyExists, "the namespace already exists")
                    .with_context("namespace", ns),
            ),
            other => Err(crate::error::bad_reply(
                "create_namespace",
                format!("unknown status {other:?}"),
            )),
        }
    }

    async fn drop_namespace(&self, ns: &str, recursive: bool) -> Result<bool> {
        validate::namespace(ns)?;
        let nk = self.inner.keys.namespace(ns);
        let reply = self
            .run(
                &self.inner.scripts.ns_drop,
                "drop_namespace",
                nk.all(),
                vec![if recursive { "1" } else { "0" }.into()],
            )
            .await
            .map_err(|e| e.with_context("namespace", ns))?;
        let mut reply = Reply::new(reply, "drop_namespace");
        match reply.string()?.as_str() {
            "ok" => Ok(true),
            "absent" => Ok(false),
            "nonempty" => {
                let live = reply.u64()?;
                Err(Error::conflict(format!(
                    "the namespace holds {live} entries; drop it with recursive to remove them"
                ))
                .with_context("namespace", ns))
            }
            other => Err(crate::error::bad_reply(
                "drop_namespace",
                format!("unknown status {other:?}"),
            )),
        }
    }

    async fn list_namespaces(&self) -> Result<Vec<NamespaceInfo>> {
        self.ensure_open("list_namespaces")?;
        let client = self.inner.pool.next();
        let pattern = self.inner.keys.namespace_meta_pattern();
        let mut keys = if client.is_clustered() {
            client
                .scan_cluster_buffered(pattern, Some(1000), None)
                .boxed()
        } else {
            client.scan_buffered(pattern, Some(1000), None).boxed()
        };
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| map_err(e, "list_namespaces"))?;
            let Some(text) = key.as_str() else { continue };
            if let Some(ns) = self.inner.keys.namespace_of_meta_key(text) {
                if validate::namespace(ns).is_ok() {
                    names.push(ns.to_owned());
                }
            }
        }
        names.sort();
        names.dedup();
        let infos =
            futures::future::try_join_all(names.iter().map(|ns| self.namespace_info(ns))).await?;
        Ok(infos.into_iter().flatten().collect())
    }

    async fn set_metadata(
        &self,
        ns: &str,
        key: &str,
        metadata: Metadata,
        mode: MetadataMode,
    ) -> Result<Entry> {
        validate::document(ns, key)?;
        let limits = &self.inner.config.limits;
        let ctx = |e: Error| {
            e.with_context("namespace", ns)
                .with_context("key", escape(key))
        };
        if mode == MetadataMode::Replace {
            validate::metadata(&metadata, limits).map_err(ctx)?;
        }
        let not_found = || ctx(Error::not_found("no live entry to set metadata on"));
        let nk = self.inner.keys.namespace(ns);
        for _ in 0..MERGE_ATTEMPTS {
            // Merging needs the current metadata, merged here (Lua's cjson would re-encode it
            // lossily); the script then writes only if nobody wrote in between.
            let (next, expected_stamp) = match mode {
                MetadataMode::Replace => (metadata.clone(), String::new()),
                _ => {
                    let mut current = self.fetch(ns, &[key.to_owned()]).await.map_err(ctx)?;
                    let Some(current) = current.pop().flatten() else {
                        return Err(not_found());
                    };
                    let mut merged = current.entry.metadata;
                    mode.apply(&mut merged, metadata.clone());
                    validate::metadata(&merged, limits).map_err(ctx)?;
                    (merged, current.stamp.to_string())
                }
            };
            let reply = self
                .run(
                    &self.inner.scripts.set_meta,
                    "set_metadata",
                    nk.all(),
                    vec![key.into(), expected_stamp.into(), to_json(&next)?.into()],
                )
                .await
                .map_err(ctx)?;
            let mut reply = Reply::new(reply, "set_metadata");
            match reply.string()?.as_str() {
                "ok" => return Ok(decode_entry(ns, key, &reply.bytes()?)?.entry),
                "absent" => return Err(not_found()),
                "moved" => continue,
                other => {
                    return Err(crate::error::bad_reply(
                        "set_metadata",
                        format!("unknown status {other:?}"),
                    ));
                }
            }
        }
        Err(ctx(Error::conflict(format!(
            "the entry kept changing during {MERGE_ATTEMPTS} metadata merges"
        ))
        .with_retryable(true)))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        self.ensure_open("begin")?;
        Ok(Box::new(RedisTransaction::new(self.clone())))
    }

    async fn write_once(&self, ns: &str, id: &OperationId, write: Write) -> Result<Applied> {
        self.write_once_impl(ns, id, write).await
    }

    async fn operation(&self, ns: &str, id: &OperationId) -> Result<Option<Outcome>> {
        self.operation_impl(ns, id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_follow_prefix_glob_and_cursor() {
        let opts = ListOptions::new().prefix("ab");
        assert_eq!(list_bounds(&opts, None), ("[ab".into(), "(ac".into()));
        let g = Glob::new("abc*").unwrap();
        assert_eq!(list_bounds(&opts, Some(&g)), ("[abc".into(), "(abd".into()));
        let opts = ListOptions::new().prefix("ab").after("abz");
        assert_eq!(list_bounds(&opts, None), ("(abz".into(), "(ac".into()));
        let opts = ListOptions::new().prefix("ab").after("aa");
        assert_eq!(list_bounds(&opts, None), ("[ab".into(), "(ac".into()));
        let opts = ListOptions::new().prefix("ab").after("abz").reverse(true);
        assert_eq!(list_bounds(&opts, None), ("[ab".into(), "(abz".into()));
        let opts = ListOptions::new().after("m").reverse(true);
        assert_eq!(list_bounds(&opts, None), ("-".into(), "(m".into()));
        let opts = ListOptions::new().prefix("ab").after("b").reverse(true);
        assert_eq!(list_bounds(&opts, None), ("[ab".into(), "(ac".into()));
    }
}
