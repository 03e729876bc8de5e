//! `RateLimiter`: GCRA (kernel_core::rate_limit::gcra) in the SQL function `kernel_rate_check`,
//! atomic under the key's row lock, on microseconds of the server clock.

use std::time::Duration;

use async_trait::async_trait;
use kernel_core::validate;
use kernel_core::{Quota, RateDecision, RateLimiter, Result};

use crate::PostgresDriver;
use crate::error::{corrupted, pg, pg_write};
use crate::rows::to_i64;

fn micros(v: i64) -> Result<Duration> {
    u64::try_from(v)
        .map(Duration::from_micros)
        .map_err(|_| corrupted("a negative rate-limit duration"))
}

#[async_trait]
impl RateLimiter for PostgresDriver {
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> Result<RateDecision> {
        quota.validate(key, cost)?;
        let client = self.client().await?;
        let row = self
            .statements()
            .query_one(
                &client,
                "SELECT o_allowed, o_remaining, o_retry_after_us, o_reset_after_us \
                 FROM kernel_rate_check($1, $2, $3, $4, $5)",
                &[
                    &key,
                    &to_i64(quota.interval_micros()),
                    &to_i64(quota.period_micros()),
                    &i64::from(quota.limit),
                    &i64::from(cost),
                ],
            )
            .await
            .map_err(|e| {
                // A cost-0 check only peeks: nothing can have been applied.
                if cost > 0 { pg_write(e) } else { pg(e) }
                    .with_context("key", validate::escape(key))
            })?;
        let remaining: i64 = row.try_get(1).map_err(pg)?;
        Ok(RateDecision {
            allowed: row.try_get(0).map_err(pg)?,
            limit: quota.limit,
            remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            retry_after: micros(row.try_get(2).map_err(pg)?)?,
            reset_after: micros(row.try_get(3).map_err(pg)?)?,
        })
    }

    async fn reset(&self, key: &str) -> Result<()> {
        validate::rate_limit_key(key)?;
        let client = self.client().await?;
        self.statements()
            .execute(
                &client,
                "DELETE FROM kernel_rate_limits WHERE key = $1",
                &[&key],
            )
            .await
            .map_err(|e| pg_write(e).with_context("key", validate::escape(key)))?;
        Ok(())
    }
}
