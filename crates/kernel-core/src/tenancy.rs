//! The tenant a call runs for, carried beside the call rather than in its arguments.
//!
//! A tenant-scoping layer (kernel-bootstrap's `Tenant`) moves every name into the tenant's
//! space itself; a driver that can also make the *backend* enforce the separation (PostgreSQL
//! with row-level security) needs to know the tenant of calls that name nothing, such as
//! `read_all`, `subscribe` or `list_namespaces`. The layer runs each call of the store below it
//! inside [`scope`]; the driver reads [`current`] when the call starts (a subscription keeps
//! the tenant it was opened with).
//!
//! The value is task-local: it follows the call's future, not the thread, and is gone once
//! the call returns. Work a driver hands to a task of its own must take the tenant along.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use kernel_core::tenancy;
//!
//! assert_eq!(tenancy::current(), None);
//! let seen = tenancy::scope(Arc::from("acme"), async { tenancy::current() }).await;
//! assert_eq!(seen.as_deref(), Some("acme"));
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;

tokio::task_local! {
    static TENANT: Arc<str>;
}

/// Runs `call` with `tenant` as the [`current`] tenant (an inner scope wins while it runs).
pub async fn scope<F: Future>(tenant: Arc<str>, call: F) -> F::Output {
    TENANT.scope(tenant, call).await
}

/// The tenant of the call being made, if a tenant-scoping layer set one.
pub fn current() -> Option<Arc<str>> {
    TENANT.try_with(Arc::clone).ok()
}
