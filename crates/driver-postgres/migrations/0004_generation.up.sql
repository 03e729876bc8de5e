-- 0004: the generation marker for data-loss detection.
--
-- One row, created by the first driver that connects and finds none (not here: a database
-- cloned or restored from this schema must not share a marker it did not make). Every running
-- driver remembers the marker it found; when the row is gone or holds another marker, the
-- database is not the one the driver was writing to (restored, replaced, truncated) and the
-- driver refuses appends, lock operations and subscriptions until an operator acknowledges.
-- See docs/postgres.md, "Data-loss detection".
CREATE TABLE kernel_generation (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    marker      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
