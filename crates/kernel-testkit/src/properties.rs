//! Property tests over inputs, shared by every driver: generated names, keys, JSON values,
//! filters, TTLs and batch sizes, each checked against what `kernel_core`'s own rules say.
//!
//! Every property is a `pub fn` generic over one trait, taking the runtime the driver lives on,
//! `Arc<D>` and [`Settings`] (case counts, limits, seed, documented [`Divergences`]). It
//! generates inputs with [proptest](https://docs.rs/proptest), runs each case on the driver
//! (`runtime.block_on`: proptest's runner is synchronous) and checks, for every input:
//!
//! * **no panic** (a panic fails the case, and proptest shrinks it to a minimal input);
//! * **the same verdict as kernel-core**: the driver accepts exactly what the validation function
//!   (`kernel_core::validate`, `Query::validate`, `validate_append`, `validate_ttl`...) accepts,
//!   and refuses the rest with `InvalidInput` carrying the *same message* (which names the rule)
//!   and the same context value for the offending field (`namespace`, `key`, `stream`, `path`,
//!   `event_id`);
//! * **nothing partially written**: after a refusal the data is read back and is what it was;
//! * **exact round trips** of what was accepted.
//!
//! [`property_suite!`](crate::property_suite) turns the whole list into one `#[test]` per
//! property for a driver, the way the conformance suites do:
//!
//! ```text
//! // in a driver crate's tests/properties.rs
//! use kernel_testkit::properties::{LIMITS, Settings};
//! kernel_testkit::property_suite!(Settings::new(64), async {
//!     (MyDriver::with_limits(LIMITS), ())
//! });
//! ```
//!
//! The factory must build the driver with [`Settings::limits`] (the JSON and batch properties
//! read them to predict refusals; the storage properties check `capabilities()` agrees). The
//! default, [`LIMITS`], is small (4 KiB, 8 levels) so generated values land on both sides of
//! the limits without megabyte-sized cases.
//!
//! Runs are reproducible: the seed is fixed ([`DEFAULT_SEED`], or `PROPTEST_RNG_SEED` when set,
//! to explore other inputs), no failure file is ever written (`failure_persistence: None`), and
//! shrinking is bounded.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kernel_core::event::validate_append;
use kernel_core::lock::{MAX_LEASE_TTL, MIN_LEASE_TTL, validate_lease_request, validate_ttl};
use kernel_core::validate::{self, MAX_TTL};
use kernel_core::{
    BatchDelete, BatchPut, DeleteCondition, Entry, Error, ErrorCode, EventStore, ExpectedVersion,
    Filter, Limits, ListOptions, Lock, Metadata, MetadataMode, NewEvent, Op, PutOptions, Query,
    Quota, RateLimiter, ReadStream, Result, StorageDriver,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{
    Config, RngSeed, TestCaseError, TestCaseResult, TestError, TestRunner,
};
use serde_json::{Value, json};
use tokio::runtime::Runtime;

use crate::support::{CLOCK_SLACK, unique, unique_stream};

/// The seed every run uses unless `PROPTEST_RNG_SEED` names another: the same inputs on every
/// machine, so a CI failure reproduces locally.
pub const DEFAULT_SEED: u64 = 0x6b65_726e_656c_0001;

/// The value limits the property drivers are built with: small, so generated values fall on
/// both sides of them (a real deployment keeps the defaults, 1 MiB and 64 levels; the rule and
/// the code path are the same).
pub const LIMITS: Limits = Limits {
    max_value_bytes: 4096,
    max_depth: 8,
};

/// How long one generated case may run before it fails as hung.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a property run uses: how many cases, the limits the driver was built with, the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Cases per property (except the batch properties).
    pub cases: u32,
    /// Cases of the batch properties (`put_many_batches`, `delete_many_batches`,
    /// `append_batches`), whose cases carry up to 1100 items each.
    pub batch_cases: u32,
    /// The limits the driver under test was built with.
    pub limits: Limits,
    /// The RNG seed (overridden by `PROPTEST_RNG_SEED`).
    pub seed: u64,
    /// The documented ways the driver under test serves the contract differently.
    pub divergences: Divergences,
}

/// Documented ways a driver serves the contract differently (docs/postgres.md, "Where
/// PostgreSQL serves the contract differently"): the properties then check the documented
/// behaviour instead of the common one. [`Divergences::default`] is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Divergences {
    /// A JSON value, metadata, payload or snapshot state holding U+0000 in a string or object
    /// key is refused (after kernel-core's rules pass) with `InvalidInput` whose message names
    /// U+0000 and whose context names the key or event.
    pub refuses_nul_in_json: bool,
}

impl Divergences {
    /// PostgreSQL's: JSONB cannot store U+0000.
    pub const POSTGRES: Divergences = Divergences {
        refuses_nul_in_json: true,
    };
}

impl Settings {
    /// `cases` cases per property (batch properties too), [`LIMITS`], [`DEFAULT_SEED`].
    pub const fn new(cases: u32) -> Settings {
        Settings {
            cases,
            batch_cases: cases,
            limits: LIMITS,
            seed: DEFAULT_SEED,
            divergences: Divergences {
                refuses_nul_in_json: false,
            },
        }
    }

    /// Sets the driver's documented divergences.
    #[must_use]
    pub const fn divergences(mut self, divergences: Divergences) -> Settings {
        self.divergences = divergences;
        self
    }

    /// Sets the case count of the batch properties.
    #[must_use]
    pub const fn batch_cases(mut self, cases: u32) -> Settings {
        self.batch_cases = cases;
        self
    }

    /// Sets the limits the driver was built with.
    #[must_use]
    pub const fn limits(mut self, limits: Limits) -> Settings {
        self.limits = limits;
        self
    }
}

/// Every property, in suite order (the one list: [`property_suite!`](crate::property_suite)
/// expands it into tests and [`PROPERTIES`] into names).
#[doc(hidden)]
#[macro_export]
macro_rules! __properties {
    ($callback:ident ! ($($args:tt)*)) => {
        $crate::$callback! { ($($args)*)
            namespace_names
            document_key_names
            stream_names
            lock_key_names
            rate_limit_key_names
            json_documents
            json_events
            filters
            document_ttls
            lease_ttls
            put_many_batches
            delete_many_batches
            append_batches
        }
    };
}

/// The names of every property, in suite order.
pub const PROPERTIES: &[&str] = crate::__properties!(__behaviour_names!());

/// Runs every property on a driver: a module `property_tests` with one `#[test]` per property.
///
/// `$settings` is a [`Settings`]; `$factory` an expression evaluated afresh for every test, a
/// future yielding `(driver, guard)` (the guard — a test database, a key prefix — lives until
/// the test ends, after the driver). The driver must implement all four traits and be built
/// with `$settings.limits`. Each test runs on its own runtime (see [`runtime`]).
#[macro_export]
macro_rules! property_suite {
    ($settings:expr, $factory:expr $(,)?) => {
        mod property_tests {
            #[allow(unused_imports)]
            use super::*;
            $crate::__properties!(__property_tests!({ $settings }, { $factory }));
        }
    };
}

/// One `#[test]` per property name (the body of [`property_suite!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __property_tests {
    (({ $settings:expr }, { $factory:expr }) $($name:ident)*) => {
        $(
            #[test]
            fn $name() {
                let settings: $crate::properties::Settings = $settings;
                let runtime = $crate::properties::runtime(stringify!($name));
                let (driver, guard) = runtime.block_on($factory);
                let driver = ::std::sync::Arc::new(driver);
                $crate::properties::$name(&runtime, ::std::sync::Arc::clone(&driver), &settings);
                // Drivers and guards clean up on the runtime they were made on.
                runtime.block_on(async move {
                    drop(driver);
                    drop(guard);
                });
            }
        )*
    };
}

/// The runtime a property runs on: multi-thread, two workers (the CI machine's cores), all
/// drivers enabled.
///
/// # Panics
///
/// When the runtime cannot be built (the test cannot run at all).
pub fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{name}: cannot build the tokio runtime: {e}"))
}

/// The proptest configuration of a run: `cases` cases, a fixed seed (`seed`, or
/// `PROPTEST_RNG_SEED` when set), no failure persistence, bounded shrinking.
pub fn config(cases: u32, seed: u64) -> Config {
    let base = Config::default();
    let rng_seed = match base.rng_seed {
        RngSeed::Fixed(s) => RngSeed::Fixed(s),
        _ => RngSeed::Fixed(seed),
    };
    Config {
        cases,
        failure_persistence: None,
        rng_seed,
        max_shrink_iters: 256,
        max_shrink_time: 60_000,
        max_global_rejects: cases.saturating_mul(64).max(1024),
        source_file: None,
        ..base
    }
}

/// Runs `check` on `cases` inputs from `strategy` (a fixed seed, see [`config`]), each on
/// `runtime` within [`CASE_TIMEOUT`]; fails the test with the shrunk failing input.
///
/// # Panics
///
/// When a case fails (after shrinking): this is the test's assertion.
pub fn run_cases<S, F, Fut>(
    runtime: &Runtime,
    name: &str,
    cases: u32,
    seed: u64,
    strategy: S,
    check: F,
) where
    S: Strategy,
    S::Value: fmt::Debug,
    F: Fn(S::Value) -> Fut,
    Fut: Future<Output = TestCaseResult>,
{
    let mut runner = TestRunner::new(config(cases, seed));
    let result = runner.run(&strategy, |case| {
        runtime.block_on(async {
            match tokio::time::timeout(CASE_TIMEOUT, check(case)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(TestCaseError::fail(format!(
                    "the case did not finish within {} s (a hang?)",
                    CASE_TIMEOUT.as_secs()
                ))),
            }
        })
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, input)) => {
            panic!("property `{name}` failed: {reason}\nminimal failing input: {input:#?}")
        }
        Err(TestError::Abort(reason)) => panic!("property `{name}` aborted: {reason}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Checking outcomes
// ---------------------------------------------------------------------------------------------

fn fail<T>(message: String) -> Result<T, TestCaseError> {
    Err(TestCaseError::fail(message))
}

/// At most `max` characters of a debug rendering, so a 1000-entry answer stays readable.
fn short(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}... ({} bytes in all)", &text[..i], text.len()),
        None => text,
    }
}

/// The success of a driver call, or a failed case naming the call and the error.
fn ok<T>(result: Result<T>, what: &str) -> Result<T, TestCaseError> {
    result.or_else(|e| fail(format!("{what}: expected success, got `{e}` ({e:?})")))
}

/// Checks a driver refused like kernel-core's validation: `InvalidInput`, the same message (it
/// names the rule), and for each of `fields` that the expected error names, the same value.
fn refused_like<T: fmt::Debug>(
    got: Result<T>,
    expected: &Error,
    fields: &[&str],
    what: &str,
) -> TestCaseResult {
    let e = match got {
        Ok(v) => {
            return fail(format!(
                "{what}: expected the refusal `{expected}`, got success: {}",
                short(format!("{v:?}"), 300)
            ));
        }
        Err(e) => e,
    };
    prop_assert_eq!(
        e.code(),
        ErrorCode::InvalidInput,
        "{}: expected `{}`, got `{}`",
        what,
        expected,
        e
    );
    if expected.message() == NUL_MARK {
        prop_assert!(
            e.message().contains(NUL_MARK),
            "{}: the message must name U+0000 (got `{}`)",
            what,
            e
        );
    } else {
        prop_assert_eq!(
            e.message(),
            expected.message(),
            "{}: the message must name the rule as kernel-core does (got `{}`)",
            what,
            e
        );
    }
    for field in fields {
        if let Some(want) = expected.context_value(field) {
            prop_assert_eq!(
                e.context_value(field),
                Some(want),
                "{}: the error must name the offending {} (got `{}`)",
                what,
                field,
                e
            );
        }
    }
    Ok(())
}

/// Checks a driver call against kernel-core's verdict: both accept (the value is returned), or
/// both refuse alike (see [`refused_like`]; `None` is returned).
fn same_verdict<T: fmt::Debug>(
    got: Result<T>,
    expected: &Result<()>,
    fields: &[&str],
    what: &str,
) -> Result<Option<T>, TestCaseError> {
    match expected {
        Ok(()) => ok(got, what).map(Some),
        Err(e) => refused_like(got, e, fields, what).map(|()| None),
    }
}

/// Whether a JSON value holds U+0000 in a string or an object key.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// kernel-core's verdict on a JSON input; for a driver that refuses U+0000
/// ([`Divergences::refuses_nul_in_json`]), a refusal of what kernel-core accepts but holds it:
/// the expected error then carries the context to compare and the message [`NUL_MARK`], which
/// the driver's message must contain.
fn json_verdict(
    expected: Result<()>,
    values: &[&Value],
    divergences: &Divergences,
    context: &[(&'static str, String)],
) -> Result<()> {
    if expected.is_ok() && divergences.refuses_nul_in_json && values.iter().any(|v| holds_nul(v)) {
        let mut e = Error::invalid_input(NUL_MARK);
        for (name, value) in context {
            e = e.with_context(name, value);
        }
        return Err(e);
    }
    expected
}

/// The message of an expected refusal that only has to mention U+0000.
const NUL_MARK: &str = "U+0000";

/// Checks `t` is `ttl` after a moment in `[before, after]`, give or take [`CLOCK_SLACK`] (the
/// backend's clock and precision).
fn expiry_matches(
    t: SystemTime,
    before: SystemTime,
    after: SystemTime,
    ttl: Duration,
    what: &str,
) -> TestCaseResult {
    let (Some(low), Some(high)) = (before.checked_add(ttl), after.checked_add(ttl)) else {
        return fail(format!(
            "{what}: the TTL {ttl:?} overflows the clock but was accepted"
        ));
    };
    let low = low
        .checked_sub(CLOCK_SLACK)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let high = high + CLOCK_SLACK;
    prop_assert!(
        t >= low && t <= high,
        "{}: expires at {:?}, not now + {:?} (between {:?} and {:?})",
        what,
        t,
        ttl,
        low,
        high
    );
    Ok(())
}

fn close(a: SystemTime, b: SystemTime, tolerance: Duration) -> bool {
    let gap = a
        .duration_since(b)
        .or_else(|_| b.duration_since(a))
        .unwrap_or(Duration::MAX);
    gap <= tolerance
}

/// A glob matching exactly `key`: `*`, `?` and `\` escaped.
fn literal_glob(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 2);
    for c in key.chars() {
        if matches!(c, '*' | '?' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn nested(levels: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..levels {
        v = json!([v]);
    }
    v
}

fn by_bytes(a: &String, b: &String) -> std::cmp::Ordering {
    a.as_bytes().cmp(b.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Characters that break naive code: NUL and other controls, glob and Redis hash-tag
/// characters, separators, quotes, multi-byte and edge-of-Unicode characters.
fn tricky_char() -> BoxedStrategy<char> {
    let special = prop::sample::select(vec![
        '\0',
        '\u{1}',
        '\t',
        '\n',
        '\r',
        ' ',
        '\u{7f}',
        '*',
        '?',
        '[',
        ']',
        '\\',
        '/',
        ':',
        '{',
        '}',
        '%',
        '_',
        '.',
        '-',
        '\'',
        '"',
        'é',
        '€',
        '😀',
        '\u{2028}',
        '\u{feff}',
        '\u{ffff}',
        '\u{10ffff}',
        'A',
        'a',
        'z',
        '0',
        '9',
    ]);
    prop_oneof![3 => special, 1 => any::<char>()].boxed()
}

fn tricky_string(max: usize) -> BoxedStrategy<String> {
    prop::collection::vec(tricky_char(), 0..=max)
        .prop_map(String::from_iter)
        .boxed()
}

/// Names for namespaces, keys, streams, lock and rate-limit keys: anything (control characters,
/// NUL, empty, glob characters, `/`, `:`, `{}`), namespace-shaped and stream-shaped names,
/// reserved prefixes, and lengths around the 128-byte and 1024-byte limits (multi-byte
/// characters at the edge).
pub fn name() -> BoxedStrategy<String> {
    prop_oneof![
        4 => tricky_string(24),
        3 => "[A-Za-z0-9_.-]{1,16}",
        3 => "[a-z_.]{0,6}-{0,2}[a-z0-9.-]{0,6}",
        1 => "_kernel[A-Za-z0-9_.-]{0,4}",
        1 => "_kerne[A-Za-z0-9_.-]{0,4}",
        2 => (120usize..=136, prop::option::of(tricky_char())).prop_map(|(n, c)| {
            let mut s = "n".repeat(n);
            s.extend(c);
            s
        }),
        2 => (1016usize..=1032, prop::collection::vec(tricky_char(), 0..4)).prop_map(|(n, tail)| {
            let tail: String = tail.into_iter().collect();
            format!("{}{tail}", "k".repeat(n.saturating_sub(tail.len())))
        }),
        1 => Just(String::new()),
        1 => Just("\0".to_owned()),
    ]
    .boxed()
}

/// A float as JSON can carry it: every finite `f64`, the edges included (`±f64::MAX`,
/// subnormals, integral floats beyond 2^53). `-0.0` is refused by kernel-core on every driver
/// (the storage suite's `negative_zero_is_refused` checks that), so it is generated as `0.0`.
fn float() -> BoxedStrategy<f64> {
    prop_oneof![
        4 => prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO,
        2 => -1.0e6..1.0e6f64,
        1 => any::<i32>().prop_map(f64::from),
        1 => prop::sample::select(vec![
            0.1, 0.5, 1.0, -1.0, 1e-300, 1e300, -1e300, 5e-324, 1e17, -1e18, 1e19, 1.5e19, 1e20,
            1.7e308, f64::MAX, -f64::MAX, f64::MIN_POSITIVE,
        ]),
    ]
    .prop_map(|x| if x == 0.0 { 0.0 } else { x })
    .boxed()
}

fn json_leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        2 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        2 => float().prop_map(|f| json!(f)),
        3 => tricky_string(16).prop_map(Value::String),
    ]
    .boxed()
}

/// Arbitrary JSON trees: every scalar kind (integers across `i64` and `u64`, floats, unicode
/// strings with controls and NUL), arrays and objects up to 10 levels, chains of nesting up to
/// 12 levels, and large strings around 4 KiB (the size limit of [`LIMITS`]).
pub fn json_value() -> BoxedStrategy<Value> {
    let tree = json_leaf().prop_recursive(10, 96, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(tricky_string(8), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        6 => tree,
        2 => (0usize..=12, json_leaf(), tricky_string(4)).prop_map(|(depth, leaf, key)| {
            let mut v = leaf;
            for level in 0..depth {
                v = if level % 2 == 0 {
                    json!([v])
                } else {
                    let mut m = Metadata::new();
                    m.insert(key.clone(), v);
                    Value::Object(m)
                };
            }
            v
        }),
        1 => (0usize..=5000).prop_map(|n| json!({ "big": "é".repeat(n / 2) })),
    ]
    .boxed()
}

/// Metadata objects: up to four members of [`json_value`].
pub fn metadata() -> BoxedStrategy<Metadata> {
    prop::collection::btree_map(tricky_string(8), json_value(), 0..4)
        .prop_map(|m| m.into_iter().collect())
        .boxed()
}

/// A generated JSON document or event: value (payload), metadata and a snapshot state.
#[derive(Debug, Clone)]
pub struct JsonCase {
    /// The value or payload.
    pub value: Value,
    /// The metadata.
    pub metadata: Metadata,
    /// A snapshot state (events only).
    pub state: Value,
}

fn json_case() -> BoxedStrategy<JsonCase> {
    (json_value(), metadata(), json_value())
        .prop_map(|(value, metadata, state)| JsonCase {
            value,
            metadata,
            state,
        })
        .boxed()
}

/// Field paths of the filter data set, valid and not (empty, empty segments, NUL, 33 segments,
/// a 257-byte segment, array indexes with leading zeros or signs).
fn path() -> BoxedStrategy<String> {
    prop_oneof![
        8 => prop::sample::select(vec![
            "a", "b", "n", "n.c", "n.01", "arr", "arr.0", "arr.1", "arr.01", "arr.-1", "0",
            "0.a", "1", "other", "missing", "a.x", "a.0",
        ])
        .prop_map(str::to_owned),
        2 => "[a-z0-9]{1,3}(\\.[a-z0-9]{1,3}){0,2}",
        1 => prop::sample::select(vec!["", ".", "a..b", ".a", "a.", "a\0b", "\0"])
            .prop_map(str::to_owned),
        1 => (30usize..=34).prop_map(|n| vec!["a"; n].join(".")),
        1 => (255usize..=258).prop_map(|n| "s".repeat(n)),
    ]
    .boxed()
}

fn operand() -> BoxedStrategy<Value> {
    prop::sample::select(vec![
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(1),
        json!(1.0),
        json!(2.5),
        json!(-3),
        json!(10),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(""),
        json!("x"),
        json!("X"),
        json!("1"),
        json!("é"),
        json!("x%"),
        json!([]),
        json!([1]),
        json!({}),
        json!({"x": 1}),
    ])
    .boxed()
}

fn leaf_filter() -> BoxedStrategy<Filter> {
    let text =
        prop::sample::select(vec!["", "x", "X", "é", "%", "a", "1", "x%_"]).prop_map(str::to_owned);
    let op = prop_oneof![
        operand().prop_map(Op::Eq),
        operand().prop_map(Op::Ne),
        operand().prop_map(Op::Gt),
        operand().prop_map(Op::Gte),
        operand().prop_map(Op::Lt),
        operand().prop_map(Op::Lte),
        operand().prop_map(Op::Contains),
        text.clone().prop_map(Op::StartsWith),
        text.prop_map(Op::EndsWith),
        prop_oneof![
            9 => prop::collection::vec(operand(), 0..5),
            1 => prop::collection::vec(operand(), 995..1006),
        ]
        .prop_map(Op::In),
        any::<bool>().prop_map(Op::Exists),
    ];
    (path(), op)
        .prop_map(|(path, op)| Filter::Field { path, op })
        .boxed()
}

/// Filter trees: every operator on valid and invalid paths, `and` / `or` / `not` up to four
/// levels, `in` with up to 1005 values, and conjunctions around the 256-node limit.
pub fn filter() -> BoxedStrategy<Filter> {
    let tree = leaf_filter().prop_recursive(4, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Filter::And),
            prop::collection::vec(inner.clone(), 0..5).prop_map(Filter::Or),
            inner.prop_map(Filter::not),
        ]
    });
    prop_oneof![
        20 => tree,
        1 => prop::collection::vec(leaf_filter(), 250..=262).prop_map(Filter::And),
    ]
    .boxed()
}

/// Queries: an optional [`filter`], up to 10 sort keys (the limit is 8) on generated paths,
/// offset and limit.
pub fn query() -> BoxedStrategy<Query> {
    let sort = prop_oneof![
        8 => prop::collection::vec((path(), any::<bool>()), 0..=3),
        1 => prop::collection::vec((path(), any::<bool>()), 7..=10),
    ];
    (
        prop::option::weighted(0.9, filter()),
        sort,
        0usize..4,
        prop::option::of(0usize..8),
    )
        .prop_map(|(filter, sort, offset, limit)| {
            let mut q = Query::new().offset(offset);
            q.filter = filter;
            q.limit = limit;
            for (path, ascending) in sort {
                q = if ascending {
                    q.sort_asc(path)
                } else {
                    q.sort_desc(path)
                };
            }
            q
        })
        .boxed()
}

/// The documents the filter property queries: every JSON type at the filtered paths, missing
/// fields, nested objects, arrays, and documents that are not objects.
pub fn filter_data() -> Vec<(String, Value)> {
    let docs = [
        json!({"a": 1, "b": "x", "n": {"c": true}, "arr": [1, "x"]}),
        json!({"a": 2.5, "b": "X", "n": {"c": null}, "arr": []}),
        json!({"a": -3, "b": "", "n": {}, "arr": [[1]]}),
        json!({"a": "1", "b": "xy", "arr": ["a", "b"]}),
        json!({"a": null, "b": "é"}),
        json!({"a": true, "b": "x%_"}),
        json!({"a": [1, 2], "b": "x%"}),
        json!({"a": {"x": 1}}),
        json!({"a": u64::MAX, "b": "ab"}),
        json!({"a": i64::MIN, "b": "B"}),
        json!({"other": 1}),
        json!(5),
        json!([{"a": 1}, 2]),
        json!({"a": 1.0, "n": {"c": false, "01": "z"}, "arr": [2, 1]}),
        json!({"a": 0, "b": "ba", "n": {"c": "true"}}),
        json!("x"),
        json!({"a": 10, "b": "X", "arr": [{"x": 1}, {}]}),
    ];
    docs.into_iter()
        .enumerate()
        .map(|(i, d)| (format!("k{i:02}"), d))
        .collect()
}

fn document_ttl() -> BoxedStrategy<Duration> {
    prop_oneof![
        1 => Just(Duration::ZERO),
        2 => (1u64..1_000_000).prop_map(Duration::from_nanos),
        2 => (1u64..60_000).prop_map(Duration::from_millis),
        3 => (60u64..MAX_TTL.as_secs()).prop_map(Duration::from_secs),
        1 => Just(MAX_TTL),
        1 => (1u64..1_000_000_000).prop_map(|n| MAX_TTL + Duration::from_nanos(n)),
        1 => (MAX_TTL.as_secs() + 1..u64::MAX).prop_map(Duration::from_secs),
        1 => Just(Duration::MAX),
    ]
    .boxed()
}

fn lease_ttl() -> BoxedStrategy<Duration> {
    let min_ns = MIN_LEASE_TTL.as_nanos() as u64;
    prop_oneof![
        1 => Just(Duration::ZERO),
        2 => (1u64..min_ns).prop_map(Duration::from_nanos),
        1 => Just(MIN_LEASE_TTL),
        3 => (10u64..5_000).prop_map(Duration::from_millis),
        3 => (5u64..MAX_LEASE_TTL.as_secs()).prop_map(Duration::from_secs),
        1 => Just(MAX_LEASE_TTL),
        1 => (1u64..1_000_000_000).prop_map(|n| MAX_LEASE_TTL + Duration::from_nanos(n)),
        1 => (MAX_LEASE_TTL.as_secs() + 1..u64::MAX).prop_map(Duration::from_secs),
        1 => Just(Duration::MAX),
    ]
    .boxed()
}

/// One invalid (or, for the conditions, failing) item a batch may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// An empty key.
    EmptyKey,
    /// A key with NUL.
    NulKey,
    /// A 1025-byte key.
    LongKey,
    /// A key that another item has too.
    DuplicateKey,
    /// A value one level deeper than the limit.
    TooDeep,
    /// A value above the size limit.
    TooBig,
    /// A zero TTL.
    ZeroTtl,
    /// A TTL beyond `MAX_TTL`.
    HugeTtl,
    /// Metadata one level deeper than the limit.
    DeepMetadata,
    /// An `IfVersion(7)` condition that fails (a `Conflict`, not bad input).
    VersionMismatch,
    /// An `IfAbsent` on the live first key (an `AlreadyExists`, not bad input).
    AlreadyExists,
    /// An empty event type.
    EmptyType,
    /// An event type with NUL.
    NulType,
    /// A 257-byte event type.
    LongType,
    /// An event id another event of the append has too.
    DuplicateId,
    /// An empty correlation id.
    EmptyCorrelation,
    /// A causation id with NUL.
    NulCausation,
}

/// A generated batch: its size (0..=1100) and, sometimes, one flawed item at an index.
#[derive(Debug, Clone)]
pub struct BatchCase {
    /// Number of items.
    pub size: usize,
    /// The flaw and where (an index into the batch, scaled to its size).
    pub flaw: Option<(Flaw, Index)>,
}

impl BatchCase {
    /// The flaw and its item's index, when the batch has an item to flaw (a duplicate needs
    /// two).
    fn placed(&self) -> Option<(Flaw, usize)> {
        let (flaw, at) = self.flaw.as_ref()?;
        match (flaw, self.size) {
            (_, 0) | (Flaw::DuplicateKey | Flaw::DuplicateId, 1) => None,
            (Flaw::AlreadyExists, _) => Some((*flaw, 0)),
            _ => Some((*flaw, at.index(self.size))),
        }
    }

    /// The item whose key or id a duplicate copies.
    fn twin(index: usize) -> usize {
        if index == 0 { 1 } else { index - 1 }
    }
}

fn batch_case(flaws: Vec<Flaw>) -> BoxedStrategy<BatchCase> {
    let size = prop_oneof![
        3 => 0usize..=3,
        3 => 4usize..=64,
        1 => 65usize..=989,
        3 => 990usize..=1010,
        1 => 1011usize..=1100,
    ];
    (
        size,
        prop::option::weighted(0.6, (prop::sample::select(flaws), any::<Index>())),
    )
        .prop_map(|(size, flaw)| BatchCase { size, flaw })
        .boxed()
}

fn key_of(i: usize) -> String {
    format!("k{i:04}")
}

// ---------------------------------------------------------------------------------------------
// 1. Names
// ---------------------------------------------------------------------------------------------

/// Generated namespaces: every document operation accepts exactly what
/// `validate::namespace` accepts and refuses the rest with its message and `namespace=`
/// context, before writing anything; an accepted namespace holds a document that reads back.
pub fn namespace_names<S: StorageDriver + ?Sized + 'static>(
    runtime: &Runtime,
    store: Arc<S>,
    settings: &Settings,
) {
    let s = &*store;
    run_cases(
        runtime,
        "namespace_names",
        settings.cases,
        settings.seed,
        name(),
        |ns| check_namespace_name(s, ns),
    );
}

async fn check_namespace_name<S: StorageDriver + ?Sized>(s: &S, ns: String) -> TestCaseResult {
    let expected = validate::namespace(&ns);
    let value = json!({"case": unique("v")});
    let ns = ns.as_str();
    if let Err(e) = &expected {
        let f = &["namespace"];
        let k = || vec!["k".to_owned()];
        refused_like(
            s.put(ns, "k", json!(1), PutOptions::new()).await,
            e,
            f,
            "put",
        )?;
        refused_like(s.get(ns, "k").await, e, f, "get")?;
        refused_like(s.exists(ns, "k").await, e, f, "exists")?;
        refused_like(
            s.delete(ns, "k", DeleteCondition::Always).await,
            e,
            f,
            "delete",
        )?;
        refused_like(s.get_many(ns, &k()).await, e, f, "get_many")?;
        let batch = vec![BatchPut::new("k", json!(1))];
        refused_like(s.put_many(ns, batch).await, e, f, "put_many")?;
        let batch = vec![BatchDelete::new("k")];
        refused_like(s.delete_many(ns, batch).await, e, f, "delete_many")?;
        refused_like(s.list(ns, &ListOptions::new()).await, e, f, "list")?;
        refused_like(s.query(ns, &Query::new()).await, e, f, "query")?;
        refused_like(s.count(ns, None).await, e, f, "count")?;
        refused_like(s.clear(ns).await, e, f, "clear")?;
        let created = s.create_namespace(ns, Metadata::new()).await;
        refused_like(created, e, f, "create_namespace")?;
        refused_like(s.drop_namespace(ns, true).await, e, f, "drop_namespace")?;
        let set = s
            .set_metadata(ns, "k", Metadata::new(), MetadataMode::Replace)
            .await;
        refused_like(set, e, f, "set_metadata")?;
        let listed = ok(s.list_namespaces().await, "list_namespaces")?;
        prop_assert!(
            listed.iter().all(|n| n.name != ns),
            "a refused namespace {:?} was created",
            ns
        );
        return Ok(());
    }
    let entry = ok(
        s.put(ns, "k", value.clone(), PutOptions::new()).await,
        "put into an accepted namespace",
    )?;
    prop_assert_eq!(&entry.namespace, ns);
    let got = ok(s.get(ns, "k").await, "get")?.map(|e| e.value);
    prop_assert_eq!(got, Some(value), "get after put");
    let page = ok(s.list(ns, &ListOptions::new()).await, "list")?;
    prop_assert_eq!(page.keys(), vec!["k"], "list after put");
    let listed = ok(s.list_namespaces().await, "list_namespaces")?;
    prop_assert!(
        listed.iter().any(|n| n.name == ns),
        "list_namespaces lacks {:?}",
        ns
    );
    prop_assert!(ok(s.drop_namespace(ns, true).await, "drop_namespace")?);
    prop_assert_eq!(ok(s.count(ns, None).await, "count after drop")?, 0);
    Ok(())
}

/// Generated document keys: every operation accepts exactly what `validate::key` accepts and
/// refuses the rest with its message and `key=` context, writing nothing; an accepted key
/// round-trips (put, get, get_many, exists, delete) and lists in byte-wise order among fixed
/// neighbours, under a prefix and under a glob that escapes it.
pub fn document_key_names<S: StorageDriver + ?Sized + 'static>(
    runtime: &Runtime,
    store: Arc<S>,
    settings: &Settings,
) {
    let s = &*store;
    run_cases(
        runtime,
        "document_key_names",
        settings.cases,
        settings.seed,
        name(),
        |key| check_document_key(s, key),
    );
}

/// Keys the generated one is listed among: ASCII order traps, `/`, `{}`, multi-byte.
const NEIGHBOURS: &[&str] = &[
    "!", "A", "B", "a", "a%", "a/b", "b", "z{x}", "~", "\u{7f}", "é", "\u{ffff}", "😀",
];

async fn check_document_key<S: StorageDriver + ?Sized>(s: &S, key: String) -> TestCaseResult {
    let ns = unique("keys");
    let ns = ns.as_str();
    let k = key.as_str();
    let expected = validate::document(ns, k);
    if let Err(e) = &expected {
        let f = &["key"];
        let keys = || vec![key.clone()];
        refused_like(s.put(ns, k, json!(1), PutOptions::new()).await, e, f, "put")?;
        refused_like(s.get(ns, k).await, e, f, "get")?;
        refused_like(s.exists(ns, k).await, e, f, "exists")?;
        refused_like(
            s.delete(ns, k, DeleteCondition::Always).await,
            e,
            f,
            "delete",
        )?;
        refused_like(s.get_many(ns, &keys()).await, e, f, "get_many")?;
        let batch = vec![BatchPut::new("ok", json!(1)), BatchPut::new(k, json!(1))];
        refused_like(s.put_many(ns, batch).await, e, f, "put_many")?;
        let batch = vec![BatchDelete::new(k)];
        refused_like(s.delete_many(ns, batch).await, e, f, "delete_many")?;
        let set = s
            .set_metadata(ns, k, Metadata::new(), MetadataMode::Merge)
            .await;
        refused_like(set, e, f, "set_metadata")?;
        refused_like(s.get_metadata(ns, k).await, e, f, "get_metadata")?;
        let cursor = ListOptions::new().after(k);
        let want = cursor
            .validate()
            .err()
            .unwrap_or_else(|| Error::internal("kernel-core accepted the cursor"));
        refused_like(s.list(ns, &cursor).await, &want, f, "list after it")?;
        prop_assert_eq!(
            ok(s.count(ns, None).await, "count")?,
            0,
            "a refused key wrote something"
        );
        return Ok(());
    }
    let value = json!({"key": key});
    let entry = ok(s.put(ns, k, value.clone(), PutOptions::new()).await, "put")?;
    prop_assert_eq!(&entry.key, &key);
    prop_assert_eq!(entry.version, 1);
    let got = ok(s.get(ns, k).await, "get")?;
    prop_assert_eq!(
        got.map(|e| (e.key, e.value)),
        Some((key.clone(), value.clone()))
    );
    prop_assert!(ok(s.exists(ns, k).await, "exists")?);
    let many = ok(
        s.get_many(ns, &[key.clone(), key.clone()]).await,
        "get_many",
    )?;
    prop_assert!(
        many.len() == 2
            && many
                .iter()
                .all(|e| e.as_ref().is_some_and(|e| e.key == key)),
        "get_many of the key twice: {:?}",
        many
    );
    let others: Vec<BatchPut> = NEIGHBOURS
        .iter()
        .filter(|n| **n != k)
        .map(|n| BatchPut::new(*n, json!(n)))
        .collect();
    ok(s.put_many(ns, others).await, "put_many of the neighbours")?;
    let mut all: Vec<String> = NEIGHBOURS.iter().map(|n| (*n).to_owned()).collect();
    all.push(key.clone());
    all.sort_by(by_bytes);
    all.dedup();
    let listed = ok(s.list(ns, &ListOptions::new()).await, "list")?;
    prop_assert_eq!(
        listed.keys(),
        all.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let prefixed: Vec<&str> = all
        .iter()
        .filter(|a| a.starts_with(k))
        .map(String::as_str)
        .collect();
    let page = ok(
        s.list(ns, &ListOptions::new().prefix(k)).await,
        "list prefix",
    )?;
    prop_assert_eq!(page.keys(), prefixed, "list with the key as prefix");
    let glob = ListOptions::new().pattern(literal_glob(k));
    let page = ok(s.list(ns, &glob).await, "list with an escaped glob")?;
    prop_assert_eq!(
        page.keys(),
        vec![k],
        "a glob escaping the key matches it alone"
    );
    let after = ok(s.list(ns, &ListOptions::new().after(k)).await, "list after")?;
    let later: Vec<&str> = all
        .iter()
        .filter(|a| a.as_bytes() > k.as_bytes())
        .map(String::as_str)
        .collect();
    prop_assert_eq!(after.keys(), later, "list after the key");
    prop_assert!(ok(
        s.delete(ns, k, DeleteCondition::Always).await,
        "delete"
    )?);
    prop_assert!(ok(s.get(ns, k).await, "get after delete")?.is_none());
    ok(s.drop_namespace(ns, true).await, "drop_namespace")?;
    Ok(())
}

/// Generated stream names: append, read_stream, save_snapshot and load_snapshot accept
/// exactly what `validate::stream` accepts and refuse the rest with its message and `stream=`
/// context; an accepted stream reads back what was appended.
pub fn stream_names<E: EventStore + ?Sized + 'static>(
    runtime: &Runtime,
    store: Arc<E>,
    settings: &Settings,
) {
    let s = &*store;
    run_cases(
        runtime,
        "stream_names",
        settings.cases,
        settings.seed,
        name(),
        |stream| check_stream_name(s, stream),
    );
}

async fn check_stream_name<E: EventStore + ?Sized>(s: &E, stream: String) -> TestCaseResult {
    let st = stream.as_str();
    let event = NewEvent::new("Named", json!({"stream": stream}));
    if let Err(e) = validate::stream(st) {
        let f = &["stream"];
        let appended = s.append(st, ExpectedVersion::Any, vec![event]).await;
        refused_like(appended, &e, f, "append")?;
        refused_like(
            s.read_stream(st, ReadStream::forward()).await,
            &e,
            f,
            "read_stream",
        )?;
        let saved = s.save_snapshot(st, 1, json!(1)).await;
        refused_like(saved, &e, f, "save_snapshot")?;
        refused_like(s.load_snapshot(st).await, &e, f, "load_snapshot")?;
        return Ok(());
    }
    let id = event.id;
    let appended = ok(
        s.append(st, ExpectedVersion::Any, vec![event]).await,
        "append",
    )?;
    let last = ok(
        s.read_stream(st, ReadStream::backward().limit(1)).await,
        "read_stream",
    )?;
    prop_assert!(
        last.len() == 1 && last[0].id == id && last[0].stream == stream,
        "read_stream after append: {:?}",
        last
    );
    prop_assert_eq!(last[0].version, appended.stream_version);
    let version = appended.stream_version;
    ok(
        s.save_snapshot(st, version, json!({"at": version})).await,
        "save_snapshot",
    )?;
    let snap = ok(s.load_snapshot(st).await, "load_snapshot")?;
    prop_assert_eq!(
        snap.map(|s| (s.version, s.state)),
        Some((version, json!({"at": version})))
    );
    Ok(())
}

/// Generated lock keys: `try_acquire` and `acquire` accept exactly what `validate::lock_key`
/// accepts and refuse the rest with its message and `key=` context; an accepted key gives a
/// lease on that key that releases.
pub fn lock_key_names<L: Lock + ?Sized + 'static>(
    runtime: &Runtime,
    store: Arc<L>,
    settings: &Settings,
) {
    let s = &*store;
    run_cases(
        runtime,
        "lock_key_names",
        settings.cases,
        settings.seed,
        name(),
        |key| check_lock_key(s, key),
    );
}

async fn check_lock_key<L: Lock + ?Sized>(s: &L, key: String) -> TestCaseResult {
    let ttl = Duration::from_secs(30);
    if let Err(e) = validate::lock_key(&key) {
        let f = &["key"];
        refused_like(s.try_acquire(&key, ttl).await, &e, f, "try_acquire")?;
        let waited = s.acquire(&key, ttl, Duration::from_millis(20)).await;
        refused_like(waited, &e, f, "acquire")?;
        return Ok(());
    }
    let Some(lease) = ok(s.try_acquire(&key, ttl).await, "try_acquire")? else {
        return fail(format!("try_acquire of a free key {key:?} found it held"));
    };
    prop_assert_eq!(&lease.key, &key);
    ok(s.release(&lease).await, "release")?;
    let Some(again) = ok(s.try_acquire(&key, ttl).await, "try_acquire again")? else {
        return fail(format!("{key:?} is still held after release"));
    };
    prop_assert!(
        again.fencing_token > lease.fencing_token,
        "fencing tokens increase"
    );
    ok(s.release(&again).await, "release again")?;
    Ok(())
}

/// Generated rate-limit keys: `check` and `reset` accept exactly what
/// `validate::rate_limit_key` accepts and refuse the rest with its message and `key=` context;
/// an accepted key counts.
pub fn rate_limit_key_names<R: RateLimiter + ?Sized + 'static>(
    runtime: &Runtime,
    store: Arc<R>,
    settings: &Settings,
) {
    let s = &*store;
    run_cases(
        runtime,
        "rate_limit_key_names",
        settings.cases,
        settings.seed,
        name(),
        |key| check_rate_limit_key(s, key),
    );
}

async fn check_rate_limit_key<R: RateLimiter + ?Sized>(s: &R, key: String) -> TestCaseResult {
    let quota = Quota::per_minute(1000);
    if let Err(e) = validate::rate_limit_key(&key) {
        let f = &["key"];
        refused_like(s.check(&key, &quota, 1).await, &e, f, "check")?;
        refused_like(s.reset(&key).await, &e, f, "reset")?;
        return Ok(());
    }
    let decision = ok(s.check(&key, &quota, 1).await, "check")?;
    prop_assert!(
        decision.allowed && decision.remaining == 999,
        "the first check of {:?}: {:?}",
        key,
        decision
    );
    ok(s.reset(&key).await, "reset")?;
    let peek = ok(s.check(&key, &quota, 0).await, "peek after reset")?;
    prop_assert_eq!(peek.remaining, 1000, "reset restores the burst");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. JSON values
// ---------------------------------------------------------------------------------------------

/// Generated JSON values and metadata as documents: refused before any I/O with the message of
/// `validate::put` (too deep, too large) and nothing written, or read back exactly equal by
/// `put`'s answer, `get` and `list`.
///
/// # Panics
///
/// When the driver's `capabilities()` disagree with `settings.limits` (a factory bug).
pub fn json_documents<S: StorageDriver + ?Sized + 'static>(
    runtime: &Runtime,
    store: Arc<S>,
    settings: &Settings,
) {
    let s = &*store;
    let caps = s.capabilities();
    assert_eq!(
        (caps.max_value_bytes, caps.max_depth),
        (settings.limits.max_value_bytes, settings.limits.max_depth),
        "the property driver must be built with the settings' limits"
    );
    let ns = unique("json");
    let ns = ns.as_str();
    run_cases(
        runtime,
        "json_documents",
        settings.cases,
        settings.seed,
        json_case(),
        |case| check_json_document(s, ns, settings, case),
    );
}

async fn check_json_document<S: StorageDriver + ?Sized>(
    s: &S,
    ns: &str,
    settings: &Settings,
    case: JsonCase,
) -> TestCaseResult {
    let div = &settings.divergences;
    let key = unique("doc");
    let options = PutOptions::new().metadata(case.metadata.clone());
    let expected = json_verdict(
        validate::put(ns, &key, &case.value, &options, &settings.limits),
        &[&case.value, &Value::Object(case.metadata.clone())],
        div,
        &[("key", validate::escape(&key))],
    );
    let got = s.put(ns, &key, case.value.clone(), options).await;
    let Some(entry) = same_verdict(got, &expected, &["key"], "put")? else {
        prop_assert!(
            ok(s.get(ns, &key).await, "get after a refused put")?.is_none(),
            "a refused put wrote"
        );
        return Ok(());
    };
    let round_trip = |what: &str, e: &Entry| -> TestCaseResult {
        prop_assert!(
            case.value == e.value,
            "{}: the value came back as {}",
            what,
            e.value
        );
        prop_assert!(
            case.metadata == e.metadata,
            "{}: the metadata came back as {:?}",
            what,
            e.metadata
        );
        Ok(())
    };
    round_trip("put's answer", &entry)?;
    let Some(back) = ok(s.get(ns, &key).await, "get")? else {
        return fail("get after put found nothing".to_owned());
    };
    round_trip("get", &back)?;
    let page = ok(s.list(ns, &ListOptions::new().prefix(&key)).await, "list")?;
    prop_assert_eq!(page.entries.len(), 1, "list under the key as prefix");
    round_trip("list", &page.entries[0])
}

/// Generated JSON payloads, event metadata and snapshot states: refused with the message of
/// `validate_append` / `validate::value` and nothing appended, or read back exactly equal by
/// `read_stream` and `load_snapshot`.
pub fn json_events<E: EventStore + ?Sized + 'static>(
    runtime: &Runtime,
    store: Arc<E>,
    settings: &Settings,
) {
    let s = &*store;
    run_cases(
        runtime,
        "json_events",
        settings.cases,
        settings.seed,
        json_case(),
        |case| check_json_event(s, settings, case),
    );
}

async fn check_json_event<E: EventStore + ?Sized>(
    s: &E,
    settings: &Settings,
    case: JsonCase,
) -> TestCaseResult {
    let (limits, div) = (&settings.limits, &settings.divergences);
    let (_, stream) = unique_stream("json", "1");
    let st = stream.as_str();
    let event = NewEvent::new("Generated", case.value.clone()).with_metadata(case.metadata.clone());
    let expected = json_verdict(
        validate_append(st, std::slice::from_ref(&event), limits),
        &[&case.value, &Value::Object(case.metadata.clone())],
        div,
        &[
            ("stream", st.to_owned()),
            ("event_id", event.id.to_string()),
        ],
    );
    let got = s
        .append(st, ExpectedVersion::NoStream, vec![event.clone()])
        .await;
    let appended = same_verdict(got, &expected, &["stream", "event_id"], "append")?;
    let read = ok(
        s.read_stream(st, ReadStream::forward()).await,
        "read_stream",
    )?;
    if appended.is_none() {
        prop_assert!(
            read.is_empty(),
            "a refused append wrote {} events",
            read.len()
        );
        ok(
            s.append(
                st,
                ExpectedVersion::NoStream,
                vec![NewEvent::new("Plain", json!(1))],
            )
            .await,
            "append of a plain event",
        )?;
    } else {
        prop_assert_eq!(read.len(), 1);
        prop_assert_eq!(read[0].id, event.id);
        prop_assert!(
            case.value == read[0].payload,
            "read_stream: the payload came back as {}",
            read[0].payload
        );
        prop_assert!(
            case.metadata == read[0].metadata,
            "read_stream: the metadata came back as {:?}",
            read[0].metadata
        );
    }
    let expected = json_verdict(
        validate::stream(st).and_then(|()| {
            validate::value(&case.state, limits).map_err(|e| e.with_context("stream", st))
        }),
        &[&case.state],
        div,
        &[("stream", st.to_owned())],
    );
    let got = s.save_snapshot(st, 1, case.state.clone()).await;
    let saved = same_verdict(got, &expected, &["stream"], "save_snapshot")?;
    let loaded = ok(s.load_snapshot(st).await, "load_snapshot")?;
    match (saved, loaded) {
        (Some(()), Some(snap)) => prop_assert!(
            snap.version == 1 && case.state == snap.state,
            "load_snapshot: {:?}",
            snap
        ),
        (Some(()), None) => return fail("a saved snapshot does not load".to_owned()),
        (None, loaded) => prop_assert!(loaded.is_none(), "a refused snapshot was stored"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Filters
// ---------------------------------------------------------------------------------------------

/// Generated queries over [`filter_data`]: `query` returns what the shared evaluator
/// (`Query::apply`) returns, in order, and `count` counts what `Filter::matches` matches; or
/// both refuse with the message of `Query::validate` / `Filter::validate`.
///
/// # Panics
///
/// When the data set cannot be written.
pub fn filters<S: StorageDriver + ?Sized + 'static>(
    runtime: &Runtime,
    store: Arc<S>,
    settings: &Settings,
) {
    let s = &*store;
    let ns = unique("filters");
    let docs = filter_data();
    let items = docs
        .iter()
        .map(|(k, v)| BatchPut::new(k.as_str(), v.clone()))
        .collect();
    if let Err(e) = runtime.block_on(s.put_many(&ns, items)) {
        panic!("filters: writing the data set failed: {e}");
    }
    let (ns, docs) = (ns.as_str(), &docs);
    run_cases(
        runtime,
        "filters",
        settings.cases,
        settings.seed,
        query(),
        |q| check_query(s, ns, docs, q),
    );
}

async fn check_query<S: StorageDriver + ?Sized>(
    s: &S,
    ns: &str,
    docs: &[(String, Value)],
    q: Query,
) -> TestCaseResult {
    let f = &["path"];
    let got = s.query(ns, &q).await;
    if let Some(entries) = same_verdict(got, &q.validate(), f, "query")? {
        let want: Vec<(&str, &Value)> = q
            .apply(docs.iter(), |(k, _)| k.as_str(), |(_, v)| v)
            .into_iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        let got: Vec<(&str, &Value)> = entries.iter().map(|e| (e.key.as_str(), &e.value)).collect();
        prop_assert_eq!(got, want, "query results against the shared evaluator");
    }
    let Some(filter) = &q.filter else {
        let n = ok(s.count(ns, None).await, "count")?;
        prop_assert_eq!(n, docs.len() as u64);
        return Ok(());
    };
    let got = s.count(ns, Some(filter)).await;
    if let Some(n) = same_verdict(got, &filter.validate(), f, "count")? {
        let want = docs.iter().filter(|(_, v)| filter.matches(v)).count();
        prop_assert_eq!(n, want as u64, "count against the shared evaluator");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. TTLs
// ---------------------------------------------------------------------------------------------

/// Generated document TTLs (zero, sub-millisecond, up to and past 1000 years, `Duration::MAX`)
/// on `put` and `put_many`: accepted exactly when `validate::put` accepts (greater than zero,
/// at most `MAX_TTL`), then `expires_at` is now + TTL and (for TTLs of a minute or more) `get`
/// returns the same expiry; refused with the rule's message and nothing written otherwise.
pub fn document_ttls<S: StorageDriver + ?Sized + 'static>(
    runtime: &Runtime,
    store: Arc<S>,
    settings: &Settings,
) {
    let s = &*store;
    let ns = unique("ttl");
    let (ns, limits) = (ns.as_str(), &settings.limits);
    run_cases(
        runtime,
        "document_ttls",
        settings.cases,
        settings.seed,
        (document_ttl(), any::<bool>()),
        |(ttl, batch)| check_document_ttl(s, ns, limits, ttl, batch),
    );
}

async fn check_document_ttl<S: StorageDriver + ?Sized>(
    s: &S,
    ns: &str,
    limits: &Limits,
    ttl: Duration,
    batch: bool,
) -> TestCaseResult {
    let key = unique("t");
    let options = PutOptions::new().ttl(ttl);
    let expected = validate::put(ns, &key, &json!(1), &options, limits);
    let before = SystemTime::now();
    let got: Result<Entry> = if batch {
        let item = BatchPut::new(key.as_str(), json!(1)).with_options(options);
        s.put_many(ns, vec![item]).await.and_then(|mut v| {
            v.pop()
                .ok_or_else(|| Error::internal("put_many of one item returned none"))
        })
    } else {
        s.put(ns, &key, json!(1), options).await
    };
    let after = SystemTime::now();
    let what = if batch { "put_many" } else { "put" };
    let Some(entry) = same_verdict(got, &expected, &["key"], what)? else {
        prop_assert!(
            ok(s.get(ns, &key).await, "get")?.is_none(),
            "a refused TTL wrote"
        );
        return Ok(());
    };
    let Some(expires) = entry.expires_at else {
        return fail(format!("{what} with TTL {ttl:?} returned no expires_at"));
    };
    expiry_matches(expires, before, after, ttl, what)?;
    if ttl >= Duration::from_secs(60) {
        let Some(back) = ok(s.get(ns, &key).await, "get")? else {
            return fail(format!("an entry with TTL {ttl:?} is gone at once"));
        };
        let stored = back.expires_at;
        prop_assert!(
            stored.is_some_and(|t| close(t, expires, Duration::from_millis(2))),
            "get's expires_at {:?} differs from put's {:?}",
            stored,
            expires
        );
    }
    Ok(())
}

/// Generated lease TTLs on `try_acquire` and `extend`: accepted exactly when `validate_ttl`
/// accepts (10 ms ..= 24 h), then `expires_at` is now + TTL; refused with the rule's message
/// and `key=` context otherwise, leaving the lock free (or, on `extend`, still held).
pub fn lease_ttls<L: Lock + ?Sized + 'static>(
    runtime: &Runtime,
    store: Arc<L>,
    settings: &Settings,
) {
    let s = &*store;
    run_cases(
        runtime,
        "lease_ttls",
        settings.cases,
        settings.seed,
        (lease_ttl(), lease_ttl()),
        |(ttl, extension)| check_lease_ttl(s, ttl, extension),
    );
}

async fn check_lease_ttl<L: Lock + ?Sized>(
    s: &L,
    ttl: Duration,
    extension: Duration,
) -> TestCaseResult {
    let key = unique("lease");
    let expected = validate_lease_request(&key, ttl);
    let before = SystemTime::now();
    let got = s.try_acquire(&key, ttl).await;
    let after = SystemTime::now();
    let Some(acquired) = same_verdict(got, &expected, &["key"], "try_acquire")? else {
        let Some(lease) = ok(
            s.try_acquire(&key, Duration::from_secs(5)).await,
            "try_acquire",
        )?
        else {
            return fail("a refused try_acquire left the lock held".to_owned());
        };
        return ok(s.release(&lease).await, "release");
    };
    let Some(lease) = acquired else {
        return fail("try_acquire of a fresh key found it held".to_owned());
    };
    expiry_matches(lease.expires_at, before, after, ttl, "try_acquire")?;
    if ttl < Duration::from_secs(3) {
        // The lease may lapse before the release: either answer is right then.
        return match s.release(&lease).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == ErrorCode::LockNotHeld => Ok(()),
            Err(e) => fail(format!("release of a short lease: `{e}`")),
        };
    }
    let expected = validate_ttl(&key, extension);
    let before = SystemTime::now();
    let got = s.extend(&lease, extension).await;
    let after = SystemTime::now();
    let Some(extended) = same_verdict(got, &expected, &["key"], "extend")? else {
        return ok(s.release(&lease).await, "release after a refused extend");
    };
    prop_assert_eq!(extended.fencing_token, lease.fencing_token);
    expiry_matches(extended.expires_at, before, after, extension, "extend")?;
    match s.release(&extended).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == ErrorCode::LockNotHeld && extension < Duration::from_secs(3) => {
            Ok(())
        }
        Err(e) => fail(format!("release after extend: `{e}`")),
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Batch sizes
// ---------------------------------------------------------------------------------------------

/// What kernel-core says of a `put_many`: the batch shape, then every item.
fn validate_put_many(ns: &str, items: &[BatchPut], limits: &Limits) -> Result<()> {
    validate::batch(ns, items.iter().map(|i| i.key.as_str()), true)?;
    for i in items {
        validate::put(ns, &i.key, &i.value, &i.options, limits)?;
    }
    Ok(())
}

/// Checks a batch failed on a condition (`Conflict` / `AlreadyExists`) naming `key`.
fn condition_failed<T: fmt::Debug>(
    got: Result<T>,
    code: ErrorCode,
    key: &str,
    what: &str,
) -> TestCaseResult {
    match got {
        Ok(v) => fail(format!(
            "{what}: expected `{code}` on {key:?}, got success: {}",
            short(format!("{v:?}"), 300)
        )),
        Err(e) => {
            prop_assert_eq!(e.code(), code, "{}: {}", what, e);
            let named = validate::escape(key);
            prop_assert_eq!(
                e.context_value("key"),
                Some(named.as_str()),
                "{}: the error must name the failing item: {}",
                what,
                e
            );
            Ok(())
        }
    }
}

/// Generated `put_many` batches of 0..=1100 items, sometimes with one flawed item at a random
/// index (bad key, duplicate, too deep or too large a value, bad TTL or metadata, a failing
/// condition): either all is written, or the batch fails — `InvalidInput` with
/// kernel-core's message naming the item, or the condition's error naming it — and a read-back
/// finds exactly what was there before.
pub fn put_many_batches<S: StorageDriver + ?Sized + 'static>(
    runtime: &Runtime,
    store: Arc<S>,
    settings: &Settings,
) {
    let s = &*store;
    let limits = &settings.limits;
    let flaws = vec![
        Flaw::EmptyKey,
        Flaw::NulKey,
        Flaw::LongKey,
        Flaw::DuplicateKey,
        Flaw::TooDeep,
        Flaw::TooBig,
        Flaw::ZeroTtl,
        Flaw::HugeTtl,
        Flaw::DeepMetadata,
        Flaw::VersionMismatch,
        Flaw::AlreadyExists,
    ];
    run_cases(
        runtime,
        "put_many_batches",
        settings.batch_cases,
        settings.seed,
        batch_case(flaws),
        |case| check_put_many(s, limits, case),
    );
}

async fn check_put_many<S: StorageDriver + ?Sized>(
    s: &S,
    limits: &Limits,
    case: BatchCase,
) -> TestCaseResult {
    let ns = unique("put_many");
    let ns = ns.as_str();
    let seeded = case.size > 0;
    if seeded {
        ok(
            s.put(ns, &key_of(0), json!("seed"), PutOptions::new())
                .await,
            "seed",
        )?;
    }
    let mut items: Vec<BatchPut> = (0..case.size)
        .map(|i| BatchPut::new(key_of(i), json!(i)))
        .collect();
    let mut condition = None;
    if let Some((flaw, i)) = case.placed() {
        let item = &mut items[i];
        match flaw {
            Flaw::EmptyKey => item.key = String::new(),
            Flaw::NulKey => item.key = format!("k\0{i}"),
            Flaw::LongKey => item.key = "k".repeat(validate::MAX_KEY_LEN + 1),
            Flaw::TooDeep => item.value = nested(limits.max_depth + 1),
            Flaw::TooBig => item.value = json!("x".repeat(limits.max_value_bytes)),
            Flaw::ZeroTtl => item.options.ttl = Some(Duration::ZERO),
            Flaw::HugeTtl => item.options.ttl = Some(MAX_TTL + Duration::from_secs(1)),
            Flaw::DeepMetadata => {
                let mut m = Metadata::new();
                m.insert("m".to_owned(), nested(limits.max_depth));
                item.options.metadata = Some(m);
            }
            Flaw::VersionMismatch => {
                item.options = PutOptions::new().if_version(7);
                condition = Some((ErrorCode::Conflict, item.key.clone()));
            }
            Flaw::AlreadyExists => {
                item.options = PutOptions::new().if_absent();
                condition = Some((ErrorCode::AlreadyExists, item.key.clone()));
            }
            Flaw::DuplicateKey => item.key = key_of(BatchCase::twin(i)),
            _ => {}
        }
    }
    let expected = validate_put_many(ns, &items, limits);
    let got = s.put_many(ns, items.clone()).await;
    let written = match (&expected, &condition) {
        (Err(e), _) => {
            refused_like(got, e, &["namespace", "key"], "put_many")?;
            false
        }
        (Ok(()), Some((code, key))) => {
            condition_failed(got, *code, key, "put_many")?;
            false
        }
        (Ok(()), None) => {
            let entries = ok(got, "put_many")?;
            let answered: Vec<(&str, &Value)> =
                entries.iter().map(|e| (e.key.as_str(), &e.value)).collect();
            let sent: Vec<(&str, &Value)> =
                items.iter().map(|i| (i.key.as_str(), &i.value)).collect();
            prop_assert!(
                answered == sent,
                "put_many's answer is not the batch, in order"
            );
            true
        }
    };
    let page = ok(s.list(ns, &ListOptions::new()).await, "list")?;
    let stored: Vec<(&str, &Value, u64)> = page
        .entries
        .iter()
        .map(|e| (e.key.as_str(), &e.value, e.version))
        .collect();
    let seed = json!("seed");
    let want: Vec<(&str, &Value, u64)> = if written {
        let mut want: Vec<_> = items
            .iter()
            .map(|i| {
                (
                    i.key.as_str(),
                    &i.value,
                    if i.key == key_of(0) { 2 } else { 1 },
                )
            })
            .collect();
        want.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        want
    } else if seeded {
        vec![("k0000", &seed, 1)]
    } else {
        Vec::new()
    };
    prop_assert!(
        stored == want,
        "after put_many ({}): read back {} entries, expected {} (first read: {})",
        if written { "written" } else { "failed" },
        stored.len(),
        want.len(),
        short(format!("{stored:?}"), 200)
    );
    ok(s.drop_namespace(ns, true).await, "drop_namespace")?;
    Ok(())
}

/// Generated `delete_many` batches of 0..=1100 items over 40 stored keys, sometimes with one
/// flawed item (bad key, duplicate, failing `IfVersion`): either every live item goes and the
/// count says how many, or the batch fails naming the item and every stored key is still there.
pub fn delete_many_batches<S: StorageDriver + ?Sized + 'static>(
    runtime: &Runtime,
    store: Arc<S>,
    settings: &Settings,
) {
    let s = &*store;
    let flaws = vec![
        Flaw::EmptyKey,
        Flaw::NulKey,
        Flaw::LongKey,
        Flaw::DuplicateKey,
        Flaw::VersionMismatch,
    ];
    run_cases(
        runtime,
        "delete_many_batches",
        settings.batch_cases,
        settings.seed,
        batch_case(flaws),
        |case| check_delete_many(s, case),
    );
}

/// How many keys `delete_many_batches` stores before each batch.
const STORED: usize = 40;

async fn check_delete_many<S: StorageDriver + ?Sized>(s: &S, case: BatchCase) -> TestCaseResult {
    let ns = unique("delete_many");
    let ns = ns.as_str();
    let stored = case.size.min(STORED);
    let seed: Vec<BatchPut> = (0..stored)
        .map(|i| BatchPut::new(key_of(i), json!(i)))
        .collect();
    ok(s.put_many(ns, seed).await, "seed")?;
    let mut items: Vec<BatchDelete> = (0..case.size)
        .map(|i| BatchDelete::new(key_of(i)))
        .collect();
    let mut conflict = None;
    if let Some((flaw, i)) = case.placed() {
        let item = &mut items[i];
        match flaw {
            Flaw::EmptyKey => item.key = String::new(),
            Flaw::NulKey => item.key = format!("k\0{i}"),
            Flaw::LongKey => item.key = "k".repeat(validate::MAX_KEY_LEN + 1),
            Flaw::DuplicateKey => item.key = key_of(BatchCase::twin(i)),
            Flaw::VersionMismatch => {
                item.condition = DeleteCondition::IfVersion(7);
                conflict = Some(item.key.clone());
            }
            _ => {}
        }
    }
    let expected = validate::batch(ns, items.iter().map(|i| i.key.as_str()), true);
    let got = s.delete_many(ns, items).await;
    let deleted = match (&expected, &conflict) {
        (Err(e), _) => {
            refused_like(got, e, &["namespace", "key"], "delete_many")?;
            false
        }
        (Ok(()), Some(key)) => {
            condition_failed(got, ErrorCode::Conflict, key, "delete_many")?;
            false
        }
        (Ok(()), None) => {
            let n = ok(got, "delete_many")?;
            prop_assert_eq!(
                n,
                stored as u64,
                "delete_many counts the live entries it removed"
            );
            true
        }
    };
    let page = ok(s.list(ns, &ListOptions::new()).await, "list")?;
    let left: Vec<String> = page.entries.into_iter().map(|e| e.key).collect();
    let want: Vec<String> = if deleted {
        Vec::new()
    } else {
        (0..stored).map(key_of).collect()
    };
    prop_assert!(
        left == want,
        "after delete_many ({}): {} keys left, expected {}",
        if deleted { "applied" } else { "failed" },
        left.len(),
        want.len()
    );
    ok(s.drop_namespace(ns, true).await, "drop_namespace")?;
    Ok(())
}

/// Generated appends of 0..=1100 events, sometimes with one flawed event at a random index (bad
/// event type, duplicate id, too deep or too large a payload, bad metadata, correlation or
/// causation id): either every event is appended at versions 1..=n, or the append is refused
/// with `validate_append`'s message naming the stream and the event, and the stream is empty.
pub fn append_batches<E: EventStore + ?Sized + 'static>(
    runtime: &Runtime,
    store: Arc<E>,
    settings: &Settings,
) {
    let s = &*store;
    let limits = &settings.limits;
    let flaws = vec![
        Flaw::EmptyType,
        Flaw::NulType,
        Flaw::LongType,
        Flaw::DuplicateId,
        Flaw::TooDeep,
        Flaw::TooBig,
        Flaw::DeepMetadata,
        Flaw::EmptyCorrelation,
        Flaw::NulCausation,
    ];
    run_cases(
        runtime,
        "append_batches",
        settings.batch_cases,
        settings.seed,
        batch_case(flaws),
        |case| check_append(s, limits, case),
    );
}

async fn check_append<E: EventStore + ?Sized>(
    s: &E,
    limits: &Limits,
    case: BatchCase,
) -> TestCaseResult {
    let (_, stream) = unique_stream("batch", "1");
    let st = stream.as_str();
    let mut events: Vec<NewEvent> = (0..case.size)
        .map(|i| NewEvent::new("Numbered", json!(i)))
        .collect();
    if let Some((flaw, i)) = case.placed() {
        let twin_id = (flaw == Flaw::DuplicateId).then(|| events[BatchCase::twin(i)].id);
        let e = &mut events[i];
        match flaw {
            Flaw::EmptyType => e.event_type = String::new(),
            Flaw::NulType => e.event_type = "Num\0bered".to_owned(),
            Flaw::LongType => e.event_type = "T".repeat(validate::MAX_LABEL_LEN + 1),
            Flaw::DuplicateId => e.id = twin_id.unwrap_or(e.id),
            Flaw::TooDeep => e.payload = nested(limits.max_depth + 1),
            Flaw::TooBig => e.payload = json!("x".repeat(limits.max_value_bytes)),
            Flaw::DeepMetadata => {
                e.metadata.insert("m".to_owned(), nested(limits.max_depth));
            }
            Flaw::EmptyCorrelation => e.correlation_id = Some(String::new()),
            Flaw::NulCausation => e.causation_id = Some("cause\0".to_owned()),
            _ => {}
        }
    }
    let expected = validate_append(st, &events, limits);
    let got = s
        .append(st, ExpectedVersion::NoStream, events.clone())
        .await;
    let appended = same_verdict(got, &expected, &["stream", "event_id"], "append")?;
    if let Some(result) = &appended {
        prop_assert_eq!(result.stream_version, case.size as u64);
        prop_assert_eq!(result.positions.len(), case.size);
        prop_assert!(result.written);
    }
    let read = ok(
        s.read_stream(st, ReadStream::forward()).await,
        "read_stream",
    )?;
    if appended.is_none() {
        prop_assert!(
            read.is_empty(),
            "a refused append wrote {} events",
            read.len()
        );
        return Ok(());
    }
    prop_assert_eq!(read.len(), case.size, "read_stream after append");
    for (n, (got, sent)) in read.iter().zip(&events).enumerate() {
        prop_assert!(
            got.id == sent.id
                && got.version == n as u64 + 1
                && got.event_type == sent.event_type
                && got.payload == sent.payload,
            "event {} reads back as {:?}",
            n,
            got
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel_core::validate::MAX_BATCH_SIZE;
    use proptest::strategy::ValueTree;

    #[test]
    fn the_property_list_names_every_property() {
        assert_eq!(PROPERTIES.len(), 13);
        assert!(PROPERTIES.contains(&"append_batches"));
    }

    #[test]
    fn generated_floats_stay_in_range() {
        let mut runner = TestRunner::new(config(256, DEFAULT_SEED));
        let outcome = runner.run(&float(), |x| {
            prop_assert!(x.is_finite(), "{}", x);
            prop_assert!(!(x == 0.0 && x.is_sign_negative()), "-0.0");
            Ok(())
        });
        assert!(outcome.is_ok(), "{outcome:?}");
    }

    #[test]
    fn names_reach_both_sides_of_every_rule() {
        let mut runner = TestRunner::new(config(1, DEFAULT_SEED));
        let strategy = name();
        let (mut ok_ns, mut bad_ns, mut ok_key, mut bad_key, mut ok_stream) = (0, 0, 0, 0, 0);
        for _ in 0..500 {
            let Ok(tree) = strategy.new_tree(&mut runner) else {
                continue;
            };
            let n = tree.current();
            if validate::namespace(&n).is_ok() {
                ok_ns += 1;
            } else {
                bad_ns += 1;
            }
            if validate::key(&n).is_ok() {
                ok_key += 1;
            } else {
                bad_key += 1;
            }
            ok_stream += usize::from(validate::stream(&n).is_ok());
        }
        assert!(
            ok_ns > 50 && bad_ns > 50 && ok_key > 50 && bad_key > 20 && ok_stream > 20,
            "{ok_ns} {bad_ns} {ok_key} {bad_key} {ok_stream}"
        );
    }

    /// Samples `n` values of a strategy with the fixed seed.
    fn sample<S: Strategy>(strategy: S, n: usize) -> Vec<S::Value> {
        let mut runner = TestRunner::new(config(1, DEFAULT_SEED));
        (0..n)
            .filter_map(|_| strategy.new_tree(&mut runner).ok())
            .map(|tree| tree.current())
            .collect()
    }

    /// How many of `verdicts` are `true` and `false`.
    fn split(verdicts: impl Iterator<Item = bool>) -> (usize, usize) {
        verdicts.fold((0, 0), |(t, f), v| if v { (t + 1, f) } else { (t, f + 1) })
    }

    #[test]
    fn json_cases_reach_both_sides_of_the_limits() {
        let cases = sample(json_case(), 128);
        let (ok, bad) = split(cases.iter().map(|c| {
            let options = PutOptions::new().metadata(c.metadata.clone());
            validate::put("ns", "k", &c.value, &options, &LIMITS).is_ok()
        }));
        assert!(ok > 40 && bad > 10, "{ok} accepted, {bad} refused");
        let deep = cases
            .iter()
            .filter(|c| validate::depth(&c.value) > LIMITS.max_depth)
            .count();
        assert!(deep > 5, "{deep} too deep");
    }

    #[test]
    fn queries_reach_both_verdicts_and_match_something() {
        let queries = sample(query(), 128);
        let (ok, bad) = split(queries.iter().map(|q| q.validate().is_ok()));
        assert!(ok > 50 && bad > 15, "{ok} valid, {bad} refused");
        let docs = filter_data();
        let matching = queries
            .iter()
            .filter(|q| q.validate().is_ok())
            .filter(|q| {
                let n = q.apply(docs.iter(), |(k, _)| k.as_str(), |(_, v)| v).len();
                n > 0 && n < docs.len()
            })
            .count();
        assert!(
            matching > 20,
            "only {matching} queries select a proper subset"
        );
    }

    #[test]
    fn ttls_reach_both_verdicts() {
        let docs = sample(document_ttl(), 128);
        let (ok, bad) = split(docs.iter().map(|t| !t.is_zero() && *t <= MAX_TTL));
        assert!(
            ok > 50 && bad > 15,
            "documents: {ok} accepted, {bad} refused"
        );
        let leases = sample(lease_ttl(), 128);
        let (ok, bad) = split(leases.iter().map(|t| validate_ttl("k", *t).is_ok()));
        assert!(ok > 50 && bad > 15, "leases: {ok} accepted, {bad} refused");
    }

    #[test]
    fn batches_reach_every_outcome() {
        let cases = sample(batch_case(vec![Flaw::EmptyKey]), 128);
        let clean = cases
            .iter()
            .filter(|c| c.placed().is_none() && c.size <= MAX_BATCH_SIZE)
            .count();
        let flawed = cases.iter().filter(|c| c.placed().is_some()).count();
        let oversized = cases.iter().filter(|c| c.size > MAX_BATCH_SIZE).count();
        let at_limit = cases
            .iter()
            .filter(|c| (990..=MAX_BATCH_SIZE).contains(&c.size))
            .count();
        assert!(
            clean > 20 && flawed > 30 && oversized > 5 && at_limit > 5,
            "{clean} clean, {flawed} flawed, {oversized} oversized, {at_limit} near the limit"
        );
    }

    #[test]
    fn literal_globs_match_only_their_key() {
        for key in ["a*b", "?", "\\", "x[y]", "plain"] {
            let glob = kernel_core::Glob::new(&literal_glob(key));
            assert!(
                glob.is_ok_and(|g| g.matches(key) && !g.matches("other")),
                "{key}"
            );
        }
    }
}
