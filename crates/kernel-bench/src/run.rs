//! Workloads, the two sides that run them, and the interleaved measurement.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use kernel_core::{
    BatchPut, Error, EventFilter, ExpectedVersion, Filter, ListOptions, NewEvent, PutOptions,
    Query, ReadStream, Result, json,
};
use serde::Serialize;

/// One kind of call, the same on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Read one of 100 seeded documents of the task.
    Get,
    /// Overwrite one of 100 documents of the task.
    Put,
    /// Compare-and-set on the task's own document (never conflicts: one writer per key).
    PutIfVersion,
    /// Append one event to the task's own stream.
    Append,
    /// Append ten events to the task's own stream in one call.
    Append10,
    /// Acquire the task's own lock and release it (one op: the pair).
    Lock,
    /// One rate-limit check of cost 1 on the task's own key (never refused).
    RateLimit,
    /// `put_many` of 1,000 documents (ops/s counts documents). Raw: one set-based upsert
    /// (PostgreSQL `unnest`), `MSET` (Redis), one write lock (memory).
    PutMany,
    /// The same `put_many` of 1,000 beside 1,000 single puts, both through the kernel: the
    /// ratio is how many times faster a batch writes a document than single puts do.
    PutManySingles,
    /// A page of 100 from the task's 1,000 documents, by key order (`list` with a cursor).
    List,
    /// An equality query on `group`, matching [`GROUP_SIZE`] of the namespace's documents
    /// whatever their number (`--docs`, 10,000 by default): the same query at every size, so
    /// 10 k and 1 M compare how it scales. The kernel side declares an index on `group`
    /// where the driver has field indexes; the raw side has the equivalent.
    Query,
    /// The whole of the task's stream of 100 events.
    ReadStream,
    /// 100 events of the global log after a position.
    ReadAll,
    /// Delay from an append to its arrival at a subscriber, appends at `--rate` per second
    /// (kernel only: the target is a delay, not a ratio; p50 / p99 are delays).
    Subscription,
}

impl Workload {
    pub(crate) const ALL: [Workload; 14] = [
        Workload::Get,
        Workload::Put,
        Workload::PutIfVersion,
        Workload::Append,
        Workload::Append10,
        Workload::Lock,
        Workload::RateLimit,
        Workload::PutMany,
        Workload::PutManySingles,
        Workload::List,
        Workload::Query,
        Workload::ReadStream,
        Workload::ReadAll,
        Workload::Subscription,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Get => "get",
            Workload::Put => "put",
            Workload::PutIfVersion => "put_if_version",
            Workload::Append => "append",
            Workload::Append10 => "append10",
            Workload::Lock => "lock",
            Workload::RateLimit => "rate_limit",
            Workload::PutMany => "put_many",
            Workload::PutManySingles => "put_many_vs_single",
            Workload::List => "list",
            Workload::Query => "query",
            Workload::ReadStream => "read_stream",
            Workload::ReadAll => "read_all",
            Workload::Subscription => "subscription",
        }
    }

    pub(crate) fn parse(name: &str) -> Result<Workload> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == name)
            .ok_or_else(|| {
                Error::invalid_input(format!(
                    "unknown workload {name:?}; one of {}",
                    Workload::ALL.map(Workload::name).join(", ")
                ))
            })
    }

    /// Operations one call counts for (events appended for the append workloads).
    fn weight(self) -> u64 {
        match self {
            Workload::Append10 => 10,
            Workload::PutMany | Workload::PutManySingles => BATCH as u64,
            _ => 1,
        }
    }
}

/// Documents in one `put_many`.
pub(crate) const BATCH: usize = 1000;
/// Documents of a task that `list` pages through.
pub(crate) const LISTED: usize = 1000;
/// Entries in a `list` page and events in a `read_all` page.
pub(crate) const PAGE: usize = 100;
/// Events in a task's stream for `read_stream`.
pub(crate) const STREAM_LEN: u64 = 100;
/// Events in the log before `read_all` runs (seeded by task 0).
pub(crate) const LOG_LEN: u64 = 1000;

/// What a task carries between its calls: the version of its compare-and-set document.
#[derive(Debug, Default)]
pub(crate) struct TaskState {
    pub(crate) cas_version: u64,
    pub(crate) stream_version: u64,
    /// Documents in the query workload's namespace (`--docs`).
    pub(crate) docs: usize,
}

/// The key of document `j` of task `t` in the list workload (zero-padded: key order is
/// number order).
pub(crate) fn listed_key(t: usize, j: usize) -> String {
    format!("l{t}-{j:04}")
}

/// Where page `i` of a list starts: after this key (`None`: from the first).
pub(crate) fn page_after(t: usize, i: u64) -> Option<String> {
    let start = (i as usize * PAGE) % LISTED;
    (start > 0).then(|| listed_key(t, start - 1))
}

/// The position `read_all` call `i` reads after.
pub(crate) fn log_after(i: u64) -> u64 {
    (i * PAGE as u64) % (LOG_LEN - PAGE as u64)
}

/// Documents of one `group` in the query workload.
pub(crate) const GROUP_SIZE: usize = 100;

/// How many groups `docs` documents of the query workload fall in.
pub(crate) fn groups(docs: usize) -> usize {
    (docs / GROUP_SIZE).max(1)
}

/// The group call `i` of the query workload asks for.
pub(crate) fn query_group(docs: usize, i: u64) -> u64 {
    i % groups(docs) as u64
}

/// How many of `docs` documents are in `group` (documents go round the groups in turn).
pub(crate) fn group_len(docs: usize, group: u64) -> usize {
    let (g, n) = (group as usize, groups(docs));
    docs.saturating_sub(g).div_ceil(n)
}

/// The document seeded as number `j` of the query workload of `docs` documents.
pub(crate) fn query_doc(j: usize, docs: usize) -> kernel_core::Value {
    json!({"i": j, "group": j % groups(docs)})
}

/// One side of the comparison.
#[async_trait]
pub(crate) trait Side: Send + Sync {
    /// Prepares task `t` for `workload` (seeds documents, creates its CAS key).
    async fn prepare(
        &self,
        workload: Workload,
        t: usize,
        run: &str,
        st: &mut TaskState,
    ) -> Result<()>;
    /// Call number `i` of task `t`.
    async fn call(
        &self,
        workload: Workload,
        t: usize,
        i: u64,
        run: &str,
        st: &mut TaskState,
    ) -> Result<()>;
}

/// The kernel side: the stores of a booted kernel (standard layers over the driver).
pub(crate) struct KernelSide(pub(crate) kernel_bootstrap::layers::Stores);

#[async_trait]
impl Side for KernelSide {
    async fn prepare(&self, w: Workload, t: usize, run: &str, st: &mut TaskState) -> Result<()> {
        let s = &self.0.storage;
        match w {
            Workload::Get => {
                for k in 0..100 {
                    s.put(
                        run,
                        &format!("k{t}-{k}"),
                        json!({"n": k}),
                        PutOptions::new(),
                    )
                    .await?;
                }
            }
            Workload::PutIfVersion => {
                st.cas_version = s
                    .put(run, &format!("cas{t}"), json!({"n": 0}), PutOptions::new())
                    .await?
                    .version;
            }
            Workload::List => {
                let items = (0..LISTED)
                    .map(|j| BatchPut::new(listed_key(t, j), json!({"j": j})))
                    .collect();
                s.put_many(run, items).await?;
            }
            Workload::Query if t == 0 => {
                for chunk in (0..st.docs).collect::<Vec<_>>().chunks(BATCH) {
                    let items = chunk
                        .iter()
                        .map(|j| BatchPut::new(format!("q{j}"), query_doc(*j, st.docs)))
                        .collect();
                    s.put_many(run, items).await?;
                }
                // Declared over the seeded documents, as an index is added to a live
                // namespace; a driver without field indexes scans.
                if s.capabilities().field_indexes {
                    s.create_index(run, &kernel_core::IndexSpec::new("group"))
                        .await?;
                }
            }
            Workload::ReadStream => {
                let events = (0..STREAM_LEN)
                    .map(|j| NewEvent::new("Seeded", json!({"j": j})))
                    .collect();
                let stream = format!("{run}-r{t}");
                self.0
                    .events
                    .append(&stream, ExpectedVersion::NoStream, events)
                    .await?;
            }
            Workload::ReadAll if t == 0 => {
                let events = (0..LOG_LEN)
                    .map(|j| NewEvent::new("Seeded", json!({"j": j})))
                    .collect();
                let stream = format!("{run}-all");
                self.0
                    .events
                    .append(&stream, ExpectedVersion::NoStream, events)
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn call(
        &self,
        w: Workload,
        t: usize,
        i: u64,
        run: &str,
        st: &mut TaskState,
    ) -> Result<()> {
        let s = &self.0.storage;
        match w {
            Workload::Get => {
                let found = s.get(run, &format!("k{t}-{}", i % 100)).await?;
                if found.is_none() {
                    return Err(Error::internal("a seeded document is missing"));
                }
            }
            Workload::Put => {
                s.put(
                    run,
                    &format!("k{t}-{}", i % 100),
                    json!({"n": i}),
                    PutOptions::new(),
                )
                .await?;
            }
            Workload::PutIfVersion => {
                let options = PutOptions::new().if_version(st.cas_version);
                st.cas_version = s
                    .put(run, &format!("cas{t}"), json!({"n": i}), options)
                    .await?
                    .version;
            }
            Workload::Append | Workload::Append10 => {
                let n = w.weight();
                let events = (0..n)
                    .map(|j| NewEvent::new("Benched", json!({"i": i, "j": j})))
                    .collect();
                let stream = format!("{run}-{t}");
                let expected = ExpectedVersion::Exact(st.stream_version);
                st.stream_version = self
                    .0
                    .events
                    .append(&stream, expected, events)
                    .await?
                    .stream_version;
            }
            Workload::Lock => {
                let key = format!("{run}-lock{t}");
                let lease = self
                    .0
                    .locks
                    .try_acquire(&key, std::time::Duration::from_secs(10))
                    .await?
                    .ok_or_else(|| Error::internal("the task's own lock is held"))?;
                self.0.locks.release(&lease).await?;
            }
            Workload::RateLimit => {
                let key = format!("{run}-rl{t}");
                let quota = kernel_core::Quota::per_second(1_000_000);
                let decision = self.0.rate_limiter.check(&key, &quota, 1).await?;
                if !decision.allowed {
                    return Err(Error::internal("a check under a huge quota was refused"));
                }
            }
            Workload::PutMany | Workload::PutManySingles => {
                let items = (0..BATCH)
                    .map(|j| BatchPut::new(format!("m{t}-{j}"), json!({"i": i, "j": j})))
                    .collect();
                s.put_many(run, items).await?;
            }
            Workload::List => {
                let mut options = ListOptions::new().prefix(format!("l{t}-"));
                options.after = page_after(t, i);
                options.limit = Some(PAGE);
                let page = s.list(run, &options).await?;
                if page.entries.len() != PAGE {
                    return Err(Error::internal("a list page came back short"));
                }
            }
            Workload::Query => {
                let group = query_group(st.docs, i);
                let query = Query::new().filter(Filter::eq("group", group));
                let found = s.query(run, &query).await?;
                if found.len() != group_len(st.docs, group) {
                    return Err(Error::internal(format!(
                        "the query found {} documents, not {}",
                        found.len(),
                        group_len(st.docs, group)
                    )));
                }
            }
            Workload::ReadStream => {
                let stream = format!("{run}-r{t}");
                let events = self
                    .0
                    .events
                    .read_stream(&stream, ReadStream::forward())
                    .await?;
                if events.len() as u64 != STREAM_LEN {
                    return Err(Error::internal("the seeded stream came back short"));
                }
            }
            Workload::ReadAll => {
                let events = self
                    .0
                    .events
                    .read_all(log_after(i), &EventFilter::all(), PAGE)
                    .await?;
                if events.len() != PAGE {
                    return Err(Error::internal("a read_all page came back short"));
                }
            }
            Workload::Subscription => {
                return Err(Error::internal(
                    "the subscription workload is measured by run::subscription",
                ));
            }
        }
        Ok(())
    }
}

/// The raw side of `put_many_vs_single`: the same 1,000 documents written by 1,000 single puts
/// through the kernel.
pub(crate) struct SinglePuts(pub(crate) kernel_bootstrap::layers::Stores);

#[async_trait]
impl Side for SinglePuts {
    async fn prepare(&self, _: Workload, _: usize, _: &str, _: &mut TaskState) -> Result<()> {
        Ok(())
    }

    async fn call(
        &self,
        _: Workload,
        t: usize,
        i: u64,
        run: &str,
        _: &mut TaskState,
    ) -> Result<()> {
        for j in 0..BATCH {
            self.0
                .storage
                .put(
                    run,
                    &format!("m{t}-{j}"),
                    json!({"i": i, "j": j}),
                    PutOptions::new(),
                )
                .await?;
        }
        Ok(())
    }
}

/// One line of the results.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) backend: String,
    pub(crate) workload: &'static str,
    pub(crate) concurrency: usize,
    pub(crate) kernel_ops: f64,
    pub(crate) raw_ops: f64,
    pub(crate) ratio: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) rounds: usize,
    pub(crate) round_seconds: f64,
}

/// What every measurement of a run shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    /// Length of one round.
    pub(crate) round: Duration,
    /// Rounds per side.
    pub(crate) rounds: usize,
    /// Documents of the query workload.
    pub(crate) docs: usize,
    /// Appends per second of the subscription workload.
    pub(crate) rate: u32,
}

/// Runs `workload` at `concurrency` on both sides, `rounds` times each, interleaved.
pub(crate) async fn compare(
    kernel: &Arc<dyn Side>,
    raw: &Arc<dyn Side>,
    backend: &str,
    workload: Workload,
    concurrency: usize,
    params: Params,
) -> Result<Row> {
    let (round, rounds) = (params.round, params.rounds);
    let kernel_side = kernel.clone();
    let mut ratios = Vec::with_capacity(rounds);
    let (mut k_ops, mut r_ops) = (Vec::new(), Vec::new());
    let mut latencies = Vec::new();
    for _ in 0..rounds.max(1) {
        let (k, lat) = measure(&kernel_side, workload, concurrency, round, params.docs).await?;
        let (r, _) = measure(raw, workload, concurrency, round, params.docs).await?;
        latencies.extend(lat);
        ratios.push(if r > 0.0 { k / r } else { 0.0 });
        k_ops.push(k);
        r_ops.push(r);
    }
    latencies.sort_unstable();
    Ok(Row {
        backend: backend.to_owned(),
        workload: workload.name(),
        concurrency,
        kernel_ops: median(&mut k_ops),
        raw_ops: median(&mut r_ops),
        ratio: median(&mut ratios),
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
        rounds,
        round_seconds: round.as_secs_f64(),
    })
}

/// Percentile `p` of sorted latencies, in µs.
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

/// The subscription workload: one writer appends to a fresh stream at `params.rate` events
/// per second for each round; a subscriber (opened first, on the stream's category) notes
/// when each event arrives. The delay of an event runs from the start of its append to its
/// arrival. Kernel only; ops/s is the rate reached.
pub(crate) async fn subscription(
    kernel: &kernel_bootstrap::Kernel,
    backend: &str,
    params: Params,
) -> Result<Row> {
    let events = kernel.events().clone();
    let mut delays = Vec::new();
    let mut rates = Vec::new();
    for _ in 0..params.rounds.max(1) {
        let category = format!("sub{}", kernel_core::Uuid::new_v4().simple());
        let stream = format!("{category}-1");
        let count = ((params.rate as f64 * params.round.as_secs_f64()).ceil() as u64).max(1);
        let head = events.head_position().await?;
        let mut feed = events
            .subscribe(head, EventFilter::all().category(category.clone()))
            .await?;
        let sent: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
            Arc::new(std::sync::Mutex::new(vec![None; count as usize]));
        let writer = {
            let (events, sent, stream) = (events.clone(), sent.clone(), stream.clone());
            let period = Duration::from_secs_f64(1.0 / f64::from(params.rate.max(1)));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                for k in 0..count {
                    tick.tick().await;
                    if let Ok(mut s) = sent.lock() {
                        s[k as usize] = Some(Instant::now());
                    }
                    let event = NewEvent::new("Tick", json!({"k": k}));
                    events
                        .append(&stream, ExpectedVersion::Exact(k), vec![event])
                        .await?;
                }
                Ok::<_, Error>(())
            })
        };
        let started = Instant::now();
        for _ in 0..count {
            let next = tokio::time::timeout(Duration::from_secs(10), feed.next())
                .await
                .map_err(|_| Error::timeout("no event reached the subscriber within 10 s"))?
                .ok_or_else(|| Error::internal("the subscription ended"))??;
            let arrived = Instant::now();
            let k = next.payload["k"].as_u64().unwrap_or(u64::MAX);
            let at = sent
                .lock()
                .map_err(|_| Error::internal("poisoned"))?
                .get(k as usize)
                .copied()
                .flatten()
                .ok_or_else(|| Error::internal("an event arrived that was not sent"))?;
            delays.push(arrived.saturating_duration_since(at));
        }
        rates.push(count as f64 / started.elapsed().as_secs_f64());
        join(writer).await??;
    }
    delays.sort_unstable();
    Ok(Row {
        backend: backend.to_owned(),
        workload: Workload::Subscription.name(),
        concurrency: 1,
        kernel_ops: median(&mut rates),
        raw_ops: 0.0,
        ratio: 0.0,
        p50_us: percentile(&delays, 0.5),
        p99_us: percentile(&delays, 0.99),
        rounds: params.rounds,
        round_seconds: params.round.as_secs_f64(),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `concurrency` tasks call back to back for `round`; returns ops/s and every call's latency.
async fn measure(
    side: &Arc<dyn Side>,
    workload: Workload,
    concurrency: usize,
    round: Duration,
    docs: usize,
) -> Result<(f64, Vec<Duration>)> {
    // A fresh namespace / stream prefix per round: rounds do not see each other's data.
    let run = format!("bench{}", kernel_core::Uuid::new_v4().simple());
    let mut tasks = Vec::with_capacity(concurrency);
    for t in 0..concurrency {
        let (side, run) = (side.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            let mut st = TaskState {
                docs,
                ..TaskState::default()
            };
            side.prepare(workload, t, &run, &mut st).await?;
            Ok::<_, Error>((side, run, st))
        }));
    }
    let mut prepared = Vec::with_capacity(concurrency);
    for task in tasks {
        prepared.push(join(task).await??);
    }
    let deadline = Instant::now() + round;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for (t, (side, run, mut st)) in prepared.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let at = Instant::now();
                side.call(workload, t, i, &run, &mut st).await?;
                latencies.push(at.elapsed());
                i += 1;
            }
            Ok::<_, Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(join(task).await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ops = all.len() as u64 * workload.weight();
    Ok((ops as f64 / elapsed, all))
}

async fn join<T>(task: tokio::task::JoinHandle<T>) -> Result<T> {
    task.await
        .map_err(|e| Error::internal(format!("a benchmark task failed: {e}")))
}
