//! The small integer and SQLSTATE codes the driver and the kernel's SQL functions exchange.
//!
//! The SQL functions live in checksummed migrations that are never edited once released, so
//! their codes are fixed: each enum here names them once, with the value written out, and
//! `tests/codes.rs` runs every function with every code against a real server to prove both
//! sides agree. SQL clients (psql, other languages) calling the functions directly use the
//! same values.
//!
//! | enum | SQL parameter / column | values |
//! |---|---|---|
//! | [`PutCode`] | `kernel_put(.., p_cond smallint[], ..)` | 0 always, 1 if absent, 2 if version |
//! | [`ExpectedKind`] | `kernel_append_batch(.., p_kinds smallint[], ..)`, `kernel_append_stage(.., p_expected_kind, ..)` | 0 any, 1 no stream, 2 stream exists, 3 exact |
//! | [`AppendStatus`] | `kernel_append_batch` → `o_status smallint` | 0 written, 1 ids stored, 2 version mismatch, 3 stream busy |
//! | [`TxOp`] | `kernel_tx_commit(.., p_op smallint[], ..)` | 0 read, 1 put, 2 delete |
//! | [`KernelSqlState`] | `RAISE .. ERRCODE` | `KR001` .. `KR007` |
//!
//! `kernel_append(p_stream, p_expected bigint, p_events)`, the entry point for SQL clients,
//! takes the expected version as one number instead (NULL any, -1 stream exists, 0 no stream,
//! n exact); it converts to [`ExpectedKind`] itself.
//!
//! A plain `INSERT INTO kernel_events` from a console (migration 0006's trigger) raises the same
//! states as `kernel_append`: `KR006` invalid input, `KR004` an explicit version that is not the
//! stream's next (DETAIL stream, HINT its version), `KR007` an id stored with other content.
//! UPDATE and DELETE of the event tables raise PostgreSQL's own `42501` (insufficient
//! privilege) unless run as `kernel_maintenance`.
//!
//! The enums are `#[non_exhaustive]`: a later migration may add a code, never change one.

use kernel_core::{ExpectedVersion, PutCondition, Result};

use crate::rows::to_i64;

/// The condition of one write of `kernel_put` (`p_cond[i]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i16)]
#[non_exhaustive]
pub enum PutCode {
    /// Create or replace.
    Always = 0,
    /// Only if no live entry exists, else `KR001`.
    IfAbsent = 1,
    /// Only if the live version is `p_cond_version[i]`, else `KR002`.
    IfVersion = 2,
}

impl PutCode {
    /// Every value, in code order.
    pub const ALL: [PutCode; 3] = [PutCode::Always, PutCode::IfAbsent, PutCode::IfVersion];

    /// The value sent to SQL.
    pub const fn code(self) -> i16 {
        self as i16
    }

    /// The code and the `p_cond_version[i]` of a put condition; `Unsupported` for a condition
    /// added to kernel-core after this driver was written.
    pub fn of(condition: PutCondition) -> Result<(PutCode, Option<i64>)> {
        match condition {
            PutCondition::Always => Ok((PutCode::Always, None)),
            PutCondition::IfAbsent => Ok((PutCode::IfAbsent, None)),
            PutCondition::IfVersion(v) => Ok((PutCode::IfVersion, Some(to_i64(v)))),
            other => Err(unsupported("put condition", &other)),
        }
    }
}

/// What an append expects of its stream (`p_kinds[i]` of `kernel_append_batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i16)]
#[non_exhaustive]
pub enum ExpectedKind {
    /// Any version, the stream may be absent.
    Any = 0,
    /// The stream must not exist (version 0).
    NoStream = 1,
    /// The stream must exist (version above 0).
    StreamExists = 2,
    /// The stream must be at exactly `p_expected[i]`.
    Exact = 3,
}

impl ExpectedKind {
    /// Every value, in code order.
    pub const ALL: [ExpectedKind; 4] = [
        ExpectedKind::Any,
        ExpectedKind::NoStream,
        ExpectedKind::StreamExists,
        ExpectedKind::Exact,
    ];

    /// The value sent to SQL.
    pub const fn code(self) -> i16 {
        self as i16
    }

    /// The kind and the `p_expected[i]` of an expected version. `Exact(0)` is "no stream":
    /// the SQL compares exact versions only against existing streams' versions.
    pub fn of(expected: ExpectedVersion) -> (ExpectedKind, Option<i64>) {
        match expected {
            ExpectedVersion::Any => (ExpectedKind::Any, None),
            ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => (ExpectedKind::NoStream, None),
            ExpectedVersion::StreamExists => (ExpectedKind::StreamExists, None),
            ExpectedVersion::Exact(v) => (ExpectedKind::Exact, Some(to_i64(v))),
        }
    }
}

/// What `kernel_append_batch` did with one append (`o_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i16)]
#[non_exhaustive]
pub enum AppendStatus {
    /// Written: `o_stream_version` is the new version, `o_seqs` the events' seqs.
    Written = 0,
    /// Some id is already in the stream; nothing written. `o_stored` / `o_seqs` hold the
    /// stored version and seq of every id (NULL where absent).
    Stored = 1,
    /// The stream is not at the expected version (`o_stream_version`); nothing written.
    Mismatch = 2,
    /// Without `p_wait` only: another transaction holds the stream's lock; nothing written.
    Busy = 3,
}

impl AppendStatus {
    /// Every value, in code order.
    pub const ALL: [AppendStatus; 4] = [
        AppendStatus::Written,
        AppendStatus::Stored,
        AppendStatus::Mismatch,
        AppendStatus::Busy,
    ];

    /// The value SQL returns.
    pub const fn code(self) -> i16 {
        self as i16
    }

    /// The status SQL returned; `None` for a value this build does not know.
    pub fn from_code(code: i16) -> Option<AppendStatus> {
        AppendStatus::ALL.into_iter().find(|s| s.code() == code)
    }
}

/// What a transaction does with one key at commit (`p_op[i]` of `kernel_tx_commit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i16)]
#[non_exhaustive]
pub enum TxOp {
    /// Only read: its version is checked, nothing written.
    Read = 0,
    /// Written with the value, metadata, version and TTL sent along.
    Put = 1,
    /// Deleted.
    Delete = 2,
}

impl TxOp {
    /// Every value, in code order.
    pub const ALL: [TxOp; 3] = [TxOp::Read, TxOp::Put, TxOp::Delete];

    /// The value sent to SQL.
    pub const fn code(self) -> i16 {
        self as i16
    }
}

/// The SQLSTATEs (class `KR`) the kernel's SQL functions raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KernelSqlState {
    /// `KR001`: a create-only write found the key (DETAIL key, HINT its version).
    AlreadyExists,
    /// `KR002`: a document is not at the expected version (DETAIL key, HINT the current
    /// version, empty when absent).
    VersionConflict,
    /// `KR003`: a transaction lost a race (DETAIL `namespace/key`).
    TransactionConflict,
    /// `KR004`: a stream is not at the expected version (DETAIL stream, HINT its version).
    StreamVersionConflict,
    /// `KR005`: a namespace dropped without `recursive` holds live entries (DETAIL namespace).
    NamespaceNotEmpty,
    /// `KR006`: invalid input to a SQL entry point (psql clients).
    InvalidInput,
    /// `KR007`: an event id reused at another place in its stream (DETAIL stream, HINT id).
    EventIdReused,
}

impl KernelSqlState {
    /// Every value, in code order.
    pub const ALL: [KernelSqlState; 7] = [
        KernelSqlState::AlreadyExists,
        KernelSqlState::VersionConflict,
        KernelSqlState::TransactionConflict,
        KernelSqlState::StreamVersionConflict,
        KernelSqlState::NamespaceNotEmpty,
        KernelSqlState::InvalidInput,
        KernelSqlState::EventIdReused,
    ];

    /// The five-character SQLSTATE.
    pub const fn code(self) -> &'static str {
        match self {
            KernelSqlState::AlreadyExists => "KR001",
            KernelSqlState::VersionConflict => "KR002",
            KernelSqlState::TransactionConflict => "KR003",
            KernelSqlState::StreamVersionConflict => "KR004",
            KernelSqlState::NamespaceNotEmpty => "KR005",
            KernelSqlState::InvalidInput => "KR006",
            KernelSqlState::EventIdReused => "KR007",
        }
    }

    /// The state a SQLSTATE names; `None` for any other code.
    pub fn from_code(code: &str) -> Option<KernelSqlState> {
        KernelSqlState::ALL.into_iter().find(|s| s.code() == code)
    }
}

fn unsupported(what: &'static str, value: &impl std::fmt::Debug) -> kernel_core::Error {
    kernel_core::Error::unsupported_variant(what, value)
        .with_context("backend", crate::error::BACKEND)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values are a contract with SQL that cannot change (the functions are in released
    /// migrations): a reordered or renumbered variant must fail here, not in production.
    #[test]
    fn codes_are_pinned() {
        assert_eq!(PutCode::ALL.map(PutCode::code), [0, 1, 2]);
        assert_eq!(ExpectedKind::ALL.map(ExpectedKind::code), [0, 1, 2, 3]);
        assert_eq!(AppendStatus::ALL.map(AppendStatus::code), [0, 1, 2, 3]);
        assert_eq!(TxOp::ALL.map(TxOp::code), [0, 1, 2]);
        assert_eq!(
            KernelSqlState::ALL.map(KernelSqlState::code),
            [
                "KR001", "KR002", "KR003", "KR004", "KR005", "KR006", "KR007"
            ]
        );
        for s in AppendStatus::ALL {
            assert_eq!(AppendStatus::from_code(s.code()), Some(s));
        }
        assert_eq!(AppendStatus::from_code(4), None);
        assert_eq!(AppendStatus::from_code(-1), None);
        for s in KernelSqlState::ALL {
            assert_eq!(KernelSqlState::from_code(s.code()), Some(s));
        }
        assert_eq!(KernelSqlState::from_code("23505"), None);
    }

    #[test]
    fn conditions_map_to_codes() {
        assert_eq!(
            PutCode::of(PutCondition::IfVersion(7)).ok(),
            Some((PutCode::IfVersion, Some(7)))
        );
        assert_eq!(
            PutCode::of(PutCondition::IfAbsent).ok(),
            Some((PutCode::IfAbsent, None))
        );
        assert_eq!(
            ExpectedKind::of(ExpectedVersion::Exact(0)),
            (ExpectedKind::NoStream, None)
        );
        assert_eq!(
            ExpectedKind::of(ExpectedVersion::Exact(u64::MAX)),
            (ExpectedKind::Exact, Some(i64::MAX))
        );
    }

    /// Every code the Rust side names appears in the embedded SQL, written the way the
    /// functions compare it (a cheap check that runs without a server; `tests/codes.rs` checks
    /// the behaviour).
    #[test]
    fn the_sql_text_uses_the_same_codes() {
        let sql: String = crate::migrations::MIGRATIONS
            .iter()
            .map(|m| m.up.as_ref())
            .collect();
        for kind in ExpectedKind::ALL {
            assert!(
                sql.contains(&format!("v_kind = {}", kind.code()))
                    || sql.contains(&format!("p_expected_kind = {}", kind.code())),
                "{kind:?}"
            );
        }
        for status in AppendStatus::ALL {
            assert!(
                sql.contains(&format!("o_status := {};", status.code())),
                "{status:?}"
            );
        }
        for code in [PutCode::IfAbsent, PutCode::IfVersion] {
            assert!(
                sql.contains(&format!("p_cond[i] = {}", code.code())),
                "{code:?}"
            );
        }
        for op in [TxOp::Put, TxOp::Delete] {
            assert!(sql.contains(&format!("p_op[i] = {}", op.code())), "{op:?}");
        }
        for state in KernelSqlState::ALL {
            assert!(
                sql.contains(&format!("ERRCODE = '{}'", state.code())),
                "{state:?}"
            );
        }
    }
}
