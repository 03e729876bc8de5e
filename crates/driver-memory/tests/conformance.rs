//! The kernel-testkit conformance suites on the in-process driver: every behaviour of every
//! trait, on `Arc<MemoryDriver>` and on `Arc<dyn Trait>`. A fresh driver per test, no guard.

use driver_memory::MemoryDriver;

kernel_testkit::storage_suite!(async { (MemoryDriver::new(), ()) });
kernel_testkit::event_suite!(async { (MemoryDriver::new(), ()) });
kernel_testkit::lock_suite!(async { (MemoryDriver::new(), ()) });
kernel_testkit::rate_limit_suite!(async { (MemoryDriver::new(), ()) });
