//! Document types: entries, write conditions, list options, namespaces, capabilities, status.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Metadata;
use crate::error::{Error, Result};
use crate::validate;

/// A stored document.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The namespace it lives in.
    pub namespace: String,
    /// Its key.
    pub key: String,
    /// The JSON value.
    pub value: Value,
    /// The JSON-object metadata beside the value.
    pub metadata: Metadata,
    /// 1 on create, +1 on every write (put, metadata change).
    pub version: u64,
    /// When the key was created (a delete followed by a put creates it anew).
    pub created_at: SystemTime,
    /// When it was last written.
    pub updated_at: SystemTime,
    /// When it stops being visible, if it has a TTL.
    pub expires_at: Option<SystemTime>,
}

impl Entry {
    /// The entry a put leaves, given the live entry it replaces (`None`: it creates the key):
    /// the version goes up by one (1 on create), `created_at` stays on replace, `metadata`
    /// `None` keeps the current metadata (empty on create). For drivers that compute entries
    /// in Rust; the put's condition is checked before.
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use kernel_core::{Entry, json};
    ///
    /// let now = SystemTime::now();
    /// let first = Entry::after_put(None, "ns", "k", json!(1), None, now, None);
    /// assert_eq!(first.version, 1);
    /// let second = Entry::after_put(Some(&first), "ns", "k", json!(2), None, now, None);
    /// assert_eq!((second.version, second.created_at), (2, first.created_at));
    /// ```
    pub fn after_put(
        current: Option<&Entry>,
        namespace: &str,
        key: &str,
        value: Value,
        metadata: Option<crate::Metadata>,
        now: SystemTime,
        expires_at: Option<SystemTime>,
    ) -> Entry {
        let (metadata, version, created_at) = match current {
            Some(cur) => (
                metadata.unwrap_or_else(|| cur.metadata.clone()),
                cur.version + 1,
                cur.created_at,
            ),
            None => (metadata.unwrap_or_default(), 1, now),
        };
        Entry {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            value,
            metadata,
            version,
            created_at,
            updated_at: now,
            expires_at,
        }
    }
}

/// When a put may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PutCondition {
    /// Always (create or replace).
    #[default]
    Always,
    /// Only if the key is absent; otherwise `AlreadyExists`.
    IfAbsent,
    /// Only if the current version is exactly this (compare-and-set); otherwise `Conflict`
    /// carrying the current version (`None` if the key is absent).
    IfVersion(u64),
}

/// Options of a put.
///
/// A put replaces the value and the TTL. Metadata is replaced when given and kept when `None`
/// (empty on create).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PutOptions {
    /// When the put may write.
    pub condition: PutCondition,
    /// Time to live from now; `None` means the entry never expires.
    pub ttl: Option<Duration>,
    /// New metadata; `None` keeps the current metadata.
    pub metadata: Option<Metadata>,
}

impl PutOptions {
    /// Unconditional put without TTL.
    pub fn new() -> PutOptions {
        PutOptions::default()
    }

    /// Create-only.
    #[must_use]
    pub fn if_absent(mut self) -> PutOptions {
        self.condition = PutCondition::IfAbsent;
        self
    }

    /// Compare-and-set on the version.
    #[must_use]
    pub fn if_version(mut self, version: u64) -> PutOptions {
        self.condition = PutCondition::IfVersion(version);
        self
    }

    /// Sets a TTL.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> PutOptions {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the metadata.
    #[must_use]
    pub fn metadata(mut self, metadata: Metadata) -> PutOptions {
        self.metadata = Some(metadata);
        self
    }
}

/// When a delete may remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeleteCondition {
    /// Always (deleting an absent key is not an error; it reports `false`).
    #[default]
    Always,
    /// Only if the current version is exactly this; otherwise `Conflict` with the current
    /// version (`None` if absent).
    IfVersion(u64),
}

/// One put of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPut {
    /// Key.
    pub key: String,
    /// Value.
    pub value: Value,
    /// Condition, TTL, metadata.
    pub options: PutOptions,
}

impl BatchPut {
    /// An unconditional put.
    pub fn new(key: impl Into<String>, value: Value) -> BatchPut {
        BatchPut {
            key: key.into(),
            value,
            options: PutOptions::default(),
        }
    }

    /// With options.
    #[must_use]
    pub fn with_options(mut self, options: PutOptions) -> BatchPut {
        self.options = options;
        self
    }
}

/// One delete of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchDelete {
    /// Key.
    pub key: String,
    /// Condition.
    pub condition: DeleteCondition,
}

impl BatchDelete {
    /// An unconditional delete.
    pub fn new(key: impl Into<String>) -> BatchDelete {
        BatchDelete {
            key: key.into(),
            condition: DeleteCondition::Always,
        }
    }

    /// A delete only at this version.
    pub fn if_version(key: impl Into<String>, version: u64) -> BatchDelete {
        BatchDelete {
            key: key.into(),
            condition: DeleteCondition::IfVersion(version),
        }
    }
}

/// How `set_metadata` changes metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MetadataMode {
    /// The new object replaces the old.
    #[default]
    Replace,
    /// Top-level members of the new object overwrite or add to the old; a `null` member removes.
    Merge,
}

/// Options of `list`.
///
/// Keys come in byte-wise lexicographic order (reversed with `reverse`). `prefix` and `pattern`
/// both apply when both are set. `after` is a cursor: the listing starts strictly after that key
/// (strictly before it when reversed); pass a page's `next_cursor` to get the next page. `offset`
/// skips entries after the cursor; `limit` caps the page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Only keys starting with this (taken literally).
    pub prefix: Option<String>,
    /// Only keys matching this glob (see [`crate::Glob`]).
    pub pattern: Option<String>,
    /// Cursor: start strictly after (before, when reversed) this key.
    pub after: Option<String>,
    /// At most this many entries.
    pub limit: Option<usize>,
    /// Skip this many entries first.
    pub offset: usize,
    /// Largest key first.
    pub reverse: bool,
}

impl ListOptions {
    /// Everything, in order.
    pub fn new() -> ListOptions {
        ListOptions::default()
    }

    /// Sets the prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> ListOptions {
        self.prefix = Some(prefix.into());
        self
    }

    /// Sets the glob pattern.
    #[must_use]
    pub fn pattern(mut self, pattern: impl Into<String>) -> ListOptions {
        self.pattern = Some(pattern.into());
        self
    }

    /// Sets the cursor.
    #[must_use]
    pub fn after(mut self, cursor: impl Into<String>) -> ListOptions {
        self.after = Some(cursor.into());
        self
    }

    /// Sets the limit.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> ListOptions {
        self.limit = Some(limit);
        self
    }

    /// Sets the offset.
    #[must_use]
    pub fn offset(mut self, offset: usize) -> ListOptions {
        self.offset = offset;
        self
    }

    /// Reverses the order.
    #[must_use]
    pub fn reverse(mut self, reverse: bool) -> ListOptions {
        self.reverse = reverse;
        self
    }

    /// Checks the prefix, pattern and cursor; returns the compiled pattern.
    pub fn validate(&self) -> Result<Option<crate::Glob>> {
        if let Some(p) = &self.prefix {
            if p.len() > validate::MAX_KEY_LEN || p.contains('\0') {
                return Err(Error::invalid_input(
                    "list prefix must be at most 1024 bytes without NUL",
                )
                .with_context("prefix", validate::escape(p)));
            }
        }
        if let Some(c) = &self.after {
            validate::key(c).map_err(|e| e.with_context("cursor", "after"))?;
        }
        self.pattern.as_deref().map(crate::Glob::new).transpose()
    }

    /// Whether a key passes prefix, pattern and cursor (not offset / limit). Drivers that scan
    /// use this with the compiled pattern from [`ListOptions::validate`].
    pub fn admits(&self, key: &str, glob: Option<&crate::Glob>) -> bool {
        if let Some(p) = &self.prefix {
            if !key.starts_with(p.as_str()) {
                return false;
            }
        }
        if let Some(c) = &self.after {
            let past = if self.reverse {
                key.as_bytes() < c.as_bytes()
            } else {
                key.as_bytes() > c.as_bytes()
            };
            if !past {
                return false;
            }
        }
        glob.is_none_or(|g| g.matches(key))
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    /// The entries, in order.
    pub entries: Vec<Entry>,
    /// Pass as [`ListOptions::after`] to continue; `None` when nothing follows.
    pub next_cursor: Option<String>,
}

impl ListPage {
    /// Builds a page from up to `limit + 1` ordered entries: the extra one only tells that more
    /// follow.
    pub fn from_overfetch(mut entries: Vec<Entry>, limit: Option<usize>) -> ListPage {
        let more = limit.is_some_and(|l| entries.len() > l);
        if let Some(l) = limit {
            entries.truncate(l);
        }
        let next_cursor = if more {
            entries.last().map(|e| e.key.clone())
        } else {
            None
        };
        ListPage {
            entries,
            next_cursor,
        }
    }

    /// The keys of the page.
    pub fn keys(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.key.as_str()).collect()
    }
}

/// A namespace and its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceInfo {
    /// Name.
    pub name: String,
    /// Metadata given at creation.
    pub metadata: Metadata,
    /// When it was created (explicitly or by the first write into it).
    pub created_at: SystemTime,
}

/// Transaction isolation a driver provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Isolation {
    /// Serializable: a transaction whose reads changed before commit fails with a retryable
    /// `Conflict`.
    Serializable,
    /// Snapshot isolation: write-write conflicts fail with a retryable `Conflict`.
    Snapshot,
    /// Optimistic: every key read or written is watched; any change to one by someone else
    /// before commit fails the commit with a retryable `Conflict`.
    OptimisticWatch,
}

/// What a storage driver can do. Flat and plain, like OpenDAL's `Capability`.
///
/// `#[non_exhaustive]`: a driver starts from [`Capabilities::default`] (nothing supported,
/// limits 0) and sets what it offers, so a field added later defaults to "not supported".
///
/// ```
/// use kernel_core::Capabilities;
///
/// let mut caps = Capabilities::default();
/// caps.ttl = true;
/// caps.max_value_bytes = 1 << 20;
/// assert!(!caps.transactions);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Capabilities {
    /// `begin()` works; otherwise it returns `Unsupported`.
    pub transactions: bool,
    /// The isolation of transactions, when supported.
    pub isolation: Option<Isolation>,
    /// `query` and `count` with a filter run in the backend; `false` means they scan the
    /// namespace and filter with the shared evaluator.
    pub native_query: bool,
    /// TTL on puts.
    pub ttl: bool,
    /// Batches are atomic.
    pub atomic_batch: bool,
    /// Batches are one round trip.
    pub single_round_trip_batch: bool,
    /// Largest value in bytes of JSON.
    pub max_value_bytes: usize,
    /// Deepest nesting of values.
    pub max_depth: usize,
    /// Most items in one batch.
    pub max_batch_size: usize,
    /// Data outlives the process.
    pub durable: bool,
    /// [`crate::StorageDriver::create_index`] and its companions work (declared field
    /// indexes); otherwise they return `Unsupported`.
    pub field_indexes: bool,
}

/// Health and size of a backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// Backend name (`memory`, `postgres`, `redis`).
    pub backend: String,
    /// Whether it answered.
    pub healthy: bool,
    /// Round-trip time of the check.
    pub latency: Duration,
    /// Number of namespaces, where cheap.
    pub namespaces: Option<u64>,
    /// Number of live entries, where cheap.
    pub entries: Option<u64>,
    /// Backend-specific details (server version, memory use...). Never secrets.
    pub details: BTreeMap<String, String>,
}

impl Status {
    /// A status with no counts and no details; set the public fields for more.
    pub fn new(backend: impl Into<String>, healthy: bool, latency: Duration) -> Status {
        Status {
            backend: backend.into(),
            healthy,
            latency,
            namespaces: None,
            entries: None,
            details: BTreeMap::new(),
        }
    }
}

/// The `Conflict` of a failed `IfVersion` condition, carrying the current version (`None` when
/// the key is absent). Every driver builds it here so the message and context agree.
pub fn version_conflict(ns: &str, key: &str, expected: u64, current: Option<u64>) -> Error {
    Error::conflict(format!("expected version {expected}"))
        .with_context("namespace", ns)
        .with_context("key", validate::escape(key))
        .with_current_version(current)
}

/// The `AlreadyExists` of a failed `IfAbsent` condition.
pub fn already_exists(ns: &str, key: &str) -> Error {
    Error::new(crate::ErrorCode::AlreadyExists, "the key already exists")
        .with_context("namespace", ns)
        .with_context("key", validate::escape(key))
}

impl PutCondition {
    /// Checks the condition against the version currently stored (`None`: absent), with the
    /// error every driver returns: `AlreadyExists` or a `Conflict` carrying the current version.
    pub fn check(self, ns: &str, key: &str, current: Option<u64>) -> Result<()> {
        match (self, current) {
            (PutCondition::Always, _) | (PutCondition::IfAbsent, None) => Ok(()),
            (PutCondition::IfAbsent, Some(_)) => Err(already_exists(ns, key)),
            (PutCondition::IfVersion(v), current) if current == Some(v) => Ok(()),
            (PutCondition::IfVersion(v), current) => Err(version_conflict(ns, key, v, current)),
        }
    }
}

impl DeleteCondition {
    /// Checks the condition against the version currently stored (`None`: absent); a failed
    /// `IfVersion` is a `Conflict` carrying the current version.
    pub fn check(self, ns: &str, key: &str, current: Option<u64>) -> Result<()> {
        match self {
            DeleteCondition::Always => Ok(()),
            DeleteCondition::IfVersion(v) if current == Some(v) => Ok(()),
            DeleteCondition::IfVersion(v) => Err(version_conflict(ns, key, v, current)),
        }
    }
}

impl MetadataMode {
    /// Applies `patch` to `base` the way this mode says.
    pub fn apply(self, base: &mut Metadata, patch: Metadata) {
        match self {
            MetadataMode::Replace => *base = patch,
            MetadataMode::Merge => crate::merge_metadata(base, patch),
        }
    }
}
