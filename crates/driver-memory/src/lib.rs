//! # driver-memory
//!
//! The in-process driver: every kernel trait — [`StorageDriver`], [`EventStore`], [`Lock`],
//! [`RateLimiter`] — on ordered in-memory maps, with no service to run. It is the embedded
//! default, the reference the conformance suites are written against, and what tests of code
//! built on the kernel use.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kernel_core::Result<()> {
//! use driver_memory::MemoryDriver;
//! use kernel_core::{json, PutOptions, StorageDriver};
//!
//! let driver = MemoryDriver::new();
//! let entry = driver.put("users", "alice", json!({"age": 30}), PutOptions::new()).await?;
//! assert_eq!(entry.version, 1);
//! # Ok(()) }
//! ```
//!
//! Concurrency: documents sit behind one read-write lock, events behind one mutex, so every
//! operation is atomic and linearizable; transactions are serializable by optimistic
//! validation of their reads at commit. Nothing is awaited while a lock is held.
//!
//! [`StorageDriver`]: kernel_core::StorageDriver
//! [`EventStore`]: kernel_core::EventStore
//! [`Lock`]: kernel_core::Lock
//! [`RateLimiter`]: kernel_core::RateLimiter

mod documents;
mod events;
mod indexes;
mod leases;
mod rate_limits;
mod transaction;

use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use kernel_core::subscription::{HeadSender, HeadSignal, SubscriptionConfig};
use kernel_core::{Error, Limits, Result};

/// The in-process driver. Cheap to clone: clones share the same data.
#[derive(Clone)]
pub struct MemoryDriver {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    docs: RwLock<documents::DocState>,
    events: Mutex<events::EventLog>,
    head: HeadSender,
    subscription: SubscriptionConfig,
    leases: Mutex<leases::LeaseTable>,
    rates: Mutex<rate_limits::RateTable>,
}

impl std::fmt::Debug for MemoryDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDriver")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryDriver {
    fn default() -> Self {
        MemoryDriver::new()
    }
}

impl MemoryDriver {
    /// An empty driver with the default limits (1 MiB values, 64 levels).
    pub fn new() -> MemoryDriver {
        MemoryDriver::with_limits(Limits::DEFAULT)
    }

    /// An empty driver with custom value limits.
    pub fn with_limits(limits: Limits) -> MemoryDriver {
        let (head, _) = tokio::sync::watch::channel(HeadSignal::default());
        MemoryDriver {
            inner: Arc::new(Inner {
                limits,
                docs: RwLock::new(documents::DocState::default()),
                events: Mutex::new(events::EventLog::default()),
                head,
                subscription: SubscriptionConfig::default(),
                leases: Mutex::new(leases::LeaseTable::default()),
                rates: Mutex::new(rate_limits::RateTable::default()),
            }),
        }
    }

    /// Sets how long operation ids are remembered
    /// ([`kernel_core::StorageDriver::write_once`]; 24 hours by default), for this driver and
    /// its clones. Records already made keep the window they were made with.
    pub fn with_operation_window(self, window: std::time::Duration) -> Result<MemoryDriver> {
        if window.is_zero() {
            return Err(Error::config(
                "operation_window_ms",
                "the operation window must be longer than zero",
            ));
        }
        self.inner.docs_write()?.operation_window = window;
        Ok(self)
    }

    /// The value limits in force.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// Ends every subscription (after it yields what is stored). Data stays readable.
    /// Calling it again is harmless.
    pub fn shutdown(&self) {
        self.inner.head.send_modify(|s| s.closed = true);
    }

    /// Removes expired documents, leases and rate-limit state now (it also happens as writes go).
    pub fn purge_expired(&self) -> Result<usize> {
        let now = SystemTime::now();
        let docs = self.inner.docs_write()?.purge_expired(now);
        self.inner.leases()?.purge(now);
        self.inner.rates()?.purge(micros(now));
        Ok(docs)
    }
}

impl Inner {
    fn docs_read(&self) -> Result<RwLockReadGuard<'_, documents::DocState>> {
        self.docs.read().map_err(|_| poisoned("documents"))
    }

    fn docs_write(&self) -> Result<RwLockWriteGuard<'_, documents::DocState>> {
        self.docs.write().map_err(|_| poisoned("documents"))
    }

    fn events(&self) -> Result<MutexGuard<'_, events::EventLog>> {
        self.events.lock().map_err(|_| poisoned("events"))
    }

    fn leases(&self) -> Result<MutexGuard<'_, leases::LeaseTable>> {
        self.leases.lock().map_err(|_| poisoned("locks"))
    }

    fn rates(&self) -> Result<MutexGuard<'_, rate_limits::RateTable>> {
        self.rates.lock().map_err(|_| poisoned("rate limits"))
    }
}

// A poisoned lock means a panic inside the driver: report it instead of propagating the panic.
fn poisoned(what: &str) -> Error {
    Error::internal(format!(
        "in-memory {what} state is poisoned by an earlier panic"
    ))
    .with_context("backend", "memory")
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
