//! A rate limiter written outside the kernel: GCRA per key in this process, on kernel-core's
//! shared `gcra` step, with the keys spread over shards so concurrent checks of different keys
//! do not contend. The `custom_backend` example plugs it into a kernel with `KernelBuilder`;
//! `tests/custom_backend.rs` runs the whole rate-limit conformance suite on it.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kernel_core::rate_limit::gcra;
use kernel_core::{Error, Quota, RateDecision, RateLimiter, Result, async_trait, validate};

const SHARDS: usize = 16;

/// GCRA rate limits held in this process only.
#[derive(Debug)]
pub(crate) struct LocalLimiter {
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<String, u64>>>,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        LocalLimiter {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl LocalLimiter {
    /// An empty limiter.
    pub(crate) fn new() -> LocalLimiter {
        LocalLimiter::default()
    }

    fn shard(&self, key: &str) -> Result<std::sync::MutexGuard<'_, HashMap<String, u64>>> {
        let at = usize::try_from(self.hasher.hash_one(key)).unwrap_or(0) % SHARDS;
        self.shards[at]
            .lock()
            .map_err(|_| Error::internal("a rate-limit shard was poisoned by a panic"))
    }
}

fn now_micros() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

#[async_trait]
impl RateLimiter for LocalLimiter {
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> Result<RateDecision> {
        quota.validate(key, cost)?;
        let now = now_micros();
        let mut shard = self.shard(key)?;
        let step = gcra(shard.get(key).copied(), now, quota, cost);
        if step.decision.allowed && step.new_tat > now {
            shard.insert(key.to_owned(), step.new_tat);
        }
        // Keys back at their full burst carry no state: drop them so memory stays bounded.
        if shard.len() > 1024 {
            shard.retain(|_, tat| *tat > now);
        }
        Ok(step.decision)
    }

    async fn reset(&self, key: &str) -> Result<()> {
        validate::rate_limit_key(key)?;
        self.shard(key)?.remove(key);
        Ok(())
    }
}
