//! The storage suite: every point of [`StorageDriver`]'s contract as one public async function,
//! generic over the driver, and [`storage_suite!`](crate::storage_suite) to run them all.
//!
//! Each function takes `Arc<S>` for a fresh driver and panics with a message naming the
//! operation when the driver breaks the contract. Names (namespaces, keys) are unique per test,
//! so the suite also holds when drivers share a backend.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kernel_core::validate::MAX_BATCH_SIZE;
use kernel_core::{
    BatchDelete, BatchPut, DeleteCondition, Entry, ErrorCode, Filter, ListOptions, Metadata,
    MetadataMode, PutOptions, Query, StorageDriver, StorageExt, Transaction,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::support::{
    STEP_TIMEOUT, assert_time_between, assert_time_close, expect_err, expect_ok, join, unique,
    within,
};

/// Every storage behaviour, in suite order. The one list: the macro below expands it into tests
/// and [`BEHAVIOURS`] into names, so adding a behaviour is one line here plus its function.
#[doc(hidden)]
#[macro_export]
macro_rules! __storage_behaviours {
    ($callback:ident ! ($($args:tt)*)) => {
        $crate::$callback! { ($($args)*)
            put_then_get
            put_increments_version
            put_keeps_metadata_when_none
            put_replaces_metadata_when_some
            get_missing_is_none
            exists_reports_live_keys
            delete_reports_whether_removed
            delete_then_put_restarts_version
            special_keys_round_trip
            json_values_round_trip
            edge_numbers_round_trip
            negative_zero_is_refused
            if_absent_creates_then_rejects_live_key
            if_absent_succeeds_over_expired_entry
            if_version_succeeds_on_match
            if_version_mismatch_conflicts_with_current_version
            if_version_on_absent_conflicts_with_none
            delete_if_version_succeeds
            delete_if_version_mismatch_conflicts
            ttl_sets_expires_at
            ttl_expiry_hides_from_get_and_exists
            ttl_expiry_hides_from_get_many
            ttl_expiry_hides_from_list
            ttl_expiry_hides_from_count_and_query
            ttl_expired_entry_is_absent_for_conditions
            put_without_ttl_clears_ttl
            get_many_in_request_order
            get_many_with_duplicate_keys
            put_many_returns_entries_in_order
            put_many_is_atomic_on_version_conflict
            put_many_is_atomic_on_existing_key
            delete_many_removes_and_counts
            delete_many_is_atomic_on_failed_condition
            batch_with_duplicate_keys_is_invalid
            batch_over_max_size_is_invalid
            empty_batches_are_ok
            list_orders_keys_bytewise
            list_entries_carry_values
            list_prefix_is_literal
            list_glob_star_and_question
            list_glob_escapes
            list_glob_other_characters_are_literal
            list_prefix_and_pattern_combine
            list_cursor_pages_without_gaps
            list_reverse
            list_reverse_cursor_pages
            list_offset
            list_limit_zero_is_empty
            list_missing_namespace_is_empty
            namespaces_are_isolated
            query_eq
            query_ne
            query_gt
            query_gte
            query_lt
            query_lte
            query_contains_string
            query_contains_array
            query_starts_with
            query_ends_with
            query_in
            query_exists_true
            query_exists_false
            query_string_order_is_bytewise
            query_mixed_types_never_match
            query_numbers_compare_numerically
            query_nested_path_and_array_index
            query_and_or_not
            query_not_eq_matches_missing
            query_sort_by_field_with_key_tie_break
            query_sort_across_types
            query_limit_offset
            query_without_filter_returns_all_in_key_order
            count_with_and_without_filter
            clear_returns_count_and_keeps_namespace
            create_namespace_with_metadata_is_listed
            create_namespace_twice_already_exists
            write_creates_namespace
            drop_non_empty_namespace_requires_recursive
            drop_namespace_recursive_removes_entries
            drop_empty_namespace
            drop_missing_namespace_is_false
            get_metadata_returns_metadata
            set_metadata_replace
            set_metadata_merge
            set_metadata_bumps_version_keeps_value
            set_metadata_missing_is_not_found
            tx_commit_applies_all
            tx_rollback_applies_nothing
            tx_drop_rolls_back
            tx_reads_own_writes
            tx_conflict_between_transactions
            tx_conflict_with_outside_write
            tx_conditions_are_checked
            tx_validates_input
            rejects_empty_namespace
            rejects_bad_namespace_characters
            rejects_long_namespace
            rejects_reserved_namespace
            rejects_empty_key
            rejects_key_with_nul
            rejects_long_key
            rejects_oversized_value
            rejects_too_deep_value
            rejects_ttl_out_of_range
            rejects_invalid_metadata
            rejects_invalid_glob
            rejects_invalid_filter_path
            capabilities_are_sane
            status_is_healthy
            typed_helpers_round_trip
            typed_get_of_wrong_shape_is_invalid_input
            update_helper_read_modify_write
            race_compare_and_set_increments
            race_if_absent_single_winner
            write_once_put_applies_then_replays
            write_once_conditional_put_replays_after_key_moved
            write_once_same_id_other_request_conflicts
            write_once_failed_write_records_nothing
            write_once_deletes_and_batches_replay
            write_once_ids_are_scoped_per_namespace
            operation_reports_the_recorded_outcome
            write_once_validates_input
            tx_commit_once_commits_then_replays
            race_write_once_same_id_applies_once
            race_compare_and_set_with_operation_ids
            index_queries_match_unindexed
            index_create_is_idempotent_and_listed
            index_follows_every_write
            index_dropped_with_namespace
            index_rejects_invalid_input
        }
    };
}

mod indexes;
mod operation_ids;
pub use indexes::*;
pub use operation_ids::*;

/// The names of every storage behaviour, in suite order.
pub const BEHAVIOURS: &[&str] = crate::__storage_behaviours!(__behaviour_names!());

/// The storage suite for a store that keeps every name under a prefix of its own (a tenant
/// scope: `users` is stored as `t_acme.users`), as `#[test]`s like [`storage_suite!`](crate::storage_suite): every
/// behaviour but `rejects_long_namespace`, whose 128-byte namespace cannot fit beside the
/// prefix. Test the prefixed limit beside it (a namespace of 128 bytes minus the prefix is
/// accepted, one byte more refused).
///
/// ```text
/// kernel_testkit::prefixed_storage_suite!(async { (TenantScope::new(driver, tenant), ()) });
/// ```
#[macro_export]
macro_rules! prefixed_storage_suite {
    ($factory:expr $(,)?) => {
        mod storage_conformance {
            #[allow(unused_imports)]
            use super::*;

            mod concrete {
                #[allow(unused_imports)]
                use super::*;
                $crate::__storage_behaviours!(__prefixed_storage_tests!(concrete, { $factory }));
            }

            mod dyn_arc {
                #[allow(unused_imports)]
                use super::*;
                $crate::__storage_behaviours!(__prefixed_storage_tests!(dyn_arc, { $factory }));
            }
        }
    };
}

/// [`prefixed_storage_suite!`]'s tests: each behaviour on its own (no recursion over the
/// list), the one a prefix rules out expanding to nothing.
#[doc(hidden)]
#[macro_export]
macro_rules! __prefixed_storage_tests {
    (($mode:ident, $factory:tt) $($name:ident)*) => {
        $($crate::__prefixed_storage_tests!(@one $mode, $factory, $name);)*
    };
    (@one $mode:ident, $factory:tt, rejects_long_namespace) => {};
    (@one $mode:ident, $factory:tt, $name:ident) => {
        $crate::__conformance_tests!((storage, StorageDriver, $mode, $factory) $name);
    };
}

/// Runs the whole storage suite against a driver, as `#[test]`s.
///
/// The argument is an async expression, evaluated afresh for every test, that yields
/// `(driver, guard)`; the guard lives until the test ends. Each behaviour runs twice: on
/// `Arc<Driver>` (module `storage_conformance::concrete`) and on `Arc<dyn StorageDriver>`
/// (`storage_conformance::dyn_arc`).
///
/// ```text
/// kernel_testkit::storage_suite!(async { (driver_memory::MemoryDriver::new(), ()) });
/// ```
#[macro_export]
macro_rules! storage_suite {
    ($factory:expr $(,)?) => {
        $crate::__suite!(
            storage_conformance,
            __storage_behaviours,
            storage,
            StorageDriver,
            $factory
        );
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A short TTL for expiry tests, and how long to wait for it to pass. The TTL leaves a wide
/// margin for the "still visible" checks on a loaded machine with a networked backend.
const TTL: Duration = Duration::from_millis(300);
const TTL_WAIT: Duration = Duration::from_millis(700);

fn meta(v: Value) -> Metadata {
    match v {
        Value::Object(m) => m,
        other => panic!("suite bug: metadata must be a JSON object, got {other}"),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn sorted_bytewise(v: &[&str]) -> Vec<String> {
    let mut out = strings(v);
    // `str`'s `Ord` is byte-wise, the order the contract asks for.
    out.sort();
    out
}

async fn put<S: StorageDriver + ?Sized>(s: &S, ns: &str, key: &str, value: Value) -> Entry {
    expect_ok(
        s.put(ns, key, value, PutOptions::new()).await,
        &format!("put {ns}/{key:?}"),
    )
}

async fn put_with<S: StorageDriver + ?Sized>(
    s: &S,
    ns: &str,
    key: &str,
    value: Value,
    options: PutOptions,
) -> Entry {
    let what = format!("put {ns}/{key:?} with {options:?}");
    expect_ok(s.put(ns, key, value, options).await, &what)
}

async fn get<S: StorageDriver + ?Sized>(s: &S, ns: &str, key: &str) -> Option<Entry> {
    expect_ok(s.get(ns, key).await, &format!("get {ns}/{key:?}"))
}

async fn must_get<S: StorageDriver + ?Sized>(s: &S, ns: &str, key: &str) -> Entry {
    match get(s, ns, key).await {
        Some(e) => e,
        None => panic!("get {ns}/{key:?}: expected an entry, found none"),
    }
}

async fn exists<S: StorageDriver + ?Sized>(s: &S, ns: &str, key: &str) -> bool {
    expect_ok(s.exists(ns, key).await, &format!("exists {ns}/{key:?}"))
}

async fn list_keys<S: StorageDriver + ?Sized>(s: &S, ns: &str, opts: &ListOptions) -> Vec<String> {
    let page = expect_ok(s.list(ns, opts).await, &format!("list {ns} {opts:?}"));
    page.entries.into_iter().map(|e| e.key).collect()
}

async fn query_keys<S: StorageDriver + ?Sized>(s: &S, ns: &str, query: &Query) -> Vec<String> {
    let entries = expect_ok(s.query(ns, query).await, &format!("query {ns} {query:?}"));
    entries.into_iter().map(|e| e.key).collect()
}

async fn filter_keys<S: StorageDriver + ?Sized>(s: &S, ns: &str, filter: Filter) -> Vec<String> {
    query_keys(s, ns, &Query::new().filter(filter)).await
}

async fn count<S: StorageDriver + ?Sized>(s: &S, ns: &str, filter: Option<&Filter>) -> u64 {
    expect_ok(s.count(ns, filter).await, &format!("count {ns} {filter:?}"))
}

async fn namespace_names<S: StorageDriver + ?Sized>(s: &S) -> Vec<String> {
    let infos = expect_ok(s.list_namespaces().await, "list_namespaces");
    infos.into_iter().map(|i| i.name).collect()
}

/// Whether the driver supports TTL. When it does not, checks that a put with a TTL is
/// `Unsupported` and writes nothing: the TTL tests then end there.
async fn ttl_supported<S: StorageDriver + ?Sized>(s: &S, ns: &str) -> bool {
    if s.capabilities().ttl {
        return true;
    }
    let key = "ttl-probe";
    expect_err(
        s.put(
            ns,
            key,
            json!(1),
            PutOptions::new().ttl(Duration::from_secs(60)),
        )
        .await,
        ErrorCode::Unsupported,
        "put with a TTL on a driver whose capabilities say ttl = false",
    );
    assert!(
        get(s, ns, key).await.is_none(),
        "a put refused as Unsupported must write nothing"
    );
    false
}

/// A transaction, or `None` after checking that `begin` is `Unsupported` when the capabilities
/// say there are no transactions.
async fn begin<S: StorageDriver + ?Sized>(s: &S) -> Option<Box<dyn Transaction>> {
    let supported = s.capabilities().transactions;
    let result = s.begin().await;
    if supported {
        Some(expect_ok(result, "begin"))
    } else {
        expect_err(
            result.map(|_| ()),
            ErrorCode::Unsupported,
            "begin on a driver whose capabilities say transactions = false",
        );
        None
    }
}

#[track_caller]
fn assert_names_key(err: &kernel_core::Error, key: &str, what: &str) {
    assert_eq!(
        err.context_value("key"),
        Some(key),
        "{what}: the error must name the key; got `{err}`"
    );
}

/// A value nested `levels` deep (`depth` as kernel-core counts it).
fn nested(levels: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..levels {
        v = json!([v]);
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Basics

/// Numbers at the edges of what JSON and `f64` hold, each as it must come back: the largest and
/// smallest floats, subnormals, long decimals, integral floats beyond 2^53 (floats, not
/// integers), integers beyond i64 and up to u64.
pub fn edge_numbers() -> Vec<serde_json::Value> {
    vec![
        json!(1.7e308),
        json!(f64::MAX),
        json!(-f64::MAX),
        json!(f64::MIN_POSITIVE),
        json!(5e-324),
        json!(-5e-324),
        json!(2.225_073_858_507_201e-308),
        json!(0.1 + 0.2),
        json!(123_456_789.123_456_78),
        json!(1e16),
        json!(1e19),
        json!(-1e20),
        json!(18_446_744_073_709_551_616.0),
        json!(9_007_199_254_740_993_u64),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(0.0),
        json!(3.0),
        json!(-1.5e-300),
    ]
}

/// Every number of [`edge_numbers`] comes back exactly (same value, same integer / float kind)
/// from `put`, `get`, `get_many`, `list` and `query`, in values and in metadata, and one such
/// value never makes the rest of the namespace unreadable.
pub async fn edge_numbers_round_trip<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let numbers = edge_numbers();
    let mut keys = Vec::new();
    for (i, n) in numbers.iter().enumerate() {
        let key = format!("n{i:02}");
        let value = json!({"n": n, "list": [n, {"deep": n}]});
        let metadata = meta(json!({"n": n}));
        let written = put_with(
            s,
            &ns,
            &key,
            value.clone(),
            PutOptions::new().metadata(metadata.clone()),
        )
        .await;
        assert_eq!(written.value, value, "put returns {n}");
        let got = expect_ok(s.get(&ns, &key).await, "get").expect("stored");
        assert_eq!(got.value, value, "get returns {n} exactly");
        assert_eq!(got.metadata, metadata, "metadata keeps {n} exactly");
        keys.push(key);
    }
    let many = expect_ok(s.get_many(&ns, &keys).await, "get_many");
    let listed = expect_ok(s.list(&ns, &ListOptions::default()).await, "list");
    let queried = expect_ok(s.query(&ns, &Query::default()).await, "query");
    assert_eq!(
        listed.entries.len(),
        numbers.len(),
        "list reads every entry"
    );
    assert_eq!(queried.len(), numbers.len(), "query reads every entry");
    for (i, n) in numbers.iter().enumerate() {
        let expected = json!({"n": n, "list": [n, {"deep": n}]});
        let from_many = many[i].as_ref().map(|e| &e.value);
        assert_eq!(from_many, Some(&expected), "get_many returns {n} exactly");
        let key = &keys[i];
        let from_list = listed
            .entries
            .iter()
            .find(|e| &e.key == key)
            .map(|e| &e.value);
        assert_eq!(from_list, Some(&expected), "list returns {n} exactly");
        let from_query = queried.iter().find(|e| &e.key == key).map(|e| &e.value);
        assert_eq!(from_query, Some(&expected), "query returns {n} exactly");
    }
}

/// `-0.0` is refused before any I/O, in a value and in metadata, on every driver alike: one
/// backend (PostgreSQL's `numeric`) cannot keep its sign.
pub async fn negative_zero_is_refused<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let e = expect_err(
        s.put(&ns, "k", json!({"x": [1, -0.0]}), PutOptions::new())
            .await,
        ErrorCode::InvalidInput,
        "put of -0.0",
    );
    assert!(
        e.to_string().contains("-0.0"),
        "the error names the rule: {e}"
    );
    expect_err(
        s.put(
            &ns,
            "k",
            json!(1),
            PutOptions::new().metadata(meta(json!({"x": -0.0}))),
        )
        .await,
        ErrorCode::InvalidInput,
        "metadata holding -0.0",
    );
    assert!(
        expect_ok(s.get(&ns, "k").await, "get").is_none(),
        "nothing was written"
    );
    // Zero itself is fine.
    put_with(s, &ns, "k", json!({"x": 0.0}), PutOptions::new()).await;
}

/// A put returns, and a get reads back, the value, metadata, version 1 and plausible
/// timestamps, without expiry.
pub async fn put_then_get<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let value = json!({"name": "Alice", "tags": ["a", "b"], "nested": {"n": 1.5, "z": null}});
    let metadata = meta(json!({"owner": "team-a", "labels": {"tier": 1}}));
    let before = SystemTime::now();
    let written = put_with(
        s,
        &ns,
        "user:1",
        value.clone(),
        PutOptions::new().metadata(metadata.clone()),
    )
    .await;
    let after = SystemTime::now();
    assert_eq!(written.namespace, ns, "put: entry.namespace");
    assert_eq!(written.key, "user:1", "put: entry.key");
    assert_eq!(written.value, value, "put: entry.value");
    assert_eq!(written.metadata, metadata, "put: entry.metadata");
    assert_eq!(written.version, 1, "put: a new key starts at version 1");
    assert_eq!(written.expires_at, None, "put without TTL: expires_at");
    assert_time_between(written.created_at, before, after, "put: created_at");
    assert_time_between(written.updated_at, before, after, "put: updated_at");
    assert!(
        written.created_at <= written.updated_at,
        "put: created_at must not be after updated_at"
    );

    let got = must_get(s, &ns, "user:1").await;
    assert_eq!(got.namespace, ns, "get: entry.namespace");
    assert_eq!(got.key, "user:1", "get: entry.key");
    assert_eq!(got.value, value, "get: entry.value");
    assert_eq!(got.metadata, metadata, "get: entry.metadata");
    assert_eq!(got.version, 1, "get: version");
    assert_eq!(got.expires_at, None, "get: expires_at");
    let ms = Duration::from_millis(1);
    assert_time_close(
        got.created_at,
        written.created_at,
        ms,
        "get vs put: created_at",
    );
    assert_time_close(
        got.updated_at,
        written.updated_at,
        ms,
        "get vs put: updated_at",
    );
}

/// Every put adds 1 to the version; created_at stays, updated_at does not go back.
pub async fn put_increments_version<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let first = put(s, &ns, "k", json!(1)).await;
    let mut previous = first.clone();
    for n in 2..=4u64 {
        let e = put(s, &ns, "k", json!(n)).await;
        assert_eq!(e.version, n, "put #{n}: version");
        assert_time_close(
            e.created_at,
            first.created_at,
            Duration::from_millis(1),
            "an update keeps created_at",
        );
        assert!(
            e.updated_at >= previous.updated_at,
            "put #{n}: updated_at went back in time"
        );
        previous = e;
    }
    let got = must_get(s, &ns, "k").await;
    assert_eq!(got.version, 4, "get after 4 puts: version");
    assert_eq!(got.value, json!(4), "get after 4 puts: value");
}

/// A put with `metadata: None` keeps the existing metadata.
pub async fn put_keeps_metadata_when_none<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let m = meta(json!({"a": 1}));
    put_with(s, &ns, "k", json!(1), PutOptions::new().metadata(m.clone())).await;
    let e = put(s, &ns, "k", json!(2)).await;
    assert_eq!(
        e.metadata, m,
        "put without metadata must keep it (returned entry)"
    );
    let got = must_get(s, &ns, "k").await;
    assert_eq!(got.metadata, m, "put without metadata must keep it (get)");
    assert_eq!(got.value, json!(2), "value replaced");
    let fresh = put(s, &ns, "new", json!(0)).await;
    assert!(
        fresh.metadata.is_empty(),
        "a new key without metadata has empty metadata"
    );
}

/// A put with `metadata: Some(..)` replaces (does not merge) the metadata.
pub async fn put_replaces_metadata_when_some<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put_with(
        s,
        &ns,
        "k",
        json!(1),
        PutOptions::new().metadata(meta(json!({"a": 1, "b": 2}))),
    )
    .await;
    let e = put_with(
        s,
        &ns,
        "k",
        json!(2),
        PutOptions::new().metadata(meta(json!({"c": 3}))),
    )
    .await;
    assert_eq!(
        e.metadata,
        meta(json!({"c": 3})),
        "metadata replaced, not merged"
    );
    assert_eq!(must_get(s, &ns, "k").await.metadata, meta(json!({"c": 3})));
    put_with(
        s,
        &ns,
        "k",
        json!(3),
        PutOptions::new().metadata(Metadata::new()),
    )
    .await;
    assert!(
        must_get(s, &ns, "k").await.metadata.is_empty(),
        "Some(empty) clears the metadata"
    );
}

/// A missing key (in an existing or a never-written namespace) reads as `None`.
pub async fn get_missing_is_none<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "present", json!(1)).await;
    assert!(get(s, &ns, "absent").await.is_none(), "missing key");
    assert!(
        get(s, &ns, "presen").await.is_none(),
        "a prefix of a key is another key"
    );
    assert!(
        get(s, &ns, "present ").await.is_none(),
        "trailing space makes another key"
    );
    let never = unique("never");
    assert!(
        get(s, &never, "k").await.is_none(),
        "never-written namespace"
    );
}

/// `exists` is true exactly while a live entry is there.
pub async fn exists_reports_live_keys<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    assert!(!exists(s, &ns, "k").await, "before put");
    put(s, &ns, "k", json!(null)).await;
    assert!(
        exists(s, &ns, "k").await,
        "after put (a null value is still an entry)"
    );
    expect_ok(s.delete(&ns, "k", DeleteCondition::Always).await, "delete");
    assert!(!exists(s, &ns, "k").await, "after delete");
}

/// `delete` reports `true` when it removed a live entry and `false` otherwise.
pub async fn delete_reports_whether_removed<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let del = |key: &'static str| s.delete(&ns, key, DeleteCondition::Always);
    assert!(
        !expect_ok(del("k").await, "delete of a missing key"),
        "missing: false"
    );
    put(s, &ns, "k", json!(1)).await;
    put(s, &ns, "other", json!(2)).await;
    assert!(
        expect_ok(del("k").await, "delete of a live key"),
        "live: true"
    );
    assert!(
        !expect_ok(del("k").await, "second delete"),
        "second delete: false"
    );
    assert!(
        get(s, &ns, "k").await.is_none(),
        "deleted key reads as None"
    );
    assert!(exists(s, &ns, "other").await, "delete removed only its key");
}

/// A delete followed by a put creates the key anew at version 1.
pub async fn delete_then_put_restarts_version<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "k", json!(1)).await;
    let old = put(s, &ns, "k", json!(2)).await;
    assert_eq!(old.version, 2);
    expect_ok(s.delete(&ns, "k", DeleteCondition::Always).await, "delete");
    let new = put(s, &ns, "k", json!(3)).await;
    assert_eq!(new.version, 1, "put after delete restarts at version 1");
    assert!(
        new.created_at >= old.created_at,
        "put after delete: created_at is the new creation time"
    );
}

/// Keys with SQL, glob, quote, escape, whitespace and non-ASCII characters are ordinary keys.
pub async fn special_keys_round_trip<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let keys = [
        "100%",
        "a_b",
        "a*b",
        "a?b",
        "it's",
        "back\\slash",
        "\\",
        "quote\"d",
        "with space",
        " lead",
        "new\nline",
        "tab\t",
        "'; DROP TABLE entries; --",
        "%_%",
        "{json}",
        "a/b/c",
        "a:b",
        "é",
        "日本語",
        "😀",
        "[x]",
        "$1",
        "~",
        "\u{7f}",
    ];
    for (i, key) in keys.iter().enumerate() {
        put(s, &ns, key, json!(i)).await;
    }
    for (i, key) in keys.iter().enumerate() {
        let e = must_get(s, &ns, key).await;
        assert_eq!(e.key, *key, "key {key:?} comes back unchanged");
        assert_eq!(e.value, json!(i), "value of key {key:?}");
        assert!(exists(s, &ns, key).await, "exists {key:?}");
    }
    assert_eq!(
        count(s, &ns, None).await,
        keys.len() as u64,
        "every special key is one entry"
    );
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new()).await,
        sorted_bytewise(&keys)
    );
    for key in keys {
        assert!(
            expect_ok(s.delete(&ns, key, DeleteCondition::Always).await, "delete"),
            "delete {key:?}"
        );
    }
    assert_eq!(count(s, &ns, None).await, 0, "all special keys deleted");
}

/// Every JSON type round-trips exactly, including large integers and floats.
pub async fn json_values_round_trip<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let values = [
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(-17),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1.5),
        json!(-0.25),
        json!(""),
        json!("text with \"quotes\", \\ and \u{0001} control"),
        json!("日本語 😀"),
        json!([]),
        json!({}),
        json!([1, "two", null, [3], {"four": 4}]),
        json!({"a": {"b": {"c": [1, 2, {"d": "e"}]}}, "": "empty key", "k.with.dots": 1}),
    ];
    for (i, v) in values.iter().enumerate() {
        put(s, &ns, &format!("v{i:02}"), v.clone()).await;
    }
    for (i, v) in values.iter().enumerate() {
        let got = must_get(s, &ns, &format!("v{i:02}")).await;
        assert_eq!(&got.value, v, "value #{i} must round-trip exactly");
    }
}

// ---------------------------------------------------------------------------------------------
// Conditions

/// `IfAbsent` creates a missing key and fails with `AlreadyExists` on a live one.
pub async fn if_absent_creates_then_rejects_live_key<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    let e = put_with(s, &ns, "k", json!("first"), PutOptions::new().if_absent()).await;
    assert_eq!(e.version, 1);
    let err = expect_err(
        s.put(&ns, "k", json!("second"), PutOptions::new().if_absent())
            .await,
        ErrorCode::AlreadyExists,
        "IfAbsent on a live key",
    );
    assert_names_key(&err, "k", "IfAbsent on a live key");
    let got = must_get(s, &ns, "k").await;
    assert_eq!(
        got.value,
        json!("first"),
        "a failed IfAbsent writes nothing"
    );
    assert_eq!(got.version, 1, "a failed IfAbsent leaves the version");
}

/// `IfAbsent` succeeds over an expired entry (it counts as absent).
pub async fn if_absent_succeeds_over_expired_entry<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    if !ttl_supported(s, &ns).await {
        return;
    }
    put_with(s, &ns, "k", json!("old"), PutOptions::new().ttl(TTL)).await;
    expect_err(
        s.put(&ns, "k", json!("x"), PutOptions::new().if_absent())
            .await,
        ErrorCode::AlreadyExists,
        "IfAbsent before the TTL passed",
    );
    tokio::time::sleep(TTL_WAIT).await;
    let e = put_with(s, &ns, "k", json!("new"), PutOptions::new().if_absent()).await;
    assert_eq!(
        e.version, 1,
        "IfAbsent over an expired entry creates it anew"
    );
    assert_eq!(e.expires_at, None, "the new entry has no TTL");
    assert_eq!(must_get(s, &ns, "k").await.value, json!("new"));
}

/// `IfVersion(n)` writes when the version is `n`.
pub async fn if_version_succeeds_on_match<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "k", json!(1)).await;
    let e = put_with(s, &ns, "k", json!(2), PutOptions::new().if_version(1)).await;
    assert_eq!(e.version, 2, "CAS at 1 -> 2");
    let e = put_with(s, &ns, "k", json!(3), PutOptions::new().if_version(2)).await;
    assert_eq!(e.version, 3, "CAS at 2 -> 3");
    assert_eq!(must_get(s, &ns, "k").await.value, json!(3));
}

/// `IfVersion(n)` on another version is `Conflict` carrying the current version, writing nothing.
pub async fn if_version_mismatch_conflicts_with_current_version<
    S: StorageDriver + ?Sized + 'static,
>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "k", json!(1)).await;
    put(s, &ns, "k", json!(2)).await;
    for stale in [1, 3, 100] {
        let err = expect_err(
            s.put(&ns, "k", json!("nope"), PutOptions::new().if_version(stale))
                .await,
            ErrorCode::Conflict,
            &format!("IfVersion({stale}) on version 2"),
        );
        assert_eq!(
            err.current_version(),
            Some(2),
            "Conflict carries the current version"
        );
        assert_names_key(&err, "k", "IfVersion mismatch");
    }
    let got = must_get(s, &ns, "k").await;
    assert_eq!(
        (got.value, got.version),
        (json!(2), 2),
        "failed CAS writes nothing"
    );
}

/// `IfVersion` on an absent key (including `IfVersion(0)`) is `Conflict` with no current version.
pub async fn if_version_on_absent_conflicts_with_none<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "other", json!(1)).await;
    for v in [1, 0] {
        let err = expect_err(
            s.put(&ns, "k", json!(1), PutOptions::new().if_version(v))
                .await,
            ErrorCode::Conflict,
            &format!("IfVersion({v}) on an absent key"),
        );
        assert_eq!(
            err.current_version(),
            None,
            "absent key: current_version is None"
        );
    }
    assert!(
        get(s, &ns, "k").await.is_none(),
        "failed CAS creates nothing"
    );
}

/// A delete with `IfVersion` at the current version removes the entry.
pub async fn delete_if_version_succeeds<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "k", json!(1)).await;
    put(s, &ns, "k", json!(2)).await;
    let removed = expect_ok(
        s.delete(&ns, "k", DeleteCondition::IfVersion(2)).await,
        "delete IfVersion(2) at version 2",
    );
    assert!(
        removed,
        "delete IfVersion at the current version reports true"
    );
    assert!(get(s, &ns, "k").await.is_none(), "entry gone");
}

/// A delete with `IfVersion` at another version (or on an absent key) is `Conflict`, removing
/// nothing.
pub async fn delete_if_version_mismatch_conflicts<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "k", json!(1)).await;
    let err = expect_err(
        s.delete(&ns, "k", DeleteCondition::IfVersion(3)).await,
        ErrorCode::Conflict,
        "delete IfVersion(3) at version 1",
    );
    assert_eq!(
        err.current_version(),
        Some(1),
        "Conflict carries the current version"
    );
    assert_names_key(&err, "k", "delete IfVersion mismatch");
    assert!(
        exists(s, &ns, "k").await,
        "failed conditional delete removes nothing"
    );
    let err = expect_err(
        s.delete(&ns, "absent", DeleteCondition::IfVersion(1)).await,
        ErrorCode::Conflict,
        "delete IfVersion(1) on an absent key",
    );
    assert_eq!(
        err.current_version(),
        None,
        "absent: current_version is None"
    );
}

// ---------------------------------------------------------------------------------------------
// TTL

/// A TTL sets `expires_at` to about now + TTL; without a TTL it is `None`.
pub async fn ttl_sets_expires_at<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    if !ttl_supported(s, &ns).await {
        return;
    }
    let ttl = Duration::from_secs(60);
    let before = SystemTime::now();
    let e = put_with(s, &ns, "k", json!(1), PutOptions::new().ttl(ttl)).await;
    let after = SystemTime::now();
    let Some(expires) = e.expires_at else {
        panic!("put with a TTL must return expires_at, got None");
    };
    assert_time_between(expires, before + ttl, after + ttl, "expires_at = now + TTL");
    let got = must_get(s, &ns, "k").await;
    let Some(got_expires) = got.expires_at else {
        panic!("get of an entry with a TTL must return expires_at, got None");
    };
    assert_time_close(
        got_expires,
        expires,
        Duration::from_millis(1),
        "get vs put expires_at",
    );
    assert_eq!(put(s, &ns, "plain", json!(1)).await.expires_at, None);
}

/// An expired entry is invisible to `get`, `exists`, `get_metadata` and `delete`.
pub async fn ttl_expiry_hides_from_get_and_exists<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    if !ttl_supported(s, &ns).await {
        return;
    }
    put_with(s, &ns, "k", json!(1), PutOptions::new().ttl(TTL)).await;
    assert!(get(s, &ns, "k").await.is_some(), "visible before the TTL");
    assert!(exists(s, &ns, "k").await, "exists before the TTL");
    tokio::time::sleep(TTL_WAIT).await;
    assert!(get(s, &ns, "k").await.is_none(), "get after the TTL");
    assert!(!exists(s, &ns, "k").await, "exists after the TTL");
    let m = expect_ok(s.get_metadata(&ns, "k").await, "get_metadata after the TTL");
    assert!(m.is_none(), "get_metadata after the TTL");
    let removed = expect_ok(s.delete(&ns, "k", DeleteCondition::Always).await, "delete");
    assert!(
        !removed,
        "deleting an expired entry reports false (it was not live)"
    );
}

/// `get_many` reports an expired entry as missing (TTLs set through `put_many`).
pub async fn ttl_expiry_hides_from_get_many<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    if !ttl_supported(s, &ns).await {
        return;
    }
    let items = vec![
        BatchPut::new("short", json!(1)).with_options(PutOptions::new().ttl(TTL)),
        BatchPut::new("long", json!(2)),
    ];
    let written = expect_ok(s.put_many(&ns, items).await, "put_many with a TTL");
    assert!(
        written[0].expires_at.is_some(),
        "put_many item with TTL has expires_at"
    );
    assert!(
        written[1].expires_at.is_none(),
        "put_many item without TTL has none"
    );
    tokio::time::sleep(TTL_WAIT).await;
    let got = expect_ok(
        s.get_many(&ns, &strings(&["short", "long"])).await,
        "get_many",
    );
    assert!(got[0].is_none(), "expired entry is None in get_many");
    assert_eq!(got[1].as_ref().map(|e| e.value.clone()), Some(json!(2)));
}

/// `list` skips expired entries, and cursors page correctly around them.
pub async fn ttl_expiry_hides_from_list<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    if !ttl_supported(s, &ns).await {
        return;
    }
    for key in ["a", "c", "e"] {
        put_with(s, &ns, key, json!(key), PutOptions::new().ttl(TTL)).await;
    }
    for key in ["b", "d"] {
        put(s, &ns, key, json!(key)).await;
    }
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new()).await.len(),
        5,
        "before the TTL"
    );
    tokio::time::sleep(TTL_WAIT).await;
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new()).await,
        strings(&["b", "d"])
    );
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new().reverse(true)).await,
        strings(&["d", "b"])
    );
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new().pattern("*")).await,
        strings(&["b", "d"])
    );
    let page = expect_ok(
        s.list(&ns, &ListOptions::new().limit(1)).await,
        "list limit 1",
    );
    assert_eq!(page.keys(), vec!["b"], "first page skips expired a");
    let Some(cursor) = page.next_cursor else {
        panic!("list limit 1 of 2 live entries must return a cursor");
    };
    let page = expect_ok(
        s.list(&ns, &ListOptions::new().limit(1).after(cursor))
            .await,
        "list page 2",
    );
    assert_eq!(page.keys(), vec!["d"], "second page skips expired c");
    if let Some(c) = page.next_cursor {
        let rest = list_keys(s, &ns, &ListOptions::new().limit(1).after(c)).await;
        assert!(rest.is_empty(), "nothing live after d, got {rest:?}");
    }
}

/// `count` and `query` ignore expired entries.
pub async fn ttl_expiry_hides_from_count_and_query<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    if !ttl_supported(s, &ns).await {
        return;
    }
    put_with(
        s,
        &ns,
        "a",
        json!({"kind": "x"}),
        PutOptions::new().ttl(TTL),
    )
    .await;
    put_with(
        s,
        &ns,
        "b",
        json!({"kind": "x"}),
        PutOptions::new().ttl(TTL),
    )
    .await;
    put(s, &ns, "c", json!({"kind": "x"})).await;
    let f = Filter::eq("kind", "x");
    assert_eq!(count(s, &ns, None).await, 3, "count before the TTL");
    tokio::time::sleep(TTL_WAIT).await;
    assert_eq!(count(s, &ns, None).await, 1, "count after the TTL");
    assert_eq!(
        count(s, &ns, Some(&f)).await,
        1,
        "filtered count after the TTL"
    );
    assert_eq!(
        filter_keys(s, &ns, f).await,
        strings(&["c"]),
        "query after the TTL"
    );
    assert_eq!(query_keys(s, &ns, &Query::new()).await, strings(&["c"]));
}

/// Conditions treat an expired entry as absent: `IfVersion` conflicts with `None`,
/// `set_metadata` is `NotFound`, and a plain put creates the key anew at version 1.
pub async fn ttl_expired_entry_is_absent_for_conditions<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    if !ttl_supported(s, &ns).await {
        return;
    }
    let old = put_with(s, &ns, "k", json!(1), PutOptions::new().ttl(TTL)).await;
    tokio::time::sleep(TTL_WAIT).await;
    let err = expect_err(
        s.put(&ns, "k", json!(2), PutOptions::new().if_version(1))
            .await,
        ErrorCode::Conflict,
        "IfVersion(1) on an expired entry",
    );
    assert_eq!(
        err.current_version(),
        None,
        "expired entry: current_version None"
    );
    let err = expect_err(
        s.delete(&ns, "k", DeleteCondition::IfVersion(1)).await,
        ErrorCode::Conflict,
        "delete IfVersion(1) on an expired entry",
    );
    assert_eq!(err.current_version(), None);
    expect_err(
        s.set_metadata(&ns, "k", meta(json!({"a": 1})), MetadataMode::Replace)
            .await,
        ErrorCode::NotFound,
        "set_metadata on an expired entry",
    );
    let new = put(s, &ns, "k", json!(3)).await;
    assert_eq!(
        new.version, 1,
        "a put over an expired entry creates it anew"
    );
    assert!(new.created_at > old.created_at, "new created_at");
    assert_eq!(new.expires_at, None);
}

/// A put without TTL clears an earlier TTL.
pub async fn put_without_ttl_clears_ttl<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    if !ttl_supported(s, &ns).await {
        return;
    }
    put_with(s, &ns, "k", json!(1), PutOptions::new().ttl(TTL)).await;
    let e = put(s, &ns, "k", json!(2)).await;
    assert_eq!(e.expires_at, None, "put without TTL returns no expiry");
    tokio::time::sleep(TTL_WAIT).await;
    let got = get(s, &ns, "k").await;
    assert_eq!(
        got.map(|e| (e.value, e.version, e.expires_at)),
        Some((json!(2), 2, None)),
        "the entry outlives the old TTL"
    );
}

// ---------------------------------------------------------------------------------------------
// Batches

/// `get_many` answers in request order with `None` for missing keys.
pub async fn get_many_in_request_order<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    for key in ["a", "b", "c"] {
        put(s, &ns, key, json!(key)).await;
    }
    let req = strings(&["c", "missing", "a", "b"]);
    let got = expect_ok(s.get_many(&ns, &req).await, "get_many");
    let got: Vec<Option<(String, Value)>> = got
        .into_iter()
        .map(|e| e.map(|e| (e.key, e.value)))
        .collect();
    assert_eq!(
        got,
        vec![
            Some(("c".into(), json!("c"))),
            None,
            Some(("a".into(), json!("a"))),
            Some(("b".into(), json!("b"))),
        ],
        "get_many: request order, None for missing"
    );
    let never = unique("never");
    let got = expect_ok(
        s.get_many(&never, &req).await,
        "get_many of a missing namespace",
    );
    assert!(got.len() == 4 && got.iter().all(Option::is_none), "{got:?}");
}

/// A key asked for twice in `get_many` is answered twice, in request order (reads have no
/// reason to refuse duplicates; only write batches do).
pub async fn get_many_with_duplicate_keys<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "a", json!(1)).await;
    let got = expect_ok(
        s.get_many(&ns, &strings(&["a", "missing", "a"])).await,
        "get_many with a key twice",
    );
    let keys: Vec<Option<String>> = got.into_iter().map(|e| e.map(|e| e.key)).collect();
    assert_eq!(keys, vec![Some("a".into()), None, Some("a".into())]);
}

/// `put_many` writes every item and returns the entries in request order.
pub async fn put_many_returns_entries_in_order<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "b", json!("old")).await;
    let items = vec![
        BatchPut::new("c", json!(3)),
        BatchPut::new("a", json!(1))
            .with_options(PutOptions::new().metadata(meta(json!({"m": 1})))),
        BatchPut::new("b", json!(2)).with_options(PutOptions::new().if_version(1)),
    ];
    let written = expect_ok(s.put_many(&ns, items).await, "put_many");
    let summary: Vec<(String, Value, u64)> = written
        .iter()
        .map(|e| (e.key.clone(), e.value.clone(), e.version))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("c".into(), json!(3), 1),
            ("a".into(), json!(1), 1),
            ("b".into(), json!(2), 2)
        ],
        "put_many returns the entries in request order with their versions"
    );
    assert_eq!(
        written[1].metadata,
        meta(json!({"m": 1})),
        "batch item metadata"
    );
    assert_eq!(must_get(s, &ns, "a").await.metadata, meta(json!({"m": 1})));
    assert_eq!(must_get(s, &ns, "b").await.value, json!(2));
    assert_eq!(count(s, &ns, None).await, 3);
}

/// One failing `IfVersion` in `put_many` writes nothing and the `Conflict` names the key.
pub async fn put_many_is_atomic_on_version_conflict<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "b", json!("old")).await;
    let items = vec![
        BatchPut::new("a", json!(1)),
        BatchPut::new("b", json!(2)).with_options(PutOptions::new().if_version(5)),
        BatchPut::new("c", json!(3)).with_options(PutOptions::new().if_absent()),
    ];
    let err = expect_err(
        s.put_many(&ns, items).await,
        ErrorCode::Conflict,
        "put_many with a stale IfVersion",
    );
    assert_names_key(&err, "b", "put_many conflict");
    assert_eq!(
        err.current_version(),
        Some(1),
        "conflict carries b's version"
    );
    assert!(get(s, &ns, "a").await.is_none(), "atomic: a not written");
    assert!(get(s, &ns, "c").await.is_none(), "atomic: c not written");
    let b = must_get(s, &ns, "b").await;
    assert_eq!(
        (b.value, b.version),
        (json!("old"), 1),
        "atomic: b unchanged"
    );
}

/// One failing `IfAbsent` in `put_many` writes nothing and `AlreadyExists` names the key.
pub async fn put_many_is_atomic_on_existing_key<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "taken", json!("old")).await;
    let items = vec![
        BatchPut::new("new1", json!(1)),
        BatchPut::new("taken", json!(2)).with_options(PutOptions::new().if_absent()),
        BatchPut::new("new2", json!(3)),
    ];
    let err = expect_err(
        s.put_many(&ns, items).await,
        ErrorCode::AlreadyExists,
        "put_many with IfAbsent on a live key",
    );
    assert_names_key(&err, "taken", "put_many already-exists");
    assert_eq!(count(s, &ns, None).await, 1, "atomic: nothing written");
    assert_eq!(must_get(s, &ns, "taken").await.version, 1);
}

/// `delete_many` removes the live entries and counts them (missing keys count 0).
pub async fn delete_many_removes_and_counts<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    for key in ["a", "b", "c"] {
        put(s, &ns, key, json!(key)).await;
    }
    let n = expect_ok(
        s.delete_many(
            &ns,
            vec![
                BatchDelete::new("a"),
                BatchDelete::if_version("b", 1),
                BatchDelete::new("missing"),
            ],
        )
        .await,
        "delete_many",
    );
    assert_eq!(n, 2, "delete_many counts the live entries it removed");
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new()).await,
        strings(&["c"])
    );
}

/// One failing condition in `delete_many` removes nothing and the `Conflict` names the key.
pub async fn delete_many_is_atomic_on_failed_condition<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    for key in ["a", "b", "c"] {
        put(s, &ns, key, json!(key)).await;
    }
    let err = expect_err(
        s.delete_many(
            &ns,
            vec![
                BatchDelete::new("a"),
                BatchDelete::if_version("b", 9),
                BatchDelete::new("c"),
            ],
        )
        .await,
        ErrorCode::Conflict,
        "delete_many with a stale IfVersion",
    );
    assert_names_key(&err, "b", "delete_many conflict");
    assert_eq!(err.current_version(), Some(1));
    assert_eq!(count(s, &ns, None).await, 3, "atomic: nothing removed");
}

/// A batch naming a key twice is `InvalidInput` and does nothing.
pub async fn batch_with_duplicate_keys_is_invalid<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "keep", json!(0)).await;
    expect_err(
        s.put_many(
            &ns,
            vec![
                BatchPut::new("x", json!(1)),
                BatchPut::new("y", json!(2)),
                BatchPut::new("x", json!(3)),
            ],
        )
        .await,
        ErrorCode::InvalidInput,
        "put_many with a duplicate key",
    );
    assert!(get(s, &ns, "x").await.is_none(), "nothing written (x)");
    assert!(get(s, &ns, "y").await.is_none(), "nothing written (y)");
    expect_err(
        s.delete_many(
            &ns,
            vec![BatchDelete::new("keep"), BatchDelete::new("keep")],
        )
        .await,
        ErrorCode::InvalidInput,
        "delete_many with a duplicate key",
    );
    assert!(exists(s, &ns, "keep").await, "nothing removed");
}

/// A batch larger than `capabilities().max_batch_size` is `InvalidInput` and writes nothing.
pub async fn batch_over_max_size_is_invalid<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let max = s.capabilities().max_batch_size;
    assert!(
        (1..=MAX_BATCH_SIZE).contains(&max),
        "capabilities().max_batch_size = {max} must be in 1..={MAX_BATCH_SIZE}"
    );
    let items: Vec<BatchPut> = (0..=max)
        .map(|i| BatchPut::new(format!("k{i:05}"), json!(i)))
        .collect();
    expect_err(
        s.put_many(&ns, items).await,
        ErrorCode::InvalidInput,
        &format!("put_many of {} items (max {max})", max + 1),
    );
    assert_eq!(
        count(s, &ns, None).await,
        0,
        "an oversized batch writes nothing"
    );
    let keys: Vec<String> = (0..=max).map(|i| format!("k{i:05}")).collect();
    expect_err(
        s.get_many(&ns, &keys).await,
        ErrorCode::InvalidInput,
        "get_many over the batch size",
    );
    let dels: Vec<BatchDelete> = keys.iter().map(BatchDelete::new).collect();
    expect_err(
        s.delete_many(&ns, dels).await,
        ErrorCode::InvalidInput,
        "delete_many over the batch size",
    );
    let ok: Vec<BatchPut> = (0..max.min(50))
        .map(|i| BatchPut::new(format!("ok{i}"), json!(i)))
        .collect();
    let n = ok.len();
    expect_ok(s.put_many(&ns, ok).await, "put_many within the limit");
    assert_eq!(count(s, &ns, None).await, n as u64);
}

/// Empty batches succeed and do nothing.
pub async fn empty_batches_are_ok<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let got = expect_ok(s.get_many(&ns, &[]).await, "empty get_many");
    assert!(got.is_empty());
    let put = expect_ok(s.put_many(&ns, vec![]).await, "empty put_many");
    assert!(put.is_empty());
    let n = expect_ok(s.delete_many(&ns, vec![]).await, "empty delete_many");
    assert_eq!(n, 0);
    assert_eq!(count(s, &ns, None).await, 0);
}

// ---------------------------------------------------------------------------------------------
// Listing

/// `list` orders keys byte-wise: punctuation, digits, upper before lower case, then non-ASCII.
pub async fn list_orders_keys_bytewise<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let keys = [
        "b", "a", "B", "A", "Z", "z", "0", "9", "10", "1", "%", "_", "*", "?", "'", "\\", "a%",
        "a_", "a b", "ab", "aB", "a-", "a.", "é", "e", "f", "日本", "日", "😀", "~", "ä", "\"q\"",
        "a/b", "a:b", "ﬃ", "\u{7f}",
    ];
    for key in keys {
        put(s, &ns, key, json!(key)).await;
    }
    let expected = sorted_bytewise(&keys);
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new()).await,
        expected,
        "list must be in byte-wise order of the UTF-8 keys (Postgres: COLLATE \"C\")"
    );
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new().reverse(true)).await,
        reversed
    );
}

/// `list` returns whole entries: value, metadata and version.
pub async fn list_entries_carry_values<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put_with(
        s,
        &ns,
        "a",
        json!({"n": 1}),
        PutOptions::new().metadata(meta(json!({"m": "a"}))),
    )
    .await;
    put(s, &ns, "b", json!([1, 2])).await;
    put(s, &ns, "b", json!([3])).await;
    let page = expect_ok(s.list(&ns, &ListOptions::new()).await, "list");
    assert_eq!(page.next_cursor, None, "a complete listing has no cursor");
    let got: Vec<(String, String, Value, Metadata, u64)> = page
        .entries
        .into_iter()
        .map(|e| (e.namespace, e.key, e.value, e.metadata, e.version))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                ns.clone(),
                "a".into(),
                json!({"n": 1}),
                meta(json!({"m": "a"})),
                1
            ),
            (ns.clone(), "b".into(), json!([3]), Metadata::new(), 2),
        ]
    );
}

/// A list prefix is literal: `%`, `_` and `\` are ordinary characters.
pub async fn list_prefix_is_literal<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let keys = [
        "a%b", "axb", "a_b", "a\\b", "a%c", "ab", "a\\\\x", "b%", "a*b", "a?b",
    ];
    for key in keys {
        put(s, &ns, key, json!(1)).await;
    }
    let by_prefix = |p: &str| {
        let mut v: Vec<String> = keys
            .iter()
            .filter(|k| k.starts_with(p))
            .map(|k| (*k).to_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new().prefix("a%")).await,
        strings(&["a%b", "a%c"])
    );
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new().prefix("a_")).await,
        strings(&["a_b"])
    );
    for p in ["a\\", "a*", "a?", "a", "ax", "zz", "a%b"] {
        assert_eq!(
            list_keys(s, &ns, &ListOptions::new().prefix(p)).await,
            by_prefix(p),
            "prefix {p:?} is literal"
        );
    }
}

/// Glob `*` matches any run (including none) and `?` exactly one character.
pub async fn list_glob_star_and_question<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let keys = [
        "user:1",
        "user:10",
        "user:2:profile",
        "users",
        "admin:1",
        "user:",
        "user:é",
    ];
    for key in keys {
        put(s, &ns, key, json!(1)).await;
    }
    let pat = |p: &str| ListOptions::new().pattern(p);
    assert_eq!(
        list_keys(s, &ns, &pat("user:*")).await,
        strings(&["user:", "user:1", "user:10", "user:2:profile", "user:é"])
    );
    assert_eq!(
        list_keys(s, &ns, &pat("user:?")).await,
        strings(&["user:1", "user:é"]),
        "? matches one character, also a multi-byte one"
    );
    assert_eq!(
        list_keys(s, &ns, &pat("user:??")).await,
        strings(&["user:10"])
    );
    assert_eq!(
        list_keys(s, &ns, &pat("*:1")).await,
        strings(&["admin:1", "user:1"])
    );
    assert_eq!(
        list_keys(s, &ns, &pat("*profile")).await,
        strings(&["user:2:profile"])
    );
    assert_eq!(list_keys(s, &ns, &pat("u*s")).await, strings(&["users"]));
    assert_eq!(list_keys(s, &ns, &pat("*")).await, sorted_bytewise(&keys));
    assert_eq!(list_keys(s, &ns, &pat("users")).await, strings(&["users"]));
    assert!(list_keys(s, &ns, &pat("nothing*")).await.is_empty());
}

/// Glob escapes: `\*`, `\?` and `\\` match only the literal character.
pub async fn list_glob_escapes<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    for key in ["a*", "ab", "a?", "a\\", "a\\b", "a*b", "ax"] {
        put(s, &ns, key, json!(1)).await;
    }
    let pat = |p: &str| ListOptions::new().pattern(p);
    assert_eq!(list_keys(s, &ns, &pat(r"a\*")).await, strings(&["a*"]));
    assert_eq!(list_keys(s, &ns, &pat(r"a\?")).await, strings(&["a?"]));
    assert_eq!(list_keys(s, &ns, &pat(r"a\\")).await, strings(&["a\\"]));
    assert_eq!(
        list_keys(s, &ns, &pat(r"a\**")).await,
        strings(&["a*", "a*b"])
    );
    assert_eq!(
        list_keys(s, &ns, &pat(r"a\\*")).await,
        strings(&["a\\", "a\\b"])
    );
    assert_eq!(
        list_keys(s, &ns, &pat("a?")).await,
        strings(&["a*", "a?", "a\\", "ab", "ax"]),
        "unescaped ? matches any one character"
    );
}

/// Every other character in a glob (`[`, `]`, `%`, `_`, `'`) matches itself.
pub async fn list_glob_other_characters_are_literal<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    for key in [
        "[x]", "x", "[y]", "a[b", "a%", "ab", "a_", "a'b", "abc", "axb",
    ] {
        put(s, &ns, key, json!(1)).await;
    }
    let pat = |p: &str| ListOptions::new().pattern(p);
    assert_eq!(
        list_keys(s, &ns, &pat("[x]")).await,
        strings(&["[x]"]),
        "[ is literal"
    );
    assert_eq!(
        list_keys(s, &ns, &pat("*[*")).await,
        strings(&["[x]", "[y]", "a[b"])
    );
    assert_eq!(
        list_keys(s, &ns, &pat("a%")).await,
        strings(&["a%"]),
        "% is literal"
    );
    assert_eq!(
        list_keys(s, &ns, &pat("a_")).await,
        strings(&["a_"]),
        "_ is literal"
    );
    assert_eq!(
        list_keys(s, &ns, &pat("a'*")).await,
        strings(&["a'b"]),
        "' is literal"
    );
    assert_eq!(list_keys(s, &ns, &pat("a_b")).await, Vec::<String>::new());
}

/// Prefix and pattern both apply when both are set.
pub async fn list_prefix_and_pattern_combine<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    for key in [
        "log:2024:a",
        "log:2024:b",
        "log:2025:a",
        "xlog:2024:a",
        "log:a",
    ] {
        put(s, &ns, key, json!(1)).await;
    }
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new().prefix("log:").pattern("*:a")).await,
        strings(&["log:2024:a", "log:2025:a", "log:a"])
    );
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new().pattern("*:a")).await,
        strings(&["log:2024:a", "log:2025:a", "log:a", "xlog:2024:a"])
    );
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new().prefix("log:2024").pattern("*b")).await,
        strings(&["log:2024:b"])
    );
    assert!(
        list_keys(s, &ns, &ListOptions::new().prefix("xlog").pattern("log*"))
            .await
            .is_empty(),
        "both must match"
    );
}

async fn seed_ten<S: StorageDriver + ?Sized>(s: &S, ns: &str) -> Vec<String> {
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    // Written out of order so an insertion-ordered store cannot pass by accident.
    for i in [3, 7, 0, 9, 1, 5, 8, 2, 6, 4] {
        put(s, ns, &keys[i], json!(i)).await;
    }
    keys
}

async fn page_through<S: StorageDriver + ?Sized>(
    s: &S,
    ns: &str,
    base: ListOptions,
    expected_pages: usize,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut opts = base;
    loop {
        let page = expect_ok(s.list(ns, &opts).await, &format!("list {opts:?}"));
        pages.push(page.keys().into_iter().map(str::to_owned).collect());
        assert!(
            pages.len() <= expected_pages,
            "paging did not end after {expected_pages} pages: {pages:?}"
        );
        match page.next_cursor {
            Some(c) => opts.after = Some(c),
            None => return pages,
        }
    }
}

/// Cursor paging with limit 3 over 10 keys: pages of 3, 3, 3, 1, no gaps, no duplicates, and
/// no cursor after the last page.
pub async fn list_cursor_pages_without_gaps<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let keys = seed_ten(s, &ns).await;
    let pages = page_through(s, &ns, ListOptions::new().limit(3), 4).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 3, 1], "page sizes {pages:?}");
    let all: Vec<String> = pages.concat();
    assert_eq!(all, keys, "pages concatenate to every key once, in order");
    let exact = page_through(s, &ns, ListOptions::new().limit(5), 2).await;
    assert_eq!(exact.concat(), keys, "limit 5 over 10 keys");
}

/// `reverse` lists largest key first.
pub async fn list_reverse<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let mut keys = seed_ten(s, &ns).await;
    keys.reverse();
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new().reverse(true)).await,
        keys
    );
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new().reverse(true).limit(2)).await,
        strings(&["k9", "k8"])
    );
    assert_eq!(
        list_keys(
            s,
            &ns,
            &ListOptions::new().reverse(true).after("k5").limit(2)
        )
        .await,
        strings(&["k4", "k3"]),
        "reverse cursor starts strictly before it"
    );
}

/// Reverse listing with a cursor pages backwards without gaps.
pub async fn list_reverse_cursor_pages<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let mut keys = seed_ten(s, &ns).await;
    keys.reverse();
    let pages = page_through(s, &ns, ListOptions::new().reverse(true).limit(4), 3).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![4, 4, 2], "reverse page sizes {pages:?}");
    assert_eq!(pages.concat(), keys);
}

/// `offset` skips entries (after the cursor); past the end it yields nothing.
pub async fn list_offset<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    seed_ten(s, &ns).await;
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new().offset(2).limit(3)).await,
        strings(&["k2", "k3", "k4"])
    );
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new().after("k4").offset(1).limit(2)).await,
        strings(&["k6", "k7"]),
        "offset counts from the cursor"
    );
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new().offset(8)).await,
        strings(&["k8", "k9"])
    );
    assert_eq!(
        list_keys(s, &ns, &ListOptions::new().reverse(true).offset(8)).await,
        strings(&["k1", "k0"])
    );
    let page = expect_ok(
        s.list(&ns, &ListOptions::new().offset(10)).await,
        "offset 10",
    );
    assert!(
        page.entries.is_empty() && page.next_cursor.is_none(),
        "{page:?}"
    );
}

/// `limit(0)` returns no entries.
pub async fn list_limit_zero_is_empty<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    seed_ten(s, &ns).await;
    let page = expect_ok(
        s.list(&ns, &ListOptions::new().limit(0)).await,
        "list limit 0",
    );
    assert!(
        page.entries.is_empty(),
        "limit 0 returns nothing, got {:?}",
        page.keys()
    );
}

/// Listing a namespace never written is empty, not an error.
pub async fn list_missing_namespace_is_empty<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("never");
    let page = expect_ok(
        s.list(&ns, &ListOptions::new()).await,
        "list of a missing namespace",
    );
    assert!(page.entries.is_empty() && page.next_cursor.is_none());
    assert_eq!(count(s, &ns, None).await, 0, "count of a missing namespace");
    assert!(
        query_keys(s, &ns, &Query::new()).await.is_empty(),
        "query of a missing namespace"
    );
}

/// Namespaces do not see each other's keys, even when one name is a prefix of the other.
pub async fn namespaces_are_isolated<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let a = unique("ns");
    let b = format!("{a}.x");
    put(s, &a, "k", json!("a")).await;
    put(s, &b, "k", json!("b")).await;
    put(s, &b, "only-b", json!(1)).await;
    assert_eq!(must_get(s, &a, "k").await.value, json!("a"));
    assert_eq!(must_get(s, &b, "k").await.value, json!("b"));
    assert_eq!(list_keys(s, &a, &ListOptions::new()).await, strings(&["k"]));
    assert_eq!(count(s, &a, None).await, 1);
    assert_eq!(expect_ok(s.clear(&a).await, "clear a"), 1);
    assert_eq!(count(s, &b, None).await, 2, "clearing a leaves a.x alone");
    let dropped = expect_ok(s.drop_namespace(&a, true).await, "drop a");
    assert!(
        dropped,
        "drop of an existing (empty) namespace reports true"
    );
    assert_eq!(count(s, &b, None).await, 2, "dropping a leaves a.x alone");
}

// ---------------------------------------------------------------------------------------------
// Queries

/// Seven documents covering the operator tests: nested objects, arrays, mixed types, a
/// float equal to an integer, `null`, a non-object value.
async fn seed_people<S: StorageDriver + ?Sized>(s: &S) -> String {
    let ns = unique("people");
    let docs = [
        (
            "p1",
            json!({
                "name": "Alice", "age": 30, "tags": ["admin", "dev"],
                "address": {"city": "Paris"}, "active": true
            }),
        ),
        (
            "p2",
            json!({
                "name": "Bob", "age": 25, "tags": ["dev"],
                "address": {"city": "Berlin"}, "active": false
            }),
        ),
        (
            "p3",
            json!({
                "name": "Carol", "age": 35, "tags": [],
                "address": {"city": "Paris"}, "nick": null
            }),
        ),
        ("p4", json!({"name": "Dave", "age": "40", "tags": "devops"})),
        ("p5", json!({"name": "alice", "age": 30.0})),
        ("p6", json!(42)),
        ("p7", json!({"name": ["Alice"], "age": null})),
    ];
    for (k, v) in docs {
        put(s, &ns, k, v).await;
    }
    ns
}

/// `eq`: same type and value; numbers numerically.
pub async fn query_eq<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(s, &ns, Filter::eq("age", 30)).await,
        strings(&["p1", "p5"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::eq("name", "Alice")).await,
        strings(&["p1"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::eq("active", false)).await,
        strings(&["p2"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::eq("nick", Value::Null)).await,
        strings(&["p3"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::eq("tags", json!(["dev"]))).await,
        strings(&["p2"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::eq("address", json!({"city": "Berlin"}))).await,
        strings(&["p2"])
    );
}

/// `ne`: present, same type, different value (a missing field or another type never matches).
pub async fn query_ne<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(s, &ns, Filter::ne("age", 30)).await,
        strings(&["p2", "p3"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::ne("name", "Alice")).await,
        strings(&["p2", "p3", "p4", "p5"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::ne("active", true)).await,
        strings(&["p2"])
    );
}

/// `gt` on numbers.
pub async fn query_gt<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(s, &ns, Filter::gt("age", 30)).await,
        strings(&["p3"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::gt("age", 29.5)).await,
        strings(&["p1", "p3", "p5"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::gt("active", false)).await,
        strings(&["p1"])
    );
}

/// `gte` on numbers.
pub async fn query_gte<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(s, &ns, Filter::gte("age", 30)).await,
        strings(&["p1", "p3", "p5"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::gte("age", 35)).await,
        strings(&["p3"])
    );
}

/// `lt` on numbers.
pub async fn query_lt<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(s, &ns, Filter::lt("age", 30)).await,
        strings(&["p2"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::lt("age", 30.5)).await,
        strings(&["p1", "p2", "p5"])
    );
}

/// `lte` on numbers.
pub async fn query_lte<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(s, &ns, Filter::lte("age", 30)).await,
        strings(&["p1", "p2", "p5"])
    );
    assert!(filter_keys(s, &ns, Filter::lte("age", 24)).await.is_empty());
}

/// `contains` on a string field is a substring test.
pub async fn query_contains_string<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(s, &ns, Filter::contains("name", "li")).await,
        strings(&["p1", "p5"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::contains("name", "%")).await,
        Vec::<String>::new()
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::contains("name", "")).await,
        strings(&["p1", "p2", "p3", "p4", "p5"]),
        "every string contains the empty string"
    );
}

/// `contains` on an array field tests for an equal element.
pub async fn query_contains_array<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(s, &ns, Filter::contains("tags", "admin")).await,
        strings(&["p1"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::contains("tags", "dev")).await,
        strings(&["p1", "p2", "p4"]),
        "array element (p1, p2) or substring of a string field (p4 \"devops\")"
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::contains("name", "Alice")).await,
        strings(&["p1", "p7"]),
        "substring (p1) or element of an array (p7)"
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::contains("tags", "de")).await,
        strings(&["p4"])
    );
}

/// `starts_with` on strings, case-sensitive.
pub async fn query_starts_with<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(s, &ns, Filter::starts_with("name", "Al")).await,
        strings(&["p1"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::starts_with("address.city", "Pa")).await,
        strings(&["p1", "p3"])
    );
    assert!(
        filter_keys(s, &ns, Filter::starts_with("name", "_"))
            .await
            .is_empty(),
        "_ literal"
    );
}

/// `ends_with` on strings.
pub async fn query_ends_with<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(s, &ns, Filter::ends_with("name", "e")).await,
        strings(&["p1", "p4", "p5"])
    );
    assert!(
        filter_keys(s, &ns, Filter::ends_with("name", "%"))
            .await
            .is_empty(),
        "% literal"
    );
}

/// `in`: equal to one of the operands, type by type.
pub async fn query_in<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(
            s,
            &ns,
            Filter::is_in("age", [json!(25), json!(35), json!("40")])
        )
        .await,
        strings(&["p2", "p3", "p4"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::is_in("age", [30.0])).await,
        strings(&["p1", "p5"])
    );
    assert!(
        filter_keys(s, &ns, Filter::is_in("age", Vec::<Value>::new()))
            .await
            .is_empty()
    );
}

/// `exists(true)`: the path is present (a `null` counts as present).
pub async fn query_exists_true<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(s, &ns, Filter::exists("nick", true)).await,
        strings(&["p3"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::exists("age", true)).await,
        strings(&["p1", "p2", "p3", "p4", "p5", "p7"])
    );
}

/// `exists(false)`: the path is absent (also on a non-object document).
pub async fn query_exists_false<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(s, &ns, Filter::exists("age", false)).await,
        strings(&["p6"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::exists("nick", false)).await,
        strings(&["p1", "p2", "p4", "p5", "p6", "p7"])
    );
}

/// Strings order byte-wise (upper case before lower case).
pub async fn query_string_order_is_bytewise<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(s, &ns, Filter::gt("name", "Bob")).await,
        strings(&["p3", "p4", "p5"]),
        "byte-wise: \"alice\" > \"Dave\" > \"Carol\" > \"Bob\""
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::lt("name", "B")).await,
        strings(&["p1"])
    );
    assert_eq!(
        query_keys(
            s,
            &ns,
            &Query::new()
                .filter(Filter::exists("name", true))
                .sort_asc("name")
        )
        .await,
        strings(&["p1", "p2", "p3", "p4", "p5", "p7"]),
        "sort by string is byte-wise (array last)"
    );
}

/// Comparing across types never matches and never errors.
pub async fn query_mixed_types_never_match<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    let none: Vec<String> = Vec::new();
    for f in [
        Filter::gt("name", 5),
        Filter::lt("name", 5),
        Filter::eq("age", "30"),
        Filter::eq("age", 40),
        Filter::gt("age", true),
        Filter::gte("age", "zzz"),
        Filter::gt("address", 1),
        Filter::lt("tags", json!(["z"])),
        Filter::gt("nick", Value::Null),
        Filter::starts_with("age", "3"),
        Filter::contains("age", 3),
        Filter::eq("active", 1),
    ] {
        assert_eq!(
            filter_keys(s, &ns, f.clone()).await,
            none,
            "{f:?} must match nothing"
        );
        assert_eq!(count(s, &ns, Some(&f)).await, 0, "count {f:?}");
    }
    assert_eq!(
        filter_keys(s, &ns, Filter::eq("age", "40")).await,
        strings(&["p4"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::lt("tags", "z")).await,
        strings(&["p4"])
    );
}

/// Numbers compare numerically: `1 == 1.0`, `10 > 2`, negatives and fractions.
pub async fn query_numbers_compare_numerically<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("nums");
    for (k, n) in [
        ("a", json!(1)),
        ("b", json!(1.0)),
        ("c", json!(2)),
        ("d", json!(-0.5)),
        ("e", json!(10)),
        ("f", json!(u64::MAX)),
    ] {
        put(s, &ns, k, json!({"n": n})).await;
    }
    assert_eq!(
        filter_keys(s, &ns, Filter::eq("n", 1)).await,
        strings(&["a", "b"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::eq("n", 1.0)).await,
        strings(&["a", "b"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::gt("n", 1.5)).await,
        strings(&["c", "e", "f"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::lt("n", 1)).await,
        strings(&["d"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::gt("n", 10)).await,
        strings(&["f"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::eq("n", u64::MAX)).await,
        strings(&["f"])
    );
    assert_eq!(
        query_keys(s, &ns, &Query::new().sort_asc("n")).await,
        strings(&["d", "a", "b", "c", "e", "f"]),
        "numeric sort, 1 and 1.0 tie (by key)"
    );
}

/// Dotted paths reach nested fields; numeric segments index arrays.
pub async fn query_nested_path_and_array_index<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(s, &ns, Filter::eq("address.city", "Paris")).await,
        strings(&["p1", "p3"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::eq("tags.0", "dev")).await,
        strings(&["p2"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::eq("tags.1", "dev")).await,
        strings(&["p1"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::eq("name.0", "Alice")).await,
        strings(&["p7"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::exists("tags.0", true)).await,
        strings(&["p1", "p2"])
    );
    assert!(
        filter_keys(s, &ns, Filter::eq("address.city.x", "Paris"))
            .await
            .is_empty()
    );
    let deep = unique("deep");
    put(
        s,
        &deep,
        "d",
        json!({"a": {"b": [{"c": {"d": 7}}, {"10": "x"}]}, "01": "key"}),
    )
    .await;
    assert_eq!(
        filter_keys(s, &deep, Filter::eq("a.b.0.c.d", 7)).await,
        strings(&["d"])
    );
    assert_eq!(
        filter_keys(s, &deep, Filter::eq("a.b.1.10", "x")).await,
        strings(&["d"])
    );
    assert_eq!(
        filter_keys(s, &deep, Filter::eq("01", "key")).await,
        strings(&["d"])
    );
}

/// `and`, `or`, `not` and their empty forms.
pub async fn query_and_or_not<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    let paris = || Filter::eq("address.city", "Paris");
    assert_eq!(
        filter_keys(s, &ns, paris().and(Filter::gte("age", 31))).await,
        strings(&["p3"])
    );
    assert_eq!(
        filter_keys(
            s,
            &ns,
            Filter::eq("name", "Bob").or(Filter::eq("name", "Dave"))
        )
        .await,
        strings(&["p2", "p4"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::not(paris())).await,
        strings(&["p2", "p4", "p5", "p6", "p7"])
    );
    assert_eq!(
        filter_keys(
            s,
            &ns,
            Filter::not(paris()).and(Filter::eq("age", 30).or(Filter::eq("age", 25)))
        )
        .await,
        strings(&["p2", "p5"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::not(Filter::not(paris()))).await,
        strings(&["p1", "p3"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::And(vec![])).await.len(),
        7,
        "and([]) is true"
    );
    assert!(
        filter_keys(s, &ns, Filter::Or(vec![])).await.is_empty(),
        "or([]) is false"
    );
}

/// `not(eq)` matches documents where the field is missing; `ne` does not.
pub async fn query_not_eq_matches_missing<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(
        filter_keys(s, &ns, Filter::not(Filter::eq("active", true))).await,
        strings(&["p2", "p3", "p4", "p5", "p6", "p7"])
    );
    assert_eq!(
        filter_keys(s, &ns, Filter::ne("active", true)).await,
        strings(&["p2"])
    );
}

/// Sort ascending and descending by a field; ties by key ascending in both directions; several
/// sort keys in priority order.
pub async fn query_sort_by_field_with_key_tie_break<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("sort");
    for (k, age, city) in [
        ("c", 30, "x"),
        ("a", 30, "y"),
        ("d", 25, "x"),
        ("b", 20, "y"),
        ("e", 25, "y"),
    ] {
        put(s, &ns, k, json!({"age": age, "city": city})).await;
    }
    assert_eq!(
        query_keys(s, &ns, &Query::new().sort_asc("age")).await,
        strings(&["b", "d", "e", "a", "c"])
    );
    assert_eq!(
        query_keys(s, &ns, &Query::new().sort_desc("age")).await,
        strings(&["a", "c", "d", "e", "b"]),
        "descending: ties still by key ascending"
    );
    assert_eq!(
        query_keys(s, &ns, &Query::new().sort_asc("city").sort_desc("age")).await,
        strings(&["c", "d", "a", "e", "b"])
    );
    assert_eq!(
        query_keys(
            s,
            &ns,
            &Query::new()
                .filter(Filter::eq("city", "y"))
                .sort_desc("age")
                .limit(2)
        )
        .await,
        strings(&["a", "e"])
    );
}

/// Sorting across types: missing < null < bool < number < string < array < object.
pub async fn query_sort_across_types<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("sort");
    let docs = [
        ("t01", json!({"v": {"o": 1}})),
        ("t02", json!({"v": "b"})),
        ("t03", json!({})),
        ("t04", json!({"v": [1]})),
        ("t05", json!({"v": 2.5})),
        ("t06", json!({"v": null})),
        ("t07", json!({"v": true})),
        ("t08", json!({"v": "a"})),
        ("t09", json!({"v": -1})),
        ("t10", json!({"v": false})),
        ("t11", json!({"v": {"a": 0}})),
        ("t12", json!({"x": 1})),
        ("t13", json!(5)),
    ];
    for (k, v) in docs {
        put(s, &ns, k, v).await;
    }
    assert_eq!(
        query_keys(s, &ns, &Query::new().sort_asc("v")).await,
        strings(&[
            "t03", "t12", "t13", "t06", "t10", "t07", "t09", "t05", "t08", "t02", "t04", "t01",
            "t11"
        ]),
        "ascending: missing, null, false, true, -1, 2.5, \"a\", \"b\", array, objects \
         (ties by key)"
    );
    assert_eq!(
        query_keys(s, &ns, &Query::new().sort_desc("v")).await,
        strings(&[
            "t01", "t11", "t04", "t02", "t08", "t05", "t09", "t07", "t10", "t06", "t03", "t12",
            "t13"
        ]),
        "descending reverses the type order, ties still by key ascending"
    );
}

/// `limit` and `offset` apply after filtering and sorting.
pub async fn query_limit_offset<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("page");
    for i in 0..10 {
        put(s, &ns, &format!("q{}", 9 - i), json!({"n": i})).await;
    }
    assert_eq!(
        query_keys(s, &ns, &Query::new().sort_asc("n").offset(3).limit(4)).await,
        strings(&["q6", "q5", "q4", "q3"])
    );
    assert_eq!(
        query_keys(s, &ns, &Query::new().offset(2).limit(3)).await,
        strings(&["q2", "q3", "q4"]),
        "without sort: key order"
    );
    assert_eq!(
        query_keys(
            s,
            &ns,
            &Query::new()
                .filter(Filter::gte("n", 5))
                .sort_desc("n")
                .offset(1)
                .limit(2)
        )
        .await,
        strings(&["q1", "q2"])
    );
    assert!(
        query_keys(s, &ns, &Query::new().offset(10))
            .await
            .is_empty()
    );
    assert!(query_keys(s, &ns, &Query::new().limit(0)).await.is_empty());
}

/// A query without filter or sort returns every live entry in key order, with values.
pub async fn query_without_filter_returns_all_in_key_order<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("all");
    for k in ["b", "C", "a", "é"] {
        put(s, &ns, k, json!({"k": k})).await;
    }
    let entries = expect_ok(s.query(&ns, &Query::new()).await, "query all");
    let got: Vec<(String, Value)> = entries.into_iter().map(|e| (e.key, e.value)).collect();
    let expected: Vec<(String, Value)> = sorted_bytewise(&["b", "C", "a", "é"])
        .into_iter()
        .map(|k| {
            let v = json!({"k": k});
            (k, v)
        })
        .collect();
    assert_eq!(got, expected);
}

/// `count` without a filter counts every live entry; with one, the matching ones.
pub async fn count_with_and_without_filter<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = seed_people(s).await;
    assert_eq!(count(s, &ns, None).await, 7);
    assert_eq!(
        count(s, &ns, Some(&Filter::eq("address.city", "Paris"))).await,
        2
    );
    assert_eq!(count(s, &ns, Some(&Filter::Or(vec![]))).await, 0);
    expect_ok(s.delete(&ns, "p1", DeleteCondition::Always).await, "delete");
    assert_eq!(count(s, &ns, None).await, 6, "count after a delete");
    assert_eq!(
        count(s, &unique("never"), None).await,
        0,
        "missing namespace"
    );
}

// ---------------------------------------------------------------------------------------------
// Namespaces

/// `clear` removes every entry, returns how many, and keeps the namespace.
pub async fn clear_returns_count_and_keeps_namespace<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    for k in ["a", "b", "c"] {
        put(s, &ns, k, json!(k)).await;
    }
    put(s, &ns, "a", json!("again")).await;
    assert_eq!(
        expect_ok(s.clear(&ns).await, "clear"),
        3,
        "clear counts live entries"
    );
    assert_eq!(count(s, &ns, None).await, 0);
    assert!(get(s, &ns, "a").await.is_none());
    assert!(
        namespace_names(s).await.contains(&ns),
        "clear keeps the namespace"
    );
    assert_eq!(expect_ok(s.clear(&ns).await, "second clear"), 0);
    assert_eq!(
        put(s, &ns, "a", json!(1)).await.version,
        1,
        "a cleared key starts anew"
    );
}

/// `create_namespace` stores metadata that `list_namespaces` shows; the namespace is empty.
pub async fn create_namespace_with_metadata_is_listed<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    let m = meta(json!({"team": "core", "retention": {"days": 30}}));
    let before = SystemTime::now();
    let info = expect_ok(s.create_namespace(&ns, m.clone()).await, "create_namespace");
    let after = SystemTime::now();
    assert_eq!(info.name, ns);
    assert_eq!(info.metadata, m);
    assert_time_between(info.created_at, before, after, "namespace created_at");
    let infos = expect_ok(s.list_namespaces().await, "list_namespaces");
    let Some(listed) = infos.iter().find(|i| i.name == ns) else {
        panic!("list_namespaces does not show the created namespace {ns}");
    };
    assert_eq!(listed.metadata, m, "listed metadata");
    let names: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "list_namespaces is by name");
    assert_eq!(count(s, &ns, None).await, 0, "a created namespace is empty");
    put(s, &ns, "k", json!(1)).await;
    let infos = expect_ok(s.list_namespaces().await, "list_namespaces");
    let again = infos
        .iter()
        .find(|i| i.name == ns)
        .map(|i| i.metadata.clone());
    assert_eq!(
        again,
        Some(m),
        "writing into it keeps the namespace metadata"
    );
}

/// Creating an existing namespace (explicitly or by a write) is `AlreadyExists`.
pub async fn create_namespace_twice_already_exists<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    expect_ok(
        s.create_namespace(&ns, meta(json!({"v": 1}))).await,
        "create",
    );
    let err = expect_err(
        s.create_namespace(&ns, meta(json!({"v": 2}))).await,
        ErrorCode::AlreadyExists,
        "second create_namespace",
    );
    assert!(
        err.context_value("namespace").is_some(),
        "the error names the namespace: {err}"
    );
    let infos = expect_ok(s.list_namespaces().await, "list_namespaces");
    let m = infos
        .iter()
        .find(|i| i.name == ns)
        .map(|i| i.metadata.clone());
    assert_eq!(
        m,
        Some(meta(json!({"v": 1}))),
        "the failed create changed nothing"
    );
    let implicit = unique("ns");
    put(s, &implicit, "k", json!(1)).await;
    expect_err(
        s.create_namespace(&implicit, Metadata::new()).await,
        ErrorCode::AlreadyExists,
        "create_namespace of a namespace created by a write",
    );
}

/// Writing into a namespace that does not exist creates it (empty metadata).
pub async fn write_creates_namespace<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    assert!(!namespace_names(s).await.contains(&ns));
    let before = SystemTime::now();
    put(s, &ns, "k", json!(1)).await;
    let after = SystemTime::now();
    let infos = expect_ok(s.list_namespaces().await, "list_namespaces");
    let Some(info) = infos.iter().find(|i| i.name == ns) else {
        panic!("a write into {ns} must create the namespace");
    };
    assert!(
        info.metadata.is_empty(),
        "implicit namespace has empty metadata"
    );
    assert_time_between(
        info.created_at,
        before,
        after,
        "implicit namespace created_at",
    );
    let batch = unique("ns");
    expect_ok(
        s.put_many(&batch, vec![BatchPut::new("k", json!(1))]).await,
        "put_many",
    );
    assert!(
        namespace_names(s).await.contains(&batch),
        "put_many creates the namespace"
    );
}

/// Dropping a non-empty namespace without `recursive` is `Conflict` and removes nothing.
pub async fn drop_non_empty_namespace_requires_recursive<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "a", json!(1)).await;
    put(s, &ns, "b", json!(2)).await;
    let err = expect_err(
        s.drop_namespace(&ns, false).await,
        ErrorCode::Conflict,
        "drop_namespace of a non-empty namespace without recursive",
    );
    assert!(
        err.context_value("namespace").is_some(),
        "the error names the namespace: {err}"
    );
    assert_eq!(count(s, &ns, None).await, 2, "nothing removed");
    assert!(
        namespace_names(s).await.contains(&ns),
        "namespace still there"
    );
    assert_eq!(must_get(s, &ns, "a").await.value, json!(1));
}

/// Dropping recursively removes the namespace and every entry; it can be written anew.
pub async fn drop_namespace_recursive_removes_entries<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    expect_ok(
        s.create_namespace(&ns, meta(json!({"m": 1}))).await,
        "create",
    );
    for k in ["a", "b", "c"] {
        put(s, &ns, k, json!(k)).await;
    }
    assert!(
        expect_ok(s.drop_namespace(&ns, true).await, "recursive drop"),
        "true"
    );
    assert!(
        !namespace_names(s).await.contains(&ns),
        "dropped namespace not listed"
    );
    assert!(get(s, &ns, "a").await.is_none(), "entries gone");
    assert_eq!(count(s, &ns, None).await, 0);
    let e = put(s, &ns, "a", json!(1)).await;
    assert_eq!(e.version, 1, "a key in a re-created namespace starts anew");
    let infos = expect_ok(s.list_namespaces().await, "list_namespaces");
    let m = infos
        .iter()
        .find(|i| i.name == ns)
        .map(|i| i.metadata.clone());
    assert_eq!(
        m,
        Some(Metadata::new()),
        "the old namespace metadata went with the drop"
    );
}

/// An empty namespace (created, or emptied by deletes) drops without `recursive`.
pub async fn drop_empty_namespace<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    expect_ok(s.create_namespace(&ns, Metadata::new()).await, "create");
    assert!(
        expect_ok(s.drop_namespace(&ns, false).await, "drop empty"),
        "true"
    );
    assert!(!namespace_names(s).await.contains(&ns));
    let emptied = unique("ns");
    put(s, &emptied, "k", json!(1)).await;
    expect_ok(
        s.delete(&emptied, "k", DeleteCondition::Always).await,
        "delete",
    );
    assert!(
        expect_ok(
            s.drop_namespace(&emptied, false).await,
            "drop emptied namespace"
        ),
        "a namespace whose entries were deleted is empty"
    );
}

/// Dropping a namespace that does not exist reports `false`.
pub async fn drop_missing_namespace_is_false<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("never");
    assert!(
        !expect_ok(s.drop_namespace(&ns, false).await, "drop missing"),
        "false"
    );
    assert!(
        !expect_ok(s.drop_namespace(&ns, true).await, "drop missing recursive"),
        "false"
    );
    put(s, &ns, "k", json!(1)).await;
    assert!(expect_ok(s.drop_namespace(&ns, true).await, "drop"), "true");
    assert!(
        !expect_ok(s.drop_namespace(&ns, true).await, "drop again"),
        "second drop: false"
    );
}

// ---------------------------------------------------------------------------------------------
// Metadata

/// `get_metadata` returns the entry's metadata, or `None` when there is no entry.
pub async fn get_metadata_returns_metadata<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let m = meta(json!({"a": 1, "b": [true]}));
    put_with(s, &ns, "k", json!(1), PutOptions::new().metadata(m.clone())).await;
    put(s, &ns, "plain", json!(1)).await;
    let got = expect_ok(s.get_metadata(&ns, "k").await, "get_metadata");
    assert_eq!(got, Some(m));
    let got = expect_ok(
        s.get_metadata(&ns, "plain").await,
        "get_metadata without metadata",
    );
    assert_eq!(got, Some(Metadata::new()));
    let got = expect_ok(
        s.get_metadata(&ns, "absent").await,
        "get_metadata of a missing key",
    );
    assert_eq!(got, None);
}

/// `set_metadata(Replace)` replaces the whole object.
pub async fn set_metadata_replace<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put_with(
        s,
        &ns,
        "k",
        json!("v"),
        PutOptions::new().metadata(meta(json!({"a": 1, "b": 2}))),
    )
    .await;
    let e = expect_ok(
        s.set_metadata(&ns, "k", meta(json!({"c": 3})), MetadataMode::Replace)
            .await,
        "set_metadata replace",
    );
    assert_eq!(e.metadata, meta(json!({"c": 3})));
    assert_eq!(must_get(s, &ns, "k").await.metadata, meta(json!({"c": 3})));
}

/// `set_metadata(Merge)` overwrites and adds top-level members; a `null` member removes one.
pub async fn set_metadata_merge<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put_with(
        s,
        &ns,
        "k",
        json!("v"),
        PutOptions::new().metadata(meta(json!({"a": 1, "b": 2, "c": 3, "o": {"x": 1}}))),
    )
    .await;
    let e = expect_ok(
        s.set_metadata(
            &ns,
            "k",
            meta(json!({"b": 20, "c": null, "d": 4, "o": {"y": 2}})),
            MetadataMode::Merge,
        )
        .await,
        "set_metadata merge",
    );
    let expected = meta(json!({"a": 1, "b": 20, "d": 4, "o": {"y": 2}}));
    assert_eq!(e.metadata, expected, "merge is top-level; null removes");
    assert_eq!(must_get(s, &ns, "k").await.metadata, expected);
}

/// `set_metadata` is a write: the version goes up; value, created_at and TTL stay.
pub async fn set_metadata_bumps_version_keeps_value<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    let options = if ttl_supported(s, &ns).await {
        PutOptions::new().ttl(Duration::from_secs(60))
    } else {
        PutOptions::new()
    };
    let before = put_with(s, &ns, "k", json!({"v": 1}), options).await;
    let e = expect_ok(
        s.set_metadata(&ns, "k", meta(json!({"m": 1})), MetadataMode::Replace)
            .await,
        "set_metadata",
    );
    assert_eq!(e.version, 2, "set_metadata bumps the version");
    assert_eq!(e.value, json!({"v": 1}), "set_metadata keeps the value");
    let got = must_get(s, &ns, "k").await;
    assert_eq!((got.version, got.value.clone()), (2, json!({"v": 1})));
    let ms = Duration::from_millis(1);
    assert_time_close(got.created_at, before.created_at, ms, "created_at kept");
    assert!(
        got.updated_at >= before.updated_at,
        "updated_at does not go back"
    );
    match (before.expires_at, got.expires_at) {
        (None, None) => {}
        (Some(a), Some(b)) => assert_time_close(a, b, ms, "set_metadata keeps the TTL"),
        (a, b) => panic!("set_metadata changed expires_at from {a:?} to {b:?}"),
    }
    let e = expect_ok(
        s.set_metadata(&ns, "k", meta(json!({"n": 2})), MetadataMode::Merge)
            .await,
        "set_metadata merge",
    );
    assert_eq!(e.version, 3);
}

/// `set_metadata` on a missing key is `NotFound` naming the key, and creates nothing.
pub async fn set_metadata_missing_is_not_found<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "other", json!(1)).await;
    for mode in [MetadataMode::Replace, MetadataMode::Merge] {
        let err = expect_err(
            s.set_metadata(&ns, "k", meta(json!({"a": 1})), mode).await,
            ErrorCode::NotFound,
            &format!("set_metadata {mode:?} on a missing key"),
        );
        assert_names_key(&err, "k", "set_metadata NotFound");
    }
    assert!(
        get(s, &ns, "k").await.is_none(),
        "set_metadata creates nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Transactions

async fn tx_put(tx: &mut Box<dyn Transaction>, ns: &str, key: &str, value: Value) -> Entry {
    let what = format!("tx put {ns}/{key:?}");
    expect_ok(
        within(
            STEP_TIMEOUT,
            &what,
            tx.put(ns, key, value, PutOptions::new()),
        )
        .await,
        &what,
    )
}

async fn tx_get(tx: &mut Box<dyn Transaction>, ns: &str, key: &str) -> Option<Entry> {
    let what = format!("tx get {ns}/{key:?}");
    expect_ok(within(STEP_TIMEOUT, &what, tx.get(ns, key)).await, &what)
}

/// A commit applies every staged put and delete; nothing shows before it.
pub async fn tx_commit_applies_all<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "b", json!("old")).await;
    put(s, &ns, "c", json!("doomed")).await;
    let Some(mut tx) = begin(s).await else { return };
    let a = tx_put(&mut tx, &ns, "a", json!("new")).await;
    assert_eq!(a.version, 1, "staged create: version 1");
    let b = tx_put(&mut tx, &ns, "b", json!("updated")).await;
    assert_eq!(b.version, 2, "staged update: version 2");
    let removed = expect_ok(
        tx.delete(&ns, "c", DeleteCondition::Always).await,
        "tx delete",
    );
    assert!(removed, "tx delete of a live key reports true");
    assert!(
        get(s, &ns, "a").await.is_none(),
        "uncommitted create invisible outside"
    );
    assert_eq!(
        must_get(s, &ns, "b").await.value,
        json!("old"),
        "uncommitted update invisible"
    );
    assert!(exists(s, &ns, "c").await, "uncommitted delete invisible");
    expect_ok(within(STEP_TIMEOUT, "commit", tx.commit()).await, "commit");
    let a = must_get(s, &ns, "a").await;
    assert_eq!((a.value, a.version), (json!("new"), 1));
    let b = must_get(s, &ns, "b").await;
    assert_eq!((b.value, b.version), (json!("updated"), 2));
    assert!(get(s, &ns, "c").await.is_none(), "committed delete");
}

/// A rollback discards every staged write.
pub async fn tx_rollback_applies_nothing<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "b", json!("old")).await;
    let Some(mut tx) = begin(s).await else { return };
    tx_put(&mut tx, &ns, "a", json!(1)).await;
    tx_put(&mut tx, &ns, "b", json!(2)).await;
    expect_ok(
        tx.delete(&ns, "b", DeleteCondition::Always).await,
        "tx delete",
    );
    expect_ok(
        within(STEP_TIMEOUT, "rollback", tx.rollback()).await,
        "rollback",
    );
    assert!(get(s, &ns, "a").await.is_none(), "rolled-back create");
    let b = must_get(s, &ns, "b").await;
    assert_eq!(
        (b.value, b.version),
        (json!("old"), 1),
        "rolled-back update and delete"
    );
}

/// Dropping a transaction without commit rolls it back and blocks nobody afterwards.
pub async fn tx_drop_rolls_back<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "b", json!("old")).await;
    let Some(mut tx) = begin(s).await else { return };
    tx_get(&mut tx, &ns, "b").await;
    tx_put(&mut tx, &ns, "a", json!(1)).await;
    tx_put(&mut tx, &ns, "b", json!(2)).await;
    drop(tx);
    assert!(
        get(s, &ns, "a").await.is_none(),
        "dropped tx: create discarded"
    );
    assert_eq!(
        must_get(s, &ns, "b").await.value,
        json!("old"),
        "dropped tx: update discarded"
    );
    let e = expect_ok(
        within(
            STEP_TIMEOUT,
            "put after a dropped transaction",
            s.put(&ns, "b", json!(3), PutOptions::new().if_version(1)),
        )
        .await,
        "put after a dropped transaction (it must not hold locks)",
    );
    assert_eq!(e.version, 2);
}

/// Reads inside a transaction see its own staged writes; outside nothing shows until commit.
pub async fn tx_reads_own_writes<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "b", json!(1)).await;
    put(s, &ns, "c", json!(1)).await;
    let Some(mut tx) = begin(s).await else { return };
    assert!(
        tx_get(&mut tx, &ns, "a").await.is_none(),
        "tx sees a as absent"
    );
    assert_eq!(
        tx_get(&mut tx, &ns, "b").await.map(|e| e.value),
        Some(json!(1))
    );
    tx_put(&mut tx, &ns, "a", json!("mine")).await;
    let a = tx_get(&mut tx, &ns, "a").await;
    assert_eq!(
        a.map(|e| (e.value, e.version)),
        Some((json!("mine"), 1)),
        "own create"
    );
    tx_put(&mut tx, &ns, "b", json!(2)).await;
    let b = tx_get(&mut tx, &ns, "b").await;
    assert_eq!(
        b.map(|e| (e.value, e.version)),
        Some((json!(2), 2)),
        "own update"
    );
    expect_ok(
        tx.delete(&ns, "c", DeleteCondition::Always).await,
        "tx delete",
    );
    assert!(tx_get(&mut tx, &ns, "c").await.is_none(), "own delete");
    assert!(get(s, &ns, "a").await.is_none(), "outside: no create yet");
    assert!(exists(s, &ns, "c").await, "outside: no delete yet");
    expect_ok(within(STEP_TIMEOUT, "commit", tx.commit()).await, "commit");
    assert_eq!(must_get(s, &ns, "a").await.value, json!("mine"));
    assert!(!exists(s, &ns, "c").await);
}

/// Two transactions read and write the same key: the second commit is a retryable `Conflict`
/// and writes nothing.
pub async fn tx_conflict_between_transactions<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "k", json!(0)).await;
    let Some(mut tx1) = begin(s).await else {
        return;
    };
    let Some(mut tx2) = begin(s).await else {
        return;
    };
    tx_get(&mut tx1, &ns, "k").await;
    tx_get(&mut tx2, &ns, "k").await;
    tx_put(&mut tx1, &ns, "k", json!(1)).await;
    // Writes are staged until commit, so this must not wait for tx1.
    tx_put(&mut tx2, &ns, "k", json!(2)).await;
    tx_put(&mut tx2, &ns, "side", json!("tx2")).await;
    expect_ok(
        within(STEP_TIMEOUT, "commit tx1", tx1.commit()).await,
        "commit tx1",
    );
    let err = expect_err(
        within(STEP_TIMEOUT, "commit tx2", tx2.commit()).await,
        ErrorCode::Conflict,
        "commit of a transaction that lost the race",
    );
    assert!(
        err.is_retryable(),
        "a lost transaction race is retryable: {err}"
    );
    let k = must_get(s, &ns, "k").await;
    assert_eq!(
        (k.value, k.version),
        (json!(1), 2),
        "the winner's write stands"
    );
    assert!(
        get(s, &ns, "side").await.is_none(),
        "nothing of the loser is applied"
    );
}

/// A write outside the transaction to a key it read makes its commit a retryable `Conflict`.
pub async fn tx_conflict_with_outside_write<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "k", json!(0)).await;
    let Some(mut tx) = begin(s).await else { return };
    tx_get(&mut tx, &ns, "k").await;
    put(s, &ns, "k", json!("outside")).await;
    tx_put(&mut tx, &ns, "k", json!("tx")).await;
    tx_put(&mut tx, &ns, "side", json!("tx")).await;
    let err = expect_err(
        within(STEP_TIMEOUT, "commit", tx.commit()).await,
        ErrorCode::Conflict,
        "commit after an outside write to a key the transaction read",
    );
    assert!(
        err.is_retryable(),
        "a lost transaction race is retryable: {err}"
    );
    let k = must_get(s, &ns, "k").await;
    assert_eq!((k.value, k.version), (json!("outside"), 2));
    assert!(
        get(s, &ns, "side").await.is_none(),
        "nothing of the transaction is applied"
    );
}

/// Conditions inside a transaction are checked against its view.
pub async fn tx_conditions_are_checked<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "k", json!(0)).await;
    let Some(mut tx) = begin(s).await else { return };
    expect_err(
        tx.put(&ns, "k", json!(1), PutOptions::new().if_absent())
            .await,
        ErrorCode::AlreadyExists,
        "tx IfAbsent on an existing key",
    );
    expect_ok(tx.rollback().await, "rollback");
    let Some(mut tx) = begin(s).await else { return };
    let err = expect_err(
        tx.put(&ns, "k", json!(1), PutOptions::new().if_version(7))
            .await,
        ErrorCode::Conflict,
        "tx IfVersion(7) on version 1",
    );
    assert_eq!(err.current_version(), Some(1));
    expect_ok(tx.rollback().await, "rollback");
    let Some(mut tx) = begin(s).await else { return };
    expect_err(
        tx.delete(&ns, "k", DeleteCondition::IfVersion(5)).await,
        ErrorCode::Conflict,
        "tx delete IfVersion(5) on version 1",
    );
    expect_ok(tx.rollback().await, "rollback");
    let Some(mut tx) = begin(s).await else { return };
    expect_ok(
        tx.put(&ns, "n", json!(1), PutOptions::new().if_absent())
            .await,
        "tx create",
    );
    let staged = expect_ok(
        tx.put(&ns, "n", json!(2), PutOptions::new().if_version(1))
            .await,
        "tx IfVersion(1) on its own staged create",
    );
    expect_ok(
        tx.put(&ns, "k", json!(5), PutOptions::new().if_version(1))
            .await,
        "tx CAS",
    );
    expect_ok(within(STEP_TIMEOUT, "commit", tx.commit()).await, "commit");
    let n = must_get(s, &ns, "n").await;
    assert_eq!(
        (n.value, n.version),
        (json!(2), staged.version),
        "as staged"
    );
    assert_eq!(must_get(s, &ns, "k").await.version, 2);
}

/// Transaction operations validate their input like the driver's.
pub async fn tx_validates_input<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let Some(mut tx) = begin(s).await else { return };
    expect_err(
        tx.get("bad ns", "k").await,
        ErrorCode::InvalidInput,
        "tx get bad namespace",
    );
    expect_err(
        tx.put(&ns, "", json!(1), PutOptions::new()).await,
        ErrorCode::InvalidInput,
        "tx put empty key",
    );
    expect_err(
        tx.delete(&ns, "a\0b", DeleteCondition::Always).await,
        ErrorCode::InvalidInput,
        "tx delete key with NUL",
    );
    drop(tx);
    assert_eq!(count(s, &ns, None).await, 0);
}

// ---------------------------------------------------------------------------------------------
// Validation

async fn assert_namespace_rejected<S: StorageDriver + ?Sized>(s: &S, ns: &str, rule: &str) {
    let what = |op: &str| format!("{op} with {rule} namespace {ns:?}");
    let k = strings(&["k"]);
    let err = expect_err(
        s.put(ns, "k", json!(1), PutOptions::new()).await,
        ErrorCode::InvalidInput,
        &what("put"),
    );
    assert!(
        err.context_value("namespace").is_some(),
        "{}: the error must name the namespace: {err}",
        what("put")
    );
    let ii = ErrorCode::InvalidInput;
    expect_err(s.get(ns, "k").await, ii, &what("get"));
    expect_err(s.exists(ns, "k").await, ii, &what("exists"));
    expect_err(
        s.delete(ns, "k", DeleteCondition::Always).await,
        ii,
        &what("delete"),
    );
    expect_err(s.get_many(ns, &k).await, ii, &what("get_many"));
    expect_err(
        s.put_many(ns, vec![BatchPut::new("k", json!(1))]).await,
        ii,
        &what("put_many"),
    );
    expect_err(
        s.delete_many(ns, vec![BatchDelete::new("k")]).await,
        ii,
        &what("delete_many"),
    );
    expect_err(s.list(ns, &ListOptions::new()).await, ii, &what("list"));
    expect_err(s.query(ns, &Query::new()).await, ii, &what("query"));
    expect_err(s.count(ns, None).await, ii, &what("count"));
    expect_err(s.clear(ns).await, ii, &what("clear"));
    expect_err(
        s.create_namespace(ns, Metadata::new()).await,
        ii,
        &what("create_namespace"),
    );
    expect_err(
        s.drop_namespace(ns, true).await,
        ii,
        &what("drop_namespace"),
    );
    expect_err(s.get_metadata(ns, "k").await, ii, &what("get_metadata"));
    expect_err(
        s.set_metadata(ns, "k", Metadata::new(), MetadataMode::Replace)
            .await,
        ii,
        &what("set_metadata"),
    );
    assert!(
        !namespace_names(s).await.iter().any(|n| n == ns),
        "a rejected namespace {ns:?} must not be created"
    );
}

async fn assert_key_rejected<S: StorageDriver + ?Sized>(s: &S, key: &str, rule: &str) {
    let ns = unique("ns");
    let what = |op: &str| format!("{op} with {rule} key");
    let err = expect_err(
        s.put(&ns, key, json!(1), PutOptions::new()).await,
        ErrorCode::InvalidInput,
        &what("put"),
    );
    assert!(
        err.context_value("key").is_some(),
        "{}: the error must name the key: {err}",
        what("put")
    );
    let ii = ErrorCode::InvalidInput;
    expect_err(s.get(&ns, key).await, ii, &what("get"));
    expect_err(s.exists(&ns, key).await, ii, &what("exists"));
    expect_err(
        s.delete(&ns, key, DeleteCondition::Always).await,
        ii,
        &what("delete"),
    );
    expect_err(
        s.get_many(&ns, &strings(&["ok", key])).await,
        ii,
        &what("get_many"),
    );
    expect_err(
        s.put_many(
            &ns,
            vec![BatchPut::new("ok", json!(1)), BatchPut::new(key, json!(2))],
        )
        .await,
        ii,
        &what("put_many"),
    );
    expect_err(
        s.delete_many(&ns, vec![BatchDelete::new("ok"), BatchDelete::new(key)])
            .await,
        ii,
        &what("delete_many"),
    );
    expect_err(s.get_metadata(&ns, key).await, ii, &what("get_metadata"));
    expect_err(
        s.set_metadata(&ns, key, Metadata::new(), MetadataMode::Merge)
            .await,
        ii,
        &what("set_metadata"),
    );
    assert_eq!(
        count(s, &ns, None).await,
        0,
        "{}: nothing written",
        what("put_many")
    );
    assert!(
        !namespace_names(s).await.contains(&ns),
        "a rejected write must not create the namespace"
    );
}

/// An empty namespace is `InvalidInput` in every operation.
pub async fn rejects_empty_namespace<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    assert_namespace_rejected(&*store, "", "an empty").await;
}

/// A namespace with a character outside `[A-Za-z0-9_.-]` is `InvalidInput`.
pub async fn rejects_bad_namespace_characters<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    for ns in [
        "has space",
        "slash/ns",
        "colon:ns",
        "ünï",
        "star*",
        "nul\0x",
        "quote'",
        "pct%",
    ] {
        assert_namespace_rejected(&*store, ns, "a bad-character").await;
    }
    put(&*store, &unique("Ok.Name-9_x"), "k", json!(1)).await;
}

/// A namespace longer than 128 bytes is `InvalidInput`; 128 bytes is fine.
pub async fn rejects_long_namespace<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let base = unique("long");
    let long = format!("{base}{}", "x".repeat(129 - base.len()));
    assert_eq!(long.len(), 129);
    assert_namespace_rejected(&*store, &long, "a 129-byte").await;
    let max = &long[..128];
    put(&*store, max, "k", json!(1)).await;
    assert_eq!(must_get(&*store, max, "k").await.namespace, max);
}

/// A namespace starting with `_kernel` is reserved: `InvalidInput`.
pub async fn rejects_reserved_namespace<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    for ns in [
        "_kernel",
        "_kernel_meta",
        "_kernelx",
        &format!("_kernel{}", unique("x")),
    ] {
        assert_namespace_rejected(&*store, ns, "a reserved").await;
    }
    put(&*store, &unique("_kerne"), "k", json!(1)).await;
}

/// An empty key is `InvalidInput` everywhere, and nothing is written.
pub async fn rejects_empty_key<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    assert_key_rejected(&*store, "", "an empty").await;
}

/// A key containing NUL is `InvalidInput` everywhere, and nothing is written.
pub async fn rejects_key_with_nul<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    assert_key_rejected(&*store, "a\0b", "a NUL-containing").await;
    assert_key_rejected(&*store, "\0", "a NUL").await;
}

/// A key over 1024 bytes (counted in bytes, not characters) is `InvalidInput`; 1024 is fine.
pub async fn rejects_long_key<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    assert_key_rejected(&*store, &"k".repeat(1025), "a 1025-byte").await;
    assert_key_rejected(&*store, &"é".repeat(513), "a 1026-byte (513 characters)").await;
    let ns = unique("ns");
    let max = "k".repeat(1024);
    put(&*store, &ns, &max, json!(1)).await;
    assert_eq!(
        list_keys(&*store, &ns, &ListOptions::new()).await,
        vec![max.clone()]
    );
    assert!(exists(&*store, &ns, &max).await);
}

/// A value over `capabilities().max_value_bytes` of JSON is `InvalidInput` and writes nothing;
/// one exactly at the limit is stored.
pub async fn rejects_oversized_value<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let max = s.capabilities().max_value_bytes;
    // A JSON string is its characters plus two quotes.
    let too_big = Value::String("x".repeat(max - 1));
    expect_err(
        s.put(&ns, "big", too_big.clone(), PutOptions::new()).await,
        ErrorCode::InvalidInput,
        &format!("put of a {}-byte value (limit {max})", max + 1),
    );
    expect_err(
        s.put_many(
            &ns,
            vec![
                BatchPut::new("small", json!(1)),
                BatchPut::new("big", too_big.clone()),
            ],
        )
        .await,
        ErrorCode::InvalidInput,
        "put_many with one oversized value",
    );
    let big_meta = meta(json!({ "m": too_big }));
    expect_err(
        s.put(&ns, "meta", json!(1), PutOptions::new().metadata(big_meta))
            .await,
        ErrorCode::InvalidInput,
        "put with oversized metadata",
    );
    assert_eq!(count(s, &ns, None).await, 0, "nothing written");
    let at_limit = Value::String("x".repeat(max - 2));
    put(s, &ns, "edge", at_limit.clone()).await;
    assert_eq!(
        must_get(s, &ns, "edge").await.value,
        at_limit,
        "a value at the limit is stored"
    );
}

/// A value nested deeper than `capabilities().max_depth` is `InvalidInput`; at the limit it is
/// stored.
pub async fn rejects_too_deep_value<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let depth = s.capabilities().max_depth;
    expect_err(
        s.put(&ns, "deep", nested(depth + 1), PutOptions::new())
            .await,
        ErrorCode::InvalidInput,
        &format!("put of a value {} levels deep (limit {depth})", depth + 1),
    );
    expect_err(
        s.put(&ns, "very-deep", nested(1_000), PutOptions::new())
            .await,
        ErrorCode::InvalidInput,
        "put of a value 1000 levels deep",
    );
    assert_eq!(count(s, &ns, None).await, 0, "nothing written");
    put(s, &ns, "edge", nested(depth)).await;
    assert_eq!(must_get(s, &ns, "edge").await.value, nested(depth));
}

/// A TTL of zero or beyond `validate::MAX_TTL` is `InvalidInput` and writes nothing.
pub async fn rejects_ttl_out_of_range<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    for ttl in [
        std::time::Duration::ZERO,
        kernel_core::validate::MAX_TTL + std::time::Duration::from_secs(1),
    ] {
        expect_err(
            s.put(&ns, "k", json!(1), PutOptions::new().ttl(ttl)).await,
            ErrorCode::InvalidInput,
            &format!("put with TTL {ttl:?}"),
        );
    }
    assert_eq!(count(s, &ns, None).await, 0, "nothing written");
    expect_ok(
        s.put(
            &ns,
            "k",
            json!(1),
            PutOptions::new().ttl(kernel_core::validate::MAX_TTL),
        )
        .await,
        "put with the longest TTL",
    );
}

/// Metadata nested too deep is `InvalidInput` in put and `set_metadata`, and writes nothing.
pub async fn rejects_invalid_metadata<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let depth = s.capabilities().max_depth;
    let deep = meta(json!({ "m": nested(depth) }));
    expect_err(
        s.put(&ns, "k", json!(1), PutOptions::new().metadata(deep.clone()))
            .await,
        ErrorCode::InvalidInput,
        "put with metadata nested too deep",
    );
    assert!(get(s, &ns, "k").await.is_none(), "nothing written");
    put(s, &ns, "k", json!(1)).await;
    expect_err(
        s.set_metadata(&ns, "k", deep, MetadataMode::Replace).await,
        ErrorCode::InvalidInput,
        "set_metadata nested too deep",
    );
    let k = must_get(s, &ns, "k").await;
    assert_eq!(
        (k.version, k.metadata.is_empty()),
        (1, true),
        "set_metadata wrote nothing"
    );
    let ok = meta(json!({ "m": nested(depth - 1) }));
    put_with(
        s,
        &ns,
        "k2",
        json!(1),
        PutOptions::new().metadata(ok.clone()),
    )
    .await;
    assert_eq!(
        must_get(s, &ns, "k2").await.metadata,
        ok,
        "metadata at the limit is stored"
    );
}

/// A glob ending in a lone `\`, a prefix with NUL or an empty cursor is `InvalidInput`.
pub async fn rejects_invalid_glob<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "abc\\", json!(1)).await;
    for p in ["abc\\", "\\", "a*\\"] {
        expect_err(
            s.list(&ns, &ListOptions::new().pattern(p)).await,
            ErrorCode::InvalidInput,
            &format!("list with pattern {p:?}"),
        );
    }
    expect_err(
        s.list(&ns, &ListOptions::new().prefix("a\0")).await,
        ErrorCode::InvalidInput,
        "list with a NUL in the prefix",
    );
    expect_err(
        s.list(&ns, &ListOptions::new().after("")).await,
        ErrorCode::InvalidInput,
        "list with an empty cursor",
    );
}

/// An invalid filter or sort path (empty, empty segment) is `InvalidInput` in query and count.
pub async fn rejects_invalid_filter_path<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "k", json!({"a": 1})).await;
    for path in ["", "a..b", ".a", "a."] {
        let f = Filter::eq(path, 1);
        expect_err(
            s.query(&ns, &Query::new().filter(f.clone())).await,
            ErrorCode::InvalidInput,
            &format!("query with filter path {path:?}"),
        );
        expect_err(
            s.count(&ns, Some(&f)).await,
            ErrorCode::InvalidInput,
            &format!("count with filter path {path:?}"),
        );
        expect_err(
            s.query(&ns, &Query::new().sort_asc(path)).await,
            ErrorCode::InvalidInput,
            &format!("query sorted by path {path:?}"),
        );
    }
    expect_err(
        s.query(
            &ns,
            &Query::new().filter(Filter::eq("a", 1).and(Filter::not(Filter::eq("", 1)))),
        )
        .await,
        ErrorCode::InvalidInput,
        "query with an invalid path nested in and/not",
    );
}

// ---------------------------------------------------------------------------------------------
// Capabilities, status, helpers

/// Capabilities are consistent: limits positive, isolation given exactly with transactions,
/// batches atomic as the contract requires.
pub async fn capabilities_are_sane<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let c = store.capabilities();
    assert!(
        c.max_value_bytes >= 1024,
        "max_value_bytes {} too small",
        c.max_value_bytes
    );
    assert!(c.max_depth >= 2, "max_depth {} too small", c.max_depth);
    assert!(
        (1..=MAX_BATCH_SIZE).contains(&c.max_batch_size),
        "max_batch_size {} must be in 1..={MAX_BATCH_SIZE}",
        c.max_batch_size
    );
    assert_eq!(
        c.transactions,
        c.isolation.is_some(),
        "isolation must be stated exactly when transactions are supported: {c:?}"
    );
    assert!(
        c.atomic_batch,
        "the contract requires atomic batches: {c:?}"
    );
    assert_eq!(store.capabilities(), c, "capabilities are stable");
}

/// `status` is healthy, names its backend and reports plausible counts.
pub async fn status_is_healthy<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "a", json!(1)).await;
    put(s, &ns, "b", json!(2)).await;
    let st = expect_ok(s.status().await, "status");
    assert!(st.healthy, "status.healthy: {st:?}");
    assert!(!st.backend.is_empty(), "status.backend names the backend");
    assert!(
        st.latency < Duration::from_secs(30),
        "status.latency {:?}",
        st.latency
    );
    if let Some(n) = st.namespaces {
        assert!(n >= 1, "status.namespaces = {n} after a write");
    }
    if let Some(n) = st.entries {
        assert!(n >= 2, "status.entries = {n} after two writes");
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    name: String,
    age: u32,
    tags: Vec<String>,
    manager: Option<String>,
}

/// `put_as` / `get_as` round-trip a serde type.
pub async fn typed_helpers_round_trip<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let alice = User {
        name: "Alice".into(),
        age: 30,
        tags: vec!["admin".into()],
        manager: None,
    };
    let e = expect_ok(
        s.put_as(&ns, "alice", &alice, PutOptions::new()).await,
        "put_as",
    );
    assert_eq!(e.version, 1);
    assert_eq!(
        e.value,
        json!({"name": "Alice", "age": 30, "tags": ["admin"], "manager": null})
    );
    let got: Option<User> = expect_ok(s.get_as(&ns, "alice").await, "get_as");
    assert_eq!(got, Some(alice));
    let missing: Option<User> = expect_ok(s.get_as(&ns, "bob").await, "get_as missing");
    assert_eq!(missing, None);
    let keys = expect_ok(s.list_keys(&ns, &ListOptions::new()).await, "list_keys");
    assert_eq!(keys, strings(&["alice"]));
}

/// `get_as` of a value that does not fit the type is `InvalidInput` naming the key.
pub async fn typed_get_of_wrong_shape_is_invalid_input<S: StorageDriver + ?Sized + 'static>(
    store: Arc<S>,
) {
    let s = &*store;
    let ns = unique("ns");
    put(s, &ns, "k", json!({"name": 5})).await;
    let err = expect_err(
        s.get_as::<User>(&ns, "k").await,
        ErrorCode::InvalidInput,
        "get_as::<User> of {\"name\": 5}",
    );
    assert_names_key(&err, "k", "get_as");
    expect_err(
        s.get_as::<u64>(&ns, "k").await,
        ErrorCode::InvalidInput,
        "get_as::<u64>",
    );
}

/// `StorageExt::update` does read-modify-write with compare-and-set; an error from the closure
/// writes nothing.
pub async fn update_helper_read_modify_write<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let s = &*store;
    let ns = unique("ns");
    let inc = |v: Option<&Value>| -> kernel_core::Result<Value> {
        Ok(json!(v.and_then(Value::as_u64).unwrap_or(0) + 1))
    };
    let e = expect_ok(s.update(&ns, "n", 5, inc).await, "update of a missing key");
    assert_eq!((e.value, e.version), (json!(1), 1));
    let e = expect_ok(s.update(&ns, "n", 5, inc).await, "update");
    assert_eq!((e.value, e.version), (json!(2), 2));
    let err = expect_err(
        s.update(&ns, "n", 5, |_| {
            Err(kernel_core::Error::invalid_input("refused"))
        })
        .await,
        ErrorCode::InvalidInput,
        "update whose closure fails",
    );
    assert_eq!(err.message(), "refused");
    assert_eq!(
        must_get(s, &ns, "n").await.version,
        2,
        "a failed update writes nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Races

/// 8 tasks x 100 compare-and-set increments of one counter end at exactly 800.
pub async fn race_compare_and_set_increments<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let ns = unique("ns");
    put(&*store, &ns, "counter", json!(0)).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            let s = &*store;
            for _ in 0..100 {
                loop {
                    let e = must_get(s, &ns, "counter").await;
                    let Some(n) = e.value.as_u64() else {
                        panic!("task {t}: counter is not a number: {}", e.value)
                    };
                    let opts = PutOptions::new().if_version(e.version);
                    match s.put(&ns, "counter", json!(n + 1), opts).await {
                        Ok(_) => break,
                        Err(err) if err.code() == ErrorCode::Conflict => {
                            assert_eq!(
                                err.current_version().map(|v| v > e.version),
                                Some(true),
                                "task {t}: a CAS conflict must carry a newer version: {err}"
                            );
                        }
                        Err(err) => panic!("task {t}: CAS put failed: {err}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        join(task, "CAS increment task").await;
    }
    let e = must_get(&*store, &ns, "counter").await;
    assert_eq!(
        e.value,
        json!(800),
        "8 x 100 CAS increments: no lost update"
    );
    assert_eq!(e.version, 801, "one version per successful write");
}

/// 16 tasks create the same key with `IfAbsent`: exactly one wins, the rest get `AlreadyExists`.
pub async fn race_if_absent_single_winner<S: StorageDriver + ?Sized + 'static>(store: Arc<S>) {
    let ns = unique("ns");
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let store = store.clone();
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            let r = store
                .put(&ns, "once", json!(t), PutOptions::new().if_absent())
                .await;
            (t, r)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (t, r) = join(task, "IfAbsent task").await;
        match r {
            Ok(e) => {
                assert_eq!(e.version, 1);
                winners.push(t);
            }
            Err(e) if e.code() == ErrorCode::AlreadyExists => {}
            Err(e) => panic!("task {t}: IfAbsent lost with `{e}`, expected AlreadyExists"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one IfAbsent wins, got winners {winners:?}"
    );
    let e = must_get(&*store, &ns, "once").await;
    assert_eq!(
        (e.value, e.version),
        (json!(winners[0]), 1),
        "the winner's value stands"
    );
}
