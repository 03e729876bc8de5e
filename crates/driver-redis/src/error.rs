//! Mapping of fred / Redis errors to the kernel's codes and retryability.
//!
//! fred reports a kind (IO, timeout, auth...) and, for server replies, the reply text, whose
//! first word is Redis' error code (`READONLY`, `LOADING`, `BUSY`...). Both are read here so the
//! retry layer above can tell a transient failure from a permanent one: the kind first, then the
//! reply's code word. Two of fred's own errors carry no distinct kind, only a fixed message;
//! those messages are the constants [`FRED_ROUTE_FAILED`] and [`FRED_CROSS_NODE`], copied from
//! fred 10.1's source (`router/commands.rs`, `commands/impls/lua.rs`) and pinned in a unit test
//! of their mapping. The test builds the errors from the same text, so it cannot notice fred
//! rewording them: re-read those two places when upgrading fred (Cargo.lock pins the version).

use fred::error::{Error as FredError, ErrorKind};
use kernel_core::{Error, ErrorCode};

/// Prefix of the error replies the driver's own scripts raise for data they cannot decode.
pub(crate) const CORRUPTED_REPLY: &str = "KERNEL_CORRUPTED";

/// Server replies meaning "not now": failover, loading, a busy script, a cluster resharding.
const TRANSIENT_REPLIES: &[&str] = &[
    "READONLY",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
    "MISCONF",
    "OOM",
];

/// fred 10's message when no connection could take a command (all connections down, a
/// reconnection pending): `ErrorKind::Unknown` (or `Routing`), and the command was not sent.
pub(crate) const FRED_ROUTE_FAILED: &str = "Failed to route command.";

/// fred 10's message, with `ErrorKind::Cluster`, refusing a script or transaction whose keys
/// live on different cluster nodes before sending it.
pub(crate) const FRED_CROSS_NODE: &str = "same cluster node";

/// Maps a fred error to a kernel error naming the operation; callers add the namespace, key or
/// stream.
pub(crate) fn map_err(err: FredError, operation: &'static str) -> Error {
    let details = err.details().to_owned();
    let code_word = details.split_whitespace().next().unwrap_or("");
    let base = match err.kind() {
        ErrorKind::Timeout => Error::timeout("Redis did not answer within the operation timeout"),
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Routing | ErrorKind::Protocol => {
            Error::unavailable("the connection to Redis failed")
        }
        ErrorKind::Backpressure => {
            Error::unavailable("the Redis client's command queue is full").with_retryable(true)
        }
        // fred refuses a script whose keys live on different nodes before sending it.
        ErrorKind::Cluster if details.contains(FRED_CROSS_NODE) => cross_slot(),
        ErrorKind::Cluster => {
            Error::unavailable("the Redis cluster is changing (MOVED / ASK / CLUSTERDOWN)")
        }
        ErrorKind::Config | ErrorKind::Url => {
            Error::config("redis.url", "the Redis client configuration was rejected")
        }
        // The command never left the client: safe to retry.
        ErrorKind::Unknown if details == FRED_ROUTE_FAILED => {
            Error::unavailable("no connection to Redis could take the command (reconnecting)")
        }
        ErrorKind::Auth => Error::config(
            "redis.url",
            "Redis refused the credentials (NOAUTH / WRONGPASS): check the user and password",
        ),
        _ if TRANSIENT_REPLIES.contains(&code_word) => {
            Error::unavailable(format!("Redis cannot serve this now ({code_word})"))
                .with_retryable(true)
        }
        _ if code_word == "NOSCRIPT" => {
            Error::internal("a kernel Lua script is missing on the server even after reloading it")
        }
        // The append script found another generation marker: the caller records the loss.
        _ if code_word == crate::generation::DATA_LOSS_REPLY => Error::corrupted(
            "Redis lost the kernel's data: the generation marker changed or is gone",
        )
        .with_context(
            "generation_found",
            details.split_whitespace().nth(1).unwrap_or("missing"),
        ),
        _ if code_word == CORRUPTED_REPLY => {
            Error::corrupted("Redis holds data under a kernel key that the kernel did not write")
        }
        _ if code_word == "WRONGTYPE" => Error::corrupted(
            "a kernel key holds a Redis type the kernel did not write there (WRONGTYPE)",
        ),
        _ if code_word == "CROSSSLOT" => cross_slot(),
        _ if details.contains("user_script") || details.contains("script:") => {
            Error::internal("a kernel Lua script failed")
        }
        _ => Error::internal("Redis returned an unexpected error"),
    };
    base.with_context("backend", "redis")
        .with_operation(operation)
        .with_source(RedisError(err))
}

/// Maps the failure of a command that writes. When the command may have reached the server
/// before the failure (a timeout, a connection that broke or was cancelled while it was in
/// flight) its outcome is unknown: `MaybeApplied`. A command fred never sent (no connection to
/// route it to, a full queue) stays `Temporary`, and a server's error reply is not an unknown
/// outcome.
pub(crate) fn map_write_err(err: FredError, operation: &'static str) -> Error {
    let in_flight = matches!(
        err.kind(),
        ErrorKind::Timeout | ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Protocol
    );
    let e = map_err(err, operation);
    if in_flight {
        e.after_sending_write()
    } else {
        e
    }
}

fn cross_slot() -> Error {
    Error::unsupported(
        "the operation spans several cluster slots (in cluster mode a transaction must stay \
         within one namespace)",
    )
}

/// The fred error as a `std::error::Error` source (fred's own type is one, but keeping the kind
/// and the reply text together in the message reads better in logs).
#[derive(Debug)]
struct RedisError(FredError);

impl std::fmt::Display for RedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for RedisError {}

/// An unexpected reply shape from one of the driver's own scripts or commands.
pub(crate) fn bad_reply(operation: &'static str, what: impl Into<String>) -> Error {
    Error::new(ErrorCode::Internal, what)
        .with_context("backend", "redis")
        .with_operation(operation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kind: ErrorKind, details: &str) -> Error {
        map_err(FredError::new(kind, details.to_owned()), "test")
    }

    #[test]
    fn connection_loss_is_retryable_unavailable() {
        for kind in [
            ErrorKind::IO,
            ErrorKind::Canceled,
            ErrorKind::Protocol,
            ErrorKind::Routing,
        ] {
            let e = map(kind.clone(), "Connection reset by peer");
            assert_eq!(e.code(), ErrorCode::Unavailable, "{kind:?}");
            assert!(e.is_retryable(), "{kind:?}");
            assert_eq!(e.context_value("backend"), Some("redis"));
        }
    }

    /// fred's own wording of the two errors matched by text: the messages it builds in
    /// `router/commands.rs` and `commands/impls/lua.rs` (fred 10.1).
    #[test]
    fn fred_messages_matched_by_text_are_pinned() {
        let route = map(ErrorKind::Unknown, "Failed to route command.");
        assert_eq!(route.code(), ErrorCode::Unavailable);
        assert!(route.is_retryable());
        let cross = map(
            ErrorKind::Cluster,
            "All keys must belong to the same cluster node.",
        );
        assert_eq!(cross.code(), ErrorCode::Unsupported);
        // Any other unknown error stays Internal: no silent retry of something unexplained.
        assert_eq!(
            map(ErrorKind::Unknown, "Something else.").code(),
            ErrorCode::Internal
        );
    }

    #[test]
    fn a_write_that_lost_its_answer_may_have_been_applied() {
        use kernel_core::ErrorStatus;
        for kind in [
            ErrorKind::Timeout,
            ErrorKind::IO,
            ErrorKind::Canceled,
            ErrorKind::Protocol,
        ] {
            let e = map_write_err(FredError::new(kind.clone(), "lost"), "put");
            assert_eq!(e.status(), ErrorStatus::MaybeApplied, "{kind:?}");
            assert!(!e.is_retryable(), "{kind:?}");
            assert!(e.to_string().contains("outcome=unknown"), "{e}");
        }
        // Never sent, or answered: the status stays.
        for (kind, details, status) in [
            (ErrorKind::Routing, "no route", ErrorStatus::Temporary),
            (
                ErrorKind::Unknown,
                FRED_ROUTE_FAILED,
                ErrorStatus::Temporary,
            ),
            (ErrorKind::Backpressure, "full", ErrorStatus::Temporary),
            (
                ErrorKind::Unknown,
                "READONLY replica",
                ErrorStatus::Temporary,
            ),
            (
                ErrorKind::Unknown,
                "ERR user_script:1: boom",
                ErrorStatus::Permanent,
            ),
        ] {
            let e = map_write_err(FredError::new(kind.clone(), details.to_owned()), "put");
            assert_eq!(e.status(), status, "{kind:?} {details}");
        }
    }

    #[test]
    fn timeouts_are_retryable_timeouts() {
        let e = map(ErrorKind::Timeout, "Request timed out.");
        assert_eq!(e.code(), ErrorCode::Timeout);
        assert!(e.is_retryable());
    }

    #[test]
    fn transient_server_replies_are_retryable_unavailable() {
        for reply in [
            "READONLY You can't write against a read only replica.",
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script.",
            "MASTERDOWN Link with MASTER is down",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
        ] {
            let e = map(ErrorKind::Unknown, reply);
            assert_eq!(e.code(), ErrorCode::Unavailable, "{reply}");
            assert!(e.is_retryable(), "{reply}");
            assert!(e.to_string().contains(reply), "{e}");
        }
    }

    #[test]
    fn script_errors_are_internal_with_the_message() {
        let e = map(
            ErrorKind::Unknown,
            "ERR user_script:1: boom script: 82903a04, on @user_script:1.",
        );
        assert_eq!(e.code(), ErrorCode::Internal);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("boom"), "{e}");
    }

    #[test]
    fn data_and_config_errors() {
        assert_eq!(
            map(ErrorKind::Unknown, "KERNEL_CORRUPTED entry").code(),
            ErrorCode::Corrupted
        );
        assert_eq!(
            map(
                ErrorKind::InvalidArgument,
                "WRONGTYPE Operation against a key"
            )
            .code(),
            ErrorCode::Corrupted
        );
        let auth = map(ErrorKind::Auth, "WRONGPASS invalid username-password pair");
        assert_eq!(auth.code(), ErrorCode::Config);
        assert!(!auth.is_retryable());
        assert_eq!(map(ErrorKind::Url, "bad url").code(), ErrorCode::Config);
        assert_eq!(
            map(
                ErrorKind::Unknown,
                "CROSSSLOT Keys in request don't hash to the same slot"
            )
            .code(),
            ErrorCode::Unsupported
        );
        let cross_node = map(
            ErrorKind::Cluster,
            "All keys must belong to the same cluster node.",
        );
        assert_eq!(cross_node.code(), ErrorCode::Unsupported);
        assert!(!cross_node.is_retryable());
        let noscript = map(ErrorKind::Unknown, "NOSCRIPT No matching script.");
        assert_eq!(noscript.code(), ErrorCode::Internal);
    }
}
