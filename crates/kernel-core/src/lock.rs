//! The `Lock` trait: distributed leases with fencing tokens.

use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;

use crate::error::{Error, ErrorCode, Result};
use crate::validate;

/// Shortest lease TTL accepted.
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(10);
/// Longest lease TTL accepted.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A held lease: proof of holding a lock until `expires_at`.
///
/// Pass it back to [`Lock::release`] or [`Lock::extend`]. Hand the `fencing_token` to the
/// resource the lock protects: it strictly increases for a key across all acquisitions, so the
/// resource can refuse writes from a holder whose lease expired and was taken over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The locked key.
    pub key: String,
    /// Random proof of ownership, checked by release and extend.
    pub token: String,
    /// Strictly increasing per key across every acquisition.
    pub fencing_token: u64,
    /// When the lease lapses unless extended.
    pub expires_at: SystemTime,
}

/// Milliseconds from the Unix epoch to 2020-01-01T00:00:00Z: the origin of [`fencing_seed`].
pub const FENCING_EPOCH_UNIX_MS: u64 = 1_577_836_800_000;

/// Fencing tokens a lock key can be handed per millisecond before its counter runs ahead of the
/// clock: the factor of [`fencing_seed`].
pub const FENCING_TOKENS_PER_MS: u64 = 1024;

/// The fencing counter a lock key starts from when the backend has none for it (a key never
/// seen, or one whose counter the backend lost: an empty Redis restart, a new in-process
/// driver, a deleted SQLite file): `(unix_ms - 2020-01-01) × 1024`.
///
/// Seeding from the clock keeps tokens increasing across such losses: a token handed out
/// before the loss is at most `1024 ×` the milliseconds between that key's seeding and its
/// last acquisition larger than its seed, so a seed taken later is larger as long as a key is
/// taken fewer than about a million times a second and the clock does not go back. Every
/// driver uses this formula (PostgreSQL and Redis compute it on the server, from the server's
/// clock); the value stays below 2^53 until the year 2290, so Lua's numbers hold it exactly.
///
/// ```
/// use kernel_core::lock::{fencing_seed, FENCING_EPOCH_UNIX_MS};
///
/// assert_eq!(fencing_seed(FENCING_EPOCH_UNIX_MS + 1), 1024);
/// assert!(fencing_seed(1_800_000_000_000) < 1 << 53);
/// assert_eq!(fencing_seed(0), 0, "a clock before 2020 seeds at zero");
/// ```
pub fn fencing_seed(unix_ms: u64) -> u64 {
    unix_ms
        .saturating_sub(FENCING_EPOCH_UNIX_MS)
        .saturating_mul(FENCING_TOKENS_PER_MS)
}

/// [`fencing_seed`] of the local clock.
pub fn fencing_seed_now() -> u64 {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    fencing_seed(ms)
}

/// Distributed leases.
///
/// # Contract
///
/// * `try_acquire` takes the lock if nobody holds a live lease on the key, else returns `None`.
/// * Every successful acquisition gets a fencing token greater than every earlier one for that
///   key, whoever held it and however it ended (release or expiry). A key the backend has no
///   counter for starts from [`fencing_seed`] of the clock, so tokens keep increasing even when
///   a backend loses its counters.
/// * After the TTL a lease lapses and another caller can take the lock.
/// * `release` and `extend` succeed only with the current, unexpired lease; otherwise
///   `LockNotHeld`. Extending keeps the fencing token and sets the expiry to now + `ttl`.
/// * TTLs are between [`MIN_LEASE_TTL`] and [`MAX_LEASE_TTL`].
#[async_trait]
pub trait Lock: Send + Sync + std::fmt::Debug {
    /// Takes the lock if it is free.
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<Lease>>;

    /// Gives the lock back. `LockNotHeld` if `lease` is not the current live lease.
    async fn release(&self, lease: &Lease) -> Result<()>;

    /// Pushes the expiry to now + `ttl`. `LockNotHeld` if `lease` is not the current live lease.
    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease>;

    /// Retries `try_acquire` with jittered backoff until `wait` has passed (then `Timeout`).
    async fn acquire(&self, key: &str, ttl: Duration, wait: Duration) -> Result<Lease> {
        let deadline = Instant::now() + wait;
        let mut backoff = Duration::from_millis(5);
        loop {
            if let Some(lease) = self.try_acquire(key, ttl).await? {
                return Ok(lease);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::timeout(format!(
                    "lock was not free within {} ms",
                    wait.as_millis()
                ))
                .with_context("key", validate::escape(key)));
            }
            let jitter = Duration::from_micros(fastrand::u64(0..=backoff.as_micros() as u64));
            tokio::time::sleep((backoff / 2 + jitter / 2).min(deadline - now)).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }
}

/// Checks a lock key and TTL.
pub fn validate_lease_request(key: &str, ttl: Duration) -> Result<()> {
    validate::lock_key(key)?;
    validate_ttl(key, ttl)
}

/// Checks a lease TTL.
pub fn validate_ttl(key: &str, ttl: Duration) -> Result<()> {
    if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&ttl) {
        return Err(Error::invalid_input(format!(
            "lease TTL must be between {} ms and {} s; got {} ms",
            MIN_LEASE_TTL.as_millis(),
            MAX_LEASE_TTL.as_secs(),
            ttl.as_millis()
        ))
        .with_context("key", validate::escape(key)));
    }
    Ok(())
}

/// The `LockNotHeld` error for a lease.
pub fn not_held(lease: &Lease) -> Error {
    Error::new(
        ErrorCode::LockNotHeld,
        "the lease is not the current holder's (released, expired, taken over or forged)",
    )
    .with_context("key", validate::escape(&lease.key))
    .with_context("fencing_token", lease.fencing_token)
}
