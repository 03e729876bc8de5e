//! The one error type every trait and driver returns.
//!
//! Modelled on OpenDAL's error: an [`ErrorCode`] that callers match on, a message, the
//! operation that failed, context pairs (`namespace`, `key`, `stream`, `setting`, ...) that name
//! what was involved, the source error, and an [`ErrorStatus`] that says what the caller may do
//! next. The retry layer and the circuit breaker read the status; callers usually ask
//! [`Error::is_retryable`].
//!
//! Each fact is stored once: the operation in [`Error::operation`], the version found by a
//! failed condition in [`Error::current_version`]; [`Error::context`] holds only the names
//! involved. `Display` shows them all.

use std::fmt;
use std::sync::Arc;

/// What kind of failure an [`Error`] is. Callers match on this, never on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The input broke a validation rule (namespace, key, stream name, size, depth, filter...).
    InvalidInput,
    /// The thing asked for does not exist (where absence is an error rather than `None`).
    NotFound,
    /// A create-only write found the entry already there.
    AlreadyExists,
    /// A condition failed: expected version, compare-and-set, lost transaction race,
    /// non-empty namespace drop.
    Conflict,
    /// The driver cannot do this; its capabilities say so.
    Unsupported,
    /// The caller's principal may not do this.
    PermissionDenied,
    /// The backend cannot be reached or refused service (connection loss, shutdown, circuit open).
    Unavailable,
    /// A deadline passed: operation timeout, pool wait, lock wait.
    Timeout,
    /// A rate limit refused the operation.
    RateLimited,
    /// A lock release or extension by someone who does not hold the lease.
    LockNotHeld,
    /// Stored data could not be decoded: the backend holds something the kernel did not write.
    Corrupted,
    /// A configuration setting is missing or malformed.
    Config,
    /// A bug or an unexpected backend answer.
    Internal,
}

impl ErrorCode {
    /// A stable `snake_case` name, used in logs, metrics labels and the HTTP health report.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::LockNotHeld => "lock_not_held",
            ErrorCode::Corrupted => "corrupted",
            ErrorCode::Config => "config",
            ErrorCode::Internal => "internal",
        }
    }

    /// The status an error of this code gets unless its creator says otherwise.
    ///
    /// Only transient conditions are [`ErrorStatus::Temporary`]: an unreachable backend and a
    /// timeout. A conflict is temporary only when a driver marks it so (a serialization
    /// failure), because repeating a failed compare-and-set with the same expected version
    /// fails the same way.
    pub fn default_status(self) -> ErrorStatus {
        match self {
            ErrorCode::Unavailable | ErrorCode::Timeout => ErrorStatus::Temporary,
            _ => ErrorStatus::Permanent,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the caller may do after an error: the one fact the retry layer, the circuit breaker
/// and a careful caller need beyond the [`ErrorCode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorStatus {
    /// Not applied, and repeating the same call may succeed (connection refused, serialization
    /// failure, pool exhausted): safe to retry.
    Temporary,
    /// The outcome is unknown: the request may have reached the backend and been applied
    /// before the failure (a timeout or connection loss in the middle of a write). Retrying is
    /// safe only for an operation that can be repeated without harm (a read, an unconditional
    /// put, an append with caller-chosen event ids).
    MaybeApplied,
    /// Transient in principle, but the retry layer already made every attempt its policy
    /// allows: retrying again at once multiplies load on a struggling backend.
    RetriesExhausted,
    /// Repeating the same call fails the same way (bad input, conflict, permission, shut
    /// down, corrupted data).
    Permanent,
}

impl ErrorStatus {
    /// A stable `snake_case` name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorStatus::Temporary => "temporary",
            ErrorStatus::MaybeApplied => "maybe_applied",
            ErrorStatus::RetriesExhausted => "retries_exhausted",
            ErrorStatus::Permanent => "permanent",
        }
    }
}

impl fmt::Display for ErrorStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The source of an [`Error`]: shared, so errors clone cheaply (a subscription hands the same
/// failure to several places, a batch reports it per item).
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// The kernel's error: a code, a message, the operation, context pairs, an optional source and
/// a status.
///
/// ```
/// use kernel_core::{Error, ErrorCode, ErrorStatus};
///
/// let err = Error::new(ErrorCode::Conflict, "version mismatch")
///     .with_operation("put")
///     .with_context("namespace", "users")
///     .with_context("key", "alice")
///     .with_current_version(Some(4));
/// assert_eq!(err.code(), ErrorCode::Conflict);
/// assert_eq!(err.status(), ErrorStatus::Permanent);
/// assert_eq!(err.current_version(), Some(4));
/// assert!(!err.is_retryable());
/// assert_eq!(
///     err.to_string(),
///     "conflict: version mismatch (operation=put, namespace=users, key=alice, current_version=4)"
/// );
/// ```
#[derive(Clone)]
pub struct Error {
    code: ErrorCode,
    status: ErrorStatus,
    message: String,
    operation: Option<&'static str>,
    context: Vec<(&'static str, String)>,
    /// Outer `None`: not a version conflict; `Some(None)`: the entry or stream is absent.
    current_version: Option<Option<u64>>,
    source: Option<Source>,
}

impl Error {
    /// A new error with the code's default status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            status: code.default_status(),
            message: message.into(),
            operation: None,
            context: Vec::new(),
            current_version: None,
            source: None,
        }
    }

    /// Adds a context pair (`namespace`, `key`, `stream`, `setting`, `backend`, ...). A name
    /// given twice keeps its first value: the innermost layer knows best.
    #[must_use]
    pub fn with_context(mut self, name: &'static str, value: impl fmt::Display) -> Self {
        if !self.context.iter().any(|(n, _)| *n == name) {
            self.context.push((name, value.to_string()));
        }
        self
    }

    /// Names the operation that failed (`get`, `append`, `try_acquire`, `tx.commit`...). The
    /// first name set stays: a layer above does not rename what a driver reported.
    #[must_use]
    pub fn with_operation(mut self, operation: &'static str) -> Self {
        self.operation.get_or_insert(operation);
        self
    }

    /// Attaches the underlying error.
    #[must_use]
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// Sets the status.
    #[must_use]
    pub fn with_status(mut self, status: ErrorStatus) -> Self {
        self.status = status;
        self
    }

    /// Marks a transient failure of a write whose request had already gone out (the
    /// connection broke or the answer did not come): [`ErrorStatus::MaybeApplied`], with an
    /// `outcome` context pair that says so in the message. Errors of any other status keep it:
    /// a refusal the backend answered was not applied.
    ///
    /// ```
    /// use kernel_core::{Error, ErrorStatus};
    ///
    /// let e = Error::unavailable("the connection to postgres was closed").after_sending_write();
    /// assert_eq!(e.status(), ErrorStatus::MaybeApplied);
    /// assert!(e.to_string().contains("outcome=unknown"), "{e}");
    /// ```
    #[must_use]
    pub fn after_sending_write(self) -> Self {
        if self.status == ErrorStatus::Temporary {
            self.with_status(ErrorStatus::MaybeApplied).with_context(
                "outcome",
                "unknown (the write was sent and may have been applied)",
            )
        } else {
            self
        }
    }

    /// Shorthand for [`Error::with_status`]: `true` is [`ErrorStatus::Temporary`], `false`
    /// [`ErrorStatus::Permanent`].
    #[must_use]
    pub fn with_retryable(self, retryable: bool) -> Self {
        self.with_status(if retryable {
            ErrorStatus::Temporary
        } else {
            ErrorStatus::Permanent
        })
    }

    /// Records the version found when a condition failed (`None`: the entry or stream is absent).
    #[must_use]
    pub fn with_current_version(mut self, version: Option<u64>) -> Self {
        self.current_version = Some(version);
        self
    }

    /// What kind of failure this is.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// What the caller may do next.
    pub fn status(&self) -> ErrorStatus {
        self.status
    }

    /// The message, without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The operation that failed, when a driver or layer named it.
    pub fn operation(&self) -> Option<&'static str> {
        self.operation
    }

    /// The context pairs in the order they were added.
    pub fn context(&self) -> &[(&'static str, String)] {
        &self.context
    }

    /// The value of one context pair, if present.
    pub fn context_value(&self, name: &str) -> Option<&str> {
        self.context
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// For a `Conflict`: the current version of the entry or stream (`None` when it is absent
    /// or when the error is not a version conflict).
    pub fn current_version(&self) -> Option<u64> {
        self.current_version.flatten()
    }

    /// Whether the error carries a current version at all (a version conflict), as opposed to
    /// [`Error::current_version`] being `None` because the entry is absent.
    pub fn has_current_version(&self) -> bool {
        self.current_version.is_some()
    }

    /// Whether repeating the same call may succeed and cannot apply it twice: the status is
    /// [`ErrorStatus::Temporary`]. A [`ErrorStatus::MaybeApplied`] error is not retryable in
    /// this sense; repeat such a call only when repeating it is harmless.
    pub fn is_retryable(&self) -> bool {
        self.status == ErrorStatus::Temporary
    }

    /// The same error with another message, keeping code, status, operation, context, version
    /// and source (a driver rewording a backend's answer for its caller).
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// `InvalidInput` shorthand.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidInput, message)
    }

    /// `NotFound` shorthand.
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::NotFound, message)
    }

    /// `Conflict` shorthand.
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Conflict, message)
    }

    /// `Unsupported` shorthand.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Unsupported, message)
    }

    /// The `Unsupported` a driver returns for a variant of a `#[non_exhaustive]` enum that was
    /// added after the driver was written (a new put condition, filter operator...).
    pub fn unsupported_variant(what: &'static str, value: &impl fmt::Debug) -> Self {
        Error::unsupported(format!("this driver does not support the {what} {value:?}"))
    }

    /// `Unavailable` shorthand (retryable).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Unavailable, message)
    }

    /// `Timeout` shorthand (retryable).
    pub fn timeout(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Timeout, message)
    }

    /// `Config` shorthand naming the setting.
    pub fn config(setting: &str, message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Config, message).with_context("setting", setting)
    }

    /// `Internal` shorthand.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Internal, message)
    }

    /// `Corrupted` shorthand.
    pub fn corrupted(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Corrupted, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        let mut pairs = self
            .operation
            .map(|op| ("operation", op.to_owned()))
            .into_iter()
            .chain(self.context.iter().map(|(n, v)| (*n, v.clone())))
            .chain(self.current_version.map(|v| {
                let shown = v.map_or_else(|| "none".to_owned(), |v| v.to_string());
                ("current_version", shown)
            }))
            .peekable();
        if pairs.peek().is_some() {
            f.write_str(" (")?;
            for (i, (name, value)) in pairs.enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{name}={value}")?;
            }
            f.write_str(")")?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("code", &self.code)
            .field("status", &self.status)
            .field("message", &self.message);
        if let Some(op) = self.operation {
            d.field("operation", &op);
        }
        d.field("context", &self.context);
        if let Some(v) = self.current_version {
            d.field("current_version", &v);
        }
        if let Some(source) = &self.source {
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// The kernel's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_lists_context_and_source() {
        let io = std::io::Error::other("socket closed");
        let err = Error::unavailable("connection lost")
            .with_context("backend", "postgres")
            .with_source(io);
        assert!(err.is_retryable());
        assert_eq!(
            err.to_string(),
            "unavailable: connection lost (backend=postgres): socket closed"
        );
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn facts_are_stored_once_and_errors_clone() {
        let err = Error::conflict("cas")
            .with_operation("put")
            .with_operation("outer")
            .with_context("key", "k")
            .with_context("key", "other")
            .with_current_version(None)
            .with_source(std::io::Error::other("x"));
        let copy = err.clone();
        assert_eq!(copy.operation(), Some("put"));
        assert_eq!(copy.context().len(), 1);
        assert!(copy.has_current_version());
        assert_eq!(copy.current_version(), None);
        assert_eq!(
            copy.to_string(),
            "conflict: cas (operation=put, key=k, current_version=none): x"
        );
        assert!(!Error::conflict("plain").has_current_version());
    }

    #[test]
    fn retry_status_can_be_overridden() {
        let err = Error::conflict("serialization failure").with_retryable(true);
        assert!(err.is_retryable());
        assert!(!Error::conflict("cas").is_retryable());
    }
}
