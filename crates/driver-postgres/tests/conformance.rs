//! The whole kernel conformance suite against real PostgreSQL: each test gets its own database
//! (cloned from a migrated template) and runs on the concrete driver and through
//! `Arc<dyn Trait>`.

mod common;

kernel_testkit::storage_suite!(async { common::driver().await });
kernel_testkit::event_suite!(async { common::driver().await });
kernel_testkit::lock_suite!(async { common::driver().await });
kernel_testkit::rate_limit_suite!(async { common::driver().await });
