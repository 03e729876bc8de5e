//! The rate-limit suite: every point of [`RateLimiter`]'s contract (GCRA, burst = limit) as one
//! public async function, generic over the limiter, and
//! [`rate_limit_suite!`](crate::rate_limit_suite) to run them all.

use std::sync::Arc;
use std::time::Duration;

use kernel_core::{ErrorCode, Quota, RateDecision, RateLimiter};

use crate::support::{expect_err, expect_ok, join, unique};

/// Every rate-limit behaviour, in suite order (the one list; see the storage suite).
#[doc(hidden)]
#[macro_export]
macro_rules! __rate_limit_behaviours {
    ($callback:ident ! ($($args:tt)*)) => {
        $crate::$callback! { ($($args)*)
            burst_then_denied
            remaining_counts_down
            denied_has_retry_after_within_period
            refills_over_time
            denied_check_consumes_nothing
            cost_consumes_several
            cost_zero_peeks
            cost_over_limit_is_invalid
            zero_limit_is_invalid
            period_out_of_range_is_invalid
            invalid_key_is_rejected
            keys_are_independent
            reset_restores_burst
            reset_of_unknown_key_is_ok
            race_exactly_limit_allowed
        }
    };
}

/// The names of every rate-limit behaviour, in suite order.
pub const BEHAVIOURS: &[&str] = crate::__rate_limit_behaviours!(__behaviour_names!());

/// Runs the whole rate-limit suite against a driver, as `#[test]`s.
///
/// The argument is an async expression, evaluated afresh for every test, that yields
/// `(driver, guard)`; the guard lives until the test ends. Each behaviour runs on
/// `Arc<Driver>` (module `rate_limit_conformance::concrete`) and on `Arc<dyn RateLimiter>`
/// (`rate_limit_conformance::dyn_arc`).
///
/// ```text
/// kernel_testkit::rate_limit_suite!(async { (driver_memory::MemoryDriver::new(), ()) });
/// ```
#[macro_export]
macro_rules! rate_limit_suite {
    ($factory:expr $(,)?) => {
        $crate::__suite!(
            rate_limit_conformance,
            __rate_limit_behaviours,
            rate_limit,
            RateLimiter,
            $factory
        );
    };
}

async fn check<R: RateLimiter + ?Sized>(
    r: &R,
    key: &str,
    quota: &Quota,
    cost: u32,
) -> RateDecision {
    let what = format!("check {key:?} cost {cost} against {quota:?}");
    expect_ok(r.check(key, quota, cost).await, &what)
}

/// Spends the whole burst (one unit at a time), checking each is allowed.
async fn exhaust<R: RateLimiter + ?Sized>(r: &R, key: &str, quota: &Quota) {
    for i in 0..quota.limit {
        let d = check(r, key, quota, 1).await;
        assert!(
            d.allowed,
            "request {} of a burst of {} must be allowed: {d:?}",
            i + 1,
            quota.limit
        );
    }
}

/// A burst of `limit` requests is allowed; the next ones are denied.
pub async fn burst_then_denied<R: RateLimiter + ?Sized + 'static>(limiter: Arc<R>) {
    let r = &*limiter;
    let key = unique("rl");
    let quota = Quota::new(5, Duration::from_secs(10));
    exhaust(r, &key, &quota).await;
    for _ in 0..3 {
        let d = check(r, &key, &quota, 1).await;
        assert!(!d.allowed, "request past the burst must be denied: {d:?}");
        assert_eq!((d.limit, d.remaining), (5, 0));
    }
}

/// `remaining` counts down to 0; an allowed decision has no `retry_after` and a `reset_after`
/// within the period.
pub async fn remaining_counts_down<R: RateLimiter + ?Sized + 'static>(limiter: Arc<R>) {
    let r = &*limiter;
    let key = unique("rl");
    let quota = Quota::new(5, Duration::from_secs(10));
    for expected in [4, 3, 2, 1, 0] {
        let d = check(r, &key, &quota, 1).await;
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.remaining, expected, "remaining after a request: {d:?}");
        assert_eq!(d.limit, 5);
        assert_eq!(
            d.retry_after,
            Duration::ZERO,
            "allowed: retry_after is zero"
        );
        assert!(
            d.reset_after > Duration::ZERO && d.reset_after <= quota.period,
            "reset_after {:?} must be in (0, period]",
            d.reset_after
        );
    }
}

/// A denied decision says how long to wait: more than zero, at most one emission interval
/// (period / limit), never more than the period.
pub async fn denied_has_retry_after_within_period<R: RateLimiter + ?Sized + 'static>(
    limiter: Arc<R>,
) {
    let r = &*limiter;
    let key = unique("rl");
    let quota = Quota::new(4, Duration::from_secs(8));
    exhaust(r, &key, &quota).await;
    let d = check(r, &key, &quota, 1).await;
    assert!(!d.allowed, "{d:?}");
    assert!(
        d.retry_after > Duration::ZERO,
        "denied: retry_after > 0: {d:?}"
    );
    assert!(
        d.retry_after <= quota.period,
        "retry_after within the period: {d:?}"
    );
    let interval = quota.period / quota.limit;
    assert!(
        d.retry_after <= interval + Duration::from_millis(50),
        "one unit frees up after period/limit = {interval:?}, but retry_after is {:?}",
        d.retry_after
    );
    let d3 = check(r, &key, &quota, 3).await;
    assert!(
        !d3.allowed && d3.retry_after > d.retry_after,
        "a costlier request waits longer: {d3:?}"
    );
}

/// After waiting the `retry_after` of a denial, one more request is allowed.
pub async fn refills_over_time<R: RateLimiter + ?Sized + 'static>(limiter: Arc<R>) {
    let r = &*limiter;
    let key = unique("rl");
    // One unit a second: the exhausting checks must all land before a refill, also over TLS on
    // a loaded machine (one unit every 200 ms flaked there).
    let quota = Quota::new(5, Duration::from_secs(5));
    exhaust(r, &key, &quota).await;
    let denied = check(r, &key, &quota, 1).await;
    assert!(!denied.allowed, "denied once exhausted: {denied:?}");
    tokio::time::sleep(denied.retry_after + Duration::from_millis(30)).await;
    let d = check(r, &key, &quota, 1).await;
    assert!(
        d.allowed,
        "allowed after waiting retry_after = {:?}: {d:?}",
        denied.retry_after
    );
}

/// A denied check consumes nothing: waiting one interval is enough however often it was denied.
pub async fn denied_check_consumes_nothing<R: RateLimiter + ?Sized + 'static>(limiter: Arc<R>) {
    let r = &*limiter;
    let key = unique("rl");
    // One unit every 2 s: wide enough that the denials below all land before a refill even on
    // a loaded machine (a 500 ms interval flaked under a full parallel test run).
    let quota = Quota::new(2, Duration::from_secs(4));
    exhaust(r, &key, &quota).await;
    let first = check(r, &key, &quota, 1).await;
    assert!(!first.allowed, "{first:?}");
    let mut previous = first.retry_after;
    for _ in 0..5 {
        let again = check(r, &key, &quota, 1).await;
        assert!(!again.allowed, "{again:?}");
        // A denial that consumed would push the wait back.
        assert!(
            again.retry_after <= previous,
            "{again:?} after {previous:?}"
        );
        previous = again.retry_after;
    }
    tokio::time::sleep(first.retry_after + Duration::from_millis(30)).await;
    let d = check(r, &key, &quota, 1).await;
    assert!(d.allowed, "denials must not push the refill back: {d:?}");
}

/// A cost above 1 consumes that many units; a cost larger than what is left is denied.
pub async fn cost_consumes_several<R: RateLimiter + ?Sized + 'static>(limiter: Arc<R>) {
    let r = &*limiter;
    let key = unique("rl");
    // One unit every 10 s: no refill between the checks however slow the machine (one unit a
    // second refilled during a loaded run and left 3 where 2 were expected).
    let quota = Quota::new(10, Duration::from_secs(100));
    let d = check(r, &key, &quota, 4).await;
    assert_eq!((d.allowed, d.remaining), (true, 6), "{d:?}");
    let d = check(r, &key, &quota, 4).await;
    assert_eq!((d.allowed, d.remaining), (true, 2), "{d:?}");
    let d = check(r, &key, &quota, 4).await;
    assert_eq!(
        (d.allowed, d.remaining),
        (false, 2),
        "cost 4 with 2 left is denied: {d:?}"
    );
    let d = check(r, &key, &quota, 2).await;
    assert_eq!((d.allowed, d.remaining), (true, 0), "{d:?}");
    assert!(!check(r, &key, &quota, 1).await.allowed);
}

/// Cost 0 peeks: allowed, reports what is left, consumes nothing.
pub async fn cost_zero_peeks<R: RateLimiter + ?Sized + 'static>(limiter: Arc<R>) {
    let r = &*limiter;
    let key = unique("rl");
    let quota = Quota::new(3, Duration::from_secs(10));
    for _ in 0..3 {
        let d = check(r, &key, &quota, 0).await;
        assert_eq!(
            (d.allowed, d.remaining),
            (true, 3),
            "peek on a fresh key: {d:?}"
        );
    }
    assert_eq!(check(r, &key, &quota, 1).await.remaining, 2);
    for _ in 0..3 {
        assert_eq!(
            check(r, &key, &quota, 0).await.remaining,
            2,
            "peeking consumes nothing"
        );
    }
    assert_eq!(check(r, &key, &quota, 2).await.remaining, 0);
    assert_eq!(check(r, &key, &quota, 0).await.remaining, 0);
}

/// A cost above the limit is `InvalidInput` (it could never pass) and consumes nothing.
pub async fn cost_over_limit_is_invalid<R: RateLimiter + ?Sized + 'static>(limiter: Arc<R>) {
    let r = &*limiter;
    let key = unique("rl");
    let quota = Quota::new(3, Duration::from_secs(10));
    let err = expect_err(
        r.check(&key, &quota, 4).await,
        ErrorCode::InvalidInput,
        "cost 4 on a limit of 3",
    );
    assert!(
        err.context_value("key").is_some(),
        "the error names the key: {err}"
    );
    let d = check(r, &key, &quota, 3).await;
    assert!(d.allowed, "the rejected check consumed nothing: {d:?}");
}

/// A quota limit of 0 is `InvalidInput`.
pub async fn zero_limit_is_invalid<R: RateLimiter + ?Sized + 'static>(limiter: Arc<R>) {
    let r = &*limiter;
    let key = unique("rl");
    let quota = Quota::new(0, Duration::from_secs(1));
    for cost in [0, 1] {
        expect_err(
            r.check(&key, &quota, cost).await,
            ErrorCode::InvalidInput,
            &format!("limit 0, cost {cost}"),
        );
    }
}

/// A period under 1 ms or over 366 days is `InvalidInput`.
pub async fn period_out_of_range_is_invalid<R: RateLimiter + ?Sized + 'static>(limiter: Arc<R>) {
    let r = &*limiter;
    let key = unique("rl");
    for period in [
        Duration::ZERO,
        Duration::from_micros(500),
        Duration::from_secs(367 * 86_400),
    ] {
        expect_err(
            r.check(&key, &Quota::new(5, period), 1).await,
            ErrorCode::InvalidInput,
            &format!("quota period {period:?}"),
        );
    }
    assert!(
        check(r, &key, &Quota::new(5, Duration::from_millis(1)), 1)
            .await
            .allowed
    );
}

/// An empty key, a key with NUL or one over 1024 bytes is `InvalidInput` in check and reset.
pub async fn invalid_key_is_rejected<R: RateLimiter + ?Sized + 'static>(limiter: Arc<R>) {
    let r = &*limiter;
    let quota = Quota::per_second(5);
    let long = "k".repeat(1025);
    for (what, key) in [
        ("an empty", ""),
        ("a NUL-containing", "a\0b"),
        ("a 1025-byte", long.as_str()),
    ] {
        expect_err(
            r.check(key, &quota, 1).await,
            ErrorCode::InvalidInput,
            &format!("check with {what} key"),
        );
        expect_err(
            r.reset(key).await,
            ErrorCode::InvalidInput,
            &format!("reset with {what} key"),
        );
    }
    let special = format!("{}:% _ * ? ' \\ é", unique("rl"));
    assert!(
        check(r, &special, &quota, 1).await.allowed,
        "special characters are fine"
    );
}

/// Keys have separate budgets, even when one key is a prefix of another.
pub async fn keys_are_independent<R: RateLimiter + ?Sized + 'static>(limiter: Arc<R>) {
    let r = &*limiter;
    let a = unique("rl");
    let b = format!("{a}:x");
    let quota = Quota::new(3, Duration::from_secs(10));
    exhaust(r, &a, &quota).await;
    assert!(!check(r, &a, &quota, 1).await.allowed);
    let d = check(r, &b, &quota, 1).await;
    assert_eq!(
        (d.allowed, d.remaining),
        (true, 2),
        "another key has its own burst: {d:?}"
    );
}

/// `reset` restores the full burst of a key, and only that key.
pub async fn reset_restores_burst<R: RateLimiter + ?Sized + 'static>(limiter: Arc<R>) {
    let r = &*limiter;
    let key = unique("rl");
    let other = unique("rl");
    let quota = Quota::new(4, Duration::from_secs(10));
    exhaust(r, &key, &quota).await;
    exhaust(r, &other, &quota).await;
    expect_ok(r.reset(&key).await, "reset");
    exhaust(r, &key, &quota).await;
    assert!(
        !check(r, &key, &quota, 1).await.allowed,
        "the burst is limit again, not more"
    );
    assert!(
        !check(r, &other, &quota, 1).await.allowed,
        "reset touched only its key"
    );
}

/// `reset` of a key never used succeeds and leaves a full burst.
pub async fn reset_of_unknown_key_is_ok<R: RateLimiter + ?Sized + 'static>(limiter: Arc<R>) {
    let r = &*limiter;
    let key = unique("rl");
    expect_ok(r.reset(&key).await, "reset of an unknown key");
    expect_ok(r.reset(&key).await, "second reset");
    let d = check(r, &key, &Quota::new(2, Duration::from_secs(10)), 0).await;
    assert_eq!(d.remaining, 2);
}

/// 20 concurrent checks against a quota of 10: exactly 10 are allowed.
pub async fn race_exactly_limit_allowed<R: RateLimiter + ?Sized + 'static>(limiter: Arc<R>) {
    let key = unique("rl");
    // One unit every 10 s, so no refill lands among the 20 checks on a slow machine.
    let quota = Quota::new(10, Duration::from_secs(100));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let limiter = limiter.clone();
            let key = key.clone();
            tokio::spawn(async move { limiter.check(&key, &quota, 1).await })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        let d = expect_ok(join(task, "check task").await, "concurrent check");
        if d.allowed {
            allowed += 1;
        }
    }
    assert_eq!(
        allowed, 10,
        "concurrent checks must never allow more (or fewer) than the quota"
    );
}
