//! [`Audit`]: an opt-in interceptor that records every write (and, if asked, every read) as an
//! event in a reserved category, `kernel.audit`: who did what to which target, how it ended,
//! when and under which correlation id.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kernel_core::Result<()> {
//! use kernel_bootstrap::layers::Intercept;
//! use kernel_bootstrap::layers::audit::{self, Audit, AuditQuery};
//! use kernel_bootstrap::{Kernel, KernelConfig};
//! use kernel_core::{json, PutOptions};
//!
//! let kernel = Kernel::boot(KernelConfig::default()).await?;
//! // Records go to the kernel's own event store, not through the audited stores.
//! let audit = Audit::new(kernel.events().clone()).principal("billing-service").tenant("acme");
//! let stores = kernel.stores().layer(&Intercept::new(audit));
//! audit::with_correlation("req-42", async {
//!     stores.storage.put("invoices", "7", json!({"total": 10}), PutOptions::new()).await
//! })
//! .await?;
//! let records = audit::query(&**kernel.events(), &AuditQuery::new().principal("billing-service")).await?;
//! assert_eq!(records[0].operation, "put");
//! assert_eq!(records[0].correlation_id.as_deref(), Some("req-42"));
//! # Ok(()) }
//! ```
//!
//! Each record is one event appended to the stream `kernel.audit-<YYYYMMDD>` (UTC day of the
//! call), type `Audited`, with the payload of [`AuditRecord`].
//!
//! **In the write's transaction, where the backend allows it.** With
//! [`Audit::same_transaction`] (for a sink that is the same PostgreSQL database as the audited
//! documents: the driver writes the record into its own event table), the record of a
//! successful `put`, `delete`, `put_many` or `delete_many` is handed to the driver as a
//! [`kernel_core::companion`] and appended in the write's own transaction: both commit or
//! neither. Such a record says `ok` and has no `duration_ms` (it is written before the call
//! ends). Every other record — other operations, failed calls, drivers that cannot (memory,
//! Redis, SQLite), or without `same_transaction` — is written **after** the call returns: a
//! crash between the two loses the record of a write that happened. A record that cannot be
//! stored is reported loudly — an `error` log line naming the operation and the target, the
//! `kernel_audit_failures_total` counter, and [`Audit::failures`] — while the caller still gets
//! the call's own result (the write did happen). Values and keys' contents are never recorded;
//! keys, namespaces, streams and error codes are.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use kernel_core::companion::{self, Companion};
use kernel_core::{
    Error, EventFilter, EventStore, ExpectedVersion, NewEvent, RecordedEvent, Result,
};
use serde::{Deserialize, Serialize};

use super::{Access, Call, Interceptor, Op};

/// The category of audit streams.
pub const CATEGORY: &str = "kernel.audit";

/// The event type of an audit record.
pub const EVENT_TYPE: &str = "Audited";

tokio::task_local! {
    static CORRELATION: String;
}

/// Runs `future` with `id` as the correlation id of every audit record its calls make.
pub async fn with_correlation<F: Future>(id: impl Into<String>, future: F) -> F::Output {
    CORRELATION.scope(id.into(), future).await
}

fn correlation() -> Option<String> {
    CORRELATION.try_with(Clone::clone).ok()
}

/// Records the calls it wraps into an event store. Wrap it in [`super::Intercept`] to layer the
/// four stores with one audit trail.
pub struct Audit {
    sink: Arc<dyn EventStore>,
    principal: Option<String>,
    tenant: Option<String>,
    reads: bool,
    same_transaction: bool,
    failures: AtomicU64,
}

impl fmt::Debug for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit")
            .field("principal", &self.principal)
            .field("tenant", &self.tenant)
            .field("reads", &self.reads)
            .field("same_transaction", &self.same_transaction)
            .field("failures", &self.failures.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Audit {
    /// Audits writes into `sink`: the kernel's own event store (`kernel.events()`), not a store
    /// this layer wraps.
    pub fn new(sink: Arc<dyn EventStore>) -> Audit {
        Audit {
            sink,
            principal: None,
            tenant: None,
            reads: false,
            same_transaction: false,
            failures: AtomicU64::new(0),
        }
    }

    /// Offers each write's record to the driver, to append in the write's own transaction (see
    /// the module docs). Only for a sink that is the **same PostgreSQL database** as the audited
    /// documents (`kernel.events()` when documents and events both use one PostgreSQL backend):
    /// the driver appends the record to its own event table, whatever the sink.
    #[must_use]
    pub fn same_transaction(mut self, on: bool) -> Audit {
        self.same_transaction = on;
        self
    }

    /// Who calls through this layer (a service, a user).
    #[must_use]
    pub fn principal(mut self, principal: impl Into<String>) -> Audit {
        self.principal = Some(principal.into());
        self
    }

    /// The tenant the calls act for.
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>) -> Audit {
        self.tenant = Some(tenant.into());
        self
    }

    /// Records reads too (every `get`, `list`, `read_stream`, ...): a large trail.
    #[must_use]
    pub fn with_reads(mut self, reads: bool) -> Audit {
        self.reads = reads;
        self
    }

    /// How many records could not be stored.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The record of `op` as an event for today's audit stream.
    fn event(
        &self,
        op: &Op<'_>,
        outcome: std::result::Result<(), &Error>,
        ms: Option<f64>,
    ) -> Result<(String, NewEvent)> {
        let at = SystemTime::now();
        let record = AuditRecord {
            principal: self.principal.clone(),
            tenant: self.tenant.clone(),
            role: op.role.as_str().to_owned(),
            operation: op.name.to_owned(),
            access: match op.access {
                Access::Read => "read".to_owned(),
                Access::Write => "write".to_owned(),
            },
            namespace: op.namespace.map(str::to_owned),
            key: op.key.map(str::to_owned),
            stream: op.stream.map(str::to_owned),
            outcome: match outcome {
                Ok(()) => "ok".to_owned(),
                Err(e) => e.code().as_str().to_owned(),
            },
            error: outcome.err().map(ToString::to_string),
            duration_ms: ms,
            correlation_id: correlation(),
            recorded_at: None,
        };
        let payload = serde_json::to_value(&record)
            .map_err(|e| Error::internal("cannot encode an audit record").with_source(e))?;
        let mut event = NewEvent::new(EVENT_TYPE, payload);
        event.correlation_id = record.correlation_id.clone();
        Ok((format!("{CATEGORY}-{}", day(at)), event))
    }

    async fn store(&self, op: &Op<'_>, stream: &str, event: NewEvent) {
        if let Err(e) = self
            .sink
            .append(stream, ExpectedVersion::Any, vec![event])
            .await
        {
            self.failed(op, &e);
        }
    }

    async fn record(&self, op: &Op<'_>, outcome: std::result::Result<(), &Error>, ms: f64) {
        match self.event(op, outcome, Some(ms)) {
            Ok((stream, event)) => self.store(op, &stream, event).await,
            Err(e) => self.failed(op, &e),
        }
    }

    fn failed(&self, op: &Op<'_>, error: &Error) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("kernel_audit_failures_total", "operation" => op.name).increment(1);
        tracing::error!(
            operation = op.name,
            namespace = op.namespace,
            key = op.key,
            stream = op.stream,
            error = %error,
            "the audit record of a kernel operation could not be stored; the operation itself \
             ran and its result was returned"
        );
    }
}

impl Interceptor for Audit {
    fn around<'a, R: Send + 'a>(
        &'a self,
        op: Op<'a>,
        mut call: Call<'a, R>,
    ) -> BoxFuture<'a, Result<R>> {
        if op.access == Access::Read && !self.reads {
            return call(super::Attempt::Final);
        }
        if self.same_transaction && IN_TRANSACTION.contains(&op.name) {
            return Box::pin(async move {
                let started = Instant::now();
                let offered = match self.event(&op, Ok(()), None) {
                    Ok((stream, event)) => Some(Arc::new(Companion::new(stream, event))),
                    Err(e) => {
                        self.failed(&op, &e);
                        None
                    }
                };
                let Some(offered) = offered else {
                    return call(super::Attempt::Final).await;
                };
                let outcome = companion::scope(offered.clone(), call(super::Attempt::Final)).await;
                match &outcome {
                    // Committed with the write.
                    Ok(_) if offered.written() => {}
                    // The driver could not take it: the same event (same id) now.
                    Ok(_) => {
                        self.store(&op, offered.stream(), offered.event().clone())
                            .await;
                    }
                    // Rolled back with the write (or never offered to it): a record of the
                    // failure, a new event.
                    Err(e) => {
                        let ms = started.elapsed().as_secs_f64() * 1000.0;
                        self.record(&op, Err(e), ms).await;
                    }
                }
                outcome
            });
        }
        Box::pin(async move {
            let started = Instant::now();
            let outcome = call(super::Attempt::Final).await;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            self.record(&op, outcome.as_ref().map(|_| ()), ms).await;
            outcome
        })
    }
}

/// The operations whose record a driver may write in the write's transaction.
const IN_TRANSACTION: &[&str] = &["put", "delete", "put_many", "delete_many"];

/// `YYYYMMDD` of a time, UTC (civil-from-days; no calendar crate for one date).
fn day(t: SystemTime) -> String {
    let days = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}")
}

/// One audit record: the payload of an `Audited` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditRecord {
    /// Who called, if the layer was told.
    pub principal: Option<String>,
    /// For which tenant, if the layer was told.
    pub tenant: Option<String>,
    /// `storage`, `events`, `locks` or `rate_limits`.
    pub role: String,
    /// The operation (`put`, `write_once`, `append`, `try_acquire`, ...).
    pub operation: String,
    /// `read` or `write`.
    pub access: String,
    /// The namespace involved.
    pub namespace: Option<String>,
    /// The key involved (document, lock or rate-limit key).
    pub key: Option<String>,
    /// The stream involved.
    pub stream: Option<String>,
    /// `ok`, or the error code.
    pub outcome: String,
    /// The error's message, when it failed.
    pub error: Option<String>,
    /// How long the call took; `None` for a record written in the write's transaction
    /// ([`Audit::same_transaction`]), which is stored before the call ends.
    pub duration_ms: Option<f64>,
    /// The correlation id of [`with_correlation`], if any.
    pub correlation_id: Option<String>,
    /// When the record was stored (filled in by [`query`] from the event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<SystemTime>,
}

/// What [`query`] returns: every field is a filter when set.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct AuditQuery {
    /// Only this principal.
    pub principal: Option<String>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this operation.
    pub operation: Option<String>,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only failed calls.
    pub failed_only: bool,
    /// Only records at or after this time.
    pub since: Option<SystemTime>,
    /// At most this many (the oldest first); `None`: all.
    pub limit: Option<usize>,
}

impl AuditQuery {
    /// Every record.
    pub fn new() -> AuditQuery {
        AuditQuery::default()
    }

    /// Only this principal.
    #[must_use]
    pub fn principal(mut self, principal: impl Into<String>) -> AuditQuery {
        self.principal = Some(principal.into());
        self
    }

    /// Only this tenant.
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>) -> AuditQuery {
        self.tenant = Some(tenant.into());
        self
    }

    /// Only this operation.
    #[must_use]
    pub fn operation(mut self, operation: impl Into<String>) -> AuditQuery {
        self.operation = Some(operation.into());
        self
    }

    /// Only this namespace.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> AuditQuery {
        self.namespace = Some(namespace.into());
        self
    }

    /// Only failed calls.
    #[must_use]
    pub fn failed_only(mut self) -> AuditQuery {
        self.failed_only = true;
        self
    }

    /// Only records at or after `since`.
    #[must_use]
    pub fn since(mut self, since: SystemTime) -> AuditQuery {
        self.since = Some(since);
        self
    }

    /// At most `limit` records.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> AuditQuery {
        self.limit = Some(limit);
        self
    }

    fn admits(&self, r: &AuditRecord) -> bool {
        let eq = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        eq(&self.principal, &r.principal)
            && eq(&self.tenant, &r.tenant)
            && self.operation.as_ref().is_none_or(|o| *o == r.operation)
            && eq(&self.namespace, &r.namespace)
            && (!self.failed_only || r.outcome != "ok")
    }
}

/// The audit records in `events` matching `query`, oldest first. Reads the `kernel.audit`
/// category in global order, a page at a time.
pub async fn query(events: &dyn EventStore, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
    const PAGE: usize = 1000;
    let mut filter = EventFilter::all();
    filter.categories = vec![CATEGORY.to_owned()];
    filter.event_types = vec![EVENT_TYPE.to_owned()];
    filter.since = query.since;
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = events.read_all(after, &filter, PAGE).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            return Ok(out);
        };
        for event in page {
            let record = decode(event)?;
            if query.admits(&record) {
                out.push(record);
                if query.limit.is_some_and(|l| out.len() >= l) {
                    return Ok(out);
                }
            }
        }
        after = last;
    }
}

fn decode(event: RecordedEvent) -> Result<AuditRecord> {
    let mut record: AuditRecord = serde_json::from_value(event.payload).map_err(|e| {
        Error::corrupted("an event in the audit category is not an audit record")
            .with_context("stream", &event.stream)
            .with_context("position", event.position)
            .with_source(e)
    })?;
    record.recorded_at = Some(event.recorded_at);
    Ok(record)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use driver_memory::MemoryDriver;
    use kernel_core::{ErrorCode, EventStore, ExpectedVersion, NewEvent, PutOptions, Quota, json};

    use super::*;
    use crate::layers::fault::flaky;
    use crate::layers::{Intercept, Layer};

    #[test]
    fn days_are_civil_dates() {
        assert_eq!(day(UNIX_EPOCH), "19700101");
        assert_eq!(
            day(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "20000229"
        );
        assert_eq!(
            day(UNIX_EPOCH + Duration::from_secs(1_764_633_600)),
            "20251202"
        );
    }

    #[tokio::test]
    async fn every_write_is_recorded_with_its_outcome_and_reads_only_when_asked() {
        let memory = Arc::new(MemoryDriver::new());
        let sink: Arc<dyn EventStore> = memory.clone();
        let layer = Intercept::new(Audit::new(sink.clone()).principal("svc").tenant("acme"));
        let storage = layer.storage(memory.clone());
        let events = layer.events(memory.clone());
        let locks = layer.locks(memory.clone());
        let limits = layer.rate_limiter(memory.clone());
        with_correlation("req-1", async {
            storage
                .put("inv", "1", json!(1), PutOptions::new())
                .await
                .unwrap();
            storage.get("inv", "1").await.unwrap();
            let conflict = storage
                .put("inv", "1", json!(2), PutOptions::new().if_version(9))
                .await
                .unwrap_err();
            assert_eq!(conflict.code(), ErrorCode::Conflict);
            storage
                .delete("inv", "1", kernel_core::DeleteCondition::Always)
                .await
                .unwrap();
        })
        .await;
        events
            .append(
                "order-1",
                ExpectedVersion::Any,
                vec![NewEvent::new("Placed", json!({}))],
            )
            .await
            .unwrap();
        let lease = locks
            .try_acquire("job", Duration::from_secs(5))
            .await
            .unwrap()
            .unwrap();
        locks.release(&lease).await.unwrap();
        limits.check("api", &Quota::per_second(5), 1).await.unwrap();

        let all = query(&*sink, &AuditQuery::new()).await.unwrap();
        let ops: Vec<(&str, &str)> = all
            .iter()
            .map(|r| (r.operation.as_str(), r.outcome.as_str()))
            .collect();
        assert_eq!(
            ops,
            [
                ("put", "ok"),
                ("put", "conflict"),
                ("delete", "ok"),
                ("append", "ok"),
                ("try_acquire", "ok"),
                ("release", "ok"),
                ("check", "ok")
            ],
            "every write, no read"
        );
        let first = &all[0];
        assert_eq!(first.principal.as_deref(), Some("svc"));
        assert_eq!(first.tenant.as_deref(), Some("acme"));
        assert_eq!(
            (first.namespace.as_deref(), first.key.as_deref()),
            (Some("inv"), Some("1"))
        );
        assert_eq!(first.correlation_id.as_deref(), Some("req-1"));
        assert!(first.recorded_at.is_some());
        assert!(
            all[1]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("conflict"))
        );
        assert_eq!(all[3].stream.as_deref(), Some("order-1"));
        let failed = query(&*sink, &AuditQuery::new().failed_only())
            .await
            .unwrap();
        assert_eq!(failed.len(), 1);

        let reading = Intercept::new(Audit::new(sink.clone()).with_reads(true));
        reading
            .storage(memory.clone())
            .get("inv", "1")
            .await
            .unwrap();
        let gets = query(&*sink, &AuditQuery::new().operation("get"))
            .await
            .unwrap();
        assert_eq!(gets.len(), 1, "reads are recorded when asked");
    }

    #[tokio::test]
    async fn a_record_that_cannot_be_stored_is_counted_and_the_call_still_answers() {
        let memory = Arc::new(MemoryDriver::new());
        let sink = Arc::new(flaky(MemoryDriver::new()));
        let audit = Arc::new(Audit::new(sink.clone()));
        let storage = Intercept(audit.clone()).storage(memory.clone());
        sink.faults().fail_next(1, ErrorCode::Unavailable);
        let entry = storage
            .put("inv", "1", json!(1), PutOptions::new())
            .await
            .unwrap();
        assert_eq!(entry.version, 1, "the write's own result");
        assert_eq!(audit.failures(), 1);
        storage
            .put("inv", "1", json!(2), PutOptions::new())
            .await
            .unwrap();
        assert_eq!(audit.failures(), 1, "the next record is stored");
    }
}
