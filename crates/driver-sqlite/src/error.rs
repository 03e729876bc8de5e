//! SQLite errors to kernel errors, by SQLite's result code (never by message text).
//!
//! | SQLite | kernel code | status |
//! |---|---|---|
//! | `SQLITE_BUSY`, `SQLITE_LOCKED` (another connection held the lock past `busy_timeout`) | `Unavailable` | `Temporary` |
//! | `SQLITE_FULL` (disk full), `SQLITE_NOMEM` | `Unavailable` | `Temporary` |
//! | `SQLITE_IOERR` | `Unavailable` | `MaybeApplied` |
//! | `SQLITE_SCHEMA`, `SQLITE_INTERRUPT`, `SQLITE_ABORT`, `SQLITE_PROTOCOL` | `Unavailable` | `Temporary` |
//! | `SQLITE_CORRUPT`, `SQLITE_NOTADB` | `Corrupted` | `Permanent` |
//! | `SQLITE_READONLY`, `SQLITE_PERM`, `SQLITE_AUTH` | `PermissionDenied` | `Permanent` |
//! | `SQLITE_CANTOPEN` | `Config` (`setting=sqlite.path`) | `Permanent` |
//! | `SQLITE_CONSTRAINT` | `Conflict` | `Permanent` |
//! | `SQLITE_TOOBIG` | `InvalidInput` | `Permanent` |
//! | a stored value that does not decode (type, UTF-8, JSON, UUID) | `Corrupted` | `Permanent` |
//! | anything else | `Internal` | `Permanent` |
//!
//! The driver adds the database file (`path=`) to every error that concerns the file, and the
//! namespace / key / stream involved at each call site.

use kernel_core::{Error, ErrorCode, ErrorStatus, Result};
use rusqlite::ffi::ErrorCode as C;

/// Maps a rusqlite error to the kernel error for its SQLite result code.
pub(crate) fn map_error(e: rusqlite::Error) -> Error {
    let (code, status, message) = classify(&e);
    let mut err = Error::new(code, message).with_status(status);
    if code == ErrorCode::Config {
        err = err.with_context("setting", "sqlite.path");
    }
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        err = err.with_context("sqlite_code", f.extended_code);
    }
    err.with_context("backend", "sqlite").with_source(e)
}

fn classify(e: &rusqlite::Error) -> (ErrorCode, ErrorStatus, &'static str) {
    use ErrorCode as K;
    use ErrorStatus as S;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::DatabaseBusy | C::DatabaseLocked => (
                K::Unavailable,
                S::Temporary,
                "the database is locked by another connection (busy_timeout passed)",
            ),
            C::DiskFull => (
                K::Unavailable,
                S::Temporary,
                "the disk holding the database is full",
            ),
            C::OutOfMemory => (K::Unavailable, S::Temporary, "SQLite ran out of memory"),
            C::SystemIoFailure => (
                K::Unavailable,
                S::MaybeApplied,
                "disk I/O error on the database file",
            ),
            C::SchemaChanged
            | C::OperationInterrupted
            | C::OperationAborted
            | C::FileLockingProtocolFailed => (
                K::Unavailable,
                S::Temporary,
                "SQLite gave up on the statement; repeating it may succeed",
            ),
            C::DatabaseCorrupt => (
                K::Corrupted,
                S::Permanent,
                "the database file is corrupted (SQLITE_CORRUPT)",
            ),
            C::NotADatabase => (
                K::Corrupted,
                S::Permanent,
                "the file is not a SQLite database (SQLITE_NOTADB)",
            ),
            C::ReadOnly => (
                K::PermissionDenied,
                S::Permanent,
                "the database file is read-only",
            ),
            C::PermissionDenied | C::AuthorizationForStatementDenied => (
                K::PermissionDenied,
                S::Permanent,
                "access to the database file is denied",
            ),
            C::CannotOpen => (
                K::Config,
                S::Permanent,
                "cannot open the database file (does its directory exist, is it a file?)",
            ),
            C::ConstraintViolation => (
                K::Conflict,
                S::Permanent,
                "a constraint of the kernel's tables refused the write",
            ),
            C::TooBig => (
                K::InvalidInput,
                S::Permanent,
                "a value exceeds SQLite's size limit",
            ),
            _ => (K::Internal, S::Permanent, "unexpected SQLite error"),
        },
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..)
        | rusqlite::Error::InvalidColumnType(..) => (
            K::Corrupted,
            S::Permanent,
            "a stored value cannot be decoded: the database holds data the kernel did not write",
        ),
        _ => (K::Internal, S::Permanent, "unexpected SQLite error"),
    }
}

/// `?` for rusqlite results inside the driver.
pub(crate) trait Db<T> {
    /// Maps the error with [`map_error`].
    fn db(self) -> Result<T>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T> {
        self.map_err(map_error)
    }
}

impl<T> Db<T> for std::result::Result<T, rusqlite::types::FromSqlError> {
    fn db(self) -> Result<T> {
        self.map_err(|e| corrupted("value", e))
    }
}

/// The `Corrupted` error of a stored value that does not decode.
pub(crate) fn corrupted(what: &str, source: impl std::fmt::Display) -> Error {
    Error::corrupted(format!("stored {what} cannot be decoded: {source}"))
        .with_context("backend", "sqlite")
}

/// The error every call gets once the driver is shut down or its writer thread is gone.
pub(crate) fn shut_down() -> Error {
    Error::unavailable("driver shut down: the SQLite driver's writer is not running")
        .with_status(ErrorStatus::Permanent)
        .with_context("backend", "sqlite")
}

/// Adds the database file to errors that concern it (not to input and condition errors, whose
/// context already names what was involved).
pub(crate) fn with_path(e: Error, path: &str) -> Error {
    match e.code() {
        ErrorCode::Unavailable
        | ErrorCode::Corrupted
        | ErrorCode::PermissionDenied
        | ErrorCode::Config
        | ErrorCode::Internal
        | ErrorCode::Timeout => e.with_context("path", path),
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    fn failure(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)
    }

    #[test]
    fn codes_map_to_kernel_codes_and_statuses() {
        let cases = [
            (
                ffi::SQLITE_BUSY,
                ErrorCode::Unavailable,
                ErrorStatus::Temporary,
            ),
            (
                ffi::SQLITE_LOCKED,
                ErrorCode::Unavailable,
                ErrorStatus::Temporary,
            ),
            (
                ffi::SQLITE_FULL,
                ErrorCode::Unavailable,
                ErrorStatus::Temporary,
            ),
            (
                ffi::SQLITE_IOERR,
                ErrorCode::Unavailable,
                ErrorStatus::MaybeApplied,
            ),
            (
                ffi::SQLITE_CORRUPT,
                ErrorCode::Corrupted,
                ErrorStatus::Permanent,
            ),
            (
                ffi::SQLITE_NOTADB,
                ErrorCode::Corrupted,
                ErrorStatus::Permanent,
            ),
            (
                ffi::SQLITE_READONLY,
                ErrorCode::PermissionDenied,
                ErrorStatus::Permanent,
            ),
            (
                ffi::SQLITE_PERM,
                ErrorCode::PermissionDenied,
                ErrorStatus::Permanent,
            ),
            (
                ffi::SQLITE_CANTOPEN,
                ErrorCode::Config,
                ErrorStatus::Permanent,
            ),
            (
                ffi::SQLITE_CONSTRAINT,
                ErrorCode::Conflict,
                ErrorStatus::Permanent,
            ),
            (
                ffi::SQLITE_TOOBIG,
                ErrorCode::InvalidInput,
                ErrorStatus::Permanent,
            ),
            (
                ffi::SQLITE_MISUSE,
                ErrorCode::Internal,
                ErrorStatus::Permanent,
            ),
        ];
        for (raw, code, status) in cases {
            let e = map_error(failure(raw));
            assert_eq!(
                (e.code(), e.status()),
                (code, status),
                "SQLite code {raw}: {e}"
            );
        }
        let busy = with_path(map_error(failure(ffi::SQLITE_BUSY)), "/tmp/x.db");
        assert!(busy.is_retryable());
        assert_eq!(busy.context_value("path"), Some("/tmp/x.db"));
        let cantopen = map_error(failure(ffi::SQLITE_CANTOPEN));
        assert_eq!(cantopen.context_value("setting"), Some("sqlite.path"));
        assert_eq!(
            map_error(rusqlite::Error::InvalidColumnType(
                0,
                "value".into(),
                rusqlite::types::Type::Blob
            ))
            .code(),
            ErrorCode::Corrupted
        );
    }
}
