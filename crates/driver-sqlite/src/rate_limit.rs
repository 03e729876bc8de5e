//! Rate limits: the GCRA theoretical arrival time per key in `kernel_rate_limits`, stepped by
//! kernel-core's `gcra` inside one writer job, so checks are atomic per key across the process's
//! callers and across processes, and decide exactly as the memory driver does. A cost-0 peek is
//! a read. Rows back at their full burst are deleted lazily.

use async_trait::async_trait;
use kernel_core::rate_limit::gcra;
use kernel_core::validate::{self, escape};
use kernel_core::{Quota, RateDecision, RateLimiter, Result};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Db;
use crate::{SqliteDriver, from_sql_int, sql_int, unix_micros_now};

fn load_tat(conn: &Connection, key: &str) -> Result<Option<u64>> {
    let tat: Option<i64> = conn
        .prepare_cached("SELECT tat FROM kernel_rate_limits WHERE key = ?1")
        .db()?
        .query_row([key.as_bytes()], |r| r.get(0))
        .optional()
        .db()?;
    tat.map(|t| from_sql_int(t, "rate-limit state")).transpose()
}

fn now_micros() -> u64 {
    u64::try_from(unix_micros_now()).unwrap_or(0)
}

#[async_trait]
impl RateLimiter for SqliteDriver {
    async fn check(&self, key: &str, quota: &Quota, cost: u32) -> Result<RateDecision> {
        quota.validate(key, cost)?;
        let k = key.to_owned();
        let quota = *quota;
        let result = if cost == 0 {
            self.inner()
                .read("check", move |conn| {
                    Ok(gcra(load_tat(conn, &k)?, now_micros(), &quota, 0).decision)
                })
                .await
        } else {
            self.inner()
                .write("check", move |ctx| {
                    let now = now_micros();
                    let step = gcra(load_tat(ctx.conn, &k)?, now, &quota, cost);
                    if step.decision.allowed && step.new_tat > now {
                        ctx.conn
                            .prepare_cached(
                                "INSERT INTO kernel_rate_limits (key, tat) VALUES (?1, ?2)
                                 ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
                            )
                            .db()?
                            .execute(params![k.as_bytes(), sql_int(step.new_tat)])
                            .db()?;
                    }
                    Ok(step.decision)
                })
                .await
        };
        result.map_err(|e| e.with_context("key", escape(key)))
    }

    async fn reset(&self, key: &str) -> Result<()> {
        validate::rate_limit_key(key)?;
        let k = key.to_owned();
        self.inner()
            .write("reset", move |ctx| {
                ctx.conn
                    .prepare_cached("DELETE FROM kernel_rate_limits WHERE key = ?1")
                    .db()?
                    .execute([k.as_bytes()])
                    .db()?;
                Ok(())
            })
            .await
            .map_err(|e| e.with_context("key", escape(key)))
    }
}
