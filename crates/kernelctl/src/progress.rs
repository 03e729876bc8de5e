//! Progress of long commands: a bar with rate and ETA on a terminal, a plain line every few
//! seconds otherwise (a log file, a CI job), and the Ctrl-C flag they stop on.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the plain form prints a line.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

/// The progress of one command over `unit`s (events, lines).
pub(crate) struct Progress {
    label: &'static str,
    unit: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    form: Form,
}

enum Form {
    Bar(ProgressBar),
    Plain { last: Instant },
}

impl Progress {
    /// Starts counting; `total` when known gives a percentage and an ETA.
    pub(crate) fn new(label: &'static str, unit: &'static str, total: Option<u64>) -> Progress {
        let form = if std::io::stderr().is_terminal() {
            let bar = match total {
                Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = if total.is_some() {
                "{prefix} [{bar:30}] {human_pos}/{human_len} {msg} {per_sec} ETA {eta}"
            } else {
                "{prefix} {spinner} {human_pos} {msg} {per_sec} {elapsed}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label);
            bar.set_message(unit);
            bar.enable_steady_tick(Duration::from_millis(200));
            Form::Bar(bar)
        } else {
            Form::Plain {
                last: Instant::now(),
            }
        };
        Progress {
            label,
            unit,
            total,
            done: 0,
            started: Instant::now(),
            form,
        }
    }

    /// `n` more done.
    pub(crate) fn add(&mut self, n: u64) {
        self.done += n;
        match &mut self.form {
            Form::Bar(bar) => bar.inc(n),
            Form::Plain { last } => {
                if last.elapsed() >= PLAIN_EVERY {
                    *last = Instant::now();
                    eprintln!("{}", self.line());
                }
            }
        }
    }

    /// Units per second so far.
    pub(crate) fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        }
    }

    fn line(&self) -> String {
        let rate = self.rate();
        let mut line = format!("{}: {} {}", self.label, self.done, self.unit);
        if let Some(total) = self.total.filter(|t| *t > 0) {
            let pct = self.done as f64 * 100.0 / total as f64;
            line.push_str(&format!(" of {total} ({pct:.0}%)"));
            if rate > 0.0 && total > self.done {
                let eta = Duration::from_secs_f64((total - self.done) as f64 / rate);
                line.push_str(&format!(", ETA {}", humantime::format_duration(round(eta))));
            }
        }
        line.push_str(&format!(", {rate:.0} {}/s", self.unit));
        line
    }

    /// Ends the bar and prints the summary line.
    pub(crate) fn finish(self, outcome: &str) {
        if let Form::Bar(bar) = &self.form {
            bar.finish_and_clear();
        }
        eprintln!(
            "{} in {} ({outcome})",
            self.line(),
            humantime::format_duration(round(self.started.elapsed()))
        );
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().min(u128::from(u64::MAX)) as u64 / 100 * 100)
}

/// Set when Ctrl-C (SIGINT) arrives; long commands stop at the next safe point.
#[derive(Clone, Default)]
pub(crate) struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Listens for Ctrl-C from now on.
    pub(crate) fn listen() -> Interrupt {
        let flag = Interrupt::default();
        let set = flag.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                set.0.store(true, Ordering::SeqCst);
            }
        });
        flag
    }

    /// Whether Ctrl-C came.
    pub(crate) fn raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
