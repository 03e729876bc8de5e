//! Data-loss detection: a generation marker under the key prefix.
//!
//! Redis without persistence restarts empty; `FLUSHALL`, an eviction policy or a restore from an
//! older snapshot lose data too. A driver that did not notice would hand out stream positions
//! from 1 again (a subscriber past them never hears of the new events), store an acknowledged
//! event id a second time and give a lease to a second holder.
//!
//! So the key space carries a marker, `P{ev}:generation` (`<unix ms>-<random>`), created when a
//! driver connects and finds none, and remembered by the driver. The marker lives in the events'
//! hash slot, so the append script checks it atomically with the append; lock operations,
//! subscriptions and `status()` read it (at most once a second, and at once on `status()`).
//! When it changed or is gone, the driver records the loss: appends, lock operations and
//! subscriptions fail with a permanent `Corrupted` error that says what happened, and
//! `status()` reports the backend unhealthy with the same reason, until an operator calls
//! [`RedisDriver::acknowledge_data_loss`] (or restarts the process: a driver that connects
//! adopts whatever marker it finds, as it cannot know what was there before).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use fred::interfaces::KeysInterface;
use fred::types::{Expiration, SetOptions};
use kernel_core::{Error, Result, Uuid};

use crate::driver::RedisDriver;
use crate::error::map_err;

/// How long a successful check of the marker is trusted by lock operations and subscriptions.
const RECHECK: Duration = Duration::from_secs(1);

/// The code word of the append script's error reply when the marker is not the driver's.
pub(crate) const DATA_LOSS_REPLY: &str = "KERNEL_DATA_LOSS";

/// What the driver knows of the key space's generation.
#[derive(Debug, Default)]
pub(crate) struct GenerationState {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The marker this driver connected to (or acknowledged).
    expected: String,
    /// The loss found, once found: every guarded operation fails with it.
    lost: Option<Error>,
    verified_at: Option<Instant>,
}

impl GenerationState {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A small struct every writer leaves valid.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn new_marker() -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{ms}-{}", Uuid::new_v4().simple())
}

/// The error every guarded operation gets once a loss is found.
fn loss_error(expected: &str, found: Option<&str>) -> Error {
    let found_text = found.map_or_else(|| "gone".to_owned(), |f| format!("now {f}"));
    Error::corrupted(format!(
        "Redis lost the kernel's data: the generation marker this driver connected to \
         ({expected}) is {found_text} (an empty restart without persistence, FLUSHALL / FLUSHDB, \
         eviction, or a restore from an older snapshot). Stream positions, event ids and leases \
         from before are gone; appends, lock operations and subscriptions are refused until an \
         operator acknowledges the loss (RedisDriver::acknowledge_data_loss, or a restart of \
         this process; see docs/operations.md)"
    ))
    .with_context("backend", "redis")
    .with_context("generation_expected", expected)
    .with_context("generation_found", found.unwrap_or("none"))
}

impl RedisDriver {
    /// Reads the key space's marker, creating it when there is none, and makes it the one this
    /// driver expects. Called on connect and on acknowledgement.
    pub(crate) async fn adopt_generation(&self, operation: &'static str) -> Result<String> {
        let key = self.inner.keys.generation();
        // One client for the write and its WAIT (RedisConfig::wait_replicas): a marker lost
        // in a failover would read as a data loss.
        let client = self.inner.pool.next_connected();
        let _: Option<String> = client
            .set(
                &key,
                new_marker(),
                None::<Expiration>,
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(|e| map_err(e, operation))?;
        self.confirm_replicas(
            client,
            Some(fred::util::redis_keyslot(key.as_bytes())),
            operation,
        )
        .await?;
        let current: Option<String> = client.get(&key).await.map_err(|e| map_err(e, operation))?;
        let current = current.ok_or_else(|| {
            Error::unavailable("the Redis generation marker vanished right after it was set")
                .with_context("backend", "redis")
                .with_operation(operation)
        })?;
        let mut s = self.inner.generation.lock();
        s.expected.clone_from(&current);
        s.lost = None;
        s.verified_at = Some(Instant::now());
        Ok(current)
    }

    /// The marker the append script must find.
    pub(crate) fn expected_generation(&self) -> String {
        self.inner.generation.lock().expected.clone()
    }

    /// The loss this driver found and nobody acknowledged yet, if any.
    pub fn data_loss(&self) -> Option<Error> {
        self.inner.generation.lock().lost.clone()
    }

    /// Records a loss the append script reported (its error carries the marker it found) and
    /// returns the error for the caller; any other error passes through.
    pub(crate) fn note_loss(&self, error: Error, operation: &'static str) -> Error {
        let Some(found) = error.context_value("generation_found").map(str::to_owned) else {
            return error;
        };
        let found = (found != "missing").then_some(found);
        self.record_loss(found.as_deref()).with_operation(operation)
    }

    fn record_loss(&self, found: Option<&str>) -> Error {
        let mut s = self.inner.generation.lock();
        if let Some(lost) = &s.lost {
            return lost.clone();
        }
        let e = loss_error(&s.expected, found);
        tracing::error!(error = %e, "Redis data loss detected");
        s.lost = Some(e.clone());
        e
    }

    /// Fails with the recorded loss, or checks the marker (when the last check is older than
    /// a second, or always with `force`) and fails if it changed.
    pub(crate) async fn verify_generation(
        &self,
        operation: &'static str,
        force: bool,
    ) -> Result<()> {
        {
            let s = self.inner.generation.lock();
            if let Some(lost) = &s.lost {
                return Err(lost.clone().with_operation(operation));
            }
            if !force && s.verified_at.is_some_and(|t| t.elapsed() < RECHECK) {
                return Ok(());
            }
        }
        let found: Option<String> = self
            .inner
            .pool
            .get(self.inner.keys.generation())
            .await
            .map_err(|e| map_err(e, operation))?;
        let mut s = self.inner.generation.lock();
        if found.as_deref() == Some(s.expected.as_str()) {
            s.verified_at = Some(Instant::now());
            return Ok(());
        }
        drop(s);
        Err(self.record_loss(found.as_deref()).with_operation(operation))
    }

    /// Accepts a loss this driver found: adopts the key space's current marker (creating one if
    /// there is none) and lets appends, lock operations and new subscriptions through again.
    /// Stream positions start over from the store's head (1 after an empty restart); tell
    /// consumers that keep positions outside Redis to reset them. Harmless without a loss.
    ///
    /// Returns the marker now expected.
    pub async fn acknowledge_data_loss(&self) -> Result<String> {
        self.ensure_open("acknowledge_data_loss")?;
        let lost = self.data_loss();
        let marker = self.adopt_generation("acknowledge_data_loss").await?;
        if let Some(lost) = lost {
            tracing::warn!(generation = %marker, loss = %lost, "Redis data loss acknowledged");
        }
        Ok(marker)
    }
}
