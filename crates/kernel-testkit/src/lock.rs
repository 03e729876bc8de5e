//! The lock suite: every point of [`Lock`]'s contract as one public async function, generic
//! over the lock, and [`lock_suite!`](crate::lock_suite) to run them all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use kernel_core::{Error, ErrorCode, Lease, Lock, LockExt};

use crate::support::{assert_time_between, expect_err, expect_ok, join, unique};

/// Every lock behaviour, in suite order (the one list; see the storage suite).
#[doc(hidden)]
#[macro_export]
macro_rules! __lock_behaviours {
    ($callback:ident ! ($($args:tt)*)) => {
        $crate::$callback! { ($($args)*)
            try_acquire_free_lock
            try_acquire_held_lock_is_none
            release_then_reacquire
            fencing_tokens_increase
            fencing_increases_after_expiry_takeover
            fencing_tokens_start_from_the_clock
            lock_expires_after_ttl
            release_by_non_holder_is_lock_not_held
            changed_fencing_token_is_forged
            release_twice_is_lock_not_held
            stale_lease_cannot_release_new_holder
            extend_pushes_expiry
            extend_by_non_holder_is_lock_not_held
            extend_after_expiry_is_lock_not_held
            acquire_waits_for_release
            acquire_times_out
            invalid_lock_key_is_rejected
            ttl_out_of_range_is_rejected
            with_lock_releases_on_ok
            with_lock_releases_on_err
            with_lock_releases_on_panic
            different_keys_are_independent
            race_try_acquire_single_winner
            race_mutual_exclusion
        }
    };
}

/// The names of every lock behaviour, in suite order.
pub const BEHAVIOURS: &[&str] = crate::__lock_behaviours!(__behaviour_names!());

/// Runs the whole lock suite against a driver, as `#[test]`s.
///
/// The argument is an async expression, evaluated afresh for every test, that yields
/// `(driver, guard)`; the guard lives until the test ends. Each behaviour runs on
/// `Arc<Driver>` (module `lock_conformance::concrete`) and on `Arc<dyn Lock>`
/// (`lock_conformance::dyn_arc`).
///
/// ```text
/// kernel_testkit::lock_suite!(async { (driver_memory::MemoryDriver::new(), ()) });
/// ```
#[macro_export]
macro_rules! lock_suite {
    ($factory:expr $(,)?) => {
        $crate::__suite!(lock_conformance, __lock_behaviours, lock, Lock, $factory);
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A lease that outlives any test.
const LONG: Duration = Duration::from_secs(30);
/// A short lease for expiry tests, and how long to wait for it to lapse (wide enough that the
/// "still held" checks hold on a loaded machine with a networked backend).
const SHORT: Duration = Duration::from_millis(300);
const SHORT_WAIT: Duration = Duration::from_millis(700);

async fn take<L: Lock + ?Sized>(l: &L, key: &str, ttl: Duration) -> Lease {
    let what = format!("try_acquire {key:?} on a free lock");
    match expect_ok(l.try_acquire(key, ttl).await, &what) {
        Some(lease) => lease,
        None => panic!("{what}: returned None"),
    }
}

async fn is_held<L: Lock + ?Sized>(l: &L, key: &str) -> bool {
    // Probing takes the lock when it is free, so give it straight back.
    match expect_ok(l.try_acquire(key, LONG).await, &format!("probe {key:?}")) {
        None => true,
        Some(lease) => {
            expect_ok(
                l.release(&lease).await,
                &format!("release probe of {key:?}"),
            );
            false
        }
    }
}

fn forged(lease: &Lease) -> Lease {
    Lease {
        token: format!("{}-forged", lease.token),
        ..lease.clone()
    }
}

#[track_caller]
fn assert_not_held<T: std::fmt::Debug>(result: kernel_core::Result<T>, key: &str, what: &str) {
    let err = expect_err(result, ErrorCode::LockNotHeld, what);
    assert!(
        err.context_value("key").is_some(),
        "{what}: the error must name the key {key:?}: {err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Behaviours

/// `try_acquire` on a free lock returns a lease with a token, a fencing token and an expiry of
/// about now + TTL.
pub async fn try_acquire_free_lock<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let key = unique("lock");
    let before = SystemTime::now();
    let lease = take(l, &key, LONG).await;
    let after = SystemTime::now();
    assert_eq!(lease.key, key);
    assert!(
        !lease.token.is_empty(),
        "a lease carries a proof-of-ownership token"
    );
    assert!(lease.fencing_token > 0, "fencing tokens start above 0");
    assert_time_between(
        lease.expires_at,
        before + LONG,
        after + LONG,
        "lease expires_at",
    );
    expect_ok(l.release(&lease).await, "release");
}

/// A held lock cannot be taken: `try_acquire` returns `None`.
pub async fn try_acquire_held_lock_is_none<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let key = unique("lock");
    let lease = take(l, &key, LONG).await;
    for ttl in [LONG, SHORT] {
        let second = expect_ok(l.try_acquire(&key, ttl).await, "second try_acquire");
        assert!(
            second.is_none(),
            "a held lock must not be handed out again: {second:?}"
        );
    }
    expect_ok(l.release(&lease).await, "release");
}

/// After a release the lock can be taken again, with a new token.
pub async fn release_then_reacquire<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let key = unique("lock");
    let first = take(l, &key, LONG).await;
    expect_ok(l.release(&first).await, "release");
    let second = take(l, &key, LONG).await;
    assert_ne!(
        second.token, first.token,
        "every acquisition gets a fresh token"
    );
    assert!(second.fencing_token > first.fencing_token);
    expect_ok(l.release(&second).await, "release");
}

/// Fencing tokens strictly increase across acquisitions of a key.
pub async fn fencing_tokens_increase<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let key = unique("lock");
    let mut tokens = Vec::new();
    for _ in 0..5 {
        let lease = take(l, &key, LONG).await;
        tokens.push(lease.fencing_token);
        expect_ok(l.release(&lease).await, "release");
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens must increase: {tokens:?}"
    );
}

/// A takeover after expiry gets a larger fencing token than the lapsed lease.
pub async fn fencing_increases_after_expiry_takeover<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let key = unique("lock");
    let lapsed = take(l, &key, SHORT).await;
    tokio::time::sleep(SHORT_WAIT).await;
    let taker = take(l, &key, LONG).await;
    assert!(
        taker.fencing_token > lapsed.fencing_token,
        "takeover fencing {} must exceed the lapsed lease's {}",
        taker.fencing_token,
        lapsed.fencing_token
    );
    expect_ok(l.release(&taker).await, "release");
}

/// A lease lapses at its TTL; another caller can then take the lock.
pub async fn lock_expires_after_ttl<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let key = unique("lock");
    take(l, &key, SHORT).await;
    let early = expect_ok(
        l.try_acquire(&key, LONG).await,
        "try_acquire before the TTL",
    );
    assert!(early.is_none(), "held before the TTL");
    tokio::time::sleep(SHORT_WAIT).await;
    let later = expect_ok(l.try_acquire(&key, LONG).await, "try_acquire after the TTL");
    assert!(later.is_some(), "the lock must be free after the TTL");
}

/// A release with a wrong token (or another key) is `LockNotHeld` and leaves the lock held.
pub async fn release_by_non_holder_is_lock_not_held<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let key = unique("lock");
    let lease = take(l, &key, LONG).await;
    assert_not_held(
        l.release(&forged(&lease)).await,
        &key,
        "release with a forged token",
    );
    let other = Lease {
        key: unique("lock"),
        ..lease.clone()
    };
    assert_not_held(
        l.release(&other).await,
        &other.key,
        "release of a key the token does not hold",
    );
    assert!(
        is_held(l, &key).await,
        "a failed release leaves the lock held"
    );
    expect_ok(l.release(&lease).await, "release by the holder");
}

/// A key the lock has never seen starts its fencing tokens from the clock
/// ([`kernel_core::lock::fencing_seed`]), so tokens keep increasing even when a backend loses
/// its counters (an empty restart, a new in-process driver). The bounds allow ten minutes of
/// difference between this machine's clock and the server's.
pub async fn fencing_tokens_start_from_the_clock<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    const SKEW_MS: u64 = 600_000;
    let l = &*lock;
    let key = unique("lock");
    let low = kernel_core::lock::fencing_seed(now_ms().saturating_sub(SKEW_MS));
    let lease = take(l, &key, LONG).await;
    let high = kernel_core::lock::fencing_seed(now_ms() + SKEW_MS);
    assert!(
        lease.fencing_token > low && lease.fencing_token <= high + 1,
        "the first fencing token of {key} ({}) is seeded from the clock: expected in ({low}, {}]",
        lease.fencing_token,
        high + 1
    );
    expect_ok(l.release(&lease).await, "release");
}

/// A lease whose fencing token was changed (same key, same secret token) is forged: release and
/// extend are `LockNotHeld` and the holder keeps the lock, whether the token was raised, lowered
/// or set to zero.
pub async fn changed_fencing_token_is_forged<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let key = unique("lock");
    let lease = take(l, &key, LONG).await;
    for fencing_token in [
        lease.fencing_token + 1,
        lease.fencing_token.wrapping_sub(1),
        0,
    ] {
        let changed = Lease {
            fencing_token,
            ..lease.clone()
        };
        assert_not_held(
            l.release(&changed).await,
            &key,
            "release with a changed fencing token",
        );
        assert_not_held(
            l.extend(&changed, LONG).await,
            &key,
            "extend with a changed fencing token",
        );
    }
    assert!(
        is_held(l, &key).await,
        "a forged release leaves the lock held"
    );
    let extended = expect_ok(l.extend(&lease, LONG).await, "extend by the holder");
    expect_ok(l.release(&extended).await, "release by the holder");
}

/// A second release of the same lease is `LockNotHeld`.
pub async fn release_twice_is_lock_not_held<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let key = unique("lock");
    let lease = take(l, &key, LONG).await;
    expect_ok(l.release(&lease).await, "first release");
    assert_not_held(l.release(&lease).await, &key, "second release");
}

/// A lapsed lease can neither release nor extend the lock a new holder took.
pub async fn stale_lease_cannot_release_new_holder<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let key = unique("lock");
    let stale = take(l, &key, SHORT).await;
    tokio::time::sleep(SHORT_WAIT).await;
    let current = take(l, &key, LONG).await;
    assert_not_held(
        l.release(&stale).await,
        &key,
        "release by the lapsed holder",
    );
    assert_not_held(
        l.extend(&stale, LONG).await,
        &key,
        "extend by the lapsed holder",
    );
    assert!(is_held(l, &key).await, "the new holder keeps the lock");
    expect_ok(l.release(&current).await, "release by the new holder");
}

/// Extending pushes the expiry: the lock is still held after the original TTL; the fencing
/// token stays.
pub async fn extend_pushes_expiry<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let key = unique("lock");
    let lease = take(l, &key, Duration::from_millis(500)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let extended = expect_ok(l.extend(&lease, Duration::from_secs(3)).await, "extend");
    assert_eq!(extended.key, lease.key);
    assert_eq!(
        extended.fencing_token, lease.fencing_token,
        "extend keeps the fencing token"
    );
    assert!(
        extended.expires_at > lease.expires_at,
        "extend moves expires_at later"
    );
    // Past the original expiry (500 ms after acquisition), well before the extended one.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let probe = expect_ok(
        l.try_acquire(&key, LONG).await,
        "try_acquire past the original TTL",
    );
    assert!(
        probe.is_none(),
        "an extended lease outlives its original TTL"
    );
    expect_ok(l.release(&extended).await, "release the extended lease");
}

/// An extension with a forged lease is `LockNotHeld`; the holder can still extend.
pub async fn extend_by_non_holder_is_lock_not_held<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let key = unique("lock");
    let lease = take(l, &key, LONG).await;
    assert_not_held(
        l.extend(&forged(&lease), LONG).await,
        &key,
        "extend with a forged token",
    );
    let extended = expect_ok(l.extend(&lease, LONG).await, "extend by the holder");
    expect_ok(l.release(&extended).await, "release");
}

/// Extending a lapsed lease is `LockNotHeld` even if nobody took the lock.
pub async fn extend_after_expiry_is_lock_not_held<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let key = unique("lock");
    let lease = take(l, &key, SHORT).await;
    tokio::time::sleep(SHORT_WAIT).await;
    assert_not_held(l.extend(&lease, LONG).await, &key, "extend after the TTL");
    assert_not_held(l.release(&lease).await, &key, "release after the TTL");
    assert!(!is_held(l, &key).await, "the lapsed lock is free");
}

/// `acquire` waits until the holder releases, then takes the lock.
pub async fn acquire_waits_for_release<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let key = unique("lock");
    let holder = take(&*lock, &key, LONG).await;
    let releaser = {
        let lock = lock.clone();
        let holder = holder.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            expect_ok(lock.release(&holder).await, "release by the holder");
        })
    };
    let start = Instant::now();
    let lease = expect_ok(
        lock.acquire(&key, LONG, Duration::from_secs(5)).await,
        "acquire while another task holds the lock for 200 ms",
    );
    let waited = start.elapsed();
    join(releaser, "releaser").await;
    assert!(
        waited >= Duration::from_millis(100),
        "acquire returned after {waited:?}, before the holder released"
    );
    assert!(lease.fencing_token > holder.fencing_token);
    expect_ok(lock.release(&lease).await, "release");
}

/// `acquire` on a lock held past the wait fails with `Timeout` naming the key.
pub async fn acquire_times_out<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let key = unique("lock");
    let holder = take(l, &key, LONG).await;
    let start = Instant::now();
    let err = expect_err(
        l.acquire(&key, LONG, Duration::from_millis(200)).await,
        ErrorCode::Timeout,
        "acquire of a held lock with a 200 ms wait",
    );
    let waited = start.elapsed();
    assert!(
        err.context_value("key").is_some(),
        "the timeout names the key: {err}"
    );
    assert!(
        waited >= Duration::from_millis(150),
        "gave up after {waited:?}, before the wait"
    );
    assert!(is_held(l, &key).await, "the holder still holds the lock");
    expect_ok(l.release(&holder).await, "release");
}

/// An empty key, a key with NUL or one over 1024 bytes is `InvalidInput`.
pub async fn invalid_lock_key_is_rejected<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let long = "k".repeat(1025);
    for (what, key) in [
        ("an empty", ""),
        ("a NUL-containing", "a\0b"),
        ("a 1025-byte", long.as_str()),
    ] {
        expect_err(
            l.try_acquire(key, LONG).await,
            ErrorCode::InvalidInput,
            &format!("try_acquire with {what} key"),
        );
        expect_err(
            l.acquire(key, LONG, Duration::from_millis(50)).await,
            ErrorCode::InvalidInput,
            &format!("acquire with {what} key"),
        );
    }
    let ok = format!("{}:{}", unique("lock"), "% _ * ? ' \\ é");
    let lease = take(l, &ok, LONG).await;
    expect_ok(
        l.release(&lease).await,
        "release of a key with special characters",
    );
}

/// A TTL outside 10 ms ..= 24 h is `InvalidInput` in acquire and extend.
pub async fn ttl_out_of_range_is_rejected<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let key = unique("lock");
    let too_long = Duration::from_secs(24 * 60 * 60 + 1);
    for ttl in [Duration::ZERO, Duration::from_millis(5), too_long] {
        expect_err(
            l.try_acquire(&key, ttl).await,
            ErrorCode::InvalidInput,
            &format!("try_acquire with TTL {ttl:?}"),
        );
        expect_err(
            l.acquire(&key, ttl, Duration::from_millis(50)).await,
            ErrorCode::InvalidInput,
            &format!("acquire with TTL {ttl:?}"),
        );
    }
    assert!(
        !is_held(l, &key).await,
        "rejected acquisitions take nothing"
    );
    let lease = take(l, &key, LONG).await;
    for ttl in [Duration::ZERO, too_long] {
        expect_err(
            l.extend(&lease, ttl).await,
            ErrorCode::InvalidInput,
            &format!("extend with TTL {ttl:?}"),
        );
    }
    expect_ok(
        l.release(&lease).await,
        "the lease survives rejected extensions",
    );
    // 10 ms is the shortest accepted TTL (`take` fails if it is refused).
    take(l, &unique("lock"), Duration::from_millis(10)).await;
}

/// `with_lock` holds the lock while the closure runs and releases it after `Ok`.
pub async fn with_lock_releases_on_ok<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let key = unique("lock");
    let inner = lock.clone();
    let inner_key = key.clone();
    let fencing = expect_ok(
        lock.with_lock(&key, LONG, Duration::from_secs(1), |lease| async move {
            let probe = inner.try_acquire(&inner_key, LONG).await?;
            assert!(probe.is_none(), "the lock is held while the closure runs");
            Ok(lease.fencing_token)
        })
        .await,
        "with_lock",
    );
    let after = take(&*lock, &key, LONG).await;
    assert!(
        after.fencing_token > fencing,
        "released after Ok and taken anew"
    );
}

/// `with_lock` releases the lock when the closure fails, and returns the closure's error.
pub async fn with_lock_releases_on_err<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let key = unique("lock");
    let err = expect_err(
        lock.with_lock(&key, LONG, Duration::from_secs(1), |_lease| async move {
            Err::<(), Error>(Error::internal("deliberate failure inside with_lock"))
        })
        .await,
        ErrorCode::Internal,
        "with_lock whose closure fails",
    );
    assert_eq!(err.message(), "deliberate failure inside with_lock");
    assert!(
        !is_held(&*lock, &key).await,
        "the lock is released after Err"
    );
}

/// `with_lock` releases the lock when the closure panics (and the panic goes on).
pub async fn with_lock_releases_on_panic<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let key = unique("lock");
    let task = {
        let lock = lock.clone();
        let key = key.clone();
        tokio::spawn(async move {
            lock.with_lock(&key, LONG, Duration::from_secs(1), |_lease| async move {
                if std::hint::black_box(true) {
                    panic!("deliberate panic inside with_lock (the conformance suite expects it)");
                }
                Ok(())
            })
            .await
        })
    };
    let outcome = task.await;
    assert!(
        outcome.as_ref().is_err_and(|e| e.is_panic()),
        "the closure's panic must propagate out of with_lock: {outcome:?}"
    );
    assert!(
        !is_held(&*lock, &key).await,
        "the lock is released after a panic"
    );
}

/// Locks on different keys (even when one key is a prefix of the other) do not interact.
pub async fn different_keys_are_independent<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let l = &*lock;
    let a = unique("lock");
    let b = format!("{a}:sub");
    let la = take(l, &a, LONG).await;
    let lb = take(l, &b, LONG).await;
    expect_ok(l.release(&la).await, "release a");
    assert!(is_held(l, &b).await, "releasing a leaves b held");
    assert!(!is_held(l, &a).await);
    let lb2 = expect_ok(l.extend(&lb, LONG).await, "extend b");
    expect_ok(l.release(&lb2).await, "release b");
}

/// 16 tasks `try_acquire` one free lock at once: exactly one gets it.
pub async fn race_try_acquire_single_winner<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let key = unique("lock");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let lock = lock.clone();
            let key = key.clone();
            tokio::spawn(async move { lock.try_acquire(&key, LONG).await })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        if expect_ok(
            join(task, "try_acquire task").await,
            "concurrent try_acquire",
        )
        .is_some()
        {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "exactly one concurrent try_acquire wins");
}

/// 16 tasks contend with `acquire`: never two in the critical section, every task gets its
/// turn, and fencing tokens increase in acquisition order.
pub async fn race_mutual_exclusion<L: Lock + ?Sized + 'static>(lock: Arc<L>) {
    let key = unique("lock");
    let inside = Arc::new(AtomicUsize::new(0));
    let max_inside = Arc::new(AtomicUsize::new(0));
    let counter = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let (lock, key) = (lock.clone(), key.clone());
            let (inside, max_inside) = (inside.clone(), max_inside.clone());
            let (counter, tokens) = (counter.clone(), tokens.clone());
            tokio::spawn(async move {
                let lease = expect_ok(
                    lock.acquire(&key, LONG, Duration::from_secs(20)).await,
                    &format!("task {t}: acquire"),
                );
                let now_inside = inside.fetch_add(1, Ordering::SeqCst) + 1;
                max_inside.fetch_max(now_inside, Ordering::SeqCst);
                if let Ok(mut v) = tokens.lock() {
                    v.push(lease.fencing_token);
                }
                // A read-modify-write spread over an await: it loses updates unless exclusive.
                let seen = counter.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                counter.store(seen + 1, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
                expect_ok(lock.release(&lease).await, &format!("task {t}: release"));
            })
        })
        .collect();
    for task in tasks {
        join(task, "contending task").await;
    }
    assert_eq!(
        max_inside.load(Ordering::SeqCst),
        1,
        "two tasks held the lock at once"
    );
    assert_eq!(
        counter.load(Ordering::SeqCst),
        16,
        "every task ran its critical section once"
    );
    let tokens = match tokens.lock() {
        Ok(v) => v.clone(),
        Err(p) => p.into_inner().clone(),
    };
    assert_eq!(tokens.len(), 16);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens must increase in acquisition order: {tokens:?}"
    );
}
