//! The fault suite: real servers, private to the test, killed with `SIGKILL` and started again
//! (or their connections cut through a proxy) under load, and the proof that nothing the kernel
//! acknowledged was lost, duplicated or left with a gap, and that every error a caller saw was
//! classified as docs/contract.md says ("Error status per operation").
//!
//! See docs/reliability.md for what each scenario checks and the figures of recent runs. Run
//! with `cargo test -p kernel-integration-tests --test faults -- --nocapture` to see one line of
//! figures per scenario on stderr; with `FAULTS_TRACE=1`, also every error a caller saw and the
//! kill / restart of each server, with the time.
//!
//! `a_call_whose_first_attempt_landed_is_reported_maybe_applied` fails until the retry layer
//! keeps the `MaybeApplied` of an earlier attempt (docs/reliability.md, "Known problem").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kernel_bootstrap::{Kernel, KernelConfig};
use kernel_core::{
    Entry, Error, ErrorCode, ErrorStatus, EventFilter, ExpectedVersion, NewEvent, OperationId,
    PutOptions, ReadStream, RecordedEvent, Uuid, Value, Write, json,
};
use kernel_integration_tests::vars;
use kernel_testkit::private::{PrivatePostgres, PrivateRedis};
use kernel_testkit::proxy::FaultProxy;
use tokio::sync::watch;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// Timing. Load phases are durations on purpose (the load must overlap the fault); everything
// that waits for a state polls for it with a deadline.
// ---------------------------------------------------------------------------------------------

/// Concurrent appenders, each on its own stream.
const APPENDERS: usize = 16;
/// Concurrent compare-and-set workers on one counter.
const CAS_WORKERS: usize = 8;
/// Load before the fault.
const LOAD_BEFORE: Duration = Duration::from_secs(2);
/// How long a killed server stays down while the load keeps running against it.
const OUTAGE: Duration = Duration::from_millis(1500);
/// Load after recovery.
const LOAD_AFTER: Duration = Duration::from_secs(2);
/// How long connections are cut every [`CUT_EVERY`] in the proxy scenarios.
const CUTTING: Duration = Duration::from_secs(4);
/// The period of the cuts.
const CUT_EVERY: Duration = Duration::from_millis(300);
/// Pause of a caller before it repeats a failed call.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long a caller may keep retrying its last call once the load is told to stop, and how
/// long the kernel may take to serve again after a fault.
const SETTLE: Duration = Duration::from_secs(30);
/// A whole scenario, the private server's start included.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(120);
/// Entries of the counter's history of recent writes (see [`cas_worker`]).
const HISTORY: usize = 128;

// ---------------------------------------------------------------------------------------------
// Kernels on the servers under test.
// ---------------------------------------------------------------------------------------------

/// Short timeouts, few quick retries and a short breaker cool-down, so a dead server is felt at
/// once and a restarted one is used again within a fraction of a second.
const LAYERS: &[(&str, &str)] = &[
    ("KERNEL_RETRY_MAX_ATTEMPTS", "3"),
    ("KERNEL_RETRY_INITIAL_BACKOFF_MS", "20"),
    ("KERNEL_RETRY_MAX_BACKOFF_MS", "200"),
    ("KERNEL_RETRY_MAX_ELAPSED_MS", "1000"),
    ("KERNEL_TIMEOUTS_OPERATION_MS", "4000"),
    ("KERNEL_CIRCUIT_BREAKER_FAILURE_THRESHOLD", "5"),
    ("KERNEL_CIRCUIT_BREAKER_COOL_DOWN_MS", "250"),
];

async fn postgres_kernel(url: &str) -> Arc<Kernel> {
    let mut env = vec![
        ("KERNEL_STORAGE_MODE", "postgres"),
        ("DATABASE_URL", url),
        ("KERNEL_POSTGRES_MIGRATE_ON_BOOT", "true"),
        ("KERNEL_POSTGRES_POOL_SIZE", "8"),
        ("KERNEL_POSTGRES_CONNECT_TIMEOUT_MS", "1000"),
        ("KERNEL_POSTGRES_POOL_WAIT_TIMEOUT_MS", "2000"),
        ("KERNEL_POSTGRES_STATEMENT_TIMEOUT_MS", "3000"),
        ("KERNEL_POSTGRES_SUBSCRIPTION_POLL_INTERVAL_MS", "200"),
    ];
    env.extend_from_slice(LAYERS);
    boot(&env).await
}

async fn redis_kernel(url: &str, prefix: &str) -> Arc<Kernel> {
    let mut env = vec![
        ("KERNEL_STORAGE_MODE", "redis"),
        ("REDIS_URL", url),
        ("KERNEL_REDIS_KEY_PREFIX", prefix),
        ("KERNEL_REDIS_POOL_SIZE", "4"),
        ("KERNEL_REDIS_CONNECT_TIMEOUT_MS", "1000"),
        ("KERNEL_REDIS_OPERATION_TIMEOUT_MS", "1000"),
    ];
    env.extend_from_slice(LAYERS);
    boot(&env).await
}

async fn boot(env: &[(&str, &str)]) -> Arc<Kernel> {
    let config = KernelConfig::from_vars(vars(env))
        .unwrap_or_else(|e| panic!("the fault suite's configuration is invalid: {e}"));
    match Kernel::boot(config).await {
        Ok(kernel) => Arc::new(kernel),
        Err(e) => panic!("the kernel does not boot against the server under test: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Faults.
// ---------------------------------------------------------------------------------------------

/// A server the test can crash and start again.
trait Crashable {
    fn crash(&mut self);
    fn start_again(&mut self) -> impl Future<Output = ()> + Send;
}

impl Crashable for PrivatePostgres {
    fn crash(&mut self) {
        self.kill();
    }

    fn start_again(&mut self) -> impl Future<Output = ()> + Send {
        self.restart()
    }
}

impl Crashable for PrivateRedis {
    fn crash(&mut self) {
        self.kill();
    }

    fn start_again(&mut self) -> impl Future<Output = ()> + Send {
        self.restart()
    }
}

/// What a fault did and when.
#[derive(Debug, Clone, Copy)]
struct FaultWindow {
    /// The fault began (server killed, first cut).
    began: Instant,
    /// The fault ended (the restarted server accepts connections, last cut).
    ended: Instant,
    /// Faults that hit live connections: 1 for a kill, the cuts that found connections to cut.
    hits: usize,
}

/// Kills `server` after [`LOAD_BEFORE`] of load, leaves it down for [`OUTAGE`], and starts it
/// again.
async fn kill_and_restart<S: Crashable>(server: &mut S, progress: &Progress) -> FaultWindow {
    progress
        .wait_for_successes(1, "the first successful write")
        .await;
    tokio::time::sleep(LOAD_BEFORE).await;
    server.crash();
    trace(format_args!("server killed"));
    let began = Instant::now();
    tokio::time::sleep(OUTAGE).await;
    server.start_again().await;
    trace(format_args!("server restarted"));
    FaultWindow {
        began,
        ended: Instant::now(),
        hits: 1,
    }
}

/// Cuts every connection through `proxy` every [`CUT_EVERY`] for [`CUTTING`], after
/// [`LOAD_BEFORE`] of load. With `drop_replies`, the middle of the run also swallows every
/// reply for a second (requests arrive and run, answers never come back), then cuts.
async fn cut_repeatedly(
    proxy: &FaultProxy,
    progress: &Progress,
    drop_replies: bool,
) -> FaultWindow {
    progress
        .wait_for_successes(1, "the first successful write")
        .await;
    tokio::time::sleep(LOAD_BEFORE).await;
    let began = Instant::now();
    let mut ended = began;
    let mut hits = 0;
    let mut swallowed = !drop_replies;
    while began.elapsed() < CUTTING {
        if !swallowed && began.elapsed() >= CUTTING / 2 {
            swallowed = true;
            proxy.drop_replies(true);
            tokio::time::sleep(Duration::from_secs(1)).await;
            // No connection that lost replies may live on (its replies would pair with the
            // wrong requests): refuse new ones, cut, and only then let replies through again.
            proxy.refuse(true);
            proxy.cut();
            proxy.drop_replies(false);
            proxy.refuse(false);
        }
        if proxy.live() > 0 {
            hits += 1;
        }
        proxy.cut();
        ended = Instant::now();
        tokio::time::sleep(CUT_EVERY).await;
    }
    FaultWindow { began, ended, hits }
}

// ---------------------------------------------------------------------------------------------
// Errors the callers saw, and what the contract allows.
// ---------------------------------------------------------------------------------------------

/// Which kind of call failed: the contract's table allows different statuses per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Call {
    /// `append`: Temporary, MaybeApplied (retry with the same ids), RetriesExhausted.
    Append,
    /// Reads (`subscribe`, a subscription's feed, `read_all`, `read_stream`,
    /// `head_position`, `get`): Temporary or RetriesExhausted, never MaybeApplied.
    Read,
    /// A conditional `put`: Temporary, MaybeApplied (read first), RetriesExhausted.
    ConditionalPut,
    /// A conditional put with an operation id (`write_once`): Temporary, MaybeApplied,
    /// RetriesExhausted — each answered by repeating the same request.
    WriteOnce,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Append => "append",
            Call::Read => "read",
            Call::ConditionalPut => "cas_put",
            Call::WriteOnce => "write_once",
        }
    }

    /// Whether the contract allows `error` for this kind of call when the server dies or the
    /// connection is cut. Codes: `Unavailable` (connection refused or lost, server starting up
    /// or shutting down, circuit open) and `Timeout` (an attempt, a pool wait or a statement
    /// past its deadline) are the only codes docs/operations.md ("Failure behaviour") gives for
    /// an unreachable backend. Statuses: per docs/contract.md, "Error status per operation".
    fn allows(self, error: &Error) -> bool {
        let code = matches!(error.code(), ErrorCode::Unavailable | ErrorCode::Timeout);
        let status = match self {
            Call::Append | Call::ConditionalPut | Call::WriteOnce => matches!(
                error.status(),
                ErrorStatus::Temporary | ErrorStatus::MaybeApplied | ErrorStatus::RetriesExhausted
            ),
            Call::Read => matches!(
                error.status(),
                ErrorStatus::Temporary | ErrorStatus::RetriesExhausted
            ),
        };
        code && status
    }
}

/// With `FAULTS_TRACE` set, prints `msg` with the time: every error a caller sees, and the
/// kill and restart of a server (for a look at a run's timeline).
fn trace(msg: std::fmt::Arguments<'_>) {
    if std::env::var_os("FAULTS_TRACE").is_some() {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!(
            "faults trace {}.{:03}: {msg}",
            at.as_secs(),
            at.subsec_millis()
        );
    }
}

/// Every error the callers saw, by class, and the ones the contract does not allow.
#[derive(Debug, Default)]
struct Errors {
    inner: Mutex<ErrorsInner>,
}

#[derive(Debug, Default)]
struct ErrorsInner {
    /// `code/status` -> count, over every call.
    classes: BTreeMap<String, u64>,
    /// Errors the contract does not allow here, with the call (at most a few kept).
    violations: Vec<String>,
    violation_count: u64,
    total: u64,
}

impl Errors {
    fn record(&self, call: Call, error: &Error) {
        trace(format_args!("{}: {error}", call.name()));
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.total += 1;
        *inner
            .classes
            .entry(format!("{}/{}", error.code(), error.status()))
            .or_default() += 1;
        if !call.allows(error) {
            inner.violation_count += 1;
            if inner.violations.len() < 10 {
                inner.violations.push(format!("{}: {error}", call.name()));
            }
        }
    }

    /// A failure the test itself finds (a wrong answer, not an error code).
    fn violation(&self, what: String) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.violation_count += 1;
        if inner.violations.len() < 10 {
            inner.violations.push(what);
        }
    }

    fn total(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    fn classes(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.classes.is_empty() {
            return "none".to_owned();
        }
        inner
            .classes
            .iter()
            .map(|(class, n)| format!("{class}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn violations(&self) -> (u64, Vec<String>) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (inner.violation_count, inner.violations.clone())
    }
}

/// Whether the caller may repeat a call that failed with `error` (after a pause): the statuses
/// that say "transient" in the contract. `Permanent` is never repeated.
fn transient(error: &Error) -> bool {
    matches!(
        error.status(),
        ErrorStatus::Temporary | ErrorStatus::MaybeApplied | ErrorStatus::RetriesExhausted
    )
}

/// Successful writes with their completion instants, shared by the workers and the fault
/// driver (to wait for load, and to measure recovery).
#[derive(Debug, Default)]
struct Progress {
    times: Mutex<Vec<Instant>>,
}

impl Progress {
    fn success(&self) {
        self.times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Instant::now());
    }

    fn count(&self) -> usize {
        self.times.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The first success completed after `t`.
    fn first_after(&self, t: Instant) -> Option<Instant> {
        self.times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .filter(|s| *s > t)
            .min()
    }

    fn count_after(&self, t: Instant) -> usize {
        self.times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| **s > t)
            .count()
    }

    async fn wait_for_successes(&self, n: usize, what: &str) {
        let deadline = Instant::now() + SETTLE;
        while self.count() < n {
            assert!(Instant::now() < deadline, "no {what} within {SETTLE:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until a write succeeds after `t` and returns how long after `t` it completed.
    async fn recovery_after(&self, t: Instant, what: &str) -> Duration {
        let deadline = Instant::now() + SETTLE;
        loop {
            if let Some(first) = self.first_after(t) {
                return first - t;
            }
            assert!(
                Instant::now() < deadline,
                "the kernel did not recover: no successful {what} within {SETTLE:?} after the \
                 fault ended"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Repeats a read until it succeeds (recording each error), for at most [`SETTLE`].
async fn read_until_ok<T, F, Fut>(errors: &Errors, what: &str, mut read: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = kernel_core::Result<T>>,
{
    let deadline = Instant::now() + SETTLE;
    loop {
        match read().await {
            Ok(v) => return v,
            Err(e) => {
                errors.record(Call::Read, &e);
                assert!(
                    transient(&e) && Instant::now() < deadline,
                    "{what} keeps failing after the fault: {e}"
                );
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The event load: appenders and a live subscriber.
// ---------------------------------------------------------------------------------------------

/// What an appender's append returned for one event.
#[derive(Debug, Clone)]
struct Acked {
    stream: String,
    version: u64,
    position: u64,
}

#[derive(Debug, Default)]
struct AppenderReport {
    stream: String,
    acked: Vec<(Uuid, Acked)>,
    /// The ids of the batch still unsettled when the appender had to give up (may or may not
    /// be stored).
    unsettled: Vec<Uuid>,
    /// Batches that reading first found stored after failed appends whose errors said
    /// `MaybeApplied` / only `RetriesExhausted`.
    landed_maybe_applied: u64,
    landed_retries_exhausted: u64,
    /// Appends answered `written: false` with no failure seen before: an attempt lost its
    /// answer and the kernel's retry layer repeated it, idempotently.
    repaired_by_retry: u64,
}

/// Appends batches of 1-3 events with caller-chosen ids to its own stream, each under
/// `Exact(last acknowledged version)`; a failed append is repeated with the same batch (same
/// ids) after a pause while its status is transient, and its events count as acknowledged only
/// when an append returns `Ok`. After `stop` it finishes the batch in hand (for at most
/// [`SETTLE`]), so every event it ever sent ends acknowledged.
async fn appender(
    kernel: Arc<Kernel>,
    stream: String,
    stop: Arc<AtomicBool>,
    errors: Arc<Errors>,
    progress: Arc<Progress>,
) -> AppenderReport {
    let mut report = AppenderReport {
        stream: stream.clone(),
        ..AppenderReport::default()
    };
    let mut version = 0u64;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let size = 1 + n % 3;
        let batch: Vec<NewEvent> = (0..size)
            .map(|k| {
                NewEvent::new("Ticked", json!({"stream": stream, "n": n + k}))
                    .with_id(Uuid::now_v7())
            })
            .collect();
        let mut stopped_at: Option<Instant> = None;
        // The statuses of this batch's failed appends, and whether reading first found the
        // batch stored after one of them.
        let mut failures: Vec<ErrorStatus> = Vec::new();
        let mut landed_seen = false;
        loop {
            let result = kernel
                .events()
                .append(&stream, ExpectedVersion::Exact(version), batch.clone())
                .await;
            match result {
                Ok(r) => {
                    progress.success();
                    if !r.written && !landed_seen {
                        // Stored by an attempt whose answer was lost, and repeated by the
                        // kernel's retry layer (or after the last read-first check).
                        report.repaired_by_retry += 1;
                    }
                    let expected_versions = (version + 1)..=(version + size);
                    if r.versions() != expected_versions || r.positions.len() as u64 != size {
                        errors.violation(format!(
                            "append to {stream} at Exact({version}) of {size} events answered \
                             versions {:?} positions {:?}",
                            r.versions(),
                            r.positions
                        ));
                    }
                    for ((event, v), position) in
                        batch.iter().zip(expected_versions).zip(&r.positions)
                    {
                        report.acked.push((
                            event.id,
                            Acked {
                                stream: stream.clone(),
                                version: v,
                                position: *position,
                            },
                        ));
                    }
                    version += size;
                    break;
                }
                Err(e) => {
                    errors.record(Call::Append, &e);
                    failures.push(e.status());
                    if !landed_seen {
                        // Read first: did a failed append of this batch land? (One attempt at
                        // reading: while the server is down the read fails too, and the next
                        // failure checks again.)
                        let read = kernel
                            .events()
                            .read_stream(&stream, ReadStream::forward().from(version + 1).limit(1))
                            .await;
                        match read {
                            Ok(stored) if stored.first().is_some_and(|s| s.id == batch[0].id) => {
                                landed_seen = true;
                                // No other call of this appender was in flight: one of the failed
                                // ones stored the batch, and its error must have said so.
                                if failures.contains(&ErrorStatus::MaybeApplied) {
                                    report.landed_maybe_applied += 1;
                                } else if failures.contains(&ErrorStatus::RetriesExhausted) {
                                    // The contract's answer to RetriesExhausted for an append is
                                    // the same as to MaybeApplied (repeat with the same ids), so
                                    // nothing is lost; but the retry layer should have kept the
                                    // MaybeApplied of the attempt that landed: counted here,
                                    // asserted by
                                    // `a_call_whose_first_attempt_landed_is_reported_maybe_applied`.
                                    report.landed_retries_exhausted += 1;
                                } else {
                                    errors.violation(format!(
                                        "an append to {stream} failed {failures:?} (\"not \
                                         applied\") but had landed"
                                    ));
                                }
                            }
                            Ok(_) => {}
                            Err(e) => errors.record(Call::Read, &e),
                        }
                    }
                    if !transient(&e) {
                        // Not something the caller may repeat: the scenario fails on the
                        // recorded violation; stop here with the batch unsettled.
                        report.unsettled = batch.iter().map(|e| e.id).collect();
                        return report;
                    }
                    if stop.load(Ordering::SeqCst) {
                        let since = *stopped_at.get_or_insert_with(Instant::now);
                        if since.elapsed() > SETTLE {
                            report.unsettled = batch.iter().map(|e| e.id).collect();
                            return report;
                        }
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        n += size;
    }
    report
}

#[derive(Debug, Default)]
struct SubscriberReport {
    /// (position, id) of every event delivered, in delivery order.
    seen: Vec<(u64, Uuid)>,
    /// Times the feed ended with an error (and was resumed).
    resumed: u64,
    /// Times the feed ended without an error (the contract says it ends only on error or
    /// shutdown).
    ended_quietly: u64,
}

/// Subscribes from `after` to every event and records what it is given; when the feed fails it
/// resubscribes from the last position it saw. Publishes that position in `last`.
async fn subscriber(
    kernel: Arc<Kernel>,
    after: u64,
    last: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    errors: Arc<Errors>,
) -> SubscriberReport {
    let mut report = SubscriberReport::default();
    let mut position = after;
    'resubscribe: loop {
        let opened = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            opened = kernel.events().subscribe(position, EventFilter::all()) => opened,
        };
        let mut feed = match opened {
            Ok(feed) => feed,
            Err(e) => {
                errors.record(Call::Read, &e);
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(RETRY_PAUSE) => continue 'resubscribe,
                }
            }
        };
        loop {
            let item = tokio::select! {
                _ = stop.wait_for(|s| *s) => break 'resubscribe,
                item = feed.next() => item,
            };
            match item {
                Some(Ok(event)) => {
                    report.seen.push((event.position, event.id));
                    position = event.position;
                    last.store(position, Ordering::SeqCst);
                }
                Some(Err(e)) => {
                    errors.record(Call::Read, &e);
                    report.resumed += 1;
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break 'resubscribe,
                        _ = tokio::time::sleep(RETRY_PAUSE) => continue 'resubscribe,
                    }
                }
                None => {
                    report.ended_quietly += 1;
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break 'resubscribe,
                        _ = tokio::time::sleep(RETRY_PAUSE) => continue 'resubscribe,
                    }
                }
            }
        }
    }
    report
}

/// The appenders and the subscriber of one scenario.
struct EventLoad {
    kernel: Arc<Kernel>,
    head_before: u64,
    stop: Arc<AtomicBool>,
    stop_subscriber: watch::Sender<bool>,
    subscribed_up_to: Arc<AtomicU64>,
    appenders: Vec<JoinHandle<AppenderReport>>,
    subscriber: JoinHandle<SubscriberReport>,
    errors: Arc<Errors>,
    progress: Arc<Progress>,
}

impl EventLoad {
    async fn start(kernel: Arc<Kernel>) -> EventLoad {
        let errors = Arc::new(Errors::default());
        let progress = Arc::new(Progress::default());
        let head_before =
            read_until_ok(&errors, "head_position", || kernel.events().head_position()).await;
        let stop = Arc::new(AtomicBool::new(false));
        let (stop_subscriber, stopped) = watch::channel(false);
        let subscribed_up_to = Arc::new(AtomicU64::new(head_before));
        let subscriber = tokio::spawn(subscriber(
            kernel.clone(),
            head_before,
            subscribed_up_to.clone(),
            stopped,
            errors.clone(),
        ));
        let run = Uuid::new_v4().simple().to_string();
        let appenders = (0..APPENDERS)
            .map(|i| {
                tokio::spawn(appender(
                    kernel.clone(),
                    format!("fault{}-{i}", &run[..12]),
                    stop.clone(),
                    errors.clone(),
                    progress.clone(),
                ))
            })
            .collect();
        EventLoad {
            kernel,
            head_before,
            stop,
            stop_subscriber,
            subscribed_up_to,
            appenders,
            subscriber,
            errors,
            progress,
        }
    }

    /// Stops the load, reads back everything stored, and checks it.
    async fn finish(mut self, scenario: &str, fault: FaultWindow) -> Figures {
        let recovery = self.progress.recovery_after(fault.ended, "append").await;
        tokio::time::sleep(LOAD_AFTER).await;
        let acked_after = self.progress.count_after(fault.ended);
        let reports = self.stop_appenders(scenario).await;
        let mut figures = self.verify(scenario, &reports).await;
        figures.recovery_ms = recovery.as_millis();
        figures.acked_after_recovery = acked_after;
        figures.fault_ms = (fault.ended - fault.began).as_millis();
        figures.fault_hits = fault.hits;
        figures
    }

    /// Tells the appenders to stop and waits until each has settled its last batch.
    async fn stop_appenders(&mut self, scenario: &str) -> Vec<AppenderReport> {
        self.stop.store(true, Ordering::SeqCst);
        let mut reports = Vec::new();
        for handle in std::mem::take(&mut self.appenders) {
            match handle.await {
                Ok(report) => reports.push(report),
                Err(e) => panic!("{scenario}: an appender panicked: {e}"),
            }
        }
        reports
    }

    /// Reads back everything stored, lets the subscriber reach the head, stops it, and checks
    /// the log, the streams and the subscriber against what the appenders were told.
    async fn verify(self, scenario: &str, reports: &[AppenderReport]) -> Figures {
        let kernel = &self.kernel;
        let errors = &self.errors;
        let head = read_until_ok(errors, "head_position", || kernel.events().head_position()).await;
        let stored = read_log(kernel, errors, self.head_before).await;

        // The subscriber must reach the head on its own; then it is stopped.
        let deadline = Instant::now() + SETTLE;
        while self.subscribed_up_to.load(Ordering::SeqCst) < head && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.stop_subscriber.send(true);
        let sub = match self.subscriber.await {
            Ok(report) => report,
            Err(e) => panic!("{scenario}: the subscriber panicked: {e}"),
        };

        let mut per_stream = HashMap::new();
        for report in reports {
            let events = read_until_ok(errors, "read_stream", || {
                kernel
                    .events()
                    .read_stream(&report.stream, ReadStream::forward().limit(100_000))
            })
            .await;
            per_stream.insert(report.stream.clone(), events);
        }
        check_events(
            scenario,
            self.head_before,
            head,
            &stored,
            &per_stream,
            reports,
            &sub,
            errors,
        )
    }
}

/// Every event after `after`, read in pages.
async fn read_log(kernel: &Kernel, errors: &Errors, after: u64) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut from = after;
    let filter = EventFilter::all();
    loop {
        let page = read_until_ok(errors, "read_all", || {
            kernel.events().read_all(from, &filter, 1000)
        })
        .await;
        let Some(last) = page.last() else {
            return all;
        };
        from = last.position;
        all.extend(page);
    }
}

/// The figures of one scenario; all the counts of failures must be zero.
#[derive(Debug, Default)]
struct Figures {
    scenario: String,
    acknowledged: usize,
    lost: usize,
    duplicated: usize,
    /// Missing global positions in `head_before+1..=head`, plus positions out of order.
    gaps: usize,
    /// Missing or repeated versions within streams, and streams whose `read_stream` disagrees
    /// with `read_all`.
    stream_gaps: usize,
    /// Acknowledged events stored elsewhere than their append answered (stream, version,
    /// position).
    misplaced: usize,
    /// Stored events no appender ever sent, or whose append it gave up on.
    unacknowledged: usize,
    unsettled: usize,
    /// Batches whose failed append had landed, found by reading first: after a `MaybeApplied`
    /// (as the contract says), and after only `RetriesExhausted` (the caller was not told the
    /// append may have landed).
    landed_maybe_applied: u64,
    landed_retries_exhausted: u64,
    /// See [`AppenderReport::repaired_by_retry`].
    repaired_by_retry: u64,
    sub_missed: usize,
    sub_duplicated: usize,
    sub_out_of_order: usize,
    sub_resumed: u64,
    sub_ended_quietly: u64,
    /// From the kill to the restarted server accepting connections, or from the first cut to
    /// the last.
    fault_ms: u128,
    /// See [`FaultWindow::hits`].
    fault_hits: usize,
    recovery_ms: u128,
    acked_after_recovery: usize,
    errors_seen: u64,
    error_classes: String,
    violations: u64,
    violation_samples: Vec<String>,
}

impl Figures {
    fn print(&self) {
        eprintln!(
            "faults[{}]: acknowledged={} lost={} duplicated={} gaps={} stream_gaps={} \
             misplaced={} unacknowledged_stored={} unsettled={} landed_after_maybe_applied={} \
             landed_after_retries_exhausted={} repaired_by_retry={} subscriber_missed={} \
             subscriber_duplicated={} subscriber_out_of_order={} subscriber_resumed={} \
             fault_ms={} fault_hits={} recovery_ms={} acked_after_recovery={} violations={} \
             errors: {}",
            self.scenario,
            self.acknowledged,
            self.lost,
            self.duplicated,
            self.gaps,
            self.stream_gaps,
            self.misplaced,
            self.unacknowledged,
            self.unsettled,
            self.landed_maybe_applied,
            self.landed_retries_exhausted,
            self.repaired_by_retry,
            self.sub_missed,
            self.sub_duplicated,
            self.sub_out_of_order,
            self.sub_resumed,
            self.fault_ms,
            self.fault_hits,
            self.recovery_ms,
            self.acked_after_recovery,
            self.violations,
            self.error_classes
        );
    }

    /// The assertions of an event scenario.
    fn assert_sound(&self) {
        let s = &self.scenario;
        assert!(self.acknowledged > 0, "{s}: nothing was acknowledged");
        assert!(
            self.acked_after_recovery > 0,
            "{s}: no append succeeded after the fault (the kernel did not recover)"
        );
        assert!(
            self.fault_hits > 0,
            "{s}: the fault never hit a live connection, so the scenario proves nothing"
        );
        assert!(
            self.errors_seen > 0,
            "{s}: no caller saw an error: the fault was not felt, so the scenario proves nothing"
        );
        assert_eq!(self.lost, 0, "{s}: acknowledged events lost");
        assert_eq!(self.duplicated, 0, "{s}: events stored twice");
        assert_eq!(self.gaps, 0, "{s}: gaps in the global positions");
        assert_eq!(self.stream_gaps, 0, "{s}: gaps in stream versions");
        assert_eq!(
            self.misplaced, 0,
            "{s}: events stored elsewhere than their append answered"
        );
        assert_eq!(
            self.unacknowledged, 0,
            "{s}: stored events that were never acknowledged nor left unsettled"
        );
        assert_eq!(
            self.unsettled, 0,
            "{s}: appenders could not settle their last batch"
        );
        assert_eq!(self.sub_missed, 0, "{s}: the subscriber missed events");
        assert_eq!(
            self.sub_duplicated, 0,
            "{s}: the subscriber saw events twice"
        );
        assert_eq!(
            self.sub_out_of_order, 0,
            "{s}: the subscriber saw events out of position order"
        );
        assert_eq!(
            self.sub_ended_quietly, 0,
            "{s}: a subscription ended without an error while the kernel ran"
        );
        assert_eq!(
            self.violations, 0,
            "{s}: errors or answers the contract does not allow: {:#?}",
            self.violation_samples
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn check_events(
    scenario: &str,
    head_before: u64,
    head: u64,
    stored: &[RecordedEvent],
    per_stream: &HashMap<String, Vec<RecordedEvent>>,
    reports: &[AppenderReport],
    sub: &SubscriberReport,
    errors: &Errors,
) -> Figures {
    let mut f = Figures {
        scenario: scenario.to_owned(),
        sub_resumed: sub.resumed,
        sub_ended_quietly: sub.ended_quietly,
        ..Figures::default()
    };

    // Global positions: exactly head_before+1..=head, ascending.
    let mut positions = HashSet::new();
    for (i, e) in stored.iter().enumerate() {
        let expected = head_before + 1 + i as u64;
        if e.position != expected {
            f.gaps += 1;
        }
        positions.insert(e.position);
    }
    f.gaps += (head_before + 1..=head)
        .filter(|p| !positions.contains(p))
        .count();
    if stored.last().map_or(head_before, |e| e.position) != head {
        f.gaps += 1;
    }

    // Ids: every acknowledged one stored once, where its append said.
    let mut stored_by_id: HashMap<Uuid, Vec<&RecordedEvent>> = HashMap::new();
    for e in stored {
        stored_by_id.entry(e.id).or_default().push(e);
    }
    f.duplicated = stored_by_id.values().filter(|v| v.len() > 1).count();
    let mut sent: HashSet<Uuid> = HashSet::new();
    for report in reports {
        f.unsettled += report.unsettled.len();
        f.landed_maybe_applied += report.landed_maybe_applied;
        f.landed_retries_exhausted += report.landed_retries_exhausted;
        f.repaired_by_retry += report.repaired_by_retry;
        sent.extend(report.unsettled.iter().copied());
        for (id, acked) in &report.acked {
            f.acknowledged += 1;
            sent.insert(*id);
            match stored_by_id.get(id).and_then(|v| v.first()) {
                None => f.lost += 1,
                Some(e) => {
                    if e.stream != acked.stream
                        || e.version != acked.version
                        || e.position != acked.position
                    {
                        f.misplaced += 1;
                    }
                }
            }
        }
    }
    f.unacknowledged = stored.iter().filter(|e| !sent.contains(&e.id)).count();

    // Streams: versions 1..=n, and read_stream agrees with read_all.
    for report in reports {
        let from_log: Vec<&RecordedEvent> = stored
            .iter()
            .filter(|e| e.stream == report.stream)
            .collect();
        for (i, e) in from_log.iter().enumerate() {
            if e.version != i as u64 + 1 {
                f.stream_gaps += 1;
            }
        }
        let from_stream = per_stream
            .get(&report.stream)
            .map_or(&[][..], Vec::as_slice);
        let same = from_stream.len() == from_log.len()
            && from_stream
                .iter()
                .zip(&from_log)
                .all(|(a, b)| a.id == b.id && a.version == b.version && a.position == b.position);
        if !same {
            f.stream_gaps += 1;
        }
    }

    // The subscriber: each stored event once, in position order, with the stored id.
    let mut seen_positions = HashSet::new();
    let mut previous = head_before;
    for (position, id) in &sub.seen {
        if !seen_positions.insert(*position) {
            f.sub_duplicated += 1;
        }
        if *position <= previous {
            f.sub_out_of_order += 1;
        }
        previous = previous.max(*position);
        let stored_id = position
            .checked_sub(head_before + 1)
            .and_then(|i| stored.get(usize::try_from(i).ok()?))
            .map(|e| e.id);
        if stored_id != Some(*id) {
            errors.violation(format!(
                "the subscriber got id {id} at position {position}, read_all has {stored_id:?}"
            ));
        }
    }
    f.sub_missed = stored
        .iter()
        .filter(|e| !seen_positions.contains(&e.position))
        .count();

    f.errors_seen = errors.total();
    f.error_classes = errors.classes();
    let (count, samples) = errors.violations();
    f.violations = count;
    f.violation_samples = samples;
    f
}

/// One event scenario: load, fault, recovery, checks.
async fn event_scenario<F, Fut>(scenario: &str, kernel: Arc<Kernel>, fault: F) -> Figures
where
    F: FnOnce(Arc<Progress>) -> Fut,
    Fut: Future<Output = FaultWindow>,
{
    let load = EventLoad::start(kernel.clone()).await;
    let window = fault(load.progress.clone()).await;
    let figures = load.finish(scenario, window).await;
    kernel.shutdown().await;
    figures.print();
    figures
}

/// Runs `body` with a deadline, so a hang fails the test instead of stalling the suite.
async fn bounded<F: Future<Output = ()>>(scenario: &str, body: F) {
    if tokio::time::timeout(SCENARIO_TIMEOUT, body).await.is_err() {
        panic!("{scenario}: did not finish within {SCENARIO_TIMEOUT:?} (a hang)");
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios 1-3: events.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_killed_loses_no_acknowledged_event() {
    bounded("postgres_killed", async {
        let mut server = PrivatePostgres::start().await;
        let kernel = postgres_kernel(server.url()).await;
        let crashable = &mut server;
        let figures = event_scenario("postgres_killed", kernel, |progress| async move {
            kill_and_restart(crashable, &progress).await
        })
        .await;
        figures.assert_sound();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_loses_no_acknowledged_event() {
    bounded("redis_killed", async {
        let mut server = PrivateRedis::start().await;
        let kernel = redis_kernel(server.url(), "kernel:").await;
        let crashable = &mut server;
        let figures = event_scenario("redis_killed", kernel, |progress| async move {
            kill_and_restart(crashable, &progress).await
        })
        .await;
        figures.assert_sound();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_connections_cut_lose_no_acknowledged_event() {
    bounded("postgres_cut", async {
        let db = kernel_testkit::postgres::fresh_database().await;
        let (proxy, url) = FaultProxy::in_front_of(db.url(), 5432)
            .await
            .unwrap_or_else(|e| panic!("cannot start a proxy in front of the test database: {e}"));
        let kernel = postgres_kernel(&url).await;
        let figures = event_scenario("postgres_cut", kernel, |progress| {
            let proxy = &proxy;
            async move { cut_repeatedly(proxy, &progress, false).await }
        })
        .await;
        figures.assert_sound();
        drop(db);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_connections_cut_lose_no_acknowledged_event() {
    bounded("redis_cut", async {
        let redis = kernel_testkit::redis::RedisTestServer::start().await;
        let (proxy, url) = FaultProxy::in_front_of(redis.url(), 6379)
            .await
            .unwrap_or_else(|e| panic!("cannot start a proxy in front of the test Redis: {e}"));
        let kernel = redis_kernel(&url, redis.prefix()).await;
        let figures = event_scenario("redis_cut", kernel, |progress| {
            let proxy = &proxy;
            async move { cut_repeatedly(proxy, &progress, false).await }
        })
        .await;
        figures.assert_sound();
        drop(redis);
    })
    .await;
}

/// The negative control: the same checks on a Redis without persistence (`appendonly no`, no
/// RDB) must report every acknowledged event lost after a `SIGKILL` and a restart. It shows the
/// checks above can fail, and what the AOF setting of the other scenarios protects against.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_without_persistence_loses_acknowledged_events_and_the_checks_see_it() {
    bounded("redis_no_persistence", async {
        let mut server = PrivateRedis::start_with(&["--appendonly", "no"]).await;
        let kernel = redis_kernel(server.url(), "kernel:").await;
        let mut load = EventLoad::start(kernel.clone()).await;
        load.progress
            .wait_for_successes(100, "100 acknowledged appends")
            .await;
        let reports = load.stop_appenders("redis_no_persistence").await;
        server.kill();
        server.restart().await;
        let figures = load.verify("redis_no_persistence", &reports).await;
        // The running kernel noticed the loss (docs/redis.md, "Data-loss detection"): appends
        // are refused, naming it, instead of handing out positions already acknowledged, and
        // health turns red with the reason.
        let refused = kernel
            .events()
            .append(
                "control-after",
                ExpectedVersion::Any,
                vec![NewEvent::new("AfterLoss", json!({}))],
            )
            .await;
        match refused {
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::Corrupted, "{e}");
                assert!(e.to_string().contains("lost the kernel's data"), "{e}");
            }
            Ok(r) => panic!(
                "redis_no_persistence: an append after the loss was accepted at positions {:?}",
                r.positions
            ),
        }
        let health = kernel.health().await;
        assert!(!health.healthy, "{health:?}");
        assert!(
            health.components.iter().any(|c| c
                .error
                .as_deref()
                .is_some_and(|e| e.contains("generation marker"))),
            "{health:?}"
        );
        kernel.shutdown().await;
        figures.print();
        assert!(
            figures.acknowledged >= 100,
            "redis_no_persistence: {} acknowledged",
            figures.acknowledged
        );
        assert_eq!(
            figures.lost, figures.acknowledged,
            "redis_no_persistence: a restart without persistence loses every acknowledged event, \
             and the checks must say so"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Scenario 4: a compare-and-set counter.
// ---------------------------------------------------------------------------------------------

const COUNTER_NS: &str = "faults";
const COUNTER_KEY: &str = "counter";

/// One worker's account of its increments.
#[derive(Debug, Default)]
struct CasReport {
    /// Increments the worker believes applied (by an `Ok`, or found by reading first).
    applied: u64,
    /// Of those, found applied by reading first after an error.
    found_by_reading: u64,
    /// Puts that failed `MaybeApplied` and had in fact landed / had not.
    maybe_landed: u64,
    maybe_not_landed: u64,
    /// Compare-and-set conflicts (another worker won the version).
    conflicts: u64,
}

/// The counter's value: `n`, the last writer's marker, and the last [`HISTORY`] writes as
/// `[version, marker]` pairs, so a worker that lost an answer can tell whether its write landed
/// even after other workers wrote on top of it.
fn counter_value(n: u64, op: &str, version: u64, history: &[Value]) -> Value {
    let mut recent: Vec<Value> = history
        .iter()
        .skip(history.len().saturating_sub(HISTORY - 1))
        .cloned()
        .collect();
    recent.push(json!([version, op]));
    json!({"n": n, "last_op": op, "recent": recent})
}

/// The version at which `op` was written, if the counter's history still shows it.
fn landed_at(entry: &Entry, op: &str) -> Option<u64> {
    entry.value["recent"].as_array()?.iter().find_map(|w| {
        (w.get(1)?.as_str()? == op)
            .then(|| w.get(0)?.as_u64())
            .flatten()
    })
}

/// The oldest version the counter's history covers.
fn history_starts_at(entry: &Entry) -> u64 {
    entry.value["recent"]
        .as_array()
        .and_then(|r| r.first())
        .and_then(|w| w.get(0)?.as_u64())
        .unwrap_or(entry.version + 1)
}

/// One attempt of an increment: the version it expected and what its put answered.
#[derive(Debug)]
struct Attempt {
    expected: u64,
    outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Not answered yet.
    InFlight,
    /// `Conflict`: another worker had moved the version on; not applied.
    Conflict,
    /// Failed with this status.
    Failed(ErrorStatus),
}

impl Outcome {
    /// Whether the answer said the write was not applied.
    fn says_not_applied(self) -> bool {
        matches!(
            self,
            Outcome::Conflict
                | Outcome::Failed(ErrorStatus::Temporary | ErrorStatus::RetriesExhausted)
        )
    }
}

/// Increments the shared counter with `get` + `put(if_version)` until `stop`, each write
/// carrying the increment's marker. After an error the worker reads first (docs/contract.md):
/// its increment is applied iff the counter's history holds its marker at a version one of its
/// attempts expected + 1; otherwise it tries again on the current version. A `Conflict` is
/// another worker's win: re-read and retry. The marker also checks the statuses: an attempt
/// that failed `Temporary` or `RetriesExhausted` ("not applied") must not have landed.
async fn cas_worker(
    kernel: Arc<Kernel>,
    stop: Arc<AtomicBool>,
    errors: Arc<Errors>,
    progress: Arc<Progress>,
) -> CasReport {
    let storage = kernel.storage();
    let mut report = CasReport::default();
    while !stop.load(Ordering::SeqCst) {
        let op = Uuid::new_v4().simple().to_string();
        let mut attempts: Vec<Attempt> = Vec::new();
        // The version the increment landed at, when it was found by reading first.
        let mut landed: Option<u64> = None;
        let mut stopped_at: Option<Instant> = None;
        loop {
            let current = read_until_ok(&errors, "get counter", || {
                storage.get(COUNTER_NS, COUNTER_KEY)
            })
            .await;
            let Some(current) = current else {
                errors.violation("the counter disappeared".to_owned());
                return report;
            };
            if let Some(version) = landed_at(&current, &op) {
                // Read first: an attempt whose answer was lost did land.
                report.applied += 1;
                report.found_by_reading += 1;
                let by: Vec<&Attempt> = attempts
                    .iter()
                    .filter(|a| a.expected + 1 == version)
                    .collect();
                if by.is_empty() {
                    errors.violation(format!(
                        "increment {op} landed at version {version}, which none of its \
                         attempts {attempts:?} expected"
                    ));
                } else if by.iter().all(|a| a.outcome.says_not_applied()) {
                    errors.violation(format!(
                        "a conditional put answered {:?} (\"not applied\") but was applied at \
                         version {version}",
                        by[0].outcome
                    ));
                }
                landed = Some(version);
                break;
            }
            if let Some(oldest) = attempts.iter().map(|a| a.expected).min() {
                if history_starts_at(&current) > oldest + 1 {
                    errors.violation(format!(
                        "cannot tell whether increment {op} landed: the counter's history \
                         starts at version {}, after the attempt at {oldest}",
                        history_starts_at(&current)
                    ));
                    return report;
                }
                // The attempts so far did not land (yet): those that failed MaybeApplied are
                // counted as not landed once the increment is decided.
            }
            if stop.load(Ordering::SeqCst) {
                let since = *stopped_at.get_or_insert_with(Instant::now);
                if since.elapsed() > SETTLE {
                    errors.violation(format!("increment {op} could not be settled"));
                    return report;
                }
            }
            let n = current.value["n"].as_u64().unwrap_or(0);
            let history = current.value["recent"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let value = counter_value(n + 1, &op, current.version + 1, &history);
            attempts.push(Attempt {
                expected: current.version,
                outcome: Outcome::InFlight,
            });
            let put = storage
                .put(
                    COUNTER_NS,
                    COUNTER_KEY,
                    value,
                    PutOptions::new().if_version(current.version),
                )
                .await;
            match put {
                Ok(entry) => {
                    progress.success();
                    if entry.version != current.version + 1 {
                        errors.violation(format!(
                            "a put at if_version({}) answered version {}",
                            current.version, entry.version
                        ));
                    }
                    report.applied += 1;
                    break;
                }
                Err(e)
                    if e.code() == ErrorCode::Conflict && e.status() == ErrorStatus::Permanent =>
                {
                    report.conflicts += 1;
                    if let Some(last) = attempts.last_mut() {
                        last.outcome = Outcome::Conflict;
                    }
                }
                Err(e) => {
                    errors.record(Call::ConditionalPut, &e);
                    if let Some(last) = attempts.last_mut() {
                        last.outcome = Outcome::Failed(e.status());
                    }
                    if !transient(&e) {
                        return report;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        // The MaybeApplied attempts of this increment: one of them may be the one that landed.
        let mut landed_counted = false;
        for a in &attempts {
            if a.outcome != Outcome::Failed(ErrorStatus::MaybeApplied) {
                continue;
            }
            if !landed_counted && landed == Some(a.expected + 1) {
                landed_counted = true;
                report.maybe_landed += 1;
            } else {
                report.maybe_not_landed += 1;
            }
        }
    }
    report
}

/// Increments the shared counter with `get` + `write_once(put if_version)` until `stop`, each
/// increment named by its own operation id. After any transient error the worker repeats the
/// very same request (docs/contract.md, "Operation ids"): the answer is the first outcome if an
/// earlier attempt landed (`replayed`), or the write applied now. Only a `Conflict` (another
/// worker won the version; nothing recorded) makes it read again and build a new request. No
/// reading first, no history: the id is the whole protocol.
async fn cas_worker_with_ids(
    kernel: Arc<Kernel>,
    stop: Arc<AtomicBool>,
    errors: Arc<Errors>,
    progress: Arc<Progress>,
) -> CasReport {
    let storage = kernel.storage();
    let mut report = CasReport::default();
    while !stop.load(Ordering::SeqCst) {
        let id = OperationId::random();
        let mut stopped_at: Option<Instant> = None;
        'increment: loop {
            let current = read_until_ok(&errors, "get counter", || {
                storage.get(COUNTER_NS, COUNTER_KEY)
            })
            .await;
            let Some(current) = current else {
                errors.violation("the counter disappeared".to_owned());
                return report;
            };
            let n = current.value["n"].as_u64().unwrap_or(0);
            let value = json!({"n": n + 1, "last_op": id.as_str(), "recent": []});
            let write = Write::put(
                COUNTER_KEY,
                value,
                PutOptions::new().if_version(current.version),
            );
            loop {
                if stop.load(Ordering::SeqCst) {
                    let since = *stopped_at.get_or_insert_with(Instant::now);
                    if since.elapsed() > SETTLE {
                        errors.violation(format!("increment {id} could not be settled"));
                        return report;
                    }
                }
                match storage.write_once(COUNTER_NS, &id, write.clone()).await {
                    Ok(applied) => {
                        progress.success();
                        let version = applied
                            .outcome
                            .into_entry()
                            .map(|e| e.version)
                            .unwrap_or_default();
                        if version != current.version + 1 {
                            errors.violation(format!(
                                "write_once at if_version({}) answered version {version}",
                                current.version
                            ));
                        }
                        report.applied += 1;
                        if applied.replayed {
                            report.maybe_landed += 1;
                        }
                        break 'increment;
                    }
                    Err(e)
                        if e.code() == ErrorCode::Conflict
                            && e.status() == ErrorStatus::Permanent =>
                    {
                        // A compare-and-set conflict carries the current version; a reused id
                        // does not.
                        if !e.has_current_version() {
                            errors.violation(format!(
                                "the id of increment {id} was reported as used for another \
                                 request, but the request only changes after a Conflict: {e}"
                            ));
                            return report;
                        }
                        report.conflicts += 1;
                        continue 'increment;
                    }
                    Err(e) => {
                        errors.record(Call::WriteOnce, &e);
                        if e.status() == ErrorStatus::MaybeApplied {
                            report.maybe_not_landed += 1;
                        }
                        if !transient(&e) {
                            return report;
                        }
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
        }
    }
    report
}

/// How the counter's workers make their increments safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CasMode {
    /// Plain conditional puts; after an error, read first ([`cas_worker`]).
    ReadFirst,
    /// `write_once` with an operation id; after an error, repeat ([`cas_worker_with_ids`]).
    OperationIds,
}

/// The figures of a counter scenario.
#[derive(Debug)]
struct CasFigures {
    scenario: String,
    believed: u64,
    counter: u64,
    version: u64,
    found_by_reading: u64,
    maybe_landed: u64,
    maybe_total: u64,
    conflicts: u64,
    fault_ms: u128,
    fault_hits: usize,
    recovery_ms: u128,
    errors_seen: u64,
    error_classes: String,
    violations: u64,
    violation_samples: Vec<String>,
}

async fn cas_scenario<F, Fut>(
    scenario: &str,
    mode: CasMode,
    kernel: Arc<Kernel>,
    fault: F,
) -> CasFigures
where
    F: FnOnce(Arc<Progress>) -> Fut,
    Fut: Future<Output = FaultWindow>,
{
    let errors = Arc::new(Errors::default());
    let progress = Arc::new(Progress::default());
    let start = kernel
        .storage()
        .put(
            COUNTER_NS,
            COUNTER_KEY,
            json!({"n": 0, "last_op": null, "recent": []}),
            PutOptions::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{scenario}: cannot create the counter: {e}"));
    let base = start.version;
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<JoinHandle<CasReport>> = (0..CAS_WORKERS)
        .map(|_| {
            let (kernel, stop, errors, progress) = (
                kernel.clone(),
                stop.clone(),
                errors.clone(),
                progress.clone(),
            );
            match mode {
                CasMode::ReadFirst => tokio::spawn(cas_worker(kernel, stop, errors, progress)),
                CasMode::OperationIds => {
                    tokio::spawn(cas_worker_with_ids(kernel, stop, errors, progress))
                }
            }
        })
        .collect();
    let window = fault(progress.clone()).await;
    let recovery = progress
        .recovery_after(window.ended, "compare-and-set put")
        .await;
    tokio::time::sleep(LOAD_AFTER).await;
    stop.store(true, Ordering::SeqCst);
    let mut reports = Vec::new();
    for w in workers {
        match w.await {
            Ok(r) => reports.push(r),
            Err(e) => panic!("{scenario}: a counter worker panicked: {e}"),
        }
    }
    let end = read_until_ok(&errors, "get counter", || {
        kernel.storage().get(COUNTER_NS, COUNTER_KEY)
    })
    .await
    .unwrap_or_else(|| panic!("{scenario}: the counter is gone"));
    kernel.shutdown().await;
    let (violations, violation_samples) = errors.violations();
    let figures = CasFigures {
        scenario: scenario.to_owned(),
        believed: reports.iter().map(|r| r.applied).sum(),
        counter: end.value["n"].as_u64().unwrap_or(u64::MAX),
        version: end.version - base,
        found_by_reading: reports.iter().map(|r| r.found_by_reading).sum(),
        maybe_landed: reports.iter().map(|r| r.maybe_landed).sum(),
        maybe_total: reports
            .iter()
            .map(|r| r.maybe_landed + r.maybe_not_landed)
            .sum(),
        conflicts: reports.iter().map(|r| r.conflicts).sum(),
        fault_ms: (window.ended - window.began).as_millis(),
        fault_hits: window.hits,
        recovery_ms: recovery.as_millis(),
        errors_seen: errors.total(),
        error_classes: errors.classes(),
        violations,
        violation_samples,
    };
    eprintln!(
        "faults[{}]: increments_believed={} counter={} writes={} lost={} duplicated={} \
         found_by_reading_first={} maybe_applied={} (landed {}) conflicts={} fault_ms={} \
         fault_hits={} recovery_ms={} violations={} errors: {}",
        figures.scenario,
        figures.believed,
        figures.counter,
        figures.version,
        figures.believed.saturating_sub(figures.counter),
        figures.counter.saturating_sub(figures.believed),
        figures.found_by_reading,
        figures.maybe_total,
        figures.maybe_landed,
        figures.conflicts,
        figures.fault_ms,
        figures.fault_hits,
        figures.recovery_ms,
        figures.violations,
        figures.error_classes
    );
    figures
}

impl CasFigures {
    fn assert_sound(&self) {
        let s = &self.scenario;
        assert!(self.believed > 0, "{s}: no increment was applied");
        assert!(
            self.fault_hits > 0,
            "{s}: the fault never hit a live connection, so the scenario proves nothing"
        );
        assert!(
            self.errors_seen > 0,
            "{s}: no caller saw an error: the fault was not felt, so the scenario proves nothing"
        );
        assert_eq!(
            self.counter, self.believed,
            "{s}: the counter differs from the increments the workers believe applied"
        );
        assert_eq!(
            self.version, self.counter,
            "{s}: every write adds one to the counter and one to the version"
        );
        assert_eq!(
            self.violations, 0,
            "{s}: errors or answers the contract does not allow: {:#?}",
            self.violation_samples
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_counter_on_postgres_killed_counts_exactly() {
    bounded("cas_postgres_killed", async {
        let mut server = PrivatePostgres::start().await;
        let kernel = postgres_kernel(server.url()).await;
        let crashable = &mut server;
        let figures = cas_scenario(
            "cas_postgres_killed",
            CasMode::ReadFirst,
            kernel,
            |progress| async move { kill_and_restart(crashable, &progress).await },
        )
        .await;
        figures.assert_sound();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_counter_on_redis_cut_and_unanswered_counts_exactly() {
    bounded("cas_redis_cut", async {
        let redis = kernel_testkit::redis::RedisTestServer::start().await;
        let (proxy, url) = FaultProxy::in_front_of(redis.url(), 6379)
            .await
            .unwrap_or_else(|e| panic!("cannot start a proxy in front of the test Redis: {e}"));
        let kernel = redis_kernel(&url, redis.prefix()).await;
        let figures = cas_scenario("cas_redis_cut", CasMode::ReadFirst, kernel, |progress| {
            let proxy = &proxy;
            async move { cut_repeatedly(proxy, &progress, true).await }
        })
        .await;
        figures.assert_sound();
        assert!(
            figures.maybe_landed > 0,
            "cas_redis_cut: with replies swallowed for a second, some put must have landed \
             without its answer (MaybeApplied) and been found by reading first"
        );
        drop(redis);
    })
    .await;
}

/// The counter with operation ids, its Redis connections cut and its answers swallowed: every
/// increment is applied exactly once with no reading first, and the increments whose answer
/// was lost come back as replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_counter_with_operation_ids_on_redis_cut_counts_exactly() {
    bounded("cas_ids_redis_cut", async {
        let redis = kernel_testkit::redis::RedisTestServer::start().await;
        let (proxy, url) = FaultProxy::in_front_of(redis.url(), 6379)
            .await
            .unwrap_or_else(|e| panic!("cannot start a proxy in front of the test Redis: {e}"));
        let kernel = redis_kernel(&url, redis.prefix()).await;
        let figures = cas_scenario(
            "cas_ids_redis_cut",
            CasMode::OperationIds,
            kernel,
            |progress| {
                let proxy = &proxy;
                async move { cut_repeatedly(proxy, &progress, true).await }
            },
        )
        .await;
        figures.assert_sound();
        assert_eq!(
            figures.found_by_reading, 0,
            "with ids nothing is settled by reading first"
        );
        drop(redis);
    })
    .await;
}

/// The same on PostgreSQL, connections cut and answers swallowed through a proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_counter_with_operation_ids_on_postgres_cut_counts_exactly() {
    bounded("cas_ids_postgres_cut", async {
        let db = kernel_testkit::postgres::fresh_database().await;
        let (proxy, url) = FaultProxy::in_front_of(db.url(), 5432)
            .await
            .unwrap_or_else(|e| panic!("cannot start a proxy in front of the test database: {e}"));
        let kernel = postgres_kernel(&url).await;
        let figures = cas_scenario(
            "cas_ids_postgres_cut",
            CasMode::OperationIds,
            kernel,
            |progress| {
                let proxy = &proxy;
                async move { cut_repeatedly(proxy, &progress, true).await }
            },
        )
        .await;
        figures.assert_sound();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The status of a call whose first attempt may have landed.
// ---------------------------------------------------------------------------------------------

/// An append whose first attempt reached PostgreSQL and committed, but whose answer was lost
/// (`MaybeApplied`), and whose later attempts could not even connect (`Temporary`), may have
/// landed: the caller must be told `MaybeApplied`, not `RetriesExhausted`. docs/architecture.md
/// ("Retry safety") and `layers::retry`: "a `MaybeApplied` one stays `MaybeApplied`, since 'it
/// may have landed' matters more to the caller".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_whose_first_attempt_landed_is_reported_maybe_applied() {
    bounded("landed_then_refused", async {
        let db = kernel_testkit::postgres::fresh_database().await;
        let (proxy, url) = FaultProxy::in_front_of(db.url(), 5432)
            .await
            .unwrap_or_else(|e| panic!("cannot start a proxy in front of the test database: {e}"));
        let env = [
            ("KERNEL_STORAGE_MODE", "postgres"),
            ("KERNEL_POSTGRES_POOL_SIZE", "2"),
            ("KERNEL_POSTGRES_CONNECT_TIMEOUT_MS", "500"),
            ("KERNEL_POSTGRES_POOL_WAIT_TIMEOUT_MS", "1000"),
            ("KERNEL_POSTGRES_STATEMENT_TIMEOUT_MS", "3000"),
            ("KERNEL_TIMEOUTS_OPERATION_MS", "3000"),
            ("KERNEL_RETRY_MAX_ATTEMPTS", "3"),
            ("KERNEL_RETRY_INITIAL_BACKOFF_MS", "200"),
            ("KERNEL_RETRY_MAX_BACKOFF_MS", "400"),
            ("KERNEL_RETRY_MAX_ELAPSED_MS", "20000"),
            ("KERNEL_CIRCUIT_BREAKER_ENABLED", "false"),
        ];
        let through_proxy = boot(&[&env[..], &[("DATABASE_URL", &url)]].concat()).await;
        let direct = boot(&[&env[..], &[("DATABASE_URL", db.url())]].concat()).await;
        let stream = format!("landed-{}", Uuid::new_v4().simple());
        let events = through_proxy.events().clone();
        events
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![NewEvent::new("First", json!({}))],
            )
            .await
            .unwrap_or_else(|e| panic!("the first append fails with no fault: {e}"));

        // Requests go through, answers do not: the append commits, its caller hears nothing.
        proxy.drop_replies(true);
        let batch = vec![NewEvent::new("Second", json!({"n": 2}))];
        let pending = tokio::spawn({
            let (events, stream, batch) = (events.clone(), stream.clone(), batch.clone());
            async move {
                events
                    .append(&stream, ExpectedVersion::Exact(1), batch)
                    .await
            }
        });
        // Wait (through the other kernel) until the append has committed.
        let deadline = Instant::now() + SETTLE;
        loop {
            let stored = direct
                .events()
                .read_stream(&stream, ReadStream::forward())
                .await
                .unwrap_or_default();
            if stored.iter().any(|e| e.id == batch[0].id) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the append never reached the database"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The connection breaks (attempt 1: MaybeApplied), and every later attempt fails to
        // connect (Temporary).
        proxy.refuse(true);
        proxy.cut();
        proxy.drop_replies(false);
        let outcome = match tokio::time::timeout(SETTLE, pending).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => panic!("the append task panicked: {e}"),
            Err(_) => panic!("the append did not return within {SETTLE:?}"),
        };
        proxy.refuse(false);
        let error = match outcome {
            Ok(r) => panic!("the append succeeded through a refusing proxy: {r:?}"),
            Err(e) => e,
        };
        eprintln!("faults[landed_then_refused]: the caller was told: {error}");
        // The retry with the same ids finds the batch stored: it had landed.
        let retried = read_until_ok(&Errors::default(), "append retry", || {
            events.append(&stream, ExpectedVersion::Exact(1), batch.clone())
        })
        .await;
        assert!(!retried.written, "the first attempt had stored the batch");
        through_proxy.shutdown().await;
        direct.shutdown().await;
        assert_eq!(
            error.status(),
            ErrorStatus::MaybeApplied,
            "an append that landed (its first attempt lost its answer) was reported as {}: the \
             retry layer gave the status of its last attempt, which never reached the server, \
             and dropped the first attempt's MaybeApplied: {error}",
            error.status()
        );
    })
    .await;
}
