//! The notification listener: one dedicated connection (not pooled: LISTEN belongs to a session,
//! and a pooled session is shared) that LISTENs on `kernel_events` and `kernel_pending`.
//!
//! * `kernel_events` (sent by every sequencer pass, carrying the new head): wakes the driver's
//!   subscriptions, which then read their next page. Nothing travels in the notification that
//!   the subscriptions rely on, so a lost one only delays them until the poll tick.
//! * `kernel_pending` (sent by the SQL entry point `kernel_append`, and by 0006's trigger on a
//!   plain `INSERT INTO kernel_events` from a console): runs a sequencer pass, so events
//!   appended from psql get their positions and reach subscribers within milliseconds.
//!
//! When the connection drops, the listener reconnects with backoff, LISTENs again and wakes
//! every subscription: each re-reads from its last position, so events committed while no one
//! listened are delivered, none twice. The tick also runs a sequencer pass when events wait
//! for positions (an appender that died between commit and numbering), and sweeps expired
//! documents, lapsed rate-limit rows and expired operation ids now and then.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures::StreamExt;
use kernel_core::subscription::HeadSignal;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Notification};

use crate::error;

/// What the listener needs; it holds no reference to the driver, so dropping the driver ends it.
pub(crate) struct ListenerSetup {
    pub(crate) pg: tokio_postgres::Config,
    /// The pool's TLS settings: the LISTEN connection is as protected as the others.
    pub(crate) tls: crate::tls::PgTls,
    pub(crate) pool: Pool,
    pub(crate) pool_size: usize,
    pub(crate) head: Arc<watch::Sender<HeadSignal>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) tick: Duration,
    /// Wakes `retry_passes` on `kernel_pending`.
    pub(crate) pending: Arc<Notify>,
    /// Row-level security: the sweep must reach every tenant's rows, so it calls the
    /// migration's `SECURITY DEFINER` function instead of deleting itself.
    pub(crate) rls: bool,
}

const SWEEP_EVERY: Duration = Duration::from_secs(60);

pub(crate) fn spawn(setup: ListenerSetup) -> JoinHandle<()> {
    tokio::spawn(run(setup))
}

async fn run(mut s: ListenerSetup) {
    let retries = tokio::spawn(retry_passes(s.pool.clone(), s.pool_size, s.pending.clone()));
    run_until_shutdown(&mut s).await;
    retries.abort();
}

async fn run_until_shutdown(s: &mut ListenerSetup) {
    let mut backoff = Duration::from_millis(50);
    let mut last_sweep = Instant::now();
    loop {
        if *s.shutdown.borrow() {
            return;
        }
        let connected = tokio::select! {
            r = s.pg.connect(s.tls.connector()) => r,
            _ = s.shutdown.changed() => return,
        };
        let (client, mut connection) = match connected {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "postgres listener cannot connect; subscriptions fall back to polling");
                if sleep_or_shutdown(&mut s.shutdown, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Notification>();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n).is_err() {
                            return;
                        }
                    }
                    Ok(AsyncMessage::Notice(notice)) => {
                        tracing::debug!(notice = %notice.message(), "postgres listener notice");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "postgres listener connection lost; reconnecting");
                        return;
                    }
                }
            }
        });
        if let Err(e) = client
            .batch_execute("LISTEN kernel_events; LISTEN kernel_pending")
            .await
        {
            tracing::warn!(error = %e, "postgres listener cannot LISTEN; reconnecting");
            driver.abort();
            if sleep_or_shutdown(&mut s.shutdown, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(50);
        // Events may have been numbered while nobody listened, and psql appends may wait for a
        // pass: number what is pending, then wake every subscription to re-read.
        sequence(&s.pool, s.pool_size).await;
        s.head.send_modify(|_| {});
        let mut ticker = tokio::time::interval(s.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                note = rx.recv() => match note {
                    Some(n) => handle(s, &n).await,
                    None => break,
                },
                _ = ticker.tick() => {
                    sequence(&s.pool, s.pool_size).await;
                    if last_sweep.elapsed() >= SWEEP_EVERY {
                        last_sweep = Instant::now();
                        sweep(s).await;
                    }
                }
                _ = s.shutdown.changed() => {
                    driver.abort();
                    return;
                }
            }
        }
        driver.abort();
        drop(client);
        if sleep_or_shutdown(&mut s.shutdown, backoff).await {
            return;
        }
    }
}

/// Sleeps; `true` when shutdown came first.
async fn sleep_or_shutdown(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

async fn handle(s: &ListenerSetup, n: &Notification) {
    match n.channel() {
        "kernel_events" => {
            let head = n.payload().parse::<u64>().unwrap_or(0);
            s.head.send_modify(|h| h.position = h.position.max(head));
        }
        // Passes for SQL-client appends run in a task of their own (`retry_passes`), so the
        // listener keeps handling wake-ups and shutdown meanwhile.
        "kernel_pending" => s.pending.notify_one(),
        other => tracing::debug!(channel = other, "unexpected notification"),
    }
}

/// After each `kernel_pending` notification: passes until nothing waits for a position, up to
/// about a second (an older transaction may hold the horizon back); the tick takes over after
/// that. A notification during a round starts another one (`Notify` keeps one permit).
async fn retry_passes(pool: Pool, pool_size: usize, pending: Arc<Notify>) {
    loop {
        pending.notified().await;
        for _ in 0..50 {
            if !sequence(&pool, pool_size).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs a sequencer pass; `true` when events still wait for positions afterwards.
async fn sequence(pool: &Pool, pool_size: usize) -> bool {
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %error::pool(e, pool_size), "sequencer pass skipped");
            return false;
        }
    };
    // Two statements: the check must see what the pass committed.
    let result = match client.batch_execute("SELECT kernel_sequence()").await {
        Ok(()) => {
            client
                // Unnamed (one round trip, and nothing left on a pooled server session).
                .query_typed_one("SELECT kernel_events_unpositioned(1) > 0", &[])
                .await
        }
        Err(e) => Err(e),
    };
    match result.and_then(|row| row.try_get::<_, bool>(0)) {
        Ok(pending) => pending,
        Err(e) => {
            tracing::warn!(error = %error::pg(e), "sequencer pass failed");
            false
        }
    }
}

/// Deletes expired documents, lapsed rate-limit rows and expired operation ids, a bounded batch
/// at a time.
async fn sweep(s: &ListenerSetup) {
    let client = match s.pool.get().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %error::pool(e, s.pool_size), "sweep skipped");
            return;
        }
    };
    if s.rls {
        // A role under row-level security would delete only what it sees: nothing, with no
        // tenant set.
        if let Err(e) = client
            .batch_execute("SELECT kernel_purge_expired(10000)")
            .await
        {
            tracing::warn!(error = %error::pg(e), "sweep of expired rows failed");
        }
        return;
    }
    let result = client
        .batch_execute(
            "DELETE FROM kernel_documents WHERE ctid IN (SELECT ctid FROM kernel_documents \
               WHERE expires_at <= clock_timestamp() LIMIT 10000); \
             DELETE FROM kernel_rate_limits WHERE ctid IN (SELECT ctid FROM kernel_rate_limits \
               WHERE tat_us <= (extract(epoch FROM clock_timestamp()) * 1000000)::bigint LIMIT 10000);",
        )
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %error::pg(e), "sweep of expired rows failed");
    }
    // On its own: a database still without 0003's table must not stop the sweep above. Rows a
    // write_once is taking over right now are skipped, not waited for.
    let result = client
        .batch_execute(
            "DELETE FROM kernel_operations WHERE ctid = ANY (ARRAY( \
               SELECT ctid FROM kernel_operations WHERE expires_at <= now() \
               ORDER BY expires_at LIMIT 10000 FOR UPDATE SKIP LOCKED))",
        )
        .await;
    if let Err(e) = result {
        tracing::warn!(error = %error::pg(e), "sweep of expired operation ids failed");
    }
}
