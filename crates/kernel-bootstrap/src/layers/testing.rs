//! Test helpers: capture tracing output and metrics while running async code.

use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `f` on a current-thread runtime with a DEBUG-level fmt subscriber writing to a buffer;
/// returns what it wrote.
pub(crate) fn capture_logs<F, Fut>(f: F) -> String
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    capture_logs_of(|| runtime().block_on(f()))
}

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Buffer>> = const { std::cell::RefCell::new(None) };
}

/// Writes to the capture running on this thread, or nowhere.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| match c.borrow_mut().as_mut() {
            Some(buffer) => buffer.write(buf),
            None => Ok(buf.len()),
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` while capturing what this thread logs at DEBUG and up; returns what it wrote.
///
/// One global subscriber routes each thread's output to its own capture: tracing caches a
/// callsite's interest globally, so a per-thread `with_default` subscriber could miss events
/// whose callsite another test thread hit first with no subscriber.
pub(crate) fn capture_logs_of(f: impl FnOnce()) -> String {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| ThreadWriter)
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish();
        // Only this helper installs a global subscriber in the test binary.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
    let buffer = Buffer::default();
    CAPTURE.with(|c| *c.borrow_mut() = Some(buffer.clone()));
    f();
    CAPTURE.with(|c| *c.borrow_mut() = None);
    let bytes = buffer.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

#[derive(Default)]
struct Registry {
    counters: Vec<(Key, Arc<AtomicU64>)>,
    gauges: Vec<(Key, Arc<AtomicU64>)>,
    histograms: Vec<(Key, Arc<Samples>)>,
}

fn cell<T: Default>(cells: &mut Vec<(Key, Arc<T>)>, key: &Key) -> Arc<T> {
    if let Some((_, c)) = cells.iter().find(|(k, _)| k == key) {
        return c.clone();
    }
    let c = Arc::new(T::default());
    cells.push((key.clone(), c.clone()));
    c
}

fn matches(key: &Key, name: &str, labels: &[(&str, &str)]) -> bool {
    key.name() == name
        && labels
            .iter()
            .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
}

/// A small metrics recorder that keeps every value, for assertions.
#[derive(Clone, Default)]
pub(crate) struct MetricsCapture(Arc<Mutex<Registry>>);

impl MetricsCapture {
    /// Runs `f` on a current-thread runtime with this recorder installed for the thread.
    pub(crate) fn run<F, Fut>(&self, f: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = ()>,
    {
        let rt = runtime();
        metrics::with_local_recorder(self, || rt.block_on(f()));
    }

    /// The sum of the counters named `name` carrying every label in `labels`.
    pub(crate) fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let r = self.0.lock().unwrap();
        r.counters
            .iter()
            .filter(|(k, _)| matches(k, name, labels))
            .map(|(_, c)| c.load(Ordering::SeqCst))
            .sum()
    }

    /// The value of the gauge named `name` carrying every label in `labels`.
    pub(crate) fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let r = self.0.lock().unwrap();
        r.gauges
            .iter()
            .find(|(k, _)| matches(k, name, labels))
            .map(|(_, g)| f64::from_bits(g.load(Ordering::SeqCst)))
    }

    /// Every sample of the histograms named `name` carrying every label in `labels`.
    pub(crate) fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let r = self.0.lock().unwrap();
        r.histograms
            .iter()
            .filter(|(k, _)| matches(k, name, labels))
            .flat_map(|(_, h)| h.0.lock().unwrap().clone())
            .collect()
    }
}

impl metrics::Recorder for MetricsCapture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(cell(&mut self.0.lock().unwrap().counters, key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(cell(&mut self.0.lock().unwrap().gauges, key))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(cell(&mut self.0.lock().unwrap().histograms, key))
    }
}
