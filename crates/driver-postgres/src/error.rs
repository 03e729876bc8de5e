//! Mapping of PostgreSQL and pool failures to the kernel's [`Error`].
//!
//! SQLSTATE classes decide the code and retryability (see [`classify_sqlstate`]); the kernel's
//! own SQL functions raise class `KR` errors whose DETAIL / HINT carry the key and the current
//! version, decoded by [`KernelState`].

use kernel_core::{Error, ErrorCode};

/// The backend name put in every error's context.
pub(crate) const BACKEND: &str = "postgres";

/// What a SQLSTATE means to the kernel: its code and whether repeating may succeed.
///
/// * `08*` connection exceptions, `57P01` admin shutdown, `57P02` crash shutdown, `57P03`
///   cannot connect now, `53*` insufficient resources (`53300` too many connections):
///   `Unavailable`, retryable.
/// * `40001` serialization failure, `40P01` deadlock: `Conflict`, retryable.
/// * `23505` unique violation and other `23*` integrity violations: `Conflict`.
/// * `22*` data exceptions (bad value, out of range, untranslatable character): `InvalidInput`.
/// * `57014` query cancelled (statement timeout), `55P03` lock not available: `Timeout`,
///   retryable.
/// * `28*` authentication, `3D000` unknown database: `Config`.
/// * `42P01` / `42883` undefined table / function (schema not migrated): `Config`.
/// * `25006` read-only transaction (a standby): `Unavailable`, retryable.
/// * anything else: `Internal`.
pub fn classify_sqlstate(code: &str) -> (ErrorCode, bool) {
    match code {
        "57P01" | "57P02" | "57P03" | "25006" => (ErrorCode::Unavailable, true),
        "40001" | "40P01" => (ErrorCode::Conflict, true),
        "57014" | "55P03" => (ErrorCode::Timeout, true),
        "3D000" | "42P01" | "42883" => (ErrorCode::Config, false),
        c if c.starts_with("08") || c.starts_with("53") => (ErrorCode::Unavailable, true),
        c if c.starts_with("23") => (ErrorCode::Conflict, false),
        c if c.starts_with("22") => (ErrorCode::InvalidInput, false),
        c if c.starts_with("28") => (ErrorCode::Config, false),
        _ => (ErrorCode::Internal, false),
    }
}

/// A `KR` error raised by the kernel's SQL functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelState {
    /// `KR001` ...
    pub(crate) code: String,
    /// DETAIL: the key, stream or namespace involved.
    pub(crate) detail: String,
    /// HINT: the current version, when there is one.
    pub(crate) hint: String,
}

impl KernelState {
    /// The current version carried in the hint (`None` when empty: the key is absent).
    pub(crate) fn current_version(&self) -> Option<u64> {
        self.hint.parse().ok()
    }
}

/// The `KR` error inside `err`, if it is one.
pub(crate) fn kernel_state(err: &tokio_postgres::Error) -> Option<KernelState> {
    let db = err.as_db_error()?;
    let code = db.code().code();
    if !code.starts_with("KR") {
        return None;
    }
    Some(KernelState {
        code: code.to_owned(),
        detail: db.detail().unwrap_or_default().to_owned(),
        hint: db.hint().unwrap_or_default().to_owned(),
    })
}

/// Maps a tokio-postgres error; callers add the namespace / key / stream context.
pub(crate) fn pg(err: tokio_postgres::Error) -> Error {
    let (code, retryable, message) = match err.as_db_error() {
        Some(db) => {
            let sqlstate = db.code().code();
            let (code, retryable) = classify_sqlstate(sqlstate);
            let mut message = format!("postgres error {sqlstate}: {}", db.message());
            if code == ErrorCode::Config && matches!(sqlstate, "42P01" | "42883") {
                message.push_str(
                    " (the kernel schema is missing or old: run `kernel-migrate up` or enable \
                     migrate_on_boot)",
                );
            }
            (code, retryable, message)
        }
        None => classify_client_error(&err),
    };
    let sqlstate = err.code().map(|c| c.code().to_owned());
    let mut e = Error::new(code, message)
        .with_retryable(retryable)
        .with_context("backend", BACKEND);
    if let Some(s) = sqlstate {
        e = e.with_context("sqlstate", s);
    }
    e.with_source(err)
}

/// A failure that is not a server error: connection loss, I/O, decoding.
fn classify_client_error(err: &tokio_postgres::Error) -> (ErrorCode, bool, String) {
    let text = err.to_string();
    if err.is_closed() {
        return (
            ErrorCode::Unavailable,
            true,
            "the connection to postgres was closed".to_owned(),
        );
    }
    let has_io_source = std::error::Error::source(err)
        .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
    if has_io_source
        || text.starts_with("error connecting")
        || text.starts_with("error communicating")
    {
        return (
            ErrorCode::Unavailable,
            true,
            "postgres cannot be reached".to_owned(),
        );
    }
    if text.starts_with("timeout") {
        return (
            ErrorCode::Timeout,
            true,
            "timed out talking to postgres".to_owned(),
        );
    }
    if text.starts_with("error deserializing") {
        return (
            ErrorCode::Corrupted,
            false,
            "postgres returned data the kernel cannot decode".to_owned(),
        );
    }
    if text.starts_with("error serializing") {
        return (
            ErrorCode::InvalidInput,
            false,
            "a value cannot be sent to postgres".to_owned(),
        );
    }
    if text.starts_with("invalid configuration") || text.contains("connection string") {
        return (
            ErrorCode::Config,
            false,
            "invalid postgres configuration".to_owned(),
        );
    }
    (
        ErrorCode::Internal,
        false,
        "unexpected postgres client error".to_owned(),
    )
}

/// Maps a pool failure, naming the pool.
pub(crate) fn pool(err: deadpool_postgres::PoolError, size: usize) -> Error {
    use deadpool_postgres::PoolError;
    match err {
        PoolError::Timeout(kind) => Error::timeout(format!(
            "no connection from the postgres pool (size {size}) within the wait timeout \
             ({kind:?}): the pool is exhausted or the server is slow"
        ))
        .with_context("backend", BACKEND)
        .with_context("pool", "postgres"),
        PoolError::Backend(e) => pg(e).with_context("pool", "postgres"),
        PoolError::Closed => Error::unavailable("the postgres pool is closed (driver shut down)")
            .with_context("backend", BACKEND)
            .with_context("pool", "postgres")
            .with_retryable(false),
        PoolError::NoRuntimeSpecified => {
            Error::internal("the postgres pool has no runtime").with_context("backend", BACKEND)
        }
        PoolError::PostCreateHook(e) => {
            Error::unavailable(format!("a new postgres connection failed its set-up: {e}"))
                .with_context("backend", BACKEND)
                .with_context("pool", "postgres")
        }
    }
}

/// The same failure again, for one more of the callers a shared statement served (errors are
/// not `Clone`: their source is not), under `message`.
pub(crate) fn copy_with_message(error: &Error, message: impl Into<String>) -> Error {
    let mut copy = Error::new(error.code(), message)
        .with_retryable(error.is_retryable())
        .with_current_version(error.current_version());
    for (name, value) in error.context() {
        copy = copy.with_context(name, value);
    }
    copy
}

/// A stored value that does not have the shape the kernel wrote.
pub(crate) fn corrupted(what: &str) -> Error {
    Error::corrupted(format!("postgres holds {what}")).with_context("backend", BACKEND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_codes_and_retryability() {
        let cases = [
            ("08006", ErrorCode::Unavailable, true),
            ("08001", ErrorCode::Unavailable, true),
            ("57P01", ErrorCode::Unavailable, true),
            ("57P02", ErrorCode::Unavailable, true),
            ("57P03", ErrorCode::Unavailable, true),
            ("53300", ErrorCode::Unavailable, true),
            ("53100", ErrorCode::Unavailable, true),
            ("40001", ErrorCode::Conflict, true),
            ("40P01", ErrorCode::Conflict, true),
            ("23505", ErrorCode::Conflict, false),
            ("23503", ErrorCode::Conflict, false),
            ("22P02", ErrorCode::InvalidInput, false),
            ("22P05", ErrorCode::InvalidInput, false),
            ("22003", ErrorCode::InvalidInput, false),
            ("57014", ErrorCode::Timeout, true),
            ("55P03", ErrorCode::Timeout, true),
            ("28P01", ErrorCode::Config, false),
            ("3D000", ErrorCode::Config, false),
            ("42P01", ErrorCode::Config, false),
            ("42601", ErrorCode::Internal, false),
            ("XX000", ErrorCode::Internal, false),
        ];
        for (state, code, retryable) in cases {
            assert_eq!(classify_sqlstate(state), (code, retryable), "{state}");
        }
    }

    #[test]
    fn kernel_state_hint_is_the_version() {
        let s = KernelState {
            code: "KR002".into(),
            detail: "k".into(),
            hint: "7".into(),
        };
        assert_eq!(s.current_version(), Some(7));
        let absent = KernelState {
            hint: String::new(),
            ..s
        };
        assert_eq!(absent.current_version(), None);
    }
}
