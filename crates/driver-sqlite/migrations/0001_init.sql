-- The kernel's tables on SQLite (driver-sqlite). Times are microseconds since the Unix epoch.
-- Document keys, lock keys and rate-limit keys are BLOBs of their UTF-8 bytes, so every
-- comparison and ORDER BY is byte-wise (memcmp), as on every other driver.

-- Counters the writer keeps inside its transactions (doc_stamp: the write stamp that
-- transactions validate their reads against).
CREATE TABLE kernel_meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO kernel_meta (name, value) VALUES ('doc_stamp', 0);

CREATE TABLE kernel_namespaces (
    name       TEXT PRIMARY KEY,
    metadata   TEXT NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE kernel_documents (
    namespace  TEXT NOT NULL,
    key        BLOB NOT NULL,
    value      TEXT NOT NULL,
    metadata   TEXT NOT NULL,
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER,
    stamp      INTEGER NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE INDEX kernel_documents_expiry ON kernel_documents (expires_at)
    WHERE expires_at IS NOT NULL;

-- position is the rowid: gapless, assigned by the single writer inside its transaction.
CREATE TABLE kernel_events (
    position       INTEGER PRIMARY KEY,
    stream         TEXT NOT NULL,
    category       TEXT NOT NULL,
    version        INTEGER NOT NULL,
    id             BLOB NOT NULL,
    event_type     TEXT NOT NULL,
    payload        TEXT NOT NULL,
    metadata       TEXT NOT NULL,
    correlation_id TEXT,
    causation_id   TEXT,
    recorded_at    INTEGER NOT NULL
);
CREATE UNIQUE INDEX kernel_events_stream_version ON kernel_events (stream, version);
CREATE UNIQUE INDEX kernel_events_stream_id ON kernel_events (stream, id);
CREATE INDEX kernel_events_category ON kernel_events (category, position);

CREATE TABLE kernel_snapshots (
    stream     TEXT NOT NULL,
    version    INTEGER NOT NULL,
    state      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (stream, version)
) WITHOUT ROWID;

-- One row per lock key, never deleted: `fencing` only grows, across releases, expiries and
-- restarts. `token` / `expires_at` are the current holder (NULL when free).
CREATE TABLE kernel_locks (
    key        BLOB PRIMARY KEY,
    fencing    INTEGER NOT NULL,
    token      TEXT,
    expires_at INTEGER
) WITHOUT ROWID;

-- GCRA theoretical arrival time per key; rows back at full burst are deleted lazily.
CREATE TABLE kernel_rate_limits (
    key BLOB PRIMARY KEY,
    tat INTEGER NOT NULL
) WITHOUT ROWID;
