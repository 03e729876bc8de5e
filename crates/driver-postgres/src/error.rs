//! Mapping of PostgreSQL and pool failures to the kernel's [`Error`], by code, never by the
//! server's message text.
//!
//! A server error maps by its SQLSTATE ([`classify_sqlstate`]); the kernel's own SQL functions
//! raise class `KR` errors ([`KernelSqlState`]) whose DETAIL / HINT carry the key and the
//! current version, decoded by [`KernelState`]. A client-side failure maps by what
//! tokio-postgres exposes: [`tokio_postgres::Error::is_closed`], and the kind of an
//! [`std::io::Error`] source. For a few client failures tokio-postgres exposes no kind at all;
//! those are told apart by the fixed text its `Display` writes for each kind (which never
//! includes the cause), listed once in [`CLIENT_TEXTS`] and each pinned by a test that makes
//! tokio-postgres produce the real error.

use kernel_core::{Error, ErrorCode, ErrorStatus};
use tokio_postgres::error::SqlState;

use crate::codes::KernelSqlState;

/// The backend name put in every error's context.
pub(crate) const BACKEND: &str = "postgres";

/// SQLSTATEs that mean the server cannot serve now but may soon: admin / crash shutdown,
/// cannot connect now (starting up), and a read-only transaction (a standby, or a primary
/// being demoted).
const UNAVAILABLE: [SqlState; 4] = [
    SqlState::ADMIN_SHUTDOWN,
    SqlState::CRASH_SHUTDOWN,
    SqlState::CANNOT_CONNECT_NOW,
    SqlState::READ_ONLY_SQL_TRANSACTION,
];

/// SQLSTATEs of a transaction the server aborted so another could go on: the same call again
/// may succeed.
const RETRYABLE_CONFLICT: [SqlState; 2] = [
    SqlState::T_R_SERIALIZATION_FAILURE,
    SqlState::T_R_DEADLOCK_DETECTED,
];

/// SQLSTATEs of a deadline: `statement_timeout` (query cancelled) and `lock_timeout`.
const TIMEOUT: [SqlState; 2] = [SqlState::QUERY_CANCELED, SqlState::LOCK_NOT_AVAILABLE];

/// SQLSTATEs of a database that is not set up for the kernel: no such database, and a missing
/// table or function (the schema is not migrated).
const CONFIG: [SqlState; 3] = [
    SqlState::INVALID_CATALOG_NAME,
    SqlState::UNDEFINED_TABLE,
    SqlState::UNDEFINED_FUNCTION,
];

/// What a SQLSTATE means to the kernel: its code and what the caller may do next.
///
/// * `08*` connection exceptions, `57P01` admin shutdown, `57P02` crash shutdown, `57P03`
///   cannot connect now, `53*` insufficient resources (`53300` too many connections), `25006`
///   read-only transaction (a standby): `Unavailable`, temporary.
/// * `40001` serialization failure, `40P01` deadlock: `Conflict`, temporary.
/// * `57014` query cancelled (statement timeout), `55P03` lock not available: `Timeout`,
///   temporary.
/// * `23505` unique violation and other `23*` integrity violations: `Conflict`, permanent.
/// * `22*` data exceptions (bad value, out of range, untranslatable character):
///   `InvalidInput`, permanent.
/// * `28*` authentication, `3D000` unknown database, `42P01` / `42883` undefined table /
///   function (schema not migrated): `Config`, permanent.
/// * anything else (the kernel's own `KR*` included, which callers decode first): `Internal`,
///   permanent.
///
/// ```
/// use driver_postgres::classify_sqlstate;
/// use kernel_core::{ErrorCode, ErrorStatus};
/// use tokio_postgres::error::SqlState;
///
/// assert_eq!(
///     classify_sqlstate(&SqlState::T_R_SERIALIZATION_FAILURE),
///     (ErrorCode::Conflict, ErrorStatus::Temporary)
/// );
/// ```
pub fn classify_sqlstate(state: &SqlState) -> (ErrorCode, ErrorStatus) {
    use ErrorStatus::{Permanent, Temporary};
    if UNAVAILABLE.contains(state) {
        return (ErrorCode::Unavailable, Temporary);
    }
    if RETRYABLE_CONFLICT.contains(state) {
        return (ErrorCode::Conflict, Temporary);
    }
    if TIMEOUT.contains(state) {
        return (ErrorCode::Timeout, Temporary);
    }
    if CONFIG.contains(state) {
        return (ErrorCode::Config, Permanent);
    }
    // A missing privilege, a row-level security policy refusing a row (tenancy = rls), the
    // append-only guard of the event tables: the role may not do this.
    if *state == SqlState::INSUFFICIENT_PRIVILEGE {
        return (ErrorCode::PermissionDenied, Permanent);
    }
    // The class is the first two characters of the code (SQL standard, PostgreSQL Appendix A).
    match state.code().get(..2) {
        Some("08" | "53") => (ErrorCode::Unavailable, Temporary),
        Some("23") => (ErrorCode::Conflict, Permanent),
        Some("22") => (ErrorCode::InvalidInput, Permanent),
        Some("28") => (ErrorCode::Config, Permanent),
        _ => (ErrorCode::Internal, Permanent),
    }
}

/// A `KR` error raised by the kernel's SQL functions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelState {
    /// Which one.
    pub(crate) state: KernelSqlState,
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

/// The kernel's `KR` error inside `err`, if it is one this build knows.
pub(crate) fn kernel_state(err: &tokio_postgres::Error) -> Option<KernelState> {
    let db = err.as_db_error()?;
    Some(KernelState {
        state: KernelSqlState::from_code(db.code().code())?,
        detail: db.detail().unwrap_or_default().to_owned(),
        hint: db.hint().unwrap_or_default().to_owned(),
    })
}

/// Maps a tokio-postgres error; callers add the namespace / key / stream context.
pub(crate) fn pg(err: tokio_postgres::Error) -> Error {
    let (code, status, message) = match err.as_db_error() {
        Some(db) => {
            let (code, status) = classify_sqlstate(db.code());
            let mut message = format!("postgres error {}: {}", db.code().code(), db.message());
            if [SqlState::UNDEFINED_TABLE, SqlState::UNDEFINED_FUNCTION].contains(db.code()) {
                message.push_str(
                    " (the kernel schema is missing or old: run `kernelctl migrate up` or enable \
                     migrate_on_boot)",
                );
            }
            (code, status, message)
        }
        None => {
            let (code, status, message) = classify_client_error(&err);
            (code, status, message.to_owned())
        }
    };
    let sqlstate = err.code().map(|c| c.code().to_owned());
    let mut e = Error::new(code, message)
        .with_status(status)
        .with_context("backend", BACKEND);
    if let Some(s) = sqlstate {
        e = e.with_context("sqlstate", s);
    }
    e.with_source(err)
}

/// Maps the failure of a statement that writes: a broken connection or an unanswered request
/// (no server error) leaves the outcome unknown, so a transient one becomes
/// [`kernel_core::ErrorStatus::MaybeApplied`]. A server error means the statement's transaction
/// did not commit, and keeps its status.
pub(crate) fn pg_write(err: tokio_postgres::Error) -> Error {
    let answered = err.as_db_error().is_some();
    let e = pg(err);
    if answered { e } else { e.after_sending_write() }
}

/// A client-side failure tokio-postgres gives no kind for, as far as the kernel tells them
/// apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientKind {
    /// A parameter could not be encoded (`ToSql` failed).
    Serialize,
    /// A column could not be decoded (`FromSql` failed).
    Deserialize,
    /// The connection settings are incomplete (a password the server asks for is missing,
    /// no host) or malformed.
    Config,
    /// Authentication failed on the client side (an unsupported method, a bad SCRAM exchange).
    Authentication,
}

/// The fixed `Display` texts of the client errors in [`ClientKind`] (tokio-postgres 0.7 writes
/// the kind's text only, never the cause, so nothing user-supplied is matched). Each is pinned
/// by a test that produces the real error.
const CLIENT_TEXTS: [(&str, ClientKind); 5] = [
    ("error serializing parameter", ClientKind::Serialize),
    ("error deserializing column", ClientKind::Deserialize),
    ("invalid configuration", ClientKind::Config),
    ("invalid connection string", ClientKind::Config),
    ("authentication error", ClientKind::Authentication),
];

fn client_kind(err: &tokio_postgres::Error) -> Option<ClientKind> {
    let text = err.to_string();
    CLIENT_TEXTS
        .iter()
        .find(|(prefix, _)| text.starts_with(prefix))
        .map(|(_, kind)| *kind)
}

/// A failure that is not a server error: connection loss, I/O, encoding, decoding, settings.
fn classify_client_error(err: &tokio_postgres::Error) -> (ErrorCode, ErrorStatus, &'static str) {
    use ErrorStatus::{Permanent, Temporary};
    if err.is_closed() {
        return (
            ErrorCode::Unavailable,
            Temporary,
            "the connection to postgres was closed",
        );
    }
    // Before the I/O check: a failed SCRAM exchange carries an `io::Error` too.
    match client_kind(err) {
        Some(ClientKind::Serialize) => {
            return (
                ErrorCode::InvalidInput,
                Permanent,
                "a value cannot be sent to postgres",
            );
        }
        Some(ClientKind::Deserialize) => {
            return (
                ErrorCode::Corrupted,
                Permanent,
                "postgres returned data the kernel cannot decode",
            );
        }
        Some(ClientKind::Config) => {
            return (
                ErrorCode::Config,
                Permanent,
                "invalid postgres connection settings (is a password the server asks for \
                 missing?)",
            );
        }
        Some(ClientKind::Authentication) => {
            return (
                ErrorCode::Config,
                Permanent,
                "postgres authentication failed on the client side",
            );
        }
        None => {}
    }
    let io = std::error::Error::source(err).and_then(|s| s.downcast_ref::<std::io::Error>());
    match io.map(std::io::Error::kind) {
        Some(std::io::ErrorKind::TimedOut) => (
            ErrorCode::Timeout,
            Temporary,
            "timed out talking to postgres",
        ),
        Some(_) => (
            ErrorCode::Unavailable,
            Temporary,
            "postgres cannot be reached",
        ),
        None => (
            ErrorCode::Internal,
            Permanent,
            "unexpected postgres client error",
        ),
    }
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

/// A stored value that does not have the shape the kernel wrote.
pub(crate) fn corrupted(what: &str) -> Error {
    Error::corrupted(format!("postgres holds {what}")).with_context("backend", BACKEND)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_postgres::NoTls;

    #[test]
    fn sqlstates_map_to_codes_and_status() {
        use ErrorStatus::{Permanent, Temporary};
        let cases = [
            ("08006", ErrorCode::Unavailable, Temporary),
            ("08001", ErrorCode::Unavailable, Temporary),
            ("57P01", ErrorCode::Unavailable, Temporary),
            ("57P02", ErrorCode::Unavailable, Temporary),
            ("57P03", ErrorCode::Unavailable, Temporary),
            ("25006", ErrorCode::Unavailable, Temporary),
            ("53300", ErrorCode::Unavailable, Temporary),
            ("53100", ErrorCode::Unavailable, Temporary),
            ("40001", ErrorCode::Conflict, Temporary),
            ("40P01", ErrorCode::Conflict, Temporary),
            ("23505", ErrorCode::Conflict, Permanent),
            ("23503", ErrorCode::Conflict, Permanent),
            ("22P02", ErrorCode::InvalidInput, Permanent),
            ("22P05", ErrorCode::InvalidInput, Permanent),
            ("22003", ErrorCode::InvalidInput, Permanent),
            ("57014", ErrorCode::Timeout, Temporary),
            ("55P03", ErrorCode::Timeout, Temporary),
            ("28P01", ErrorCode::Config, Permanent),
            ("28000", ErrorCode::Config, Permanent),
            ("3D000", ErrorCode::Config, Permanent),
            ("42P01", ErrorCode::Config, Permanent),
            ("42883", ErrorCode::Config, Permanent),
            ("42601", ErrorCode::Internal, Permanent),
            ("42501", ErrorCode::PermissionDenied, Permanent),
            ("XX000", ErrorCode::Internal, Permanent),
            ("KR002", ErrorCode::Internal, Permanent),
            ("", ErrorCode::Internal, Permanent),
            ("0", ErrorCode::Internal, Permanent),
        ];
        for (state, code, status) in cases {
            assert_eq!(
                classify_sqlstate(&SqlState::from_code(state)),
                (code, status),
                "{state}"
            );
        }
    }

    #[test]
    fn kernel_state_hint_is_the_version() {
        let s = KernelState {
            state: KernelSqlState::VersionConflict,
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

    fn kind_and_code(err: tokio_postgres::Error) -> (Option<ClientKind>, ErrorCode, ErrorStatus) {
        let kind = client_kind(&err);
        let mapped = pg(err);
        (kind, mapped.code(), mapped.status())
    }

    /// A server that answers the startup message with `reply` (nothing: it hangs up).
    async fn fake_server(reply: &'static [u8]) -> tokio_postgres::Config {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"))
            .port();
        tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut len = [0u8; 4];
            if socket.read_exact(&mut len).await.is_err() {
                return;
            }
            let mut startup = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
            if socket.read_exact(&mut startup).await.is_err() {
                return;
            }
            let _ = socket.write_all(reply).await;
            // Let the client read the reply before the socket closes.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        });
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user("kernel")
            .dbname("kernel");
        config
    }

    async fn server_client() -> tokio_postgres::Client {
        let url = kernel_testkit::postgres::server_url();
        let (client, connection) = tokio_postgres::connect(&url, NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to the test server {url}: {e}"));
        tokio::spawn(connection);
        client
    }

    /// Every text in `CLIENT_TEXTS` is what tokio-postgres really writes for that failure: a
    /// new tokio-postgres that words one differently fails here, not silently in production.
    #[tokio::test]
    async fn client_texts_are_pinned_to_real_errors() {
        use ErrorStatus::{Permanent, Temporary};
        let client = server_client().await;

        // A parameter of the wrong type: `ToSql` refuses it before anything is sent.
        let err = client
            .query("SELECT $1::text", &[&1i32])
            .await
            .err()
            .unwrap_or_else(|| panic!("an i32 for a text parameter must fail"));
        assert_eq!(
            kind_and_code(err),
            (
                Some(ClientKind::Serialize),
                ErrorCode::InvalidInput,
                Permanent
            )
        );

        // A column read as the wrong type.
        let row = client
            .query_one("SELECT 'x'::text", &[])
            .await
            .unwrap_or_else(|e| panic!("select: {e}"));
        let err = row
            .try_get::<_, i32>(0)
            .err()
            .unwrap_or_else(|| panic!("text as i32 must fail"));
        assert_eq!(
            kind_and_code(err),
            (
                Some(ClientKind::Deserialize),
                ErrorCode::Corrupted,
                Permanent
            )
        );

        // Settings without a host.
        let err = tokio_postgres::Config::new()
            .connect(NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("a config without host must fail"));
        assert_eq!(
            kind_and_code(err),
            (Some(ClientKind::Config), ErrorCode::Config, Permanent)
        );

        // A malformed connection string.
        let err = "postgres://127.0.0.1/db?no_such_option=1"
            .parse::<tokio_postgres::Config>()
            .err()
            .unwrap_or_else(|| panic!("an unknown option must fail"));
        assert_eq!(
            kind_and_code(err),
            (Some(ClientKind::Config), ErrorCode::Config, Permanent)
        );

        // The server asks for a password the settings do not have.
        let cleartext: &[u8] = b"R\0\0\0\x08\0\0\0\x03";
        let err = fake_server(cleartext)
            .await
            .connect(NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("a missing password must fail"));
        assert_eq!(
            kind_and_code(err),
            (Some(ClientKind::Config), ErrorCode::Config, Permanent)
        );

        // The server asks for an authentication method tokio-postgres does not have (Kerberos).
        let kerberos: &[u8] = b"R\0\0\0\x08\0\0\0\x02";
        let err = fake_server(kerberos)
            .await
            .connect(NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("an unsupported method must fail"));
        assert_eq!(
            kind_and_code(err),
            (
                Some(ClientKind::Authentication),
                ErrorCode::Config,
                Permanent
            )
        );

        // Structure, not text: a server that hangs up, and a port nobody listens on.
        let err = fake_server(b"")
            .await
            .connect(NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("a hang-up must fail"));
        assert!(err.is_closed(), "{err:?}");
        assert_eq!(
            kind_and_code(err),
            (None, ErrorCode::Unavailable, Temporary)
        );
        let closed_port = {
            let l =
                std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
            l.local_addr()
                .unwrap_or_else(|e| panic!("addr: {e}"))
                .port()
        };
        let err = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(closed_port)
            .user("kernel")
            .connect(NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("a closed port must fail"));
        assert_eq!(
            kind_and_code(err),
            (None, ErrorCode::Unavailable, Temporary)
        );

        // A server error maps by its SQLSTATE, whatever its message says.
        let err = client
            .batch_execute("SELECT * FROM kernel_no_such_table")
            .await
            .err()
            .unwrap_or_else(|| panic!("an unknown table must fail"));
        let mapped = pg(err);
        assert_eq!(mapped.code(), ErrorCode::Config);
        assert_eq!(mapped.context_value("sqlstate"), Some("42P01"));
        assert!(mapped.message().contains("kernelctl migrate"), "{mapped}");
    }
}
