//! Leases: one `kernel_locks` row per key that is never deleted, holding the fencing counter and
//! the current holder. Every operation is one writer job, so it is atomic across the process's
//! callers and, through SQLite's write lock, across processes; the counter is in the file, so
//! fencing tokens keep increasing across restarts.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kernel_core::lock::{not_held, validate_lease_request, validate_ttl};
use kernel_core::validate::escape;
use kernel_core::{Lease, Lock, Result, Uuid};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Db;
use crate::generation::Generation;
use crate::{SqliteDriver, from_micros, from_sql_int, sql_int, unix_micros_now};

/// The row of a key: fencing counter, holder token, holder expiry.
struct Row {
    fencing: u64,
    token: Option<String>,
    expires_at: Option<i64>,
}

fn load(conn: &Connection, key: &str) -> Result<Option<Row>> {
    let row: Option<(i64, Option<String>, Option<i64>)> = conn
        .prepare_cached("SELECT fencing, token, expires_at FROM kernel_locks WHERE key = ?1")
        .db()?
        .query_row([key.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()
        .db()?;
    row.map(|(fencing, token, expires_at)| {
        Ok(Row {
            fencing: from_sql_int(fencing, "fencing token")?,
            token,
            expires_at,
        })
    })
    .transpose()
}

/// Whether `lease` is the live holder recorded in `row` (token *and* fencing token: a lease whose
/// fencing token was changed is forged).
fn holds(row: Option<&Row>, lease: &Lease, now: i64) -> bool {
    row.is_some_and(|r| {
        r.token.as_deref() == Some(lease.token.as_str())
            && r.fencing == lease.fencing_token
            && r.expires_at.is_some_and(|t| t > now)
    })
}

fn ttl_micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX)
}

impl SqliteDriver {
    /// Refuses a lock operation after a data loss (a lease could go to a second holder);
    /// otherwise the state the job checks the file against, at most once a second.
    fn guard(&self, op: &'static str, key: &str) -> Result<Arc<Generation>> {
        let generation = self.inner().generation.clone();
        generation
            .refuse_if_lost(op)
            .map_err(|e| e.with_context("key", escape(key)))?;
        Ok(generation)
    }
}

#[async_trait]
impl Lock for SqliteDriver {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<Lease>> {
        validate_lease_request(key, ttl)?;
        let generation = self.guard("try_acquire", key)?;
        let k = key.to_owned();
        self.inner()
            .write("try_acquire", move |ctx| {
                generation.check(ctx.conn, "try_acquire", false)?;
                let now = unix_micros_now();
                let row = load(ctx.conn, &k)?;
                if row
                    .as_ref()
                    .is_some_and(|r| r.token.is_some() && r.expires_at.is_some_and(|t| t > now))
                {
                    return Ok(None);
                }
                // A key without a row starts from the clock, so a deleted or replaced file
                // never hands out a token below one given before.
                let fencing =
                    row.map_or_else(kernel_core::lock::fencing_seed_now, |r| r.fencing) + 1;
                let token = Uuid::new_v4().to_string();
                let expires_at = now.saturating_add(ttl_micros(ttl));
                ctx.conn
                    .prepare_cached(
                        "INSERT INTO kernel_locks (key, fencing, token, expires_at)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (key) DO UPDATE SET fencing = excluded.fencing,
                             token = excluded.token, expires_at = excluded.expires_at",
                    )
                    .db()?
                    .execute(params![k.as_bytes(), sql_int(fencing), token, expires_at])
                    .db()?;
                Ok(Some(Lease {
                    key: k,
                    token,
                    fencing_token: fencing,
                    expires_at: from_micros(expires_at),
                }))
            })
            .await
            .map_err(|e| e.with_context("key", escape(key)))
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let generation = self.guard("release", &lease.key)?;
        let l = lease.clone();
        self.inner()
            .write("release", move |ctx| {
                generation.check(ctx.conn, "release", false)?;
                let now = unix_micros_now();
                if !holds(load(ctx.conn, &l.key)?.as_ref(), &l, now) {
                    return Err(not_held(&l));
                }
                ctx.conn
                    .prepare_cached(
                        "UPDATE kernel_locks SET token = NULL, expires_at = NULL WHERE key = ?1",
                    )
                    .db()?
                    .execute([l.key.as_bytes()])
                    .db()?;
                Ok(())
            })
            .await
            .map_err(|e| e.with_context("key", escape(&lease.key)))
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        validate_ttl(&lease.key, ttl)?;
        let generation = self.guard("extend", &lease.key)?;
        let l = lease.clone();
        self.inner()
            .write("extend", move |ctx| {
                generation.check(ctx.conn, "extend", false)?;
                let now = unix_micros_now();
                if !holds(load(ctx.conn, &l.key)?.as_ref(), &l, now) {
                    return Err(not_held(&l));
                }
                let expires_at = now.saturating_add(ttl_micros(ttl));
                ctx.conn
                    .prepare_cached("UPDATE kernel_locks SET expires_at = ?2 WHERE key = ?1")
                    .db()?
                    .execute(params![l.key.as_bytes(), expires_at])
                    .db()?;
                Ok(Lease {
                    expires_at: from_micros(expires_at),
                    ..l
                })
            })
            .await
            .map_err(|e| e.with_context("key", escape(&lease.key)))
    }
}
