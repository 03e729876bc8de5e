-- Operation ids (write_once / commit_once): one row per (namespace, id) applied within the
-- operation window, written in the same transaction as the write it names. fingerprint is
-- Write::fingerprint (empty for a transaction), outcome is Outcome::to_json as text (times in
-- nanoseconds there), expires_at is microseconds like every other time in the file. Rows past
-- expires_at are invisible and deleted in bounded batches through the expiry index.
CREATE TABLE kernel_operations (
    namespace    TEXT NOT NULL,
    operation_id TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (namespace, operation_id)
) WITHOUT ROWID;
CREATE INDEX kernel_operations_expiry ON kernel_operations (expires_at);
