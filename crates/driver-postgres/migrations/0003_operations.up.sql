-- 0003: operation ids (StorageDriver::write_once, Transaction::commit_once).
--
-- One row per operation id and namespace, written in the same transaction as the write it
-- names. The driver claims the row first (INSERT ... ON CONFLICT), so a concurrent call with the
-- same id waits on it and then sees the committed record; the outcome is filled in before
-- COMMIT, so a committed row always has one (outcome is NULL only inside the claiming
-- transaction). Rows past expires_at are treated as absent and deleted in small batches.
-- See docs/postgres.md, "Operation ids".
CREATE TABLE kernel_operations (
    namespace    text COLLATE "C" NOT NULL,
    operation_id text COLLATE "C" NOT NULL,
    fingerprint  text NOT NULL,
    outcome      jsonb,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (namespace, operation_id)
);

-- Lets the purge find expired rows oldest first without a scan.
CREATE INDEX kernel_operations_expires_idx ON kernel_operations (expires_at);
