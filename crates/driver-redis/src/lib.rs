//! # driver-redis
//!
//! Every kernel trait — [`StorageDriver`], [`EventStore`], [`Lock`], [`RateLimiter`] — on
//! Redis through [fred](https://docs.rs/fred): one [`RedisDriver`] (cheap to clone) over a
//! pool of connections with a reconnect policy.
//!
//! ```no_run
//! # async fn demo() -> kernel_core::Result<()> {
//! use driver_redis::{RedisConfig, RedisDriver};
//! use kernel_core::{json, PutOptions, StorageDriver};
//!
//! let driver = RedisDriver::connect(RedisConfig::new("redis://127.0.0.1:6379")).await?;
//! let entry = driver.put("users", "alice", json!({"age": 30}), PutOptions::new()).await?;
//! assert_eq!(entry.version, 1);
//! driver.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! How it holds the contract:
//!
//! * **Atomicity** comes from Lua scripts (the `.lua` files beside the sources), one script call
//!   per operation, called by SHA and reloaded on `NOSCRIPT`. Redis runs one script at a time, so
//!   every conditional write, batch, append and lease operation is atomic.
//! * **Layout**: a configurable key prefix, and hash tags so each namespace, each lock key and
//!   each rate-limit key sits in one cluster slot; events share one slot (see `docs/redis.md`).
//! * **Time** is always the server's (`TIME` inside scripts): TTLs, lease expiry and GCRA never
//!   depend on client clocks. An expired document is invisible at once and purged lazily.
//! * **Transactions** are optimistic: reads record a per-namespace write stamp, and the commit
//!   script re-checks every stamp before applying the writes ([`Isolation::OptimisticWatch`]).
//! * **Operation ids** ([`StorageDriver::write_once`]): the write script is wrapped by one that
//!   looks up and writes the id's record (`P{d:NS}:op:ID`, expiring with
//!   [`RedisConfig::operation_window`]) in the same script, so an id is applied at most once.
//! * **Queries** scan the namespace and use the shared evaluator
//!   (`capabilities().native_query == false`).
//!
//! [`StorageDriver`]: kernel_core::StorageDriver
//! [`StorageDriver::write_once`]: kernel_core::StorageDriver::write_once
//! [`EventStore`]: kernel_core::EventStore
//! [`Lock`]: kernel_core::Lock
//! [`RateLimiter`]: kernel_core::RateLimiter
//! [`Isolation::OptimisticWatch`]: kernel_core::Isolation::OptimisticWatch

mod codec;
mod config;
mod driver;
mod error;
mod events;
mod generation;
mod keys;
mod lock;
mod operation;
mod rate_limit;
mod scripts;
mod storage;
mod tls;
mod transaction;

pub use config::{
    MAX_KEY_PREFIX_LEN, MAX_OPERATION_WINDOW, MAX_WAIT_REPLICAS, MAX_WAIT_TIMEOUT, RedisConfig,
};
pub use driver::RedisDriver;
pub use kernel_core::redact::redact_url;
