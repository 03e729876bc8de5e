//! `RateLimiter` on Redis: GCRA in one script on the server clock (no module needed), the same
//! arithmetic as `kernel_core::rate_limit::gcra`.

use std::time::Duration;

use async_trait::async_trait;
use fred::interfaces::KeysInterface;
use fred::types::Value as RedisValue;
use kernel_core::validate::{self, escape};
use kernel_core::{Quota, RateDecision, RateLimiter, Result};

use crate::RedisDriver;
use crate::codec::Reply;
use crate::error::map_write_err;

#[async_trait]
impl RateLimiter for RedisDriver {
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> Result<RateDecision> {
        quota.validate(key, cost)?;
        let reply = self
            .run_as(
                &self.inner.scripts.gcra,
                // A cost-0 check only peeks.
                cost > 0,
                "rate_limit_check",
                vec![self.inner.keys.rate(key)],
                vec![
                    RedisValue::from(quota.interval_micros().to_string()),
                    RedisValue::from(quota.period_micros().to_string()),
                    RedisValue::from(i64::from(cost)),
                    RedisValue::from(i64::from(quota.limit)),
                ],
            )
            .await
            .map_err(|e| e.with_context("key", escape(key)))?;
        let mut reply = Reply::new(reply, "rate_limit_check");
        let allowed = reply.u64()? == 1;
        let remaining = u32::try_from(reply.u64()?)
            .unwrap_or(u32::MAX)
            .min(quota.limit);
        let retry_after = Duration::from_micros(reply.u64()?);
        let reset_after = Duration::from_micros(reply.u64()?);
        Ok(RateDecision {
            allowed,
            limit: quota.limit,
            remaining,
            retry_after,
            reset_after,
        })
    }

    async fn reset(&self, key: &str) -> Result<()> {
        validate::rate_limit_key(key)?;
        self.ensure_open("rate_limit_reset")?;
        let client = self.inner.pool.next_connected();
        let rate_key = self.inner.keys.rate(key);
        let slot = fred::util::redis_keyslot(rate_key.as_bytes());
        let _: i64 = client
            .del(rate_key)
            .await
            .map_err(|e| map_write_err(e, "rate_limit_reset").with_context("key", escape(key)))?;
        self.confirm_replicas(client, Some(slot), "rate_limit_reset")
            .await
            .map_err(|e| e.with_context("key", escape(key)))
    }
}
