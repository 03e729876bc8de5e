//! Every PostgreSQL advisory lock the kernel takes, named in one place.
//!
//! Advisory locks are database-wide and share one namespace with every other application on the
//! database, so the kernel keeps to ids it can name: two-int locks in its own class
//! [`KERNEL_CLASS`] (1263685452), and one-bigint locks on `hashtextextended(text, seed)` with the
//! seeds below. PostgreSQL keeps the two forms apart (a two-int lock never conflicts with a
//! bigint lock), so a bigint hash cannot collide with a class lock.
//!
//! | lock | form | id | taken by | held |
//! |---|---|---|---|---|
//! | sequencer | two-int | ([`KERNEL_CLASS`], 1) = [`SEQUENCER`] | SQL: `kernel_sequence`, 0001's `kernel_event_positions` | to commit of a pass |
//! | migrations | two-int | ([`KERNEL_CLASS`], 2) = [`MIGRATE`] | Rust: [`crate::migrations::Migrator`], every space | to commit of one migration step |
//! | test templates | two-int | ([`KERNEL_CLASS`], 3) = [`TESTKIT_TEMPLATE`] | `kernel-testkit` (tests only) | session, while a template database is built |
//! | test owners | two-int | ([`TESTKIT_OWNER_CLASS`], process token) | `kernel-testkit` (tests only) | session, for the test process's lifetime |
//! | stream | bigint | `hashtextextended(stream, `[`STREAM_SEED`]`)` | SQL: `kernel_append_batch`, 0001's `kernel_append_stage`, 0006's console insert trigger `kernel_events_checked_insert` | to commit of the append (or of the console transaction) |
//! | transaction key | bigint | `hashtextextended(namespace \|\| '/' \|\| key, `[`TX_KEY_SEED`]`)` | SQL: `kernel_tx_commit` | to commit |
//!
//! The SQL-side ids are written out in the migrations, which are checksummed and never edited;
//! the tests of this module check that the text of every embedded migration takes exactly the
//! locks listed here and no other. An application that takes advisory locks of its own on the
//! same database should keep clear of class `KERNEL_CLASS` and `KERNEL_CLASS + 1` (two-int
//! form); its bigint locks may meet the kernel's hashes only by chance, which costs a short
//! wait and never correctness.

/// The two-int class of the kernel's own locks (`0x4B52_4F4C`). Fixed for good: the
/// sequencer's SQL in released migrations writes it out.
pub const KERNEL_CLASS: i32 = 1_263_685_452;

/// Serialises sequencer passes (SQL: `pg_advisory_xact_lock(1263685452, 1)`), so each pass
/// numbers after the previous one's head.
pub const SEQUENCER: (i32, i32) = (KERNEL_CLASS, 1);

/// Serialises migration runners of every space (taken per step with `pg_advisory_xact_lock`),
/// so two processes booting at once apply each migration once.
pub const MIGRATE: (i32, i32) = (KERNEL_CLASS, 2);

/// Reserved for `kernel-testkit`: serialises building a template test database (session lock).
pub const TESTKIT_TEMPLATE: (i32, i32) = (KERNEL_CLASS, 3);

/// Reserved for `kernel-testkit`: the class of the session locks that tell a test process is
/// alive (`(TESTKIT_OWNER_CLASS, process token)`).
pub const TESTKIT_OWNER_CLASS: i32 = KERNEL_CLASS + 1;

/// The `hashtextextended` seed of a stream's append lock, taken before an append's first
/// write so that appends to one stream get increasing transaction ids (see
/// `docs/postgres.md`).
pub const STREAM_SEED: i64 = 2718;

/// The `hashtextextended` seed of the per-key locks `kernel_tx_commit` takes (in hash order)
/// so commits touching a common key, existing or not, run one after the other.
pub const TX_KEY_SEED: i64 = 1801;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::MIGRATIONS;

    /// A stream's append lock id as the migrations write it for `column`.
    fn stream_lock_sql(column: &str) -> String {
        format!("hashtextextended({column}, {STREAM_SEED})")
    }

    #[test]
    fn ids_are_pinned() {
        assert_eq!(KERNEL_CLASS, 1_263_685_452);
        assert_eq!(KERNEL_CLASS, 0x4B52_4F4C);
        assert_eq!(SEQUENCER, (1_263_685_452, 1));
        assert_eq!(MIGRATE, (1_263_685_452, 2));
        assert_eq!(TESTKIT_TEMPLATE, (1_263_685_452, 3));
        assert_eq!(TESTKIT_OWNER_CLASS, 1_263_685_453);
        assert_eq!((STREAM_SEED, TX_KEY_SEED), (2718, 1801));
    }

    /// The test kit cannot depend on this crate, so it writes its ids out; they must be the
    /// ones reserved here.
    #[test]
    fn testkit_keeps_to_its_reserved_ids() {
        assert_eq!(kernel_testkit::postgres::TEMPLATE_LOCK, TESTKIT_TEMPLATE);
        assert_eq!(kernel_testkit::postgres::OWNER_CLASS, TESTKIT_OWNER_CLASS);
    }

    /// Every advisory-lock call in the embedded SQL (up and down files) is one of the locks
    /// documented above, written with these constants: a new lock in a migration, or a
    /// constant changed here, fails this test.
    #[test]
    fn migrations_take_only_the_documented_locks() {
        let sequencer = format!("pg_advisory_xact_lock({}, {})", SEQUENCER.0, SEQUENCER.1);
        let allowed = [
            sequencer.clone(),
            format!("pg_advisory_xact_lock({})", stream_lock_sql("p_stream")),
            format!("pg_advisory_xact_lock({})", stream_lock_sql("p_streams[1]")),
            format!("pg_try_advisory_xact_lock({})", stream_lock_sql("t.s")),
            // 0006's trigger on a console INSERT: the row's stream.
            format!("pg_advisory_xact_lock({})", stream_lock_sql("NEW.stream")),
            // The sorted multi-stream form: the hash is computed in a subquery.
            "pg_advisory_xact_lock(t.h)".to_owned(),
            // kernel_tx_commit: the hash is computed in the loop header.
            "pg_advisory_xact_lock(v_hash)".to_owned(),
        ];
        let hashes = [
            stream_lock_sql("p_stream"),
            stream_lock_sql("p_streams[1]"),
            stream_lock_sql("t.s"),
            stream_lock_sql("s"),
            stream_lock_sql("NEW.stream"),
            format!("hashtextextended(t.ns || '/' || t.key, {TX_KEY_SEED})"),
        ];
        let mut seen_sequencer = false;
        for m in MIGRATIONS {
            for (file, sql) in [("up", m.up.as_ref()), ("down", m.down.as_ref())] {
                for call in calls(sql, "advisory") {
                    assert!(
                        allowed.iter().any(|a| call.starts_with(a.as_str())),
                        "{:04}_{}.{file}.sql takes an undocumented advisory lock: {call}",
                        m.version,
                        m.name
                    );
                    seen_sequencer |= call.starts_with(sequencer.as_str());
                }
                for call in calls(sql, "hashtext") {
                    assert!(
                        hashes.iter().any(|h| call.starts_with(h.as_str())),
                        "{:04}_{}.{file}.sql hashes with an undocumented seed: {call}",
                        m.version,
                        m.name
                    );
                }
            }
        }
        assert!(seen_sequencer, "the sequencer lock is in the SQL");
    }

    /// The calls in `sql` of functions whose name contains `needle`, from the function name to
    /// the end of the line (enough to hold the arguments).
    fn calls<'a>(sql: &'a str, needle: &str) -> Vec<&'a str> {
        let mut out = Vec::new();
        for line in sql.lines() {
            let code = line.split("--").next().unwrap_or_default();
            let mut rest = code;
            while let Some(i) = rest.find(needle) {
                let start = rest[..i]
                    .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(0, |j| j + 1);
                out.push(&rest[start..]);
                rest = &rest[i + needle.len()..];
            }
        }
        out
    }
}
