//! The operation table: one constructor per trait method, giving the [`Op`] every wrapper
//! ([`super::Layered`], [`super::scope::Scoped`], your own) describes that call with.
//!
//! Each constructor fixes the method's role, its name (as spans, metrics and errors show it),
//! whether it reads or writes ([`Access`]), and whether it may be repeated after a failure
//! ([`Op::repeatable`]); the arguments it takes are the ones those answers depend on, plus the
//! names the call touches. Keeping the classification here, once, is what lets the retry layer
//! and the access checks agree on it.
//!
//! | role | operation | access | repeatable |
//! |---|---|---|---|
//! | storage | `status`, `get`, `exists`, `get_many`, `list`, `query`, `count`, `list_namespaces`, `get_metadata` | read | yes |
//! | storage | `write_once` | write | **yes**, whatever its conditions: the operation id makes a repeat return the first outcome |
//! | storage | `operation` | read | yes |
//! | storage | `begin` | read | yes: nothing is staged yet |
//! | storage | `put`, `put_many` | write | only when every put is `PutCondition::Always` |
//! | storage | `delete`, `delete_many` | write | only when every delete is `DeleteCondition::Always` |
//! | storage | `clear`, `drop_namespace`, `set_metadata` | write | yes |
//! | storage | `create_namespace` | write | no |
//! | storage | `create_index`, `drop_index` | write | yes: both are idempotent |
//! | storage | `list_indexes` | read | yes |
//! | storage | `tx.get` | read | no |
//! | storage | `tx.put`, `tx.delete`, `tx.commit`, `tx.commit_once`, `tx.rollback` | write | no |
//! | events | `read_stream`, `read_all`, `head_position`, `subscribe`, `load_snapshot` | read | yes |
//! | events | `append`, `save_snapshot` | write | yes |
//! | locks | `try_acquire`, `acquire`, `release` | write | no |
//! | locks | `extend` | write | yes |
//! | rate limits | `check` with cost > 0 | write | no |
//! | rate limits | `check` with cost 0 | **read** | yes |
//! | rate limits | `reset` | write | yes |
//!
//! The "why" of each repeatable answer is the retry table in [`super::retry`]. A cost-0 `check`
//! only peeks at the key's state (the rate-limit contract: it consumes nothing), so it is a read:
//! a principal with read permission on a rate-limit key may peek at it, and a retry may repeat
//! it.
//!
//! `capabilities` has no entry: it is answered from memory, with no I/O to describe or check.
//!
//! ```
//! use kernel_bootstrap::layers::{ops, Access};
//!
//! let op = ops::check("api:alice", 0);
//! assert_eq!((op.name, op.access, op.repeatable), ("check", Access::Read, true));
//! assert_eq!(ops::check("api:alice", 1).access, Access::Write);
//! ```

use std::time::Duration;

use kernel_core::{BatchDelete, BatchPut, DeleteCondition, Lease, PutCondition};

use super::Access::{Read, Write};
use super::{Access, Op};
use crate::config::Role;

/// Every operation of the table by role and name: what the observability layer builds its
/// metric keys from, once (a test checks it against the constructors below).
pub(crate) const NAMES: [(Role, &str); 42] = [
    (Role::Storage, "status"),
    (Role::Storage, "get"),
    (Role::Storage, "put"),
    (Role::Storage, "delete"),
    (Role::Storage, "exists"),
    (Role::Storage, "get_many"),
    (Role::Storage, "put_many"),
    (Role::Storage, "delete_many"),
    (Role::Storage, "list"),
    (Role::Storage, "query"),
    (Role::Storage, "count"),
    (Role::Storage, "clear"),
    (Role::Storage, "create_namespace"),
    (Role::Storage, "drop_namespace"),
    (Role::Storage, "list_namespaces"),
    (Role::Storage, "get_metadata"),
    (Role::Storage, "set_metadata"),
    (Role::Storage, "begin"),
    (Role::Storage, "write_once"),
    (Role::Storage, "operation"),
    (Role::Storage, "create_index"),
    (Role::Storage, "drop_index"),
    (Role::Storage, "list_indexes"),
    (Role::Storage, "tx.get"),
    (Role::Storage, "tx.put"),
    (Role::Storage, "tx.delete"),
    (Role::Storage, "tx.commit"),
    (Role::Storage, "tx.commit_once"),
    (Role::Storage, "tx.rollback"),
    (Role::Events, "append"),
    (Role::Events, "read_stream"),
    (Role::Events, "read_all"),
    (Role::Events, "head_position"),
    (Role::Events, "subscribe"),
    (Role::Events, "save_snapshot"),
    (Role::Events, "load_snapshot"),
    (Role::Locks, "try_acquire"),
    (Role::Locks, "release"),
    (Role::Locks, "extend"),
    (Role::Locks, "acquire"),
    (Role::RateLimits, "check"),
    (Role::RateLimits, "reset"),
];

fn storage<'a>(name: &'static str, access: Access, repeatable: bool) -> Op<'a> {
    Op::new(Role::Storage, name, access, repeatable)
}

fn events<'a>(name: &'static str, access: Access, repeatable: bool) -> Op<'a> {
    Op::new(Role::Events, name, access, repeatable)
}

fn locks<'a>(name: &'static str, repeatable: bool) -> Op<'a> {
    Op::new(Role::Locks, name, Write, repeatable)
}

fn rate_limits<'a>(name: &'static str, access: Access, repeatable: bool) -> Op<'a> {
    Op::new(Role::RateLimits, name, access, repeatable)
}

/// `StorageDriver::status`.
pub fn status<'a>() -> Op<'a> {
    storage("status", Read, true)
}

/// `StorageDriver::get`.
pub fn get<'a>(namespace: &'a str, key: &'a str) -> Op<'a> {
    storage("get", Read, true).namespace(namespace).key(key)
}

/// `StorageDriver::put`: repeatable only when unconditional, because a conditional put that
/// was applied in transit would answer `AlreadyExists` / `Conflict` to its repetition.
pub fn put<'a>(namespace: &'a str, key: &'a str, condition: PutCondition) -> Op<'a> {
    let repeatable = condition == PutCondition::Always;
    storage("put", Write, repeatable)
        .namespace(namespace)
        .key(key)
}

/// `StorageDriver::delete`: repeatable only when unconditional (as [`put`]).
pub fn delete<'a>(namespace: &'a str, key: &'a str, condition: DeleteCondition) -> Op<'a> {
    let repeatable = condition == DeleteCondition::Always;
    storage("delete", Write, repeatable)
        .namespace(namespace)
        .key(key)
}

/// `StorageDriver::exists`.
pub fn exists<'a>(namespace: &'a str, key: &'a str) -> Op<'a> {
    storage("exists", Read, true).namespace(namespace).key(key)
}

/// `StorageDriver::get_many`.
pub fn get_many(namespace: &str) -> Op<'_> {
    storage("get_many", Read, true).namespace(namespace)
}

/// `StorageDriver::put_many`: repeatable only when every put is unconditional.
pub fn put_many<'a>(namespace: &'a str, items: &[BatchPut]) -> Op<'a> {
    let repeatable = items
        .iter()
        .all(|i| i.options.condition == PutCondition::Always);
    storage("put_many", Write, repeatable).namespace(namespace)
}

/// `StorageDriver::delete_many`: repeatable only when every delete is unconditional.
pub fn delete_many<'a>(namespace: &'a str, items: &[BatchDelete]) -> Op<'a> {
    let repeatable = items.iter().all(|i| i.condition == DeleteCondition::Always);
    storage("delete_many", Write, repeatable).namespace(namespace)
}

/// `StorageDriver::list`.
pub fn list(namespace: &str) -> Op<'_> {
    storage("list", Read, true).namespace(namespace)
}

/// `StorageDriver::query`.
pub fn query(namespace: &str) -> Op<'_> {
    storage("query", Read, true).namespace(namespace)
}

/// `StorageDriver::count`.
pub fn count(namespace: &str) -> Op<'_> {
    storage("count", Read, true).namespace(namespace)
}

/// `StorageDriver::clear`.
pub fn clear(namespace: &str) -> Op<'_> {
    storage("clear", Write, true).namespace(namespace)
}

/// `StorageDriver::create_namespace`: never repeated, because a create applied in transit
/// would answer `AlreadyExists` to its repetition.
pub fn create_namespace(namespace: &str) -> Op<'_> {
    storage("create_namespace", Write, false).namespace(namespace)
}

/// `StorageDriver::drop_namespace`.
pub fn drop_namespace(namespace: &str) -> Op<'_> {
    storage("drop_namespace", Write, true).namespace(namespace)
}

/// `StorageDriver::list_namespaces`.
pub fn list_namespaces<'a>() -> Op<'a> {
    storage("list_namespaces", Read, true)
}

/// `StorageDriver::get_metadata`.
pub fn get_metadata<'a>(namespace: &'a str, key: &'a str) -> Op<'a> {
    storage("get_metadata", Read, true)
        .namespace(namespace)
        .key(key)
}

/// `StorageDriver::set_metadata`.
pub fn set_metadata<'a>(namespace: &'a str, key: &'a str) -> Op<'a> {
    storage("set_metadata", Write, true)
        .namespace(namespace)
        .key(key)
}

/// `StorageDriver::begin`: a read, as it stages nothing; each step is an operation of its own.
pub fn begin<'a>() -> Op<'a> {
    storage("begin", Read, true)
}

/// `StorageDriver::write_once`: always repeatable, conditional or not — the operation id is
/// what makes it so (a repeat of a write that was applied in transit returns the first
/// outcome). `key` is the key of a single put or delete ([`kernel_core::Write::key`]).
pub fn write_once<'a>(namespace: &'a str, key: Option<&'a str>) -> Op<'a> {
    let op = storage("write_once", Write, true).namespace(namespace);
    match key {
        Some(key) => op.key(key),
        None => op,
    }
}

/// `StorageDriver::operation`.
pub fn operation(namespace: &str) -> Op<'_> {
    storage("operation", Read, true).namespace(namespace)
}

/// How long building an index may take beyond the per-call deadline: a backend builds it over
/// every document of the namespace (minutes at millions of documents), and a timeout would
/// abandon a build the backend goes on with.
pub const INDEX_BUILD_ALLOWANCE: Duration = Duration::from_secs(3600);

/// `StorageDriver::create_index`: repeatable (declaring an existing index is `Ok`), with
/// [`INDEX_BUILD_ALLOWANCE`].
pub fn create_index(namespace: &str) -> Op<'_> {
    storage("create_index", Write, true)
        .namespace(namespace)
        .allowance(INDEX_BUILD_ALLOWANCE)
}

/// `StorageDriver::drop_index`: repeatable (dropping a missing index is `Ok(false)`).
pub fn drop_index(namespace: &str) -> Op<'_> {
    storage("drop_index", Write, true).namespace(namespace)
}

/// `StorageDriver::list_indexes`.
pub fn list_indexes(namespace: &str) -> Op<'_> {
    storage("list_indexes", Read, true).namespace(namespace)
}

/// `Transaction::get`. Transaction steps are never repeated: a transaction is retried as a
/// whole by its caller.
pub fn tx_get<'a>(namespace: &'a str, key: &'a str) -> Op<'a> {
    storage("tx.get", Read, false).namespace(namespace).key(key)
}

/// `Transaction::put`.
pub fn tx_put<'a>(namespace: &'a str, key: &'a str) -> Op<'a> {
    storage("tx.put", Write, false)
        .namespace(namespace)
        .key(key)
}

/// `Transaction::delete`.
pub fn tx_delete<'a>(namespace: &'a str, key: &'a str) -> Op<'a> {
    storage("tx.delete", Write, false)
        .namespace(namespace)
        .key(key)
}

/// `Transaction::commit`.
pub fn tx_commit<'a>() -> Op<'a> {
    storage("tx.commit", Write, false)
}

/// `Transaction::commit_once`: never repeated by a layer (the transaction is gone after it), but
/// safe for its caller to repeat as a whole with the same id.
pub fn tx_commit_once(namespace: &str) -> Op<'_> {
    storage("tx.commit_once", Write, false).namespace(namespace)
}

/// `Transaction::rollback`.
pub fn tx_rollback<'a>() -> Op<'a> {
    storage("tx.rollback", Write, false)
}

/// `EventStore::append`: repeatable whatever the expected version, because the events' ids
/// make a re-append of a batch stored in transit an idempotent success.
pub fn append(stream: &str) -> Op<'_> {
    events("append", Write, true).stream(stream)
}

/// `EventStore::read_stream`.
pub fn read_stream(stream: &str) -> Op<'_> {
    events("read_stream", Read, true).stream(stream)
}

/// `EventStore::read_all`: names no stream, as it reads the global log.
pub fn read_all<'a>() -> Op<'a> {
    events("read_all", Read, true)
}

/// `EventStore::head_position`.
pub fn head_position<'a>() -> Op<'a> {
    events("head_position", Read, true)
}

/// `EventStore::subscribe` (opening the feed; the feed itself is not an operation).
pub fn subscribe<'a>() -> Op<'a> {
    events("subscribe", Read, true)
}

/// `EventStore::save_snapshot`: saving the same state at the same version again stores the
/// same snapshot.
pub fn save_snapshot(stream: &str) -> Op<'_> {
    events("save_snapshot", Write, true).stream(stream)
}

/// `EventStore::load_snapshot`.
pub fn load_snapshot(stream: &str) -> Op<'_> {
    events("load_snapshot", Read, true).stream(stream)
}

/// `Lock::try_acquire`: never repeated, because an acquisition applied in transit holds the
/// lock and the repetition would answer "held" while the lease is lost until its TTL.
pub fn try_acquire(key: &str) -> Op<'_> {
    locks("try_acquire", false).key(key)
}

/// `Lock::release`: never repeated, because a release applied in transit makes the
/// repetition fail with `LockNotHeld`.
pub fn release(lease: &Lease) -> Op<'_> {
    locks("release", false).key(&lease.key)
}

/// `Lock::extend`: extending keeps the token, so a repetition extends again from now.
pub fn extend(lease: &Lease) -> Op<'_> {
    locks("extend", true).key(&lease.key)
}

/// `Lock::acquire`: as [`try_acquire`], and allowed `wait` on top of an ordinary call.
pub fn acquire(key: &str, wait: Duration) -> Op<'_> {
    locks("acquire", false).key(key).allowance(wait)
}

/// `RateLimiter::check`: with a cost it consumes quota, so it is a write that a repetition
/// would count twice; with cost 0 it only peeks, so it is a repeatable read.
pub fn check(key: &str, cost: u32) -> Op<'_> {
    let peek = cost == 0;
    let access = if peek { Read } else { Write };
    rate_limits("check", access, peek).key(key)
}

/// `RateLimiter::reset`: resetting twice leaves the key reset.
pub fn reset(key: &str) -> Op<'_> {
    rate_limits("reset", Write, true).key(key)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeSet;
    use std::time::{Duration, SystemTime};

    use kernel_core::Write as WriteOp;
    use kernel_core::{
        BatchDelete, BatchPut, DeleteCondition, Lease, PutCondition, PutOptions, json,
    };

    use super::super::{Access, Op};
    use crate::config::Role;

    /// Every operation of the table, with each argument-dependent answer in both forms.
    pub(crate) fn every_op() -> Vec<Op<'static>> {
        let lease: &'static Lease = Box::leak(Box::new(Lease {
            key: "k".to_owned(),
            token: "t".to_owned(),
            fencing_token: 1,
            expires_at: SystemTime::UNIX_EPOCH,
        }));
        let always = [BatchPut::new("k", json!(1))];
        let cas = [BatchPut::new("k", json!(1)).with_options(PutOptions::new().if_version(1))];
        let del = [BatchDelete::new("k")];
        let del_cas = [BatchDelete::if_version("k", 1)];
        let put_once: &'static WriteOp = Box::leak(Box::new(WriteOp::put(
            "k",
            json!(1),
            PutOptions::new().if_version(1),
        )));
        let batch_once: &'static WriteOp = Box::leak(Box::new(WriteOp::PutMany(always.to_vec())));
        vec![
            super::status(),
            super::get("n", "k"),
            super::put("n", "k", PutCondition::Always),
            super::put("n", "k", PutCondition::IfAbsent),
            super::delete("n", "k", DeleteCondition::Always),
            super::delete("n", "k", DeleteCondition::IfVersion(1)),
            super::exists("n", "k"),
            super::get_many("n"),
            super::put_many("n", &always),
            super::put_many("n", &cas),
            super::delete_many("n", &del),
            super::delete_many("n", &del_cas),
            super::list("n"),
            super::query("n"),
            super::count("n"),
            super::clear("n"),
            super::create_namespace("n"),
            super::drop_namespace("n"),
            super::list_namespaces(),
            super::get_metadata("n", "k"),
            super::set_metadata("n", "k"),
            super::write_once("n", put_once.key()),
            super::write_once("n", batch_once.key()),
            super::operation("n"),
            super::create_index("n"),
            super::drop_index("n"),
            super::list_indexes("n"),
            super::begin(),
            super::tx_get("n", "k"),
            super::tx_put("n", "k"),
            super::tx_delete("n", "k"),
            super::tx_commit(),
            super::tx_commit_once("n"),
            super::tx_rollback(),
            super::append("s-1"),
            super::read_stream("s-1"),
            super::read_all(),
            super::head_position(),
            super::subscribe(),
            super::save_snapshot("s-1"),
            super::load_snapshot("s-1"),
            super::try_acquire("k"),
            super::release(lease),
            super::extend(lease),
            super::acquire("k", Duration::from_secs(1)),
            super::check("k", 1),
            super::check("k", 0),
            super::reset("k"),
        ]
    }

    #[test]
    fn the_name_list_holds_every_operation_once() {
        let listed: BTreeSet<(&str, &str)> = super::NAMES
            .iter()
            .map(|(role, name)| (role.as_str(), *name))
            .collect();
        assert_eq!(listed.len(), super::NAMES.len(), "no name twice");
        let made: BTreeSet<(&str, &str)> = every_op()
            .iter()
            .map(|op| (op.role.as_str(), op.name))
            .collect();
        assert_eq!(listed, made);
    }

    #[test]
    fn the_table_is_pinned() {
        use Access::{Read as R, Write as W};
        use Role::{Events as E, Locks as L, RateLimits as RL, Storage as S};
        let expected: &[(Role, &str, Access, bool)] = &[
            (S, "status", R, true),
            (S, "get", R, true),
            (S, "put", W, true),
            (S, "put", W, false),
            (S, "delete", W, true),
            (S, "delete", W, false),
            (S, "exists", R, true),
            (S, "get_many", R, true),
            (S, "put_many", W, true),
            (S, "put_many", W, false),
            (S, "delete_many", W, true),
            (S, "delete_many", W, false),
            (S, "list", R, true),
            (S, "query", R, true),
            (S, "count", R, true),
            (S, "clear", W, true),
            (S, "create_namespace", W, false),
            (S, "drop_namespace", W, true),
            (S, "list_namespaces", R, true),
            (S, "get_metadata", R, true),
            (S, "set_metadata", W, true),
            (S, "write_once", W, true),
            (S, "write_once", W, true),
            (S, "operation", R, true),
            (S, "create_index", W, true),
            (S, "drop_index", W, true),
            (S, "list_indexes", R, true),
            (S, "begin", R, true),
            (S, "tx.get", R, false),
            (S, "tx.put", W, false),
            (S, "tx.delete", W, false),
            (S, "tx.commit", W, false),
            (S, "tx.commit_once", W, false),
            (S, "tx.rollback", W, false),
            (E, "append", W, true),
            (E, "read_stream", R, true),
            (E, "read_all", R, true),
            (E, "head_position", R, true),
            (E, "subscribe", R, true),
            (E, "save_snapshot", W, true),
            (E, "load_snapshot", R, true),
            (L, "try_acquire", W, false),
            (L, "release", W, false),
            (L, "extend", W, true),
            (L, "acquire", W, false),
            (RL, "check", W, false),
            (RL, "check", R, true),
            (RL, "reset", W, true),
        ];
        let actual: Vec<_> = every_op()
            .iter()
            .map(|op| (op.role, op.name, op.access, op.repeatable))
            .collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn every_trait_method_has_one_name() {
        // The trait methods, by role (`capabilities` is answered without I/O).
        let methods: &[(Role, &[&str])] = &[
            (
                Role::Storage,
                &[
                    "status",
                    "get",
                    "put",
                    "delete",
                    "exists",
                    "get_many",
                    "put_many",
                    "delete_many",
                    "list",
                    "query",
                    "count",
                    "clear",
                    "create_namespace",
                    "drop_namespace",
                    "list_namespaces",
                    "get_metadata",
                    "set_metadata",
                    "write_once",
                    "operation",
                    "create_index",
                    "drop_index",
                    "list_indexes",
                    "begin",
                    "tx.get",
                    "tx.put",
                    "tx.delete",
                    "tx.commit",
                    "tx.commit_once",
                    "tx.rollback",
                ],
            ),
            (
                Role::Events,
                &[
                    "append",
                    "read_stream",
                    "read_all",
                    "head_position",
                    "subscribe",
                    "save_snapshot",
                    "load_snapshot",
                ],
            ),
            (
                Role::Locks,
                &["try_acquire", "release", "extend", "acquire"],
            ),
            (Role::RateLimits, &["check", "reset"]),
        ];
        let ops = every_op();
        for (role, names) in methods {
            let want: BTreeSet<&str> = names.iter().copied().collect();
            assert_eq!(want.len(), names.len(), "{role:?} lists a name twice");
            let have: BTreeSet<&str> = ops
                .iter()
                .filter(|op| op.role == *role)
                .map(|op| op.name)
                .collect();
            assert_eq!(have, want, "{role:?}");
        }
        // Every operation names the resource its role is scoped by (what access checks and
        // error messages rely on), except those that touch no single one.
        let global = [
            "status",
            "list_namespaces",
            "begin",
            "tx.commit",
            "tx.rollback",
            "read_all",
            "head_position",
            "subscribe",
        ];
        for op in &ops {
            let resource = match op.role {
                Role::Storage => op.namespace,
                Role::Events => op.stream,
                Role::Locks | Role::RateLimits => op.key,
            };
            assert_eq!(resource.is_none(), global.contains(&op.name), "{}", op.name);
        }
        assert_eq!(
            super::acquire("k", Duration::from_secs(3)).allowance,
            Duration::from_secs(3)
        );
    }
}
