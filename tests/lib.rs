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
