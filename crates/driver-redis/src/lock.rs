//! `Lock` on Redis: `SET NX PX` with a random token, compare-and-act scripts for release and
//! extend, and a per-key fencing counter that is never deleted.

use std::time::Duration;

use async_trait::async_trait;
use fred::types::Value as RedisValue;
use kernel_core::lock::{not_held, validate_lease_request, validate_ttl};
use kernel_core::validate::escape;
use kernel_core::{Lease, Lock, Result, Uuid};

use crate::RedisDriver;
use crate::codec::{Reply, from_micros};

/// Redis expires keys with millisecond precision; round up so a lease never lapses early.
fn ttl_millis(ttl: Duration) -> String {
    let ms = ttl.as_micros().div_ceil(1000).max(1);
    ms.to_string()
}

/// What the holder key stores: the secret token and the fencing token, so a lease whose fencing
/// token was changed is not taken for the holder's.
fn holder_value(lease: &Lease) -> String {
    format!("{}:{}", lease.token, lease.fencing_token)
}

#[async_trait]
impl Lock for RedisDriver {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<Lease>> {
        validate_lease_request(key, ttl)?;
        self.verify_generation("try_acquire", false).await?;
        let token = Uuid::new_v4().simple().to_string();
        let keys = self.inner.keys.lock(key).to_vec();
        let reply = self
            .run(
                &self.inner.scripts.lock_acquire,
                "try_acquire",
                keys,
                vec![token.as_str().into(), RedisValue::from(ttl_millis(ttl))],
            )
            .await
            .map_err(|e| e.with_context("key", escape(key)))?;
        if matches!(reply, RedisValue::Null) {
            return Ok(None);
        }
        let mut reply = Reply::new(reply, "try_acquire");
        let fencing_token = reply.u64()?;
        let now = from_micros(reply.u64()?);
        Ok(Some(Lease {
            key: key.to_owned(),
            token,
            fencing_token,
            expires_at: now + ttl,
        }))
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        kernel_core::validate::lock_key(&lease.key)?;
        self.verify_generation("release", false).await?;
        let [holder, _] = self.inner.keys.lock(&lease.key);
        let reply = self
            .run(
                &self.inner.scripts.lock_release,
                "release",
                vec![holder],
                vec![holder_value(lease).into()],
            )
            .await
            .map_err(|e| e.with_context("key", escape(&lease.key)))?;
        match Reply::new(reply, "release").u64()? {
            1 => Ok(()),
            _ => Err(not_held(lease)),
        }
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        kernel_core::validate::lock_key(&lease.key)?;
        validate_ttl(&lease.key, ttl)?;
        self.verify_generation("extend", false).await?;
        let [holder, _] = self.inner.keys.lock(&lease.key);
        let reply = self
            .run(
                &self.inner.scripts.lock_extend,
                "extend",
                vec![holder],
                vec![
                    holder_value(lease).into(),
                    RedisValue::from(ttl_millis(ttl)),
                ],
            )
            .await
            .map_err(|e| e.with_context("key", escape(&lease.key)))?;
        if matches!(reply, RedisValue::Null) {
            return Err(not_held(lease));
        }
        let now = from_micros(Reply::new(reply, "extend").u64()?);
        Ok(Lease {
            expires_at: now + ttl,
            ..lease.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_milliseconds() {
        assert_eq!(ttl_millis(Duration::from_micros(10_001)), "11");
        assert_eq!(ttl_millis(Duration::from_millis(10)), "10");
        assert_eq!(ttl_millis(Duration::from_secs(86_400)), "86400000");
    }
}
