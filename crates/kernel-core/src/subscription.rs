//! The one subscription loop every driver uses: read a bounded page after the last position,
//! yield it, and when caught up wait for a wake-up (or a poll tick) before reading again.
//!
//! Pulling pages from the store instead of pushing events into per-subscriber queues is what
//! keeps memory bounded for a slow consumer, makes catch-up and live the same code path (so
//! nothing is lost or duplicated at the hand-over), and makes every subscription resumable from
//! the last position it yielded.

use std::collections::VecDeque;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::error::Result;
use crate::event::{EventSubscription, RecordedEvent};

/// What a driver broadcasts to its subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadSignal {
    /// The newest position known to be readable (a hint; subscriptions re-read anyway).
    pub position: u64,
    /// The store is shutting down: subscriptions end after yielding what they have.
    pub closed: bool,
}

/// Sender half held by a driver.
pub type HeadSender = watch::Sender<HeadSignal>;

/// Settings of the loop (`[<driver>.subscription]` in the bootstrap's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Events read per page (and so the most buffered per subscription).
    pub page_size: usize,
    /// How often to re-read when no wake-up came: the safety net for lost notifications
    /// (`poll_interval_ms`).
    #[serde(rename = "poll_interval_ms", with = "crate::settings::duration_ms")]
    pub poll_interval: Duration,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        SubscriptionConfig {
            page_size: 256,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// A page reader: events with position `> after`, in order, at most `limit`.
pub type PageReader =
    Box<dyn Fn(u64, usize) -> BoxFuture<'static, Result<Vec<RecordedEvent>>> + Send + Sync>;

struct State {
    after: u64,
    buffer: VecDeque<RecordedEvent>,
    wake: watch::Receiver<HeadSignal>,
    read: PageReader,
    config: SubscriptionConfig,
    done: bool,
    sender_gone: bool,
}

/// Builds a subscription that yields every event `read` returns after `after`, in order.
///
/// An error from `read` is yielded once and ends the stream; resume with a new subscription from
/// the last position seen.
pub fn paged(
    after: u64,
    wake: watch::Receiver<HeadSignal>,
    config: SubscriptionConfig,
    read: PageReader,
) -> EventSubscription {
    let state = State {
        after,
        buffer: VecDeque::new(),
        wake,
        read,
        config,
        done: false,
        sender_gone: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            if let Some(e) = st.buffer.pop_front() {
                st.after = e.position;
                return Some((Ok(e), st));
            }
            // Mark the current signal seen before reading, so an append that lands after the
            // read wakes us instead of being missed.
            let closed = st.wake.borrow_and_update().closed;
            let page = match (st.read)(st.after, st.config.page_size).await {
                Ok(page) => page,
                Err(e) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
            };
            // A reader must only return positions past `after`; filtering again means a faulty
            // page cannot make the loop spin on the same events.
            let after = st.after;
            st.buffer
                .extend(page.into_iter().filter(|e| e.position > after));
            if !st.buffer.is_empty() {
                continue;
            }
            if closed || st.sender_gone {
                return None;
            }
            tokio::select! {
                changed = st.wake.changed() => {
                    // The driver is gone: read once more, then end when caught up.
                    st.sender_gone = changed.is_err();
                }
                _ = tokio::time::sleep(st.config.poll_interval) => {}
            }
        }
    })
    .boxed()
}
