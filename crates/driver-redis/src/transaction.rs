//! Optimistic transactions: reads record the write stamp (`REV`) of what they saw, writes are
//! staged in memory, and one commit script re-checks every recorded stamp before applying every
//! staged write. A change by anyone else in between fails the commit with a retryable
//! `Conflict` and writes nothing ([`kernel_core::Isolation::OptimisticWatch`]).
//!
//! Stamps come from a per-namespace counter bumped by every write and never reset (it survives
//! a namespace drop), so unlike versions they do not repeat after a delete and re-create.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use fred::types::Value as RedisValue;
use kernel_core::validate::escape;
use kernel_core::{
    Applied, DeleteCondition, Entry, Error, OperationId, Outcome, PutCondition, PutOptions, Result,
    Transaction, Value,
};

use crate::RedisDriver;
use crate::codec::{Reply, micros, to_json};
use crate::operation::{Once, OnceCall, decode_record, with_id};
use kernel_core::document::{already_exists, version_conflict};

type Slot = (String, String);

enum Staged {
    Put {
        entry: Entry,
        ttl: Option<Duration>,
        /// Created by this transaction (absent before, or deleted by it first).
        created_new: bool,
    },
    Delete,
}

struct Seen {
    /// Stamp of the live entry read (`None`: absent or expired).
    stamp: Option<u64>,
    entry: Option<Entry>,
}

pub(crate) struct RedisTransaction {
    driver: RedisDriver,
    reads: BTreeMap<Slot, Seen>,
    writes: BTreeMap<Slot, Staged>,
}

impl RedisTransaction {
    pub(crate) fn new(driver: RedisDriver) -> RedisTransaction {
        RedisTransaction {
            driver,
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
        }
    }

    /// The slot as this transaction sees it: its own staged write, else what it read before
    /// (repeatable), else a fresh read that it records. Also tells whether the entry seen was
    /// created by this transaction.
    async fn view(&mut self, ns: &str, key: &str) -> Result<(Option<Entry>, bool)> {
        let slot = (ns.to_owned(), key.to_owned());
        match self.writes.get(&slot) {
            Some(Staged::Put {
                entry, created_new, ..
            }) => return Ok((Some(entry.clone()), *created_new)),
            Some(Staged::Delete) => return Ok((None, true)),
            None => {}
        }
        if let Some(seen) = self.reads.get(&slot) {
            return Ok((seen.entry.clone(), false));
        }
        let mut found = self
            .driver
            .fetch(ns, &[key.to_owned()])
            .await
            .map_err(|e| e.with_context("key", escape(key)))?;
        let stored = found.pop().flatten();
        let seen = Seen {
            stamp: stored.as_ref().map(|s| s.stamp),
            entry: stored.map(|s| s.entry),
        };
        let entry = seen.entry.clone();
        self.reads.insert(slot, seen);
        Ok((entry, false))
    }
}

#[async_trait]
impl Transaction for RedisTransaction {
    async fn get(&mut self, ns: &str, key: &str) -> Result<Option<Entry>> {
        kernel_core::validate::document(ns, key)?;
        Ok(self.view(ns, key).await?.0)
    }

    async fn put(
        &mut self,
        ns: &str,
        key: &str,
        value: Value,
        options: PutOptions,
    ) -> Result<Entry> {
        kernel_core::validate::put(ns, key, &value, &options, &self.driver.inner.config.limits)?;
        let (current, created_in_tx) = self.view(ns, key).await?;
        match (options.condition, &current) {
            (PutCondition::IfAbsent, Some(_)) => return Err(already_exists(ns, key)),
            (PutCondition::IfVersion(v), cur) if cur.as_ref().map(|e| e.version) != Some(v) => {
                return Err(version_conflict(
                    ns,
                    key,
                    v,
                    cur.as_ref().map(|e| e.version),
                ));
            }
            _ => {}
        }
        // Times are estimates until commit, when the script stamps them with the server clock.
        let now = SystemTime::now();
        let entry = match current {
            Some(cur) => Entry {
                namespace: ns.to_owned(),
                key: key.to_owned(),
                value,
                metadata: options.metadata.unwrap_or(cur.metadata),
                version: cur.version + 1,
                created_at: cur.created_at,
                updated_at: now,
                expires_at: options.ttl.map(|t| now + t),
            },
            None => Entry {
                namespace: ns.to_owned(),
                key: key.to_owned(),
                value,
                metadata: options.metadata.unwrap_or_default(),
                version: 1,
                created_at: now,
                updated_at: now,
                expires_at: options.ttl.map(|t| now + t),
            },
        };
        let created_new = entry.version == 1 || created_in_tx;
        self.writes.insert(
            (ns.to_owned(), key.to_owned()),
            Staged::Put {
                entry: entry.clone(),
                ttl: options.ttl,
                created_new,
            },
        );
        Ok(entry)
    }

    async fn delete(&mut self, ns: &str, key: &str, condition: DeleteCondition) -> Result<bool> {
        kernel_core::validate::document(ns, key)?;
        let (current, _) = self.view(ns, key).await?;
        if let DeleteCondition::IfVersion(v) = condition {
            let version = current.as_ref().map(|e| e.version);
            if version != Some(v) {
                return Err(version_conflict(ns, key, v, version));
            }
        }
        self.writes
            .insert((ns.to_owned(), key.to_owned()), Staged::Delete);
        Ok(current.is_some())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        if self.reads.is_empty() && self.writes.is_empty() {
            return Ok(());
        }
        let driver = self.driver.clone();
        let call = (*self).into_call()?;
        let reply = driver
            .run(&driver.inner.scripts.commit, "commit", call.keys, call.args)
            .await
            .map_err(|e| name_namespaces(e, &call.namespaces))?;
        commit_outcome(&call.namespaces, Reply::new(reply, "commit"))
    }

    async fn commit_once(self: Box<Self>, ns: &str, id: &OperationId) -> Result<Applied> {
        kernel_core::validate::namespace(ns).map_err(|e| with_id(e, ns, id))?;
        let driver = self.driver.clone();
        // An empty transaction still runs the script: the id is checked and recorded.
        let call = (*self).into_call().map_err(|e| with_id(e, ns, id))?;
        let once = driver
            .run_once(OnceCall {
                lua: &driver.inner.scripts.commit_once,
                operation: "commit_once",
                namespace: ns,
                id,
                keys: call.keys,
                args: call.args,
                kept: 0,
                fingerprint: "",
                kind: Outcome::Commit.name(),
            })
            .await
            .map_err(|e| name_namespaces(e, &call.namespaces))?;
        match once {
            Once::Replay(raw) => decode_record(ns, id, &raw)
                .and_then(|record| record.replay(ns, id, ""))
                .map_err(|e| with_id(e, ns, id)),
            Once::Fresh(reply) => {
                commit_outcome(&call.namespaces, reply).map_err(|e| with_id(e, ns, id))?;
                Ok(Applied::fresh(Outcome::Commit))
            }
        }
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        // Nothing reached Redis: staged writes live only in this value.
        Ok(())
    }
}

/// Names the transaction's namespaces on a cross-slot refusal (cluster mode), so the caller
/// sees which namespaces could not be committed together.
fn name_namespaces(e: Error, namespaces: &[String]) -> Error {
    if e.code() == kernel_core::ErrorCode::Unsupported {
        e.with_context("namespaces", namespaces.join(","))
    } else {
        e
    }
}

/// The keys and arguments of `commit.lua` for a transaction, and the namespaces in the order
/// the script numbers them.
struct CommitCall {
    namespaces: Vec<String>,
    keys: Vec<String>,
    args: Vec<RedisValue>,
}

impl RedisTransaction {
    fn into_call(self) -> Result<CommitCall> {
        let RedisTransaction {
            driver,
            reads,
            writes,
        } = self;
        // Namespaces in a fixed order; each contributes its five keys.
        let mut namespaces: Vec<String> = reads
            .keys()
            .chain(writes.keys())
            .map(|(ns, _)| ns.clone())
            .collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        let index = |ns: &str| {
            namespaces
                .binary_search_by(|n| n.as_str().cmp(ns))
                .map(|i| (i + 1) as i64)
                .unwrap_or(0)
        };
        let mut keys = Vec::with_capacity(namespaces.len() * 5 + 1);
        for ns in &namespaces {
            keys.extend(driver.inner.keys.namespace(ns).all());
        }
        let mut args: Vec<RedisValue> = Vec::with_capacity(2 + reads.len() * 3 + writes.len() * 8);
        args.push((reads.len() as i64).into());
        for ((ns, key), seen) in &reads {
            args.push(index(ns).into());
            args.push(key.as_str().into());
            args.push(seen.stamp.map(|s| s.to_string()).unwrap_or_default().into());
        }
        args.push((writes.len() as i64).into());
        for ((ns, key), staged) in &writes {
            args.push(index(ns).into());
            args.push(key.as_str().into());
            match staged {
                Staged::Put {
                    entry,
                    ttl,
                    created_new,
                } => {
                    args.push("p".into());
                    args.push(entry.version.to_string().into());
                    args.push(if *created_new { "new" } else { "keep" }.into());
                    args.push(
                        ttl.map(|t| micros(t).max(1).to_string())
                            .unwrap_or_default()
                            .into(),
                    );
                    args.push(to_json(&entry.metadata)?.into());
                    args.push(to_json(&entry.value)?.into());
                }
                Staged::Delete => {
                    for v in ["d", "", "", "", "", ""] {
                        args.push(v.into());
                    }
                }
            }
        }
        Ok(CommitCall {
            namespaces,
            keys,
            args,
        })
    }
}

/// `Ok` for a commit that applied, the retryable `Conflict` naming the entry for one that lost
/// a race.
fn commit_outcome(namespaces: &[String], mut reply: Reply) -> Result<()> {
    match reply.string()?.as_str() {
        "ok" => Ok(()),
        "conflict" => {
            let i = reply.u64()?;
            let key = reply.string()?;
            let ns = usize::try_from(i)
                .ok()
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| namespaces.get(i))
                .map_or("?", String::as_str);
            Err(Error::conflict(
                "transaction lost a race: an entry it read or wrote changed before commit",
            )
            .with_context("namespace", ns)
            .with_context("key", escape(&key))
            .with_retryable(true))
        }
        other => Err(crate::error::bad_reply(
            "commit",
            format!("unknown status {other:?}"),
        )),
    }
}
