//! Rate limits: the GCRA theoretical arrival time per key, stepped by kernel-core's `gcra`.

use std::collections::HashMap;
use std::time::SystemTime;

use async_trait::async_trait;
use kernel_core::rate_limit::gcra;
use kernel_core::{Quota, RateDecision, RateLimiter, Result, validate};

use crate::{MemoryDriver, micros};

#[derive(Debug, Default)]
pub(crate) struct RateTable {
    tats: HashMap<String, u64>,
    checks_since_purge: u64,
}

impl RateTable {
    /// Forgets keys whose TAT has passed: they are back to their full burst anyway.
    pub(crate) fn purge(&mut self, now: u64) {
        self.checks_since_purge = 0;
        self.tats.retain(|_, tat| *tat > now);
    }
}

#[async_trait]
impl RateLimiter for MemoryDriver {
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> Result<RateDecision> {
        quota.validate(key, cost)?;
        let now = micros(SystemTime::now());
        let mut table = self.inner.rates()?;
        let step = gcra(table.tats.get(key).copied(), now, quota, cost);
        if step.decision.allowed && step.new_tat > now {
            table.tats.insert(key.to_owned(), step.new_tat);
        }
        table.checks_since_purge += 1;
        if table.checks_since_purge >= 4096 {
            table.purge(now);
        }
        Ok(step.decision)
    }

    async fn reset(&self, key: &str) -> Result<()> {
        validate::rate_limit_key(key)?;
        self.inner.rates()?.tats.remove(key);
        Ok(())
    }
}
