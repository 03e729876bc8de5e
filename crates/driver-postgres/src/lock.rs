//! `Lock` on the `kernel_locks` lease table.
//!
//! Why a table and not `pg_advisory_lock`: a session advisory lock belongs to one connection,
//! and behind a pool the connection that took it is handed to other tasks, may be recycled or
//! dropped (releasing the lock silently), and cannot be released from another connection. It
//! has no TTL (a crashed holder keeps it until its connection dies) and no fencing token. A
//! lease row has all three: an expiry checked against the server clock, a random token that
//! only the holder knows, and a per-key counter that goes up on every acquisition and is
//! never reset (the row stays after release).

use std::time::Duration;

use async_trait::async_trait;
use kernel_core::lock::{not_held, validate_lease_request, validate_ttl};
use kernel_core::validate;
use kernel_core::{Lease, Lock, Result, Uuid};

use crate::PostgresDriver;
use crate::error::{pg, pg_write};
use crate::rows::{micros, to_i64, version};

#[async_trait]
impl Lock for PostgresDriver {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<Lease>> {
        validate_lease_request(key, ttl)?;
        let token = Uuid::new_v4().simple().to_string();
        let client = self.client().await?;
        self.guard(Some(&client), "try_acquire").await?;
        // A new key's counter starts from kernel_core::lock::fencing_seed of the server's
        // clock (the same formula), so tokens keep increasing even after the table lost rows.
        let row = self
            .statements()
            .query_opt(
                &client,
                "INSERT INTO kernel_locks AS l (key, token, fencing, expires_at) \
                 VALUES ($1, $2, \
                   greatest(0, floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint \
                     - 1577836800000) * 1024 + 1, \
                   clock_timestamp() + $3::bigint * interval '1 microsecond') \
                 ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, \
                   fencing = l.fencing + 1, expires_at = EXCLUDED.expires_at \
                 WHERE l.token IS NULL OR l.expires_at <= clock_timestamp() \
                 RETURNING l.fencing, l.expires_at",
                &[&key, &token, &micros(ttl)],
            )
            .await
            .map_err(|e| pg_write(e).with_context("key", validate::escape(key)))?;
        row.map(|r| {
            Ok(Lease {
                key: key.to_owned(),
                token: token.clone(),
                fencing_token: version(r.try_get(0).map_err(pg)?)?,
                expires_at: r.try_get(1).map_err(pg)?,
            })
        })
        .transpose()
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        validate::lock_key(&lease.key)?;
        let client = self.client().await?;
        self.guard(Some(&client), "release").await?;
        let n = self
            .statements()
            .execute(
                &client,
                "UPDATE kernel_locks SET token = NULL, expires_at = clock_timestamp() \
                 WHERE key = $1 AND token = $2 AND fencing = $3 AND expires_at > clock_timestamp()",
                &[&lease.key, &lease.token, &to_i64(lease.fencing_token)],
            )
            .await
            .map_err(|e| pg_write(e).with_context("key", validate::escape(&lease.key)))?;
        if n == 1 { Ok(()) } else { Err(not_held(lease)) }
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        validate::lock_key(&lease.key)?;
        validate_ttl(&lease.key, ttl)?;
        let client = self.client().await?;
        self.guard(Some(&client), "extend").await?;
        let row = self.statements()
        .query_opt(&client, "UPDATE kernel_locks SET expires_at = clock_timestamp() + $4::bigint * interval '1 microsecond' \
                 WHERE key = $1 AND token = $2 AND fencing = $3 AND expires_at > clock_timestamp() \
                 RETURNING expires_at", &[
                    &lease.key,
                    &lease.token,
                    &to_i64(lease.fencing_token),
                    &micros(ttl),
                ],
            )
            .await
            .map_err(|e| pg_write(e).with_context("key", validate::escape(&lease.key)))?;
        match row {
            Some(r) => Ok(Lease {
                expires_at: r.try_get(0).map_err(pg)?,
                ..lease.clone()
            }),
            None => Err(not_held(lease)),
        }
    }
}
