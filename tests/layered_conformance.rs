//! The whole conformance suite of every trait, run through layered stores over the in-process
//! driver: layers must be invisible to a caller whose calls succeed.
//!
//! * `standard`: the kernel's default stack (observability, retry, circuit breaker, timeout).
//! * `scoped`: that stack under a tenant scope and an access-control layer granting everything,
//!   the way an application serves one tenant. Its storage runs the whole storage suite but one
//!   behaviour by design: inside a tenant a namespace has 128 bytes minus the tenant prefix, so
//!   the suite's "a 128-byte namespace is accepted" cannot hold (see `layers::tenant`); the
//!   storage behaviours of the tenant scope are covered by its own tests instead.

use std::sync::Arc;
use std::time::Duration;

use driver_memory::MemoryDriver;
use kernel_bootstrap::layers::Layered;
use kernel_bootstrap::layers::access::{AccessControl, Permission, Principal, Resource};
use kernel_bootstrap::layers::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig};
use kernel_bootstrap::layers::observe::Observer;
use kernel_bootstrap::layers::retry::RetryPolicy;
use kernel_bootstrap::layers::tenant::{Tenant, TenantScope};
use kernel_bootstrap::layers::timeout::TimeoutPolicy;

/// The kernel's default stack, outermost first, as one concrete type.
type Standard = Layered<
    Observer,
    Layered<RetryPolicy, Layered<CircuitBreaker, Layered<TimeoutPolicy, MemoryDriver>>>,
>;

fn standard() -> Standard {
    let timed = Layered::new(
        Arc::new(MemoryDriver::new()),
        TimeoutPolicy::new(Duration::from_secs(20)),
    );
    let guarded = Layered::new(
        Arc::new(timed),
        CircuitBreaker::new("memory", CircuitBreakerConfig::default()),
    );
    let retried = Layered::new(Arc::new(guarded), RetryPolicy::default());
    Layered::new(Arc::new(retried), Observer::new("memory"))
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
    let tenant = match Tenant::new("conformance") {
        Ok(t) => t,
        Err(e) => panic!("a valid tenant id: {e}"),
    };
    AccessControl::new(
        Arc::new(TenantScope::new(Arc::new(standard()), tenant)),
        Arc::new(principal),
    )
}

mod standard_stack {
    use super::*;

    kernel_testkit::storage_suite!(async { (standard(), ()) });
    kernel_testkit::event_suite!(async { (standard(), ()) });
    kernel_testkit::lock_suite!(async { (standard(), ()) });
    kernel_testkit::rate_limit_suite!(async { (standard(), ()) });
}

mod tenant_scope {
    use super::*;

    kernel_testkit::event_suite!(async { (scoped(), ()) });
    kernel_testkit::lock_suite!(async { (scoped(), ()) });
    kernel_testkit::rate_limit_suite!(async { (scoped(), ()) });
}
