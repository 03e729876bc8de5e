-- Data-loss detection: one row holding the file's generation marker (`<unix ms>-<random>`).
-- A running driver remembers the marker it opened; finding it changed or gone means the file
-- was replaced or restored (see src/generation.rs). Created here for new and migrated files;
-- an opening driver re-creates it if the row was deleted.
CREATE TABLE kernel_generation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    marker     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
INSERT INTO kernel_generation (id, marker, created_at)
VALUES (
    1,
    CAST(CAST(unixepoch('subsec') * 1000 AS INTEGER) AS TEXT) || '-' || lower(hex(randomblob(16))),
    CAST(unixepoch('subsec') * 1000000 AS INTEGER)
);
