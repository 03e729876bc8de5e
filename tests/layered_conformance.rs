//! The whole conformance suite of every trait, run through layered stores over the in-process
//! and SQLite drivers: layers must be invisible to a caller whose calls succeed.
//!
//! * `standard_stack`: the kernel's default stack (observability, circuit breaker, retry,
//!   timeout) over the in-process driver.
//! * `sqlite_standard_stack`: the same stack over a SQLite file.
//! * `tenant_scope`: that stack under a tenant scope and an access-control layer granting
//!   everything, the way an application serves one tenant.
//! * `tenant_over_memory`: a tenant scope alone over the in-process driver.
//!
//! The two tenant runs pass the whole contract of every trait but one storage behaviour, left
//! out by design and listed in [`LEFT_OUT`]: inside a tenant a namespace has 128 bytes minus the
//! tenant prefix, so the suite's "a 128-byte namespace is accepted" cannot hold (see
//! `layers::tenant`); `a_namespace_in_a_tenant_has_what_the_prefix_leaves` checks the tenant's
//! version of that rule instead, and `the_tenant_runs_cover_the_whole_storage_suite` fails when
//! the suite gains a behaviour these runs do not list.

use std::sync::Arc;
use std::time::Duration;

use driver_memory::MemoryDriver;
use driver_sqlite::{SqliteConfig, SqliteDriver};
use kernel_bootstrap::layers::Layered;
use kernel_bootstrap::layers::access::{AccessControl, Permission, Principal, Resource};
use kernel_bootstrap::layers::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig};
use kernel_bootstrap::layers::observe::Observer;
use kernel_bootstrap::layers::retry::RetryPolicy;
use kernel_bootstrap::layers::tenant::{Tenant, TenantScope};
use kernel_bootstrap::layers::timeout::TimeoutPolicy;
use kernel_core::{ErrorCode, PutOptions, StorageDriver, json};

/// The kernel's default stack over `D`, outermost first, as one concrete type (the shutdown
/// gate left out: it only acts after a shutdown).
type StandardOver<D> =
    Layered<Observer, Layered<CircuitBreaker, Layered<RetryPolicy, Layered<TimeoutPolicy, D>>>>;

/// The default stack over the in-process driver.
type Standard = StandardOver<MemoryDriver>;

fn standard_over<D>(driver: D, backend: &str) -> StandardOver<D> {
    let timed = Layered::new(
        Arc::new(driver),
        TimeoutPolicy::new(Duration::from_secs(20)),
    );
    let retried = Layered::new(Arc::new(timed), RetryPolicy::default());
    let guarded = Layered::new(
        Arc::new(retried),
        CircuitBreaker::new(backend, CircuitBreakerConfig::default()),
    );
    Layered::new(Arc::new(guarded), Observer::new(backend))
}

fn standard() -> Standard {
    standard_over(MemoryDriver::new(), "memory")
}

/// The default stack over a SQLite driver on a fresh file; the guard removes the file's
/// directory after the test.
async fn standard_sqlite() -> (StandardOver<SqliteDriver>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("kernel.db");
    let driver = SqliteDriver::open(SqliteConfig::new(path.to_string_lossy()))
        .await
        .expect("open a fresh SQLite database");
    (standard_over(driver, "sqlite"), dir)
}

const TENANT: &str = "conformance";

fn tenant() -> Tenant {
    match Tenant::new(TENANT) {
        Ok(t) => t,
        Err(e) => panic!("a valid tenant id: {e}"),
    }
}

/// A tenant's view with every permission granted.
type Scoped = AccessControl<TenantScope<Standard>>;

fn scoped() -> Scoped {
    let mut principal = Principal::new("everything");
    for resource in [
        Resource::Namespace,
        Resource::Stream,
        Resource::LockKey,
        Resource::RateLimitKey,
    ] {
        principal = match principal.allow(resource, "*", Permission::ReadWrite) {
            Ok(p) => p,
            Err(e) => panic!("a `*` grant compiles: {e}"),
        };
    }
    AccessControl::new(
        Arc::new(TenantScope::new(Arc::new(standard()), tenant())),
        principal,
    )
}

/// A tenant scope alone over the in-process driver.
fn tenant_only() -> TenantScope<MemoryDriver> {
    TenantScope::new(Arc::new(MemoryDriver::new()), tenant())
}

/// The storage behaviours a tenant scope changes by design (see the module docs).
const LEFT_OUT: &[&str] = &["rejects_long_namespace"];

/// The storage suite but [`LEFT_OUT`], as tests on `Arc<Scope>` (module `storage_concrete`) and
/// `Arc<dyn StorageDriver>` (`storage_dyn_arc`), the way `kernel_testkit::storage_suite!` runs
/// it; `STORAGE_RUN` names the behaviours run. (The suite macro cannot leave one out.)
macro_rules! storage_suite_in_a_tenant {
    ($factory:expr) => {
        storage_suite_in_a_tenant!(@tests $factory;
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
        );
    };
    (@tests $factory:expr; $($name:ident)*) => {
        /// The storage behaviours this module runs.
        pub(crate) const STORAGE_RUN: &[&str] = &[$(stringify!($name)),*];

        mod storage_concrete {
            use super::*;
            $(
                #[test]
                fn $name() {
                    kernel_testkit::run_test(
                        concat!("storage_concrete::", stringify!($name)),
                        async { kernel_testkit::storage::$name(Arc::new($factory)).await },
                    );
                }
            )*
        }

        mod storage_dyn_arc {
            use super::*;
            $(
                #[test]
                fn $name() {
                    kernel_testkit::run_test(
                        concat!("storage_dyn_arc::", stringify!($name)),
                        async {
                            let store: Arc<dyn StorageDriver> = Arc::new($factory);
                            kernel_testkit::storage::$name(store).await
                        },
                    );
                }
            )*
        }
    };
}

mod standard_stack {
    use super::*;

    kernel_testkit::storage_suite!(async { (standard(), ()) });
    kernel_testkit::event_suite!(async { (standard(), ()) });
    kernel_testkit::lock_suite!(async { (standard(), ()) });
    kernel_testkit::rate_limit_suite!(async { (standard(), ()) });
}

mod sqlite_standard_stack {
    use super::*;

    kernel_testkit::storage_suite!(standard_sqlite());
    kernel_testkit::event_suite!(standard_sqlite());
    kernel_testkit::lock_suite!(standard_sqlite());
    kernel_testkit::rate_limit_suite!(standard_sqlite());
}

mod tenant_scope {
    use super::*;

    storage_suite_in_a_tenant!(scoped());
    kernel_testkit::event_suite!(async { (scoped(), ()) });
    kernel_testkit::lock_suite!(async { (scoped(), ()) });
    kernel_testkit::rate_limit_suite!(async { (scoped(), ()) });
}

mod tenant_over_memory {
    use super::*;

    storage_suite_in_a_tenant!(tenant_only());
    kernel_testkit::event_suite!(async { (tenant_only(), ()) });
    kernel_testkit::lock_suite!(async { (tenant_only(), ()) });
    kernel_testkit::rate_limit_suite!(async { (tenant_only(), ()) });
}

#[test]
fn the_tenant_runs_cover_the_whole_storage_suite() {
    let mut suite = kernel_testkit::storage::BEHAVIOURS.to_vec();
    suite.sort_unstable();
    for (run, names) in [
        ("tenant_scope", tenant_scope::STORAGE_RUN),
        ("tenant_over_memory", tenant_over_memory::STORAGE_RUN),
    ] {
        let mut covered: Vec<&str> = names.iter().chain(LEFT_OUT).copied().collect();
        covered.sort_unstable();
        assert_eq!(
            covered, suite,
            "{run}: list every storage behaviour in `storage_suite_in_a_tenant!` or, with a \
             reason, in LEFT_OUT"
        );
    }
}

/// The tenant's version of `rejects_long_namespace`: a namespace has 128 bytes minus the
/// prefix; one byte more is refused before any I/O, naming the operation and the caller's name.
async fn a_namespace_has_what_the_prefix_leaves(store: &dyn StorageDriver) {
    let room = 128 - format!("t_{TENANT}.").len();
    let base = kernel_testkit::unique("long");
    let fits = format!("{base}{}", "x".repeat(room - base.len()));
    let entry = store
        .put(&fits, "k", json!(1), PutOptions::new())
        .await
        .unwrap_or_else(|e| panic!("a {room}-byte namespace fits: {e}"));
    assert_eq!(entry.namespace, fits);
    let found = store
        .get(&fits, "k")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.map(|e| e.namespace), Some(fits.clone()));
    for len in [room + 1, 128, 129] {
        let long = format!("{fits}{}", "y".repeat(len - room));
        let e = store
            .put(&long, "k", json!(1), PutOptions::new())
            .await
            .expect_err("too long inside the tenant");
        assert_eq!(e.code(), ErrorCode::InvalidInput, "{len}: {e}");
        assert_eq!(e.operation(), Some("put"), "{len}: {e}");
        let escaped = kernel_core::validate::escape(&long);
        assert_eq!(
            e.context_value("namespace"),
            Some(escaped.as_str()),
            "{len}"
        );
        // Over 128 bytes the input rules refuse it before the prefix is considered.
        let tenant = (len <= 128).then_some(TENANT);
        assert_eq!(e.context_value("tenant"), tenant, "{len}: {e}");
    }
}

#[tokio::test]
async fn a_namespace_in_a_tenant_has_what_the_prefix_leaves() {
    a_namespace_has_what_the_prefix_leaves(&scoped()).await;
    a_namespace_has_what_the_prefix_leaves(&tenant_only()).await;
}
