//! `events`: read, tail, export, import and copy, in the NDJSON of [`crate::ndjson`].

use std::io::{BufWriter, Write as _};
use std::path::Path;

use futures::StreamExt;
use kernel_core::{Error, EventFilter, EventStore, ExpectedVersion, ReadStream, Result};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::cli::{EventsCommand, FilterFlags};
use crate::ndjson::EventLine;
use crate::progress::{Interrupt, Progress};
use crate::{Outcome, boot, print_json};

/// Events per page of a global read (export, copy).
const PAGE: usize = 1000;

pub(crate) async fn run(
    events: &dyn EventStore,
    command: EventsCommand,
    interrupt: &Interrupt,
) -> Result<Outcome> {
    match command {
        EventsCommand::Read {
            stream,
            from,
            limit,
            backward,
        } => {
            let mut options = if backward {
                ReadStream::backward()
            } else {
                ReadStream::forward()
            };
            options.from_version = from;
            options.limit = limit;
            for e in events.read_stream(&stream, options).await? {
                print_json(&EventLine::from(e))?;
            }
            Ok(Outcome::Done)
        }
        EventsCommand::Tail { from, filter } => tail(events, from, filter).await,
        EventsCommand::Export {
            from,
            to,
            filter,
            output,
        } => export(events, from, to, &filter, output.as_deref(), interrupt).await,
        EventsCommand::Import {
            input,
            skip_lines,
            batch,
            parallel,
        } => {
            let options = ImportOptions {
                skip: skip_lines,
                batch,
                parallel,
            };
            import(events, input.as_deref(), options, interrupt).await
        }
        EventsCommand::Copy { to, from, filter } => {
            copy(events, &to, from, &filter, interrupt).await
        }
    }
}

fn event_filter(flags: &FilterFlags) -> EventFilter {
    let mut filter = EventFilter::all();
    filter.categories = flags.categories.clone();
    filter.event_types = flags.types.clone();
    filter
}

async fn tail(events: &dyn EventStore, from: Option<u64>, flags: FilterFlags) -> Result<Outcome> {
    let after = match from {
        Some(p) => p,
        None => events.head_position().await?,
    };
    let mut feed = events.subscribe(after, event_filter(&flags)).await?;
    eprintln!("tailing events after position {after}; Ctrl-C stops");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(Outcome::Done),
            next = feed.next() => match next {
                Some(event) => print_json(&EventLine::from(event?))?,
                None => {
                    eprintln!("the subscription ended (the store shut down)");
                    return Ok(Outcome::Done);
                }
            },
        }
    }
}

async fn export(
    events: &dyn EventStore,
    from: u64,
    to: Option<u64>,
    flags: &FilterFlags,
    output: Option<&Path>,
    interrupt: &Interrupt,
) -> Result<Outcome> {
    let head = events.head_position().await?;
    let to = to.unwrap_or(head).min(head);
    let filter = event_filter(flags);
    let sink: Box<dyn std::io::Write> = match output {
        Some(path) => Box::new(std::fs::File::create(path).map_err(|e| {
            Error::invalid_input(format!("cannot create {}", path.display())).with_source(e)
        })?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::new(sink);
    let mut progress = Progress::new("export", "events", Some(to.saturating_sub(from)));
    let mut after = from;
    let mut exported = 0u64;
    while after < to {
        if interrupt.raised() {
            out.flush().map_err(write_error)?;
            let target =
                output.map_or_else(|| ">> FILE".to_owned(), |p| format!("-o {}", p.display()));
            progress.finish("interrupted");
            eprintln!(
                "stopped after position {after} ({exported} events written); the rest: \
                 kernelctl events export --from {after} --to {to} {target}"
            );
            return Ok(Outcome::Interrupted);
        }
        let page = events.read_all(after, &filter, PAGE).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            break;
        };
        for event in page {
            if event.position > to {
                break;
            }
            let line = serde_json::to_string(&EventLine::from(event))
                .map_err(|e| Error::internal("cannot encode an event").with_source(e))?;
            writeln!(out, "{line}").map_err(write_error)?;
            exported += 1;
        }
        progress.add(last.min(to) - after);
        after = last;
    }
    out.flush().map_err(write_error)?;
    progress.finish(&format!("{exported} events, positions {}..={to}", from + 1));
    Ok(Outcome::Done)
}

/// Appends lines in order: each run of consecutive versions of one stream is one append at
/// the version before the run, so the target's streams get the same versions, and a fresh
/// target the same positions. Events already there (same id, same place) are skipped by the
/// append itself, which makes a second import add nothing.
pub(crate) struct Importer<'a> {
    target: &'a dyn EventStore,
    parallel: usize,
    /// What the numbers beside the lines are, for errors: `line` (an import) or
    /// `source_position` (a copy).
    origin: &'static str,
    pub(crate) written: u64,
    pub(crate) present: u64,
}

impl<'a> Importer<'a> {
    pub(crate) fn new(
        target: &'a dyn EventStore,
        parallel: usize,
        origin: &'static str,
    ) -> Importer<'a> {
        Importer {
            target,
            parallel: parallel.max(1),
            origin,
            written: 0,
            present: 0,
        }
    }

    /// Appends `lines` (with their line numbers for errors): every run, or on an error the
    /// runs before the failing one (with `parallel > 1`, the failing run's window may have
    /// written others of its runs too; a resumed import skips them as already there).
    pub(crate) async fn write(&mut self, lines: &[(u64, EventLine)]) -> Result<()> {
        let origin = self.origin;
        let runs = runs(lines, origin)?;
        let mut next = 0;
        while next < runs.len() {
            // A window of runs on distinct streams: a stream's next run waits for its previous
            // one, whose version it continues.
            let mut window: Vec<&[(u64, EventLine)]> = Vec::with_capacity(self.parallel);
            while next < runs.len()
                && window.len() < self.parallel
                && !window
                    .iter()
                    .any(|w| w[0].1.stream == runs[next][0].1.stream)
            {
                window.push(runs[next]);
                next += 1;
            }
            let target = self.target;
            let outcomes = futures::future::join_all(window.iter().map(|run| async move {
                let (first_no, first) = &run[0];
                let batch = run.iter().map(|(_, l)| l.to_new_event()).collect();
                target
                    .append(
                        &first.stream,
                        ExpectedVersion::Exact(first.version - 1),
                        batch,
                    )
                    .await
                    .map(|r| (r.written, run.len() as u64))
                    .map_err(|e| e.with_context(origin, first_no))
            }))
            .await;
            for outcome in outcomes {
                let (written, n) = outcome?;
                if written {
                    self.written += n;
                } else {
                    self.present += n;
                }
            }
        }
        Ok(())
    }
}

/// Splits lines into runs of consecutive versions of one stream.
fn runs<'l>(
    lines: &'l [(u64, EventLine)],
    origin: &'static str,
) -> Result<Vec<&'l [(u64, EventLine)]>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < lines.len() {
        let (first_no, first) = &lines[start];
        if first.version == 0 {
            return Err(Error::invalid_input("stream versions start at 1, got 0")
                .with_context(origin, first_no)
                .with_context("stream", &first.stream));
        }
        let mut end = start + 1;
        while end < lines.len()
            && lines[end].1.stream == first.stream
            && lines[end].1.version == lines[end - 1].1.version + 1
        {
            end += 1;
        }
        out.push(&lines[start..end]);
        start = end;
    }
    Ok(out)
}

/// How `events import` reads and writes.
struct ImportOptions {
    skip: u64,
    batch: usize,
    parallel: usize,
}

async fn import(
    events: &dyn EventStore,
    input: Option<&Path>,
    options: ImportOptions,
    interrupt: &Interrupt,
) -> Result<Outcome> {
    let ImportOptions {
        skip,
        batch,
        parallel,
    } = options;
    if batch == 0 || parallel == 0 {
        return Err(Error::invalid_input(
            "--batch and --parallel must be at least 1",
        ));
    }
    let (reader, total): (Box<dyn tokio::io::AsyncRead + Unpin + Send>, Option<u64>) = match input {
        Some(path) => {
            let file = tokio::fs::File::open(path).await.map_err(|e| {
                Error::invalid_input(format!("cannot open {}", path.display())).with_source(e)
            })?;
            (Box::new(file), count_lines(path).ok())
        }
        None => (Box::new(tokio::io::stdin()), None),
    };
    let resume = |line: u64| match input {
        Some(p) => format!(
            "kernelctl events import --input {} --skip-lines {line}",
            p.display()
        ),
        None => format!("kernelctl events import --skip-lines {line} < FILE"),
    };
    let mut lines = BufReader::new(reader).lines();
    let mut importer = Importer::new(events, parallel, "line");
    let mut progress = Progress::new("import", "lines", total.map(|t| t.saturating_sub(skip)));
    let mut line_no = 0u64;
    // Lines up to this one are imported.
    let mut committed = skip;
    let mut pending: Vec<(u64, EventLine)> = Vec::with_capacity(batch);
    let mut finished = false;
    while !finished {
        if interrupt.raised() {
            progress.finish("interrupted");
            eprintln!(
                "stopped after line {committed} ({} events written, {} already there); \
                 resume with: {}",
                importer.written,
                importer.present,
                resume(committed)
            );
            return Ok(Outcome::Interrupted);
        }
        // Parse a whole batch before writing any of it: a bad line stops the import with
        // nothing of its batch written.
        pending.clear();
        while pending.len() < batch {
            let next = lines.next_line().await.map_err(|e| {
                Error::invalid_input(format!("cannot read line {}", line_no + 1)).with_source(e)
            })?;
            let Some(text) = next else {
                finished = true;
                break;
            };
            line_no += 1;
            if line_no <= skip || text.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<EventLine>(&text) {
                Ok(line) => pending.push((line_no, line)),
                Err(e) => {
                    progress.finish("stopped at a malformed line");
                    return Err(Error::invalid_input(format!(
                        "line {line_no} is not an exported event: {e}; lines up to \
                         {committed} are imported, nothing after; fix the line and resume \
                         with: {}",
                        resume(committed)
                    ))
                    .with_context("line", line_no));
                }
            }
        }
        if let Err(e) = importer.write(&pending).await {
            progress.finish("failed");
            eprintln!(
                "lines up to {committed} are imported; resume with: {}",
                resume(committed)
            );
            return Err(e);
        }
        progress.add(line_no - committed);
        committed = line_no;
    }
    progress.finish(&format!(
        "{} events written, {} already there",
        importer.written, importer.present
    ));
    Ok(Outcome::Done)
}

/// Lines of a file, for the progress bar's total (a quick pass over bytes).
fn count_lines(path: &Path) -> std::io::Result<u64> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let read = file.read(&mut buf)?;
        if read == 0 {
            return Ok(n);
        }
        n += buf[..read].iter().filter(|b| **b == b'\n').count() as u64;
    }
}

/// `events copy`: from this configuration's event store into the one of `to`.
async fn copy(
    source: &dyn EventStore,
    to: &Path,
    from: u64,
    flags: &FilterFlags,
    interrupt: &Interrupt,
) -> Result<Outcome> {
    let target_kernel = boot::kernel(boot::target_config(to)?).await?;
    let outcome = copy_into(
        source,
        &**target_kernel.events(),
        from,
        flags,
        to,
        interrupt,
    )
    .await;
    for failure in target_kernel.shutdown().await {
        eprintln!("target: {failure}");
    }
    outcome
}

async fn copy_into(
    source: &dyn EventStore,
    target: &dyn EventStore,
    from: u64,
    flags: &FilterFlags,
    to: &Path,
    interrupt: &Interrupt,
) -> Result<Outcome> {
    let head = source.head_position().await?;
    let filter = event_filter(flags);
    let mut importer = Importer::new(target, 1, "source_position");
    let mut progress = Progress::new("copy", "events", Some(head.saturating_sub(from)));
    let mut after = from;
    while after < head {
        if interrupt.raised() {
            progress.finish("interrupted");
            eprintln!(
                "stopped after source position {after}; resume with: kernelctl events copy \
                 --to {} --from {after}",
                to.display()
            );
            return Ok(Outcome::Interrupted);
        }
        let page = source.read_all(after, &filter, PAGE).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            break;
        };
        let lines: Vec<(u64, EventLine)> = page
            .into_iter()
            .filter(|e| e.position <= head)
            .map(|e| (e.position, EventLine::from(e)))
            .collect();
        importer
            .write(&lines)
            .await
            .map_err(|e| e.with_context("resume_with", format!("--from {after}")))?;
        progress.add(last.min(head) - after);
        after = last;
    }
    progress.finish(&format!(
        "{} events written, {} already there",
        importer.written, importer.present
    ));
    Ok(Outcome::Done)
}

fn write_error(e: std::io::Error) -> Error {
    Error::internal("cannot write the export").with_source(e)
}
