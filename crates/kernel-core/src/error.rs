//! The one error type every trait and driver returns.
//!
//! Modelled on OpenDAL's error: a [`ErrorCode`] that callers match on, a message, context pairs
//! (`namespace`, `key`, `stream`, `setting`, ...) that name what was involved, the source error,
//! and a retryable / permanent status that the retry layer reads through
//! [`Error::is_retryable`].

use std::fmt;

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

    /// Whether failures of this kind are worth retrying unless the driver says otherwise.
    ///
    /// Only transient conditions qualify: an unreachable backend and a timeout. A conflict is
    /// retryable only when a driver marks it so (a serialization failure), because repeating a
    /// failed compare-and-set with the same expected version fails the same way.
    pub fn default_retryable(self) -> bool {
        matches!(self, ErrorCode::Unavailable | ErrorCode::Timeout)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The kernel's error: a code, a message, context pairs, an optional source and a retry status.
///
/// ```
/// use kernel_core::{Error, ErrorCode};
///
/// let err = Error::new(ErrorCode::Conflict, "version mismatch")
///     .with_context("namespace", "users")
///     .with_context("key", "alice")
///     .with_current_version(Some(4));
/// assert_eq!(err.code(), ErrorCode::Conflict);
/// assert_eq!(err.current_version(), Some(4));
/// assert!(!err.is_retryable());
/// assert_eq!(
///     err.to_string(),
///     "conflict: version mismatch (namespace=users, key=alice, current_version=4)"
/// );
/// ```
pub struct Error {
    code: ErrorCode,
    message: String,
    context: Vec<(&'static str, String)>,
    retryable: bool,
    current_version: Option<u64>,
    source: Option<Source>,
}

impl Error {
    /// A new error with the code's default retry status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            context: Vec::new(),
            retryable: code.default_retryable(),
            current_version: None,
            source: None,
        }
    }

    /// Adds a context pair (`namespace`, `key`, `stream`, `setting`, `operation`, ...).
    #[must_use]
    pub fn with_context(mut self, name: &'static str, value: impl fmt::Display) -> Self {
        self.context.push((name, value.to_string()));
        self
    }

    /// Attaches the underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Overrides the retry status.
    #[must_use]
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Records the version found when a condition failed (`None`: the entry or stream is absent).
    #[must_use]
    pub fn with_current_version(mut self, version: Option<u64>) -> Self {
        self.current_version = version;
        if let Some(v) = version {
            self.context.push(("current_version", v.to_string()));
        } else {
            self.context.push(("current_version", "none".to_string()));
        }
        self
    }

    /// What kind of failure this is.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The message, without context.
    pub fn message(&self) -> &str {
        &self.message
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
        self.current_version
    }

    /// Whether repeating the same operation may succeed (a transient failure).
    pub fn is_retryable(&self) -> bool {
        self.retryable
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
        if !self.context.is_empty() {
            f.write_str(" (")?;
            for (i, (name, value)) in self.context.iter().enumerate() {
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
            .field("message", &self.message)
            .field("context", &self.context)
            .field("retryable", &self.retryable);
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
    fn retry_status_can_be_overridden() {
        let err = Error::conflict("serialization failure").with_retryable(true);
        assert!(err.is_retryable());
        assert!(!Error::conflict("cas").is_retryable());
    }
}
