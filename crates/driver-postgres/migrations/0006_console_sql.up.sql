-- 0006: SQL from a console (psql, a SQL editor) as a checked path. See docs/postgres.md, "SQL
-- surface".
--
-- 1. A plain INSERT INTO kernel_events (stream, event_type, payload [, id, version, metadata,
--    correlation_id, causation_id, recorded_at]) is treated like an append: it takes the
--    stream's lock, is idempotent on its id, gets (or must carry) the next version, and sends
--    'kernel_pending' so every running driver numbers it at once and its subscribers get it
--    within milliseconds (not at the next poll).
-- 2. UPDATE and DELETE of kernel_events and kernel_event_log are refused, except for the role
--    kernel_maintenance (created here when the migrating role may create roles).
-- 3. Read functions and a view for ad-hoc queries: kernel_read_stream, kernel_read_all,
--    kernel_events_view.
--
-- The driver's own appends skip the insert trigger: kernel_append_batch runs with the setting
-- kernel.appending = 'on' (a SET clause: PostgreSQL sets it on entry and restores it on exit, so
-- it holds exactly while the function runs, and not for a console INSERT later in the same
-- transaction), and the trigger's WHEN clause tests it before any function is called. The
-- batch function does every check itself already; the trigger would only repeat them. A later
-- migration that replaces kernel_append_batch (CREATE OR REPLACE drops SET clauses) must declare
-- it with SET kernel.appending = 'on' again; without it the trigger would repeat the checks on
-- every append (still correct, only slower). tests/console_sql.rs checks the driver's function.

ALTER FUNCTION kernel_append_batch(text[], smallint[], bigint[], int[], uuid[], text[], jsonb[],
    jsonb[], text[], text[], boolean) SET kernel.appending = 'on';
ALTER FUNCTION kernel_append_batch(text[], smallint[], bigint[], int[], uuid[], text[], jsonb[],
    jsonb[], text[], text[], timestamptz[], boolean) SET kernel.appending = 'on';

-- Checks and completes one row of a console INSERT. Raises, like kernel_append:
--   KR006 invalid input (stream name, type, metadata, ids),
--   KR004 an explicit version that does not follow the stream's newest (DETAIL stream, HINT
--         the stream's version),
--   KR007 the id is in the stream with other content (DETAIL stream, HINT id).
-- Returns NULL (the row is skipped: INSERT 0 0) when the same event is already stored under
-- its id: re-running a console INSERT is harmless.
CREATE FUNCTION kernel_events_checked_insert()
RETURNS trigger
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_stored record;
    v_head bigint;
    v_head_txid xid8;
    v_head_seq bigint;
BEGIN
    IF NEW.stream IS NULL OR NEW.stream !~ '^[A-Za-z0-9_.]+-[A-Za-z0-9_.-]*[A-Za-z0-9_.]$'
       OR NEW.stream LIKE '\_kernel%' OR octet_length(NEW.stream) > 128 THEN
        RAISE EXCEPTION USING ERRCODE = 'KR006',
            MESSAGE = format('stream name %s is not category-id (letters, digits, _ and ., '
                             'one - with text on both sides, at most 128 bytes, no _kernel '
                             'prefix)', coalesce(quote_literal(NEW.stream), 'NULL')),
            DETAIL = coalesce(NEW.stream, 'NULL');
    END IF;
    IF NEW.event_type IS NULL OR octet_length(NEW.event_type) NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION USING ERRCODE = 'KR006',
            MESSAGE = 'event_type must be a string of 1..256 bytes', DETAIL = NEW.stream;
    END IF;
    IF NEW.correlation_id IS NOT NULL AND octet_length(NEW.correlation_id) NOT BETWEEN 1 AND 256
       OR NEW.causation_id IS NOT NULL AND octet_length(NEW.causation_id) NOT BETWEEN 1 AND 256
    THEN
        RAISE EXCEPTION USING ERRCODE = 'KR006',
            MESSAGE = 'correlation_id and causation_id must be NULL or 1..256 bytes',
            DETAIL = NEW.stream;
    END IF;
    -- The same defaults as kernel_append: no payload is JSON null, no metadata is {}.
    NEW.payload := coalesce(NEW.payload, 'null'::jsonb);
    NEW.metadata := coalesce(NEW.metadata, '{}'::jsonb);
    IF jsonb_typeof(NEW.metadata) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = 'KR006', MESSAGE = 'metadata must be a JSON object',
            DETAIL = NEW.stream;
    END IF;
    NEW.id := coalesce(NEW.id, gen_random_uuid());
    NEW.recorded_at := coalesce(NEW.recorded_at, clock_timestamp());

    -- The stream's lock, as kernel_append_batch takes it: appends to one stream (from the
    -- driver or the console) run one at a time, so the head read below stays the head.
    PERFORM pg_advisory_xact_lock(hashtextextended(NEW.stream, 2718));

    -- Idempotency first, as for appends: an id already in the stream decides alone.
    SELECT e.version, e.event_type, e.payload, e.metadata, e.correlation_id, e.causation_id
        INTO v_stored
        FROM kernel_events e WHERE e.stream = NEW.stream AND e.id = NEW.id LIMIT 1;
    IF FOUND THEN
        IF v_stored.event_type = NEW.event_type AND v_stored.payload = NEW.payload
           AND v_stored.metadata = NEW.metadata
           AND v_stored.correlation_id IS NOT DISTINCT FROM NEW.correlation_id
           AND v_stored.causation_id IS NOT DISTINCT FROM NEW.causation_id
           AND (NEW.version IS NULL OR NEW.version = v_stored.version) THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'KR007',
            MESSAGE = format('event %s is already in stream %s (version %s) with other content',
                             NEW.id, NEW.stream, v_stored.version),
            DETAIL = NEW.stream, HINT = NEW.id::text;
    END IF;

    -- The head: one backward probe of (stream, version). Under the lock, in READ COMMITTED,
    -- this statement sees every earlier append to the stream, and the rows this INSERT wrote
    -- before this one (so a multi-row INSERT numbers 3, 4, 5).
    SELECT e.version, e.txid, e.seq INTO v_head, v_head_txid, v_head_seq FROM kernel_events e
        WHERE e.stream = NEW.stream ORDER BY e.version DESC LIMIT 1;
    v_head := coalesce(v_head, 0);
    IF NEW.version IS NULL THEN
        NEW.version := v_head + 1;
    ELSIF NEW.version <> v_head + 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'KR004',
            MESSAGE = format('stream %s is at version %s: the next event is version %s, not %s '
                             '(leave version out to append at the end)',
                             NEW.stream, v_head, v_head + 1, NEW.version),
            DETAIL = NEW.stream, HINT = v_head::text;
    END IF;

    -- Global order. The sequencer numbers events in (txid, seq) order, and keeps each stream in
    -- version order because an append takes the stream's lock *before* its transaction id is
    -- assigned. A console INSERT got its transaction id (the txid default) and seq before this
    -- trigger ran, so a driver append to the stream may have taken the lock, a newer id and
    -- committed in between: then this row would be numbered before an event of a lower
    -- version. It takes the head's txid instead, and a fresh seq: it sorts right after the
    -- head. Still safe for the sequencer, which numbers nothing at or above the oldest running
    -- transaction id: this label is not below this transaction's own id, so the row is not
    -- numbered before this transaction ends, nor can any pass have numbered past it.
    NEW.txid := pg_current_xact_id();
    IF v_head_txid IS NOT NULL AND (v_head_txid, v_head_seq) > (NEW.txid, NEW.seq) THEN
        NEW.txid := v_head_txid;
        NEW.seq := nextval(pg_get_serial_sequence('kernel_events', 'seq'));
    END IF;

    -- Delivered at commit (dropped on rollback): every running driver's listener runs a
    -- sequencer pass, which numbers the row and wakes the subscribers with 'kernel_events'.
    -- Identical notifications of one transaction are folded into one by the server.
    PERFORM pg_notify('kernel_pending', NEW.stream);
    RETURN NEW;
END
$$;

CREATE TRIGGER kernel_events_checked_insert
    BEFORE INSERT ON kernel_events
    FOR EACH ROW
    WHEN (current_setting('kernel.appending', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION kernel_events_checked_insert();

-- Append-only. Members of kernel_maintenance may UPDATE and DELETE (repairs, erasure requests),
-- everyone else gets 42501 (insufficient_privilege). Superusers are deliberately not members by
-- virtue of being superusers (pg_has_role would say they are): console sessions often run as a
-- superuser, and the guard exists to stop accidents there. A superuser takes the role
-- explicitly: SET ROLE kernel_maintenance. TRUNCATE is not covered (it needs the table owner's
-- privilege, and data-loss detection notices an emptied log).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kernel_maintenance') THEN
        BEGIN
            CREATE ROLE kernel_maintenance NOLOGIN;
        EXCEPTION
            -- Roles belong to the cluster: another database's migration made it meanwhile.
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'role kernel_maintenance not created (the migrating role lacks '
                    'CREATEROLE): UPDATE and DELETE of events stay refused to everyone until '
                    'an administrator creates it; see docs/postgres.md, "SQL surface"';
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kernel_maintenance') THEN
        GRANT SELECT, UPDATE, DELETE ON kernel_events, kernel_event_log TO kernel_maintenance;
    END IF;
END
$$;

CREATE FUNCTION kernel_append_only()
RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = current_user AND NOT r.rolsuper)
       AND EXISTS (SELECT 1 FROM pg_roles m WHERE m.rolname = 'kernel_maintenance'
                   AND pg_has_role(current_user, m.oid, 'USAGE')) THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '42501',
        MESSAGE = format('%s is append-only: %s refused', TG_TABLE_NAME, TG_OP),
        DETAIL = format('role %s is not a member of kernel_maintenance', current_user),
        HINT = 'Events are never changed or removed. For maintenance, SET ROLE '
               'kernel_maintenance (or log in as a member of it); see docs/postgres.md, '
               '"SQL surface".';
END
$$;

-- Statement triggers: one check per statement, whatever the number of rows (also for a
-- statement that matches none).
CREATE TRIGGER kernel_events_append_only
    BEFORE UPDATE OR DELETE ON kernel_events
    FOR EACH STATEMENT EXECUTE FUNCTION kernel_append_only();
CREATE TRIGGER kernel_event_log_append_only
    BEFORE UPDATE OR DELETE ON kernel_event_log
    FOR EACH STATEMENT EXECUTE FUNCTION kernel_append_only();

-- Numbered events with their global positions, for ad-hoc queries: by type, correlation id,
-- time or payload (payload @> '{...}' uses the GIN index kernel_events_payload_idx). Events
-- not numbered yet (at most moments after their commit) are not in it. No order: add
-- ORDER BY position.
CREATE VIEW kernel_events_view AS
    SELECT l.position, e.stream, e.category, e.version, e.id, e.event_type, e.payload,
           e.metadata, e.correlation_id, e.causation_id, e.recorded_at
    FROM kernel_event_log l
    JOIN kernel_events e ON e.seq = l.seq;

-- A stream's numbered events from from_version on, in version order, at most max_count (NULL:
-- all). One probe of the log per event (LATERAL ... LIMIT 1, as the driver reads).
CREATE FUNCTION kernel_read_stream(stream text, from_version bigint DEFAULT 1,
                                   max_count int DEFAULT NULL)
RETURNS SETOF kernel_events_view
LANGUAGE sql STABLE AS $$
    SELECT l.position, e.stream, e.category, e.version, e.id, e.event_type, e.payload,
           e.metadata, e.correlation_id, e.causation_id, e.recorded_at
    FROM kernel_events e
    CROSS JOIN LATERAL (SELECT l.position FROM kernel_event_log l WHERE l.seq = e.seq
                        LIMIT 1) l
    WHERE e.stream = $1 AND e.version >= coalesce($2, 1)
    ORDER BY e.version
    LIMIT $3
$$;

-- The global log after after_position, in position order, at most max_count (NULL: all),
-- optionally of one category (filtered while walking the log).
CREATE FUNCTION kernel_read_all(after_position bigint DEFAULT 0, max_count int DEFAULT 1000,
                                category text DEFAULT NULL)
RETURNS SETOF kernel_events_view
LANGUAGE sql STABLE AS $$
    SELECT l.position, e.stream, e.category, e.version, e.id, e.event_type, e.payload,
           e.metadata, e.correlation_id, e.causation_id, e.recorded_at
    FROM kernel_event_log l
    CROSS JOIN LATERAL (SELECT * FROM kernel_events e WHERE e.seq = l.seq LIMIT 1) e
    WHERE l.position > coalesce($1, 0) AND ($3 IS NULL OR e.category = $3)
    ORDER BY l.position
    LIMIT $2
$$;
