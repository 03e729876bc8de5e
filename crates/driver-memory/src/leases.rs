//! Leases: one record per key with the current holder and a fencing counter that is never
//! removed, so fencing tokens keep increasing across releases and expiries; a key's counter
//! starts from the clock ([`kernel_core::lock::fencing_seed`]), so they keep increasing across
//! process restarts too.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use kernel_core::lock::{not_held, validate_lease_request, validate_ttl};
use kernel_core::{Lease, Lock, Result, Uuid};

use crate::MemoryDriver;

#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    keys: HashMap<String, KeyState>,
}

#[derive(Debug, Default)]
struct KeyState {
    fencing: u64,
    holder: Option<Lease>,
}

impl LeaseTable {
    /// Drops expired holders; fencing counters stay.
    pub(crate) fn purge(&mut self, now: SystemTime) {
        for state in self.keys.values_mut() {
            if state.holder.as_ref().is_some_and(|h| h.expires_at <= now) {
                state.holder = None;
            }
        }
    }

    fn current_mut(&mut self, lease: &Lease, now: SystemTime) -> Option<&mut Lease> {
        self.keys.get_mut(&lease.key)?.holder.as_mut().filter(|h| {
            h.token == lease.token && h.fencing_token == lease.fencing_token && h.expires_at > now
        })
    }
}

#[async_trait]
impl Lock for MemoryDriver {
    async fn try_acquire(&self, key: &str, ttl: Duration) -> Result<Option<Lease>> {
        validate_lease_request(key, ttl)?;
        let now = SystemTime::now();
        let mut table = self.inner.leases()?;
        let state = table.keys.entry(key.to_owned()).or_default();
        if state.holder.as_ref().is_some_and(|h| h.expires_at > now) {
            return Ok(None);
        }
        if state.fencing == 0 {
            // A key this driver never saw: start from the clock, so a new driver (a restarted
            // process) never hands out a token below one an earlier driver gave for the key.
            state.fencing = kernel_core::lock::fencing_seed_now();
        }
        state.fencing += 1;
        let lease = Lease {
            key: key.to_owned(),
            token: Uuid::new_v4().to_string(),
            fencing_token: state.fencing,
            expires_at: now + ttl,
        };
        state.holder = Some(lease.clone());
        Ok(Some(lease))
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let now = SystemTime::now();
        let mut table = self.inner.leases()?;
        if table.current_mut(lease, now).is_none() {
            return Err(not_held(lease));
        }
        if let Some(state) = table.keys.get_mut(&lease.key) {
            state.holder = None;
        }
        Ok(())
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<Lease> {
        validate_ttl(&lease.key, ttl)?;
        let now = SystemTime::now();
        let mut table = self.inner.leases()?;
        let held = table
            .current_mut(lease, now)
            .ok_or_else(|| not_held(lease))?;
        held.expires_at = now + ttl;
        Ok(held.clone())
    }
}
