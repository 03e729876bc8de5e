//! # kernel-core
//!
//! The contract of the kernel storage subsystem: four async, object-safe traits —
//! [`StorageDriver`] (namespaced JSON documents), [`EventStore`] (append-only streams),
//! [`Lock`] (leases with fencing tokens) and [`RateLimiter`] (GCRA) — their types, the one
//! [`Error`] type, the input rules in [`validate`], the shared [`Filter`] evaluator and [`Glob`]
//! matcher, and the subscription loop in [`subscription`]. No I/O and no driver lives here.
//!
//! Drivers (`driver-memory`, `driver-postgres`, `driver-redis`) implement the traits;
//! `kernel-testkit` holds the conformance suites they all pass; `kernel-bootstrap` wires them
//! from configuration.
//!
//! ```
//! use kernel_core::{Filter, Query};
//! use serde_json::json;
//!
//! let q = Query::new().filter(Filter::starts_with("name", "Al")).sort_asc("age");
//! assert!(q.filter.as_ref().unwrap().matches(&json!({"name": "Alice"})));
//! ```

pub mod companion;
pub mod document;
pub mod error;
pub mod event;
pub mod ext;
pub mod glob;
pub mod index;
pub mod lock;
pub mod operation;
pub mod query;
pub mod rate_limit;
pub mod redact;
pub mod settings;
pub mod storage;
pub mod subscription;
pub mod tenancy;
pub mod validate;

pub use document::{
    BatchDelete, BatchPut, Capabilities, DeleteCondition, Entry, Isolation, ListOptions, ListPage,
    MetadataMode, NamespaceInfo, PutCondition, PutOptions, Status,
};
pub use error::{Error, ErrorCode, ErrorStatus, Result};
pub use event::{
    AppendResult, EventFilter, EventStore, EventSubscription, ExpectedVersion, NewEvent,
    ReadDirection, ReadStream, RecordedEvent, Snapshot,
};
pub use ext::{AggregateHistory, EventStoreExt, LockExt, StorageExt};
pub use glob::Glob;
pub use index::{IndexInfo, IndexSpec};
pub use lock::{Lease, Lock};
pub use operation::{Applied, OperationId, Outcome, Write};
pub use query::{Direction, Filter, Op, Query, SortKey};
pub use rate_limit::{Quota, RateDecision, RateLimiter};
pub use storage::{StorageDriver, Transaction};
pub use validate::Limits;

/// Re-exported so users need not depend on these crates directly for the types in the API.
pub use async_trait::async_trait;
pub use serde_json::{Value, json};
pub use uuid::Uuid;

/// A JSON object: document and event metadata.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// Merges `patch` into `base` at the top level; a `null` member removes the key.
pub fn merge_metadata(base: &mut Metadata, patch: Metadata) {
    for (k, v) in patch {
        if v.is_null() {
            base.remove(&k);
        } else {
            base.insert(k, v);
        }
    }
}
