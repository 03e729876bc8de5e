//! The kernel-testkit property tests on the in-process driver: generated names, keys, JSON
//! values, filters, TTLs and batch sizes (see `kernel_testkit::properties`). A fresh driver per
//! property, built with the properties' small value limits.

use driver_memory::MemoryDriver;
use kernel_testkit::properties::{LIMITS, Settings};

kernel_testkit::property_suite!(Settings::new(128).batch_cases(64), async {
    (MemoryDriver::with_limits(LIMITS), ())
});
