//! The `RateLimiter` trait and the GCRA arithmetic every driver shares.
//!
//! GCRA (the generic cell rate algorithm) keeps one number per key, the theoretical arrival
//! time (TAT). A quota of `limit` per `period` has an emission interval `T = period / limit`
//! and a burst tolerance `tau = period`. A request of cost `c` at time `now` computes
//! `new_tat = max(tat, now) + c*T`; it is allowed when `new_tat - tau <= now`, and then the TAT
//! becomes `new_tat`. It is exact (no window edges), O(1) in space and time, and the same few
//! lines run in Rust (memory), SQL (Postgres) and Lua (Redis), all on microseconds.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::validate;

/// `limit` requests per `period`, with bursts up to `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Requests (cost units) allowed per period, and the largest burst.
    pub limit: u32,
    /// The period.
    pub period: Duration,
}

impl Quota {
    /// `limit` per `period`.
    pub fn new(limit: u32, period: Duration) -> Quota {
        Quota { limit, period }
    }

    /// `limit` per second.
    pub fn per_second(limit: u32) -> Quota {
        Quota::new(limit, Duration::from_secs(1))
    }

    /// `limit` per minute.
    pub fn per_minute(limit: u32) -> Quota {
        Quota::new(limit, Duration::from_secs(60))
    }

    /// Emission interval in microseconds (at least 1).
    pub fn interval_micros(&self) -> u64 {
        (self.period_micros() / u64::from(self.limit.max(1))).max(1)
    }

    /// Period in microseconds.
    pub fn period_micros(&self) -> u64 {
        u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX)
    }

    /// Checks the quota and cost.
    pub fn validate(&self, key: &str, cost: u32) -> Result<()> {
        let ctx = |e: Error| e.with_context("key", validate::escape(key));
        validate::rate_limit_key(key)?;
        if self.limit == 0 {
            return Err(ctx(Error::invalid_input("quota limit must be at least 1")));
        }
        if self.period < Duration::from_millis(1) || self.period > Duration::from_secs(366 * 86_400)
        {
            return Err(ctx(Error::invalid_input(
                "quota period must be between 1 ms and 366 days",
            )));
        }
        if cost > self.limit {
            return Err(ctx(Error::invalid_input(format!(
                "cost {cost} exceeds the quota limit {}: it could never be allowed",
                self.limit
            ))));
        }
        Ok(())
    }
}

/// The answer to a rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateDecision {
    /// Whether the request may go ahead (and was counted).
    pub allowed: bool,
    /// The quota's limit.
    pub limit: u32,
    /// How many more cost units would be allowed right now.
    pub remaining: u32,
    /// When denied: how long until this request would be allowed. Zero when allowed.
    pub retry_after: Duration,
    /// How long until the key is back to its full burst.
    pub reset_after: Duration,
}

/// The outcome of one GCRA step: the decision and the TAT to store (unchanged when denied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraStep {
    /// The decision.
    pub decision: RateDecision,
    /// The TAT to store, in microseconds.
    pub new_tat: u64,
}

/// One GCRA step on microsecond timestamps. `tat` is the stored TAT (`None` for a new key).
pub fn gcra(tat: Option<u64>, now: u64, quota: &Quota, cost: u32) -> GcraStep {
    let t = quota.interval_micros();
    let tau = quota.period_micros();
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(t.saturating_mul(u64::from(cost)));
    let allow_at = new_tat.saturating_sub(tau);
    let remaining_after = |stored_tat: u64| -> u32 {
        let used = stored_tat.saturating_sub(now);
        let free = tau.saturating_sub(used);
        u32::try_from(free / t).unwrap_or(u32::MAX).min(quota.limit)
    };
    if allow_at <= now {
        GcraStep {
            decision: RateDecision {
                allowed: true,
                limit: quota.limit,
                remaining: remaining_after(new_tat),
                retry_after: Duration::ZERO,
                reset_after: Duration::from_micros(new_tat.saturating_sub(now)),
            },
            new_tat,
        }
    } else {
        GcraStep {
            decision: RateDecision {
                allowed: false,
                limit: quota.limit,
                remaining: remaining_after(tat),
                retry_after: Duration::from_micros(allow_at - now),
                reset_after: Duration::from_micros(tat.saturating_sub(now)),
            },
            new_tat: tat,
        }
    }
}

/// Rate limiting by key.
///
/// # Contract
///
/// * GCRA with a burst of `quota.limit` (see the module docs); atomic per key on every driver, so
///   concurrent checks never allow more than the quota.
/// * A check of cost `c` is allowed when `c` units are free; it then consumes them. A denied
///   check consumes nothing and says how long to wait (`retry_after`).
/// * Cost 0 peeks without consuming (read `remaining`; `allowed` is always true for a peek);
///   a cost above `quota.limit` is `InvalidInput`.
/// * State for a key lapses once it is back to its full burst.
#[async_trait]
pub trait RateLimiter: Send + Sync + std::fmt::Debug {
    /// Checks (and, if allowed, consumes) `cost` units of `quota` for `key`.
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> Result<RateDecision>;

    /// Forgets the key's state: its full burst is available again.
    async fn reset(&self, key: &str) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let q = Quota::new(3, Duration::from_secs(3));
        let mut tat = None;
        let mut now = 1_000_000_000u64;
        for expected in [2, 1, 0] {
            let s = gcra(tat, now, &q, 1);
            assert!(s.decision.allowed);
            assert_eq!(s.decision.remaining, expected);
            tat = Some(s.new_tat);
        }
        let denied = gcra(tat, now, &q, 1);
        assert!(!denied.decision.allowed);
        assert_eq!(denied.decision.retry_after, Duration::from_secs(1));
        assert_eq!(denied.new_tat, tat.unwrap());
        now += 1_000_000;
        let s = gcra(tat, now, &q, 1);
        assert!(s.decision.allowed);
        assert_eq!(s.decision.remaining, 0);
    }

    #[test]
    fn cost_zero_peeks() {
        let q = Quota::per_second(5);
        let s = gcra(None, 10, &q, 0);
        assert!(s.decision.allowed);
        assert_eq!(s.decision.remaining, 5);
        assert!(q.validate("k", 6).is_err());
    }
}
