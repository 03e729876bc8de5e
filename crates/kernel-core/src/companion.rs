//! A companion event: an event a layer asks the store to append **in the same transaction** as
//! the write of the call it wraps, where the backend can (the audit layer's record of a write
//! on PostgreSQL). Carried beside the call, like [`crate::tenancy`].
//!
//! The layer puts the companion in [`scope`] around the call; a driver that can write it
//! atomically with the call's write reads [`current`], appends the event first in the write's
//! transaction, and calls [`Companion::mark_written`] once that transaction has committed. If
//! the mark is missing when the call returns (a driver that cannot, a write path that does
//! not, a failed write, a retry that went another way), the layer writes the event itself —
//! with the same event id, so an append that did commit but whose acknowledgement was lost is
//! not recorded twice (appends are idempotent on the id).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use kernel_core::companion::{self, Companion};
//! use kernel_core::{json, NewEvent};
//!
//! let record = Arc::new(Companion::new("audit-1", NewEvent::new("Audited", json!({}))));
//! companion::scope(record.clone(), async {
//!     // A driver: append `current()` in the write's transaction, then mark it.
//!     if let Some(c) = companion::current() {
//!         c.mark_written();
//!     }
//! })
//! .await;
//! assert!(record.written());
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::NewEvent;

tokio::task_local! {
    static COMPANION: Arc<Companion>;
}

/// An event to append with the call's write: its stream and the event (with a fixed id).
#[derive(Debug)]
pub struct Companion {
    stream: String,
    event: NewEvent,
    written: AtomicBool,
}

impl Companion {
    /// A companion event for `stream`.
    pub fn new(stream: impl Into<String>, event: NewEvent) -> Companion {
        Companion {
            stream: stream.into(),
            event,
            written: AtomicBool::new(false),
        }
    }

    /// The stream to append to.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The event.
    pub fn event(&self) -> &NewEvent {
        &self.event
    }

    /// Says the event was committed with the call's write (a driver calls this after commit).
    pub fn mark_written(&self) {
        self.written.store(true, Ordering::Release);
    }

    /// Whether a driver committed the event with the write.
    pub fn written(&self) -> bool {
        self.written.load(Ordering::Acquire)
    }
}

/// Runs `call` with `companion` as the [`current`] companion.
pub async fn scope<F: Future>(companion: Arc<Companion>, call: F) -> F::Output {
    COMPANION.scope(companion, call).await
}

/// The companion of the call being made, if a layer set one and no attempt has written it yet.
pub fn current() -> Option<Arc<Companion>> {
    COMPANION.try_with(Arc::clone).ok().filter(|c| !c.written())
}
