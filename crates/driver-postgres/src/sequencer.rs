//! Group sequencing: appenders whose events did not get positions from the pass sent behind
//! their batch (see `crate::writer`) hand their seqs to one task per driver, which runs one
//! sequencer pass for everyone waiting and hands each appender its positions.
//!
//! Positions come from a pass (`kernel_event_positions`, see
//! `migrations/0002_event_txid.up.sql`) that may only number transactions older than every
//! running one, so an append's events can be held back by an older transaction still running:
//! another batch, or a transaction elsewhere in the cluster. One task shares each pass between
//! all such appenders and runs the next one when a batch of this driver commits, when new
//! appenders arrive, or after a short backoff. Across processes, passes serialise on the
//! database's sequencer lock, and an appender whose events another process numbered just reads
//! their positions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use kernel_core::{Error, Result};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::error::{self, BACKEND, pg};
use crate::statement::Statements;

const POSITIONS: &str = "SELECT kernel_event_positions($1)";

/// The first pause when an older transaction holds the events back; it doubles up to the cap.
const MIN_BACKOFF: Duration = Duration::from_micros(200);
const MAX_BACKOFF: Duration = Duration::from_millis(20);

/// A handle on the driver's sequencing task; the task ends when every handle is dropped.
pub(crate) struct Sequencer {
    requests: mpsc::UnboundedSender<Request>,
}

struct Request {
    seqs: Vec<i64>,
    wait: Duration,
    deadline: Instant,
    reply: oneshot::Sender<Result<Vec<i64>>>,
}

impl Sequencer {
    /// Starts the task. `committed` is notified whenever this driver commits appends: events
    /// that were waiting for those transactions to end may be numbered now.
    pub(crate) fn spawn(
        pool: Pool,
        pool_size: usize,
        committed: Arc<Notify>,
        statements: Statements,
    ) -> Sequencer {
        let (requests, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, pool_size, rx, committed, statements));
        Sequencer { requests }
    }

    /// The global positions of the committed events `seqs` of `stream`, in order: waits for
    /// the pass that numbers them, at most `wait`.
    pub(crate) async fn positions(
        &self,
        stream: &str,
        seqs: Vec<i64>,
        wait: Duration,
    ) -> Result<Vec<u64>> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            seqs,
            wait,
            deadline: Instant::now() + wait,
            reply,
        };
        if self.requests.send(request).is_err() {
            return Err(stopped().with_context("stream", stream));
        }
        let positions = match answer.await {
            Ok(result) => result.map_err(|e| e.with_context("stream", stream))?,
            Err(_) => return Err(stopped().with_context("stream", stream)),
        };
        positions
            .into_iter()
            .map(|p| {
                u64::try_from(p).map_err(|_| {
                    Error::corrupted(format!("negative global position {p} in kernel_event_log"))
                        .with_context("stream", stream)
                })
            })
            .collect()
    }
}

fn stopped() -> Error {
    Error::unavailable(
        "the events are stored, but the driver's sequencing task has stopped before giving \
         them positions; retrying the append returns them",
    )
    .with_context("backend", BACKEND)
}

async fn run(
    pool: Pool,
    pool_size: usize,
    mut rx: mpsc::UnboundedReceiver<Request>,
    committed: Arc<Notify>,
    statements: Statements,
) {
    let mut waiting: Vec<Request> = Vec::new();
    let mut backoff = MIN_BACKOFF;
    loop {
        if waiting.is_empty() {
            match rx.recv().await {
                Some(request) => waiting.push(request),
                None => return,
            }
        }
        while let Ok(request) = rx.try_recv() {
            waiting.push(request);
        }
        // An appender that gave up (its future was dropped) needs no pass.
        waiting.retain(|r| !r.reply.is_closed());
        if waiting.is_empty() {
            continue;
        }
        let seqs: Vec<i64> = waiting
            .iter()
            .flat_map(|r| r.seqs.iter().copied())
            .collect();
        let answered = match pass(&pool, pool_size, statements, &seqs).await {
            Ok(positions) => answer(&mut waiting, positions),
            Err(e) => fail(&mut waiting, &e),
        };
        if waiting.is_empty() || answered {
            backoff = MIN_BACKOFF;
            continue;
        }
        // Nobody could be answered: an older transaction holds the horizon back (often an
        // append batch of this driver still committing), or the server is unreachable. Pass
        // again when a batch of ours commits or new appenders arrive, else after a pause.
        tokio::select! {
            _ = committed.notified() => {}
            request = rx.recv() => match request {
                Some(request) => waiting.push(request),
                None => {
                    fail(&mut waiting, &stopped());
                    return;
                }
            },
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One pass for `seqs`: their positions, `None` where not numbered yet.
async fn pass(
    pool: &Pool,
    pool_size: usize,
    statements: Statements,
    seqs: &[i64],
) -> Result<Vec<Option<i64>>> {
    let client = pool.get().await.map_err(|e| error::pool(e, pool_size))?;
    let row = statements
        .query_one(&client, POSITIONS, &[&seqs])
        .await
        .map_err(pg)?;
    let positions: Option<Vec<Option<i64>>> = row.try_get(0).map_err(pg)?;
    let positions = positions.unwrap_or_default();
    if positions.len() != seqs.len() {
        return Err(Error::internal(format!(
            "kernel_event_positions returned {} positions for {} events",
            positions.len(),
            seqs.len()
        ))
        .with_context("backend", BACKEND));
    }
    Ok(positions)
}

/// Replies to every request whose events all have positions, and to every request past its
/// deadline; keeps the rest. `true` when some request got its positions.
fn answer(waiting: &mut Vec<Request>, positions: Vec<Option<i64>>) -> bool {
    let now = Instant::now();
    let mut positions = positions.into_iter();
    let mut answered = false;
    let mut kept = Vec::with_capacity(waiting.len());
    for request in waiting.drain(..) {
        // Take this request's whole share before looking at it: collecting straight into an
        // `Option` would stop at its first `None` and hand the rest to the next request.
        let mine: Vec<Option<i64>> = positions.by_ref().take(request.seqs.len()).collect();
        match mine.into_iter().collect::<Option<Vec<i64>>>() {
            Some(mine) => {
                answered = true;
                // The appender may have given up meanwhile: nothing to tell it then.
                let _ = request.reply.send(Ok(mine));
            }
            None if now >= request.deadline => {
                let _ = request.reply.send(Err(held_back(request.wait)));
            }
            None => kept.push(request),
        }
    }
    *waiting = kept;
    answered
}

/// After a failed pass: a permanent error (say, the schema is missing) fails every request
/// now; a temporary one (connection lost, pool busy) fails only those past their deadline,
/// and the next pass retries for the others.
fn fail(waiting: &mut Vec<Request>, error: &Error) -> bool {
    let now = Instant::now();
    let permanent = !error.is_retryable();
    tracing::debug!(%error, waiting = waiting.len(), "sequencer pass failed");
    let mut kept = Vec::with_capacity(waiting.len());
    for request in waiting.drain(..) {
        if permanent || now >= request.deadline {
            let _ = request.reply.send(Err(error.clone().with_message(format!(
                "the events are stored, but giving them positions failed: {}",
                error.message()
            ))));
        } else {
            kept.push(request);
        }
    }
    *waiting = kept;
    false
}

fn held_back(wait: Duration) -> Error {
    Error::timeout(format!(
        "the events are stored but had no global position within {} ms: an older transaction \
         on the server is still running; retrying the append returns their positions",
        wait.as_millis()
    ))
    .with_context("backend", BACKEND)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(seqs: usize) -> (Request, oneshot::Receiver<Result<Vec<i64>>>) {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            seqs: vec![0; seqs],
            wait: Duration::from_secs(60),
            deadline: Instant::now() + Duration::from_secs(60),
            reply,
        };
        (request, answer)
    }

    /// A request still partly unnumbered keeps its place, and the ones after it get their own
    /// positions, not its leftovers.
    #[test]
    fn each_request_gets_its_own_positions() {
        let (a, _a) = request(2);
        let (b, mut b_answer) = request(1);
        let (c, mut c_answer) = request(1);
        let mut waiting = vec![a, b, c];
        let answered = answer(&mut waiting, vec![Some(1), None, Some(7), Some(9)]);
        assert!(answered);
        assert_eq!(waiting.len(), 1, "the partly numbered request waits");
        match (b_answer.try_recv(), c_answer.try_recv()) {
            (Ok(Ok(b)), Ok(Ok(c))) => assert_eq!((b, c), (vec![7], vec![9])),
            other => panic!("b and c must be answered: {other:?}"),
        }
    }
}
