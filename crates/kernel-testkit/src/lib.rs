//! # kernel-testkit
//!
//! The conformance suites every driver passes, in the manner of object_store's
//! `integration.rs`: one public async function per behaviour, generic over the trait
//! (`pub async fn put_then_get<S: StorageDriver + ?Sized + 'static>(store: Arc<S>)`), and a
//! macro per trait that turns the whole suite into tests for a driver, once on the concrete
//! type and once through `Arc<dyn Trait>`.
//!
//! Every driver crate does exactly this in `tests/conformance.rs` (see
//! `crates/driver-memory/tests/conformance.rs`, where it is compiled and run):
//!
//! ```text
//! // in a driver crate's tests/conformance.rs
//! kernel_testkit::storage_suite!(async { (MyDriver::new(), ()) });
//! kernel_testkit::event_suite!(async { (MyDriver::new(), ()) });
//! kernel_testkit::lock_suite!(async { (MyDriver::new(), ()) });
//! kernel_testkit::rate_limit_suite!(async { (MyDriver::new(), ()) });
//! ```
//!
//! The factory expression is evaluated afresh for every test and yields `(driver, guard)`; the
//! guard (a per-test database, a key prefix...) lives until the test ends, after the driver.
//! Every suite function takes `Arc<D>` with `D: Trait + ?Sized + 'static`, so race tests can
//! spawn tasks.
//!
//! Each macro expands to a module — `storage_conformance`, `event_conformance`,
//! `lock_conformance`, `rate_limit_conformance` — holding `concrete` and `dyn_arc` submodules
//! with one `#[test]` per behaviour. Each test runs on its own multi-thread runtime with four
//! workers (what `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]` builds) through
//! [`run_test`], which also fails a test that hangs past [`TEST_TIMEOUT`]; the driver crate
//! needs no tokio macros of its own. The behaviour names are listed once per suite (the hidden
//! `__storage_behaviours!`... macros), exposed as `storage::BEHAVIOURS` and its siblings: adding
//! a behaviour is its function plus one line in that list.
//!
//! Tests name everything they touch with [`unique`] and read the global event log from
//! `head_position()` taken at their start, so they also hold when drivers share a backend.
//! Capability-dependent behaviours check the other side when a capability is off: with
//! `transactions: false` the transaction tests assert `begin()` is `Unsupported`, with
//! `ttl: false` the TTL tests assert a put with a TTL is `Unsupported`.
//!
//! The `postgres` and `redis` modules (features of the same names) are the test servers: they find the server named by
//! `KERNEL_TEST_POSTGRES_URL` / `KERNEL_TEST_REDIS_URL`, isolate each test, and fail loudly with
//! instructions when no server answers.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod events;
pub mod lock;
#[cfg(feature = "postgres")]
pub mod pgbouncer;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod private;
pub mod properties;
pub mod proxy;
pub mod rate_limit;
#[cfg(feature = "redis")]
pub mod redis;
pub mod storage;
mod support;
mod whole_suite;

pub use support::*;
pub use whole_suite::{__boxed, Run, run_all};

#[doc(hidden)]
pub mod __private {
    pub use kernel_core;
    pub use tokio;
}
