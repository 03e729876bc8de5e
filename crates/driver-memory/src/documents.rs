//! Documents: one ordered map per namespace, behind the driver's read-write lock.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::ops::Bound;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use kernel_core::glob::prefix_upper_bound;
use kernel_core::operation::{
    Applied, DEFAULT_OPERATION_WINDOW, OperationId, Outcome, Record, Write,
};
use kernel_core::validate::{self, MAX_BATCH_SIZE, escape};
use kernel_core::{
    BatchDelete, BatchPut, Capabilities, DeleteCondition, Entry, Error, Filter, IndexInfo,
    IndexSpec, Isolation, ListOptions, ListPage, Metadata, MetadataMode, NamespaceInfo,
    PutCondition, PutOptions, Query, Result, Status, StorageDriver, Transaction, Value,
};

use crate::MemoryDriver;
use crate::indexes::Indexes;
use crate::transaction::MemoryTransaction;

/// A stored document and the stamp of the write that produced it (transactions validate reads
/// against stamps, which unlike versions never repeat after a delete and re-create).
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) entry: Entry,
    pub(crate) stamp: u64,
}

impl Stored {
    pub(crate) fn live(&self, now: SystemTime) -> bool {
        self.entry.expires_at.is_none_or(|t| t > now)
    }
}

#[derive(Debug)]
pub(crate) struct NsState {
    pub(crate) info: NamespaceInfo,
    pub(crate) entries: BTreeMap<String, Stored>,
}

/// When a stored thing may have expired, and where it is: `(time, namespace, key or id)`.
type Due = Reverse<(SystemTime, String, String)>;

#[derive(Debug)]
pub(crate) struct DocState {
    pub(crate) namespaces: BTreeMap<String, NsState>,
    pub(crate) stamp: u64,
    /// Every expiry time a document was written with, soonest first. Writes sweep what is due
    /// from the top, so removing expired documents costs what expired, never a walk over every
    /// namespace's entries under the lock; documents without a TTL are not in it at all. An
    /// item whose document was rewritten since is skipped when it comes due (the document is
    /// live, or gone).
    expiries: BinaryHeap<Due>,
    /// Operation-id records by (namespace, id), each with the time it is forgotten. Behind the
    /// same lock as the documents, so the check, the write and the record are one step.
    operations: BTreeMap<(String, String), (Record, SystemTime)>,
    /// When each operation record is forgotten, soonest first (swept as `expiries` is).
    operation_expiries: BinaryHeap<Due>,
    pub(crate) operation_window: Duration,
    /// Declared field indexes by namespace (also of namespaces not created yet).
    pub(crate) indexes: BTreeMap<String, Indexes>,
}

impl Default for DocState {
    fn default() -> Self {
        DocState {
            namespaces: BTreeMap::new(),
            stamp: 0,
            expiries: BinaryHeap::new(),
            operations: BTreeMap::new(),
            operation_expiries: BinaryHeap::new(),
            operation_window: DEFAULT_OPERATION_WINDOW,
            indexes: BTreeMap::new(),
        }
    }
}

/// Everything a put checks besides its address (value, metadata, TTL), with the errors of
/// [`validate::put`]: for batches, whose namespace and keys [`validate::batch`] checked already.
fn validate_put_body(
    ns: &str,
    key: &str,
    value: &Value,
    options: &PutOptions,
    limits: &kernel_core::Limits,
) -> Result<()> {
    let ctx = |e: Error| {
        e.with_context("namespace", ns)
            .with_context("key", escape(key))
    };
    validate::value(value, limits).map_err(ctx)?;
    if let Some(m) = &options.metadata {
        validate::metadata(m, limits).map_err(ctx)?;
    }
    if let Some(ttl) = options.ttl {
        if ttl.is_zero() || ttl > validate::MAX_TTL {
            return Err(ctx(Error::invalid_input(
                "TTL must be greater than zero and at most 1000 years",
            )));
        }
    }
    Ok(())
}

/// A write decided against the current state, ready to apply.
pub(crate) enum Planned {
    Put(Entry),
    Delete,
}

impl DocState {
    /// The live entry at `key`, reading the clock only for an entry that has a TTL (most
    /// documents have none, and a clock read costs more than the rest of a lookup).
    fn live_now(&self, ns: &str, key: &str) -> Option<&Stored> {
        self.namespaces
            .get(ns)?
            .entries
            .get(key)
            .filter(|s| s.entry.expires_at.is_none_or(|t| t > SystemTime::now()))
    }

    pub(crate) fn live(&self, ns: &str, key: &str, now: SystemTime) -> Option<&Stored> {
        self.namespaces
            .get(ns)?
            .entries
            .get(key)
            .filter(|s| s.live(now))
    }

    /// Decides a put: checks the condition, computes the new entry.
    pub(crate) fn plan_put(
        current: Option<&Entry>,
        ns: &str,
        key: &str,
        value: Value,
        options: PutOptions,
        now: SystemTime,
    ) -> Result<Entry> {
        check_put_condition(current, ns, key, options.condition)?;
        let expires_at = options.ttl.map(|ttl| now + ttl);
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

    pub(crate) fn ensure_namespace(&mut self, ns: &str, now: SystemTime) -> &mut NsState {
        self.namespaces
            .entry(ns.to_owned())
            .or_insert_with(|| NsState {
                info: NamespaceInfo {
                    name: ns.to_owned(),
                    metadata: Metadata::new(),
                    created_at: now,
                },
                entries: BTreeMap::new(),
            })
    }

    pub(crate) fn apply(&mut self, ns: &str, key: &str, planned: Planned, now: SystemTime) {
        self.stamp += 1;
        let stamp = self.stamp;
        match planned {
            Planned::Put(entry) => {
                if let Some(at) = entry.expires_at {
                    self.expiries
                        .push(Reverse((at, ns.to_owned(), key.to_owned())));
                }
                // Looked up before inserting: `entry` would copy both names on every write.
                if !self.namespaces.contains_key(ns) {
                    self.ensure_namespace(ns, now);
                }
                if let Some(state) = self.namespaces.get_mut(ns) {
                    let indexes = self.indexes.get_mut(ns);
                    match state.entries.get_mut(key) {
                        Some(slot) => {
                            if let Some(ix) = indexes {
                                ix.replace(key, Some(&slot.entry.value), Some(&entry.value));
                            }
                            *slot = Stored { entry, stamp };
                        }
                        None => {
                            if let Some(ix) = indexes {
                                ix.replace(key, None, Some(&entry.value));
                            }
                            state
                                .entries
                                .insert(key.to_owned(), Stored { entry, stamp });
                        }
                    }
                }
            }
            Planned::Delete => {
                if let Some(state) = self.namespaces.get_mut(ns) {
                    let old = state.entries.remove(key);
                    if let (Some(old), Some(ix)) = (old, self.indexes.get_mut(ns)) {
                        ix.replace(key, Some(&old.entry.value), None);
                    }
                }
            }
        }
        self.sweep(now);
    }

    /// Removes the documents and operation records that are due. Expired entries are invisible
    /// already; sweeping only bounds memory, a little at every write.
    fn sweep(&mut self, now: SystemTime) -> usize {
        let mut removed = 0;
        while self
            .expiries
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            let Some(Reverse((_, ns, key))) = self.expiries.pop() else {
                break;
            };
            if let Some(state) = self.namespaces.get_mut(&ns) {
                if state.entries.get(&key).is_some_and(|s| !s.live(now)) {
                    let old = state.entries.remove(&key);
                    if let (Some(old), Some(ix)) = (old, self.indexes.get_mut(&ns)) {
                        ix.replace(&key, Some(&old.entry.value), None);
                    }
                    removed += 1;
                }
            }
        }
        while self
            .operation_expiries
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            let Some(Reverse((_, ns, id))) = self.operation_expiries.pop() else {
                break;
            };
            let slot = (ns, id);
            if self
                .operations
                .get(&slot)
                .is_some_and(|(_, until)| *until <= now)
            {
                self.operations.remove(&slot);
            }
        }
        removed
    }

    pub(crate) fn purge_expired(&mut self, now: SystemTime) -> usize {
        self.sweep(now)
    }

    /// An unconditional or conditional put of one document. A key already stored (live or
    /// expired) is rewritten in place: its stored names are kept, not copied again, and the
    /// answer is the one copy of the entry.
    fn put_locked(
        &mut self,
        ns: &str,
        key: &str,
        value: Value,
        options: PutOptions,
        now: SystemTime,
    ) -> Result<Entry> {
        let stored = self
            .namespaces
            .get_mut(ns)
            .and_then(|state| state.entries.get_mut(key));
        let Some(stored) = stored else {
            let entry = DocState::plan_put(None, ns, key, value, options, now)?;
            self.apply(ns, key, Planned::Put(entry.clone()), now);
            return Ok(entry);
        };
        let live = stored.live(now);
        check_put_condition(live.then_some(&stored.entry), ns, key, options.condition)?;
        self.stamp += 1;
        stored.stamp = self.stamp;
        // What `Entry::after_put` computes, on the stored entry (an expired one counts as
        // absent: the put creates the key anew).
        let e = &mut stored.entry;
        if live {
            e.version += 1;
            if let Some(metadata) = options.metadata {
                e.metadata = metadata;
            }
        } else {
            e.version = 1;
            e.created_at = now;
            e.metadata = options.metadata.unwrap_or_default();
        }
        if let Some(ix) = self.indexes.get_mut(ns) {
            ix.replace(key, Some(&e.value), Some(&value));
        }
        e.value = value;
        e.updated_at = now;
        e.expires_at = options.ttl.map(|ttl| now + ttl);
        let entry = e.clone();
        if let Some(at) = entry.expires_at {
            self.expiries
                .push(Reverse((at, ns.to_owned(), key.to_owned())));
        }
        self.sweep(now);
        Ok(entry)
    }

    fn delete_locked(
        &mut self,
        ns: &str,
        key: &str,
        condition: DeleteCondition,
        now: SystemTime,
    ) -> Result<bool> {
        let current = self.live(ns, key, now).map(|s| &s.entry);
        check_delete_condition(current, ns, key, condition)?;
        let existed = current.is_some();
        self.apply(ns, key, Planned::Delete, now);
        Ok(existed)
    }

    fn put_many_locked(
        &mut self,
        ns: &str,
        items: Vec<BatchPut>,
        now: SystemTime,
    ) -> Result<Vec<Entry>> {
        // Decide every item before applying any, so a failed condition writes nothing.
        let mut planned = Vec::with_capacity(items.len());
        for i in items {
            let current = self.live(ns, &i.key, now).map(|s| &s.entry);
            let entry = DocState::plan_put(current, ns, &i.key, i.value, i.options, now)?;
            planned.push(entry);
        }
        for entry in &planned {
            self.apply(ns, &entry.key, Planned::Put(entry.clone()), now);
        }
        Ok(planned)
    }

    fn delete_many_locked(
        &mut self,
        ns: &str,
        items: &[BatchDelete],
        now: SystemTime,
    ) -> Result<u64> {
        let mut removed = 0;
        for i in items {
            let current = self.live(ns, &i.key, now).map(|s| &s.entry);
            check_delete_condition(current, ns, &i.key, i.condition)?;
            removed += u64::from(current.is_some());
        }
        for i in items {
            self.apply(ns, &i.key, Planned::Delete, now);
        }
        Ok(removed)
    }

    /// The live record of operation `id` in `ns`.
    pub(crate) fn operation(&self, ns: &str, id: &OperationId, now: SystemTime) -> Option<&Record> {
        self.operations
            .get(&(ns.to_owned(), id.as_str().to_owned()))
            .filter(|(_, until)| *until > now)
            .map(|(record, _)| record)
    }

    pub(crate) fn record_operation(
        &mut self,
        ns: &str,
        id: &OperationId,
        record: Record,
        now: SystemTime,
    ) {
        let until = now + self.operation_window;
        self.operation_expiries
            .push(Reverse((until, ns.to_owned(), id.as_str().to_owned())));
        self.operations
            .insert((ns.to_owned(), id.as_str().to_owned()), (record, until));
    }

    /// The live entries that may match `filter`: the candidates of a declared index when one
    /// applies ([`Indexes::candidates`]), else every live entry. Callers still apply the
    /// filter.
    fn filtered_entries<'a>(
        &'a self,
        ns: &str,
        filter: Option<&Filter>,
        now: SystemTime,
    ) -> Box<dyn Iterator<Item = &'a Entry> + 'a> {
        let candidates = filter.and_then(|f| self.indexes.get(ns)?.candidates(f));
        match (candidates, self.namespaces.get(ns)) {
            (Some(keys), Some(state)) => Box::new(
                keys.into_iter()
                    .filter_map(|k| state.entries.get(k))
                    .filter(move |s| s.live(now))
                    .map(|s| &s.entry),
            ),
            (Some(_), None) => Box::new(std::iter::empty()),
            (None, _) => Box::new(self.live_entries(ns, now)),
        }
    }

    fn live_entries<'a>(
        &'a self,
        ns: &str,
        now: SystemTime,
    ) -> impl Iterator<Item = &'a Entry> + use<'a> {
        self.namespaces
            .get(ns)
            .into_iter()
            .flat_map(|s| s.entries.values())
            .filter(move |s| s.live(now))
            .map(|s| &s.entry)
    }
}

pub(crate) fn check_put_condition(
    current: Option<&Entry>,
    ns: &str,
    key: &str,
    condition: PutCondition,
) -> Result<()> {
    condition.check(ns, key, current.map(|e| e.version))
}

pub(crate) fn check_delete_condition(
    current: Option<&Entry>,
    ns: &str,
    key: &str,
    condition: DeleteCondition,
) -> Result<()> {
    condition.check(ns, key, current.map(|e| e.version))
}

#[async_trait]
impl StorageDriver for MemoryDriver {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.transactions = true;
        caps.isolation = Some(Isolation::Serializable);
        caps.native_query = false;
        caps.ttl = true;
        caps.atomic_batch = true;
        caps.single_round_trip_batch = true;
        caps.max_value_bytes = self.inner.limits.max_value_bytes;
        caps.max_depth = self.inner.limits.max_depth;
        caps.max_batch_size = MAX_BATCH_SIZE;
        caps.durable = false;
        caps.field_indexes = true;
        caps
    }

    async fn status(&self) -> Result<Status> {
        // Health probes call this every few seconds: no walk over the entries under the lock
        // writers need. Stored entries per namespace is a length each (expired ones not yet
        // purged included), so `entries` (live ones) stays unknown.
        let started = Instant::now();
        let docs = self.inner.docs_read()?;
        let stored: usize = docs.namespaces.values().map(|s| s.entries.len()).sum();
        let mut status = Status::new("memory", true, started.elapsed());
        status.namespaces = Some(docs.namespaces.len() as u64);
        status
            .details
            .insert("entries_stored".to_owned(), stored.to_string());
        Ok(status)
    }

    async fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>> {
        validate::document(ns, key)?;
        let docs = self.inner.docs_read()?;
        Ok(docs.live_now(ns, key).map(|s| s.entry.clone()))
    }

    async fn put(&self, ns: &str, key: &str, value: Value, options: PutOptions) -> Result<Entry> {
        validate::put(ns, key, &value, &options, &self.inner.limits)?;
        let now = SystemTime::now();
        self.inner
            .docs_write()?
            .put_locked(ns, key, value, options, now)
    }

    async fn delete(&self, ns: &str, key: &str, condition: DeleteCondition) -> Result<bool> {
        validate::document(ns, key)?;
        let now = SystemTime::now();
        self.inner
            .docs_write()?
            .delete_locked(ns, key, condition, now)
    }

    async fn exists(&self, ns: &str, key: &str) -> Result<bool> {
        validate::document(ns, key)?;
        let docs = self.inner.docs_read()?;
        Ok(docs.live_now(ns, key).is_some())
    }

    async fn get_many(&self, ns: &str, keys: &[String]) -> Result<Vec<Option<Entry>>> {
        validate::batch(ns, keys.iter().map(String::as_str), false)?;
        let now = SystemTime::now();
        let docs = self.inner.docs_read()?;
        Ok(keys
            .iter()
            .map(|k| docs.live(ns, k, now).map(|s| s.entry.clone()))
            .collect())
    }

    async fn put_many(&self, ns: &str, items: Vec<BatchPut>) -> Result<Vec<Entry>> {
        validate::batch(ns, items.iter().map(|i| i.key.as_str()), true)?;
        // The namespace and every key are checked: the rest of each put only.
        for i in &items {
            validate_put_body(ns, &i.key, &i.value, &i.options, &self.inner.limits)?;
        }
        let now = SystemTime::now();
        self.inner.docs_write()?.put_many_locked(ns, items, now)
    }

    async fn delete_many(&self, ns: &str, items: Vec<BatchDelete>) -> Result<u64> {
        validate::batch(ns, items.iter().map(|i| i.key.as_str()), true)?;
        let now = SystemTime::now();
        self.inner.docs_write()?.delete_many_locked(ns, &items, now)
    }

    async fn list(&self, ns: &str, options: &ListOptions) -> Result<ListPage> {
        validate::namespace(ns)?;
        let glob = options
            .validate()
            .map_err(|e| e.with_context("namespace", ns))?;
        let now = SystemTime::now();
        let docs = self.inner.docs_read()?;
        let Some(state) = docs.namespaces.get(ns) else {
            return Ok(ListPage {
                entries: Vec::new(),
                next_cursor: None,
            });
        };
        // Narrow the scan to the prefix range (a glob's literal prefix counts too).
        let mut prefix = options.prefix.clone().unwrap_or_default();
        if let Some(g) = &glob {
            let lp = g.literal_prefix();
            if lp.starts_with(prefix.as_str()) {
                prefix = lp;
            }
        }
        let lower = Bound::Included(prefix.clone());
        let upper = match prefix_upper_bound(&prefix) {
            Some(u) if !prefix.is_empty() => Bound::Excluded(u),
            _ => Bound::Unbounded,
        };
        let range = state.entries.range::<String, _>((lower, upper));
        // Cloned only once skipped past the offset: a deep offset copies nothing it skips.
        let admitted =
            |(k, s): &(&String, &Stored)| s.live(now) && options.admits(k, glob.as_ref());
        let clone = |(_, s): (&String, &Stored)| s.entry.clone();
        let want = options
            .limit
            .map(|l| l.saturating_add(1))
            .unwrap_or(usize::MAX);
        let entries: Vec<Entry> = if options.reverse {
            range
                .rev()
                .filter(admitted)
                .skip(options.offset)
                .take(want)
                .map(clone)
                .collect()
        } else {
            range
                .filter(admitted)
                .skip(options.offset)
                .take(want)
                .map(clone)
                .collect()
        };
        Ok(ListPage::from_overfetch(entries, options.limit))
    }

    async fn query(&self, ns: &str, query: &Query) -> Result<Vec<Entry>> {
        validate::namespace(ns)?;
        query
            .validate()
            .map_err(|e| e.with_context("namespace", ns))?;
        let now = SystemTime::now();
        let docs = self.inner.docs_read()?;
        let entries = docs.filtered_entries(ns, query.filter.as_ref(), now);
        Ok(query
            .apply(entries, |e| &e.key, |e| &e.value)
            .into_iter()
            .cloned()
            .collect())
    }

    async fn count(&self, ns: &str, filter: Option<&Filter>) -> Result<u64> {
        validate::namespace(ns)?;
        if let Some(f) = filter {
            f.validate().map_err(|e| e.with_context("namespace", ns))?;
        }
        let now = SystemTime::now();
        let docs = self.inner.docs_read()?;
        Ok(docs
            .filtered_entries(ns, filter, now)
            .filter(|e| filter.is_none_or(|f| f.matches(&e.value)))
            .count() as u64)
    }

    async fn clear(&self, ns: &str) -> Result<u64> {
        validate::namespace(ns)?;
        let now = SystemTime::now();
        let mut docs = self.inner.docs_write()?;
        let Some(state) = docs.namespaces.get_mut(ns) else {
            return Ok(0);
        };
        let live = state.entries.values().filter(|s| s.live(now)).count() as u64;
        state.entries.clear();
        if let Some(ix) = docs.indexes.get_mut(ns) {
            ix.clear();
        }
        docs.stamp += 1;
        Ok(live)
    }

    async fn create_namespace(&self, ns: &str, metadata: Metadata) -> Result<NamespaceInfo> {
        validate::namespace(ns)?;
        validate::metadata(&metadata, &self.inner.limits)
            .map_err(|e| e.with_context("namespace", ns))?;
        let now = SystemTime::now();
        let mut docs = self.inner.docs_write()?;
        if docs.namespaces.contains_key(ns) {
            return Err(Error::new(
                kernel_core::ErrorCode::AlreadyExists,
                "the namespace already exists",
            )
            .with_context("namespace", ns));
        }
        let state = docs.ensure_namespace(ns, now);
        state.info.metadata = metadata;
        Ok(state.info.clone())
    }

    async fn drop_namespace(&self, ns: &str, recursive: bool) -> Result<bool> {
        validate::namespace(ns)?;
        let now = SystemTime::now();
        let mut docs = self.inner.docs_write()?;
        let Some(state) = docs.namespaces.get(ns) else {
            // Indexes may be declared before the first write: they go too.
            docs.indexes.remove(ns);
            return Ok(false);
        };
        let live = state.entries.values().filter(|s| s.live(now)).count();
        if live > 0 && !recursive {
            return Err(Error::conflict(format!(
                "the namespace holds {live} entries; drop it with recursive to remove them"
            ))
            .with_context("namespace", ns));
        }
        docs.namespaces.remove(ns);
        docs.indexes.remove(ns);
        docs.stamp += 1;
        Ok(true)
    }

    async fn list_namespaces(&self) -> Result<Vec<NamespaceInfo>> {
        let docs = self.inner.docs_read()?;
        Ok(docs.namespaces.values().map(|s| s.info.clone()).collect())
    }

    async fn set_metadata(
        &self,
        ns: &str,
        key: &str,
        metadata: Metadata,
        mode: MetadataMode,
    ) -> Result<Entry> {
        validate::document(ns, key)?;
        let now = SystemTime::now();
        let mut docs = self.inner.docs_write()?;
        let Some(current) = docs.live(ns, key, now).map(|s| s.entry.clone()) else {
            return Err(Error::not_found("no live entry to set metadata on")
                .with_context("namespace", ns)
                .with_context("key", escape(key)));
        };
        let mut next = current;
        mode.apply(&mut next.metadata, metadata);
        validate::metadata(&next.metadata, &self.inner.limits).map_err(|e| {
            e.with_context("namespace", ns)
                .with_context("key", escape(key))
        })?;
        next.version += 1;
        next.updated_at = now;
        docs.apply(ns, key, Planned::Put(next.clone()), now);
        Ok(next)
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>> {
        Ok(Box::new(MemoryTransaction::new(self.clone())))
    }

    async fn write_once(&self, ns: &str, id: &OperationId, write: Write) -> Result<Applied> {
        write.validate(ns, &self.inner.limits)?;
        let fingerprint = write.fingerprint(ns);
        let now = SystemTime::now();
        let mut docs = self.inner.docs_write()?;
        if let Some(record) = docs.operation(ns, id, now) {
            return record.clone().replay(ns, id, &fingerprint);
        }
        let outcome = match write {
            Write::Put {
                key,
                value,
                options,
            } => Outcome::Put(docs.put_locked(ns, &key, value, options, now)?),
            Write::Delete { key, condition } => {
                Outcome::Delete(docs.delete_locked(ns, &key, condition, now)?)
            }
            Write::PutMany(items) => Outcome::PutMany(docs.put_many_locked(ns, items, now)?),
            Write::DeleteMany(items) => {
                Outcome::DeleteMany(docs.delete_many_locked(ns, &items, now)?)
            }
            other => return Err(Error::unsupported_variant("write", &other)),
        };
        let record = Record {
            fingerprint,
            outcome: outcome.clone(),
        };
        docs.record_operation(ns, id, record, now);
        Ok(Applied::fresh(outcome))
    }

    async fn operation(&self, ns: &str, id: &OperationId) -> Result<Option<Outcome>> {
        validate::namespace(ns)?;
        let docs = self.inner.docs_read()?;
        Ok(docs
            .operation(ns, id, SystemTime::now())
            .map(|r| r.outcome.clone()))
    }

    async fn create_index(&self, ns: &str, spec: &IndexSpec) -> Result<IndexInfo> {
        spec.validate(ns)?;
        let mut docs = self.inner.docs_write()?;
        let DocState {
            namespaces,
            indexes,
            ..
        } = &mut *docs;
        let stored = namespaces.get(ns).into_iter().flat_map(|state| {
            state
                .entries
                .iter()
                .map(|(k, s)| (k.as_str(), &s.entry.value))
        });
        indexes
            .entry(ns.to_owned())
            .or_default()
            .declare(&spec.field, stored);
        Ok(IndexInfo::new(
            ns,
            spec.field.clone(),
            format!("memory:{}", spec.field),
        ))
    }

    async fn drop_index(&self, ns: &str, field: &str) -> Result<bool> {
        IndexSpec::new(field).validate(ns)?;
        let mut docs = self.inner.docs_write()?;
        let Some(ix) = docs.indexes.get_mut(ns) else {
            return Ok(false);
        };
        let dropped = ix.remove_path(field);
        if ix.is_empty() {
            docs.indexes.remove(ns);
        }
        Ok(dropped)
    }

    async fn list_indexes(&self, ns: &str) -> Result<Vec<IndexInfo>> {
        validate::namespace(ns)?;
        let docs = self.inner.docs_read()?;
        Ok(docs
            .indexes
            .get(ns)
            .map(|ix| ix.infos(ns))
            .unwrap_or_default())
    }
}

impl MemoryDriver {
    pub(crate) fn docs_read(&self) -> Result<std::sync::RwLockReadGuard<'_, DocState>> {
        self.inner.docs_read()
    }

    pub(crate) fn docs_write(&self) -> Result<std::sync::RwLockWriteGuard<'_, DocState>> {
        self.inner.docs_write()
    }

    pub(crate) fn value_limits(&self) -> &kernel_core::Limits {
        &self.inner.limits
    }
}
