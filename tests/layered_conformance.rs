//! The whole conformance suite of every trait, run through layered stores over the in-process
//! and SQLite drivers: layers must be invisible to a caller whose calls succeed.
//!
//! * `standard_stack`: the kernel's default stack (observability, circuit breaker, retry,
//!   timeout) over the in-process driver.
//! * `sqlite_standard_stack`: the same stack over a SQLite file.
//! * `tenant_scope`: that stack under a tenant scope and an access-control layer granting
//!   everything, the way an application serves one tenant.
//! * `tenant_over_memory`: a tenant scope alone over the in-process driver.
//!
//! The two tenant runs pass the whole contract of every trait but one storage behaviour, left
//! out by design (`kernel_testkit::prefixed_storage_suite!`): inside a tenant a namespace has 128
//! bytes minus the tenant prefix, so the suite's "a 128-byte namespace is accepted" cannot hold
//! (see `layers::tenant`); `a_namespace_in_a_tenant_has_what_the_prefix_leaves` checks the
//! tenant's version of that rule instead.

use std::sync::Arc;
use std::time::Duration;

use driver_memory::MemoryDriver;
use driver_sqlite::{SqliteConfig, SqliteDriver};
use kernel_bootstrap::layers::Layered;
use kernel_bootstrap::layers::access::{AccessControl, Permission, Principal, Resource};
use kernel_bootstrap::layers::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig};
use kernel_bootstrap::layers::observe::Observer;
use kernel_bootstrap::layers::retry::RetryPolicy;
use kernel_bootstrap::layers::tenant::{Tenant, TenantScope};
use kernel_bootstrap::layers::timeout::TimeoutPolicy;
use kernel_core::{ErrorCode, PutOptions, StorageDriver, json};

/// The kernel's default stack over `D`, outermost first, as one concrete type (the shutdown
/// gate left out: it only acts after a shutdown).
type StandardOver<D> =
    Layered<Observer, Layered<CircuitBreaker, Layered<RetryPolicy, Layered<TimeoutPolicy, D>>>>;

/// The default stack over the in-process driver.
type Standard = StandardOver<MemoryDriver>;

fn standard_over<D>(driver: D, backend: &str) -> StandardOver<D> {
    let timed = Layered::new(
        Arc::new(driver),
        TimeoutPolicy::new(Duration::from_secs(20)),
    );
    let retried = Layered::new(Arc::new(timed), RetryPolicy::default());
    let guarded = Layered::new(
        Arc::new(retried),
        CircuitBreaker::new(backend, CircuitBreakerConfig::default()),
    );
    Layered::new(Arc::new(guarded), Observer::new(backend))
}

fn standard() -> Standard {
    standard_over(MemoryDriver::new(), "memory")
}

/// The default stack over a SQLite driver on a fresh file; the guard removes the file's
/// directory after the test.
async fn standard_sqlite() -> (StandardOver<SqliteDriver>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("kernel.db");
    let driver = SqliteDriver::open(SqliteConfig::new(path.to_string_lossy()))
        .await
        .expect("open a fresh SQLite database");
    (standard_over(driver, "sqlite"), dir)
}

const TENANT: &str = "conformance";

fn tenant() -> Tenant {
    match Tenant::new(TENANT) {
        Ok(t) => t,
        Err(e) => panic!("a valid tenant id: {e}"),
    }
}

/// A tenant's view with every permission granted.
type Scoped = AccessControl<TenantScope<Standard>>;

fn scoped() -> Scoped {
    let mut principal = Principal::new("everything");
    for resource in [
        Resource::Namespace,
        Resource::Stream,
        Resource::LockKey,
        Resource::RateLimitKey,
    ] {
        principal = match principal.allow(resource, "*", Permission::ReadWrite) {
            Ok(p) => p,
            Err(e) => panic!("a `*` grant compiles: {e}"),
        };
    }
    AccessControl::new(
        Arc::new(TenantScope::new(Arc::new(standard()), tenant())),
        principal,
    )
}

/// A tenant scope alone over the in-process driver.
fn tenant_only() -> TenantScope<MemoryDriver> {
    TenantScope::new(Arc::new(MemoryDriver::new()), tenant())
}

mod standard_stack {
    use super::*;

    kernel_testkit::storage_suite!(async { (standard(), ()) });
    kernel_testkit::event_suite!(async { (standard(), ()) });
    kernel_testkit::lock_suite!(async { (standard(), ()) });
    kernel_testkit::rate_limit_suite!(async { (standard(), ()) });
}

mod sqlite_standard_stack {
    use super::*;

    kernel_testkit::storage_suite!(standard_sqlite());
    kernel_testkit::event_suite!(standard_sqlite());
    kernel_testkit::lock_suite!(standard_sqlite());
    kernel_testkit::rate_limit_suite!(standard_sqlite());
}

mod tenant_scope {
    use super::*;

    kernel_testkit::prefixed_storage_suite!(async { (scoped(), ()) });
    kernel_testkit::event_suite!(async { (scoped(), ()) });
    kernel_testkit::lock_suite!(async { (scoped(), ()) });
    kernel_testkit::rate_limit_suite!(async { (scoped(), ()) });
}

mod tenant_over_memory {
    use super::*;

    kernel_testkit::prefixed_storage_suite!(async { (tenant_only(), ()) });
    kernel_testkit::event_suite!(async { (tenant_only(), ()) });
    kernel_testkit::lock_suite!(async { (tenant_only(), ()) });
    kernel_testkit::rate_limit_suite!(async { (tenant_only(), ()) });
}

/// The tenant's version of `rejects_long_namespace`: a namespace has 128 bytes minus the
/// prefix; one byte more is refused before any I/O, naming the operation and the caller's name.
async fn a_namespace_has_what_the_prefix_leaves(store: &dyn StorageDriver) {
    let room = 128 - format!("t_{TENANT}.").len();
    let base = kernel_testkit::unique("long");
    let fits = format!("{base}{}", "x".repeat(room - base.len()));
    let entry = store
        .put(&fits, "k", json!(1), PutOptions::new())
        .await
        .unwrap_or_else(|e| panic!("a {room}-byte namespace fits: {e}"));
    assert_eq!(entry.namespace, fits);
    let found = store
        .get(&fits, "k")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.map(|e| e.namespace), Some(fits.clone()));
    for len in [room + 1, 128, 129] {
        let long = format!("{fits}{}", "y".repeat(len - room));
        let e = store
            .put(&long, "k", json!(1), PutOptions::new())
            .await
            .expect_err("too long inside the tenant");
        assert_eq!(e.code(), ErrorCode::InvalidInput, "{len}: {e}");
        assert_eq!(e.operation(), Some("put"), "{len}: {e}");
        let escaped = kernel_core::validate::escape(&long);
        assert_eq!(
            e.context_value("namespace"),
            Some(escaped.as_str()),
            "{len}"
        );
        // Over 128 bytes the input rules refuse it before the prefix is considered.
        let tenant = (len <= 128).then_some(TENANT);
        assert_eq!(e.context_value("tenant"), tenant, "{len}: {e}");
    }
}

#[tokio::test]
async fn a_namespace_in_a_tenant_has_what_the_prefix_leaves() {
    a_namespace_has_what_the_prefix_leaves(&scoped()).await;
    a_namespace_has_what_the_prefix_leaves(&tenant_only()).await;
}
