//! Shared helpers for the cross-crate integration tests.

// The README's Rust example, compiled and run as a doc test so the README cannot drift from
// the API.
#[doc = include_str!("../README.md")]
mod readme {}

use std::io::Write;
use std::sync::{Arc, Mutex};

/// Captures everything `tracing` emits on the current thread (DEBUG and up) while it lives.
///
/// Use it from a current-thread runtime (`#[tokio::test]`'s default), so that tasks the code
/// under test spawns run on the capturing thread too.
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Writes to the buffer of the capture running on this thread, or nowhere.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(buffer) = c.borrow().as_ref() {
                buffer
                    .lock()
                    .map_err(|_| std::io::Error::other("log buffer poisoned"))?
                    .extend_from_slice(buf);
            }
            Ok(buf.len())
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Starts capturing what this thread logs (tests run on a current-thread runtime).
    ///
    /// One global subscriber routes each thread's output to its own capture. A subscriber set
    /// per thread with `set_default` is not enough: tracing caches a callsite's interest
    /// globally, so a callsite first hit on a thread without a subscriber could stay silent for
    /// every other test in the binary.
    pub fn start() -> LogCapture {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(|| ThreadWriter)
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .finish();
            // Another global subscriber would only come from this same helper.
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
        let buffer = Arc::new(Mutex::new(Vec::new()));
        CAPTURE.with(|c| *c.borrow_mut() = Some(buffer.clone()));
        LogCapture { buffer }
    }

    /// What was captured so far.
    pub fn text(&self) -> String {
        let bytes = match self.buffer.lock() {
            Ok(b) => b.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        CAPTURE.with(|c| *c.borrow_mut() = None);
    }
}

/// Environment-style variables from pairs.
pub fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The storage behaviours a tenant scope changes by design: inside a tenant a namespace has
/// 128 bytes minus the tenant prefix (`tests/layered_conformance.rs` runs the tenant's version).
pub const TENANT_LEFT_OUT: &[&str] = &["rejects_long_namespace"];

/// The storage suite but [`TENANT_LEFT_OUT`], for a tenant-scoped store, as tests on
/// `Arc<Scope>` (module `storage_concrete`) and `Arc<dyn StorageDriver>` (`storage_dyn_arc`),
/// the way `kernel_testkit::storage_suite!` runs it; `STORAGE_RUN` names the behaviours run.
/// (The suite macro cannot leave one out.) `$factory` is a future of `(store, guard)`; the
/// guard lives until the test ends.
#[macro_export]
macro_rules! storage_suite_in_a_tenant {
    ($factory:expr) => {
        $crate::storage_suite_in_a_tenant!(@tests $factory;
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
            // The factory names items of the invoking module.
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    ::kernel_testkit::run_test(
                        concat!("storage_concrete::", stringify!($name)),
                        async {
                            let (store, guard) = $factory.await;
                            ::kernel_testkit::storage::$name(::std::sync::Arc::new(store)).await;
                            drop(guard);
                        },
                    );
                }
            )*
        }

        mod storage_dyn_arc {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    ::kernel_testkit::run_test(
                        concat!("storage_dyn_arc::", stringify!($name)),
                        async {
                            let (store, guard) = $factory.await;
                            let store: ::std::sync::Arc<dyn ::kernel_core::StorageDriver> =
                                ::std::sync::Arc::new(store);
                            ::kernel_testkit::storage::$name(store).await;
                            drop(guard);
                        },
                    );
                }
            )*
        }
    };
}
