//! Workloads, the two sides that run them, and the interleaved measurement.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kernel_core::{Error, ExpectedVersion, NewEvent, PutOptions, Result, json};
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
}

impl Workload {
    pub(crate) const ALL: [Workload; 7] = [
        Workload::Get,
        Workload::Put,
        Workload::PutIfVersion,
        Workload::Append,
        Workload::Append10,
        Workload::Lock,
        Workload::RateLimit,
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
        }
    }

    pub(crate) fn parse(name: &str) -> Result<Workload> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == name)
            .ok_or_else(|| {
                Error::invalid_input(format!(
                    "unknown workload {name:?}; one of get, put, put_if_version, append, \
                     append10, lock, rate_limit"
                ))
            })
    }

    /// Operations one call counts for (events appended for the append workloads).
    fn weight(self) -> u64 {
        match self {
            Workload::Append10 => 10,
            _ => 1,
        }
    }
}

/// What a task carries between its calls: the version of its compare-and-set document.
#[derive(Debug, Default)]
pub(crate) struct TaskState {
    pub(crate) cas_version: u64,
    pub(crate) stream_version: u64,
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

/// Runs `workload` at `concurrency` on both sides, `rounds` times each, interleaved.
pub(crate) async fn compare(
    kernel: &kernel_bootstrap::Kernel,
    raw: &Arc<dyn Side>,
    backend: &str,
    workload: Workload,
    concurrency: usize,
    round: Duration,
    rounds: usize,
) -> Result<Row> {
    let kernel_side: Arc<dyn Side> = Arc::new(KernelSide(kernel.stores()));
    let mut ratios = Vec::with_capacity(rounds);
    let (mut k_ops, mut r_ops) = (Vec::new(), Vec::new());
    let mut latencies = Vec::new();
    for _ in 0..rounds.max(1) {
        let (k, lat) = measure(&kernel_side, workload, concurrency, round).await?;
        let (r, _) = measure(raw, workload, concurrency, round).await?;
        latencies.extend(lat);
        ratios.push(if r > 0.0 { k / r } else { 0.0 });
        k_ops.push(k);
        r_ops.push(r);
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Ok(Row {
        backend: backend.to_owned(),
        workload: workload.name(),
        concurrency,
        kernel_ops: median(&mut k_ops),
        raw_ops: median(&mut r_ops),
        ratio: median(&mut ratios),
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        rounds,
        round_seconds: round.as_secs_f64(),
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
) -> Result<(f64, Vec<Duration>)> {
    // A fresh namespace / stream prefix per round: rounds do not see each other's data.
    let run = format!("bench{}", kernel_core::Uuid::new_v4().simple());
    let mut tasks = Vec::with_capacity(concurrency);
    for t in 0..concurrency {
        let (side, run) = (side.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            let mut st = TaskState::default();
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
