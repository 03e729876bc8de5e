-- Kernel storage schema, version 1.
--
-- Every key column is COLLATE "C" so ORDER BY and range scans follow byte order, the order of
-- every other driver. Values are JSONB. Functions hold the multi-step operations so each one is
-- a single round trip and atomic; the driver calls them with bound parameters only.
--
-- Errors raised here use SQLSTATE class 'KR' (kernel): the driver maps them to its codes.
--   KR001 already exists     (DETAIL = key)
--   KR002 version conflict   (DETAIL = key, HINT = current version or '')
--   KR003 transaction lost a race: a watched key changed (DETAIL = namespace/key)
--   KR004 stream version conflict (DETAIL = stream, HINT = current version)
--   KR005 namespace not empty (DETAIL = namespace)
--   KR006 invalid input to a SQL entry point (psql clients)
--   KR007 event id reused at another place (DETAIL = stream, HINT = event id)

-- Documents -----------------------------------------------------------------------------------

CREATE TABLE kernel_namespaces (
    name        text COLLATE "C" PRIMARY KEY,
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE kernel_documents (
    namespace   text COLLATE "C" NOT NULL,
    key         text COLLATE "C" NOT NULL,
    value       jsonb NOT NULL,
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    version     bigint NOT NULL CHECK (version > 0),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    expires_at  timestamptz,
    PRIMARY KEY (namespace, key)
);

-- Lets the maintenance sweep find expired rows without a full scan.
CREATE INDEX kernel_documents_expires_idx ON kernel_documents (expires_at)
    WHERE expires_at IS NOT NULL;

-- Writes one batch of documents atomically. Arrays are parallel; p_metadata[i] NULL keeps the
-- current metadata, p_ttl_us[i] NULL means no expiry, p_cond[i] is 0 (always), 1 (only if
-- absent) or 2 (only if the live version is p_cond_version[i]).
CREATE FUNCTION kernel_put(
    p_ns text, p_keys text[], p_values jsonb[], p_metadata jsonb[], p_ttl_us bigint[],
    p_cond smallint[], p_cond_version bigint[])
RETURNS TABLE (o_key text, o_metadata jsonb, o_version bigint, o_created_at timestamptz,
               o_updated_at timestamptz, o_expires_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_cur bigint;
    v_found boolean;
    v_live boolean;
    i int;
BEGIN
    INSERT INTO kernel_namespaces (name) VALUES (p_ns) ON CONFLICT DO NOTHING;
    -- Lock the rows that exist in key order, so two batches over the same keys cannot deadlock.
    PERFORM 1 FROM kernel_documents d
        WHERE d.namespace = p_ns AND d.key = ANY (p_keys) ORDER BY d.key FOR UPDATE;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        LOOP
            SELECT d.version, (d.expires_at IS NULL OR d.expires_at > v_now)
                INTO v_cur, v_live
                FROM kernel_documents d
                WHERE d.namespace = p_ns AND d.key = p_keys[i] FOR UPDATE;
            v_found := FOUND;
            IF NOT v_found OR NOT v_live THEN
                v_cur := NULL;
            END IF;
            IF p_cond[i] = 1 AND v_cur IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'KR001', MESSAGE = 'key already exists',
                    DETAIL = p_keys[i], HINT = v_cur::text;
            ELSIF p_cond[i] = 2 AND v_cur IS DISTINCT FROM p_cond_version[i] THEN
                RAISE EXCEPTION USING ERRCODE = 'KR002', MESSAGE = 'version mismatch',
                    DETAIL = p_keys[i], HINT = coalesce(v_cur::text, '');
            END IF;
            IF v_found THEN
                UPDATE kernel_documents d SET
                    value = p_values[i],
                    metadata = coalesce(p_metadata[i],
                                        CASE WHEN v_cur IS NULL THEN '{}'::jsonb ELSE d.metadata END),
                    version = coalesce(v_cur, 0) + 1,
                    created_at = CASE WHEN v_cur IS NULL THEN v_now ELSE d.created_at END,
                    updated_at = v_now,
                    expires_at = v_now + p_ttl_us[i] * interval '1 microsecond'
                WHERE d.namespace = p_ns AND d.key = p_keys[i]
                RETURNING d.key, d.metadata, d.version, d.created_at, d.updated_at, d.expires_at
                INTO o_key, o_metadata, o_version, o_created_at, o_updated_at, o_expires_at;
                RETURN NEXT;
                EXIT;
            END IF;
            INSERT INTO kernel_documents AS d
                (namespace, key, value, metadata, version, created_at, updated_at, expires_at)
            VALUES (p_ns, p_keys[i], p_values[i], coalesce(p_metadata[i], '{}'::jsonb), 1,
                    v_now, v_now, v_now + p_ttl_us[i] * interval '1 microsecond')
            ON CONFLICT DO NOTHING
            RETURNING d.key, d.metadata, d.version, d.created_at, d.updated_at, d.expires_at
            INTO o_key, o_metadata, o_version, o_created_at, o_updated_at, o_expires_at;
            IF FOUND THEN
                RETURN NEXT;
                EXIT;
            END IF;
            -- A concurrent writer created the key after our read: read it again (a new
            -- statement sees its commit) and decide anew.
        END LOOP;
    END LOOP;
END
$$;

-- Deletes one batch atomically; p_cond_version[i] NULL deletes unconditionally. Returns how
-- many live entries went (expired rows are removed too but not counted).
CREATE FUNCTION kernel_delete(p_ns text, p_keys text[], p_cond_version bigint[])
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_cur bigint;
    v_live boolean;
    v_count bigint := 0;
    i int;
BEGIN
    PERFORM 1 FROM kernel_documents d
        WHERE d.namespace = p_ns AND d.key = ANY (p_keys) ORDER BY d.key FOR UPDATE;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        SELECT d.version, (d.expires_at IS NULL OR d.expires_at > v_now) INTO v_cur, v_live
            FROM kernel_documents d WHERE d.namespace = p_ns AND d.key = p_keys[i];
        IF NOT FOUND OR NOT v_live THEN
            v_cur := NULL;
        END IF;
        IF p_cond_version[i] IS NOT NULL AND v_cur IS DISTINCT FROM p_cond_version[i] THEN
            RAISE EXCEPTION USING ERRCODE = 'KR002', MESSAGE = 'version mismatch',
                DETAIL = p_keys[i], HINT = coalesce(v_cur::text, '');
        END IF;
        DELETE FROM kernel_documents d WHERE d.namespace = p_ns AND d.key = p_keys[i];
        IF v_cur IS NOT NULL THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END
$$;

-- Commits an optimistic transaction. For every key the transaction touched, p_seen[i] is the
-- live version it saw (NULL: absent); p_op[i] is 0 (read only), 1 (put) or 2 (delete). Puts
-- carry the final value, metadata, version and TTL computed by the client. If any touched key
-- changed since it was seen, nothing is written and KR003 is raised.
CREATE FUNCTION kernel_tx_commit(
    p_ns text[], p_keys text[], p_seen bigint[], p_op smallint[], p_values jsonb[],
    p_metadata jsonb[], p_version bigint[], p_ttl_us bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_hash bigint;
    v_cur bigint;
    v_live boolean;
    i int;
BEGIN
    -- Serialise commits that touch a common key, also for keys that do not exist yet (no row to
    -- lock). Sorted, so two commits cannot deadlock.
    FOR v_hash IN
        SELECT DISTINCT hashtextextended(t.ns || '/' || t.key, 1801)
        FROM unnest(p_ns, p_keys) AS t(ns, key) ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(v_hash);
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        SELECT d.version, (d.expires_at IS NULL OR d.expires_at > v_now) INTO v_cur, v_live
            FROM kernel_documents d
            WHERE d.namespace = p_ns[i] AND d.key = p_keys[i] FOR UPDATE;
        IF NOT FOUND OR NOT v_live THEN
            v_cur := NULL;
        END IF;
        IF v_cur IS DISTINCT FROM p_seen[i] THEN
            RAISE EXCEPTION USING ERRCODE = 'KR003',
                MESSAGE = 'a key the transaction used was changed by another writer',
                DETAIL = p_ns[i] || '/' || p_keys[i], HINT = coalesce(v_cur::text, '');
        END IF;
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        IF p_op[i] = 1 THEN
            INSERT INTO kernel_namespaces (name) VALUES (p_ns[i]) ON CONFLICT DO NOTHING;
            INSERT INTO kernel_documents AS d
                (namespace, key, value, metadata, version, created_at, updated_at, expires_at)
            VALUES (p_ns[i], p_keys[i], p_values[i], p_metadata[i], p_version[i], v_now, v_now,
                    v_now + p_ttl_us[i] * interval '1 microsecond')
            ON CONFLICT (namespace, key) DO UPDATE SET
                value = EXCLUDED.value,
                metadata = EXCLUDED.metadata,
                version = EXCLUDED.version,
                created_at = CASE WHEN EXCLUDED.version = 1 THEN EXCLUDED.created_at
                                  ELSE d.created_at END,
                updated_at = EXCLUDED.updated_at,
                expires_at = EXCLUDED.expires_at;
        ELSIF p_op[i] = 2 THEN
            DELETE FROM kernel_documents d WHERE d.namespace = p_ns[i] AND d.key = p_keys[i];
        END IF;
    END LOOP;
END
$$;

-- Drops a namespace: false if it does not exist; KR005 if it holds live entries and
-- p_recursive is false.
CREATE FUNCTION kernel_drop_namespace(p_ns text, p_recursive boolean)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM kernel_namespaces n WHERE n.name = p_ns FOR UPDATE;
    IF NOT FOUND THEN
        -- Entries without a namespace row cannot exist (every write creates it), but a stray
        -- one must not survive a drop either.
        DELETE FROM kernel_documents d WHERE d.namespace = p_ns;
        RETURN false;
    END IF;
    IF NOT p_recursive AND EXISTS (
        SELECT 1 FROM kernel_documents d
        WHERE d.namespace = p_ns AND (d.expires_at IS NULL OR d.expires_at > clock_timestamp()))
    THEN
        RAISE EXCEPTION USING ERRCODE = 'KR005', MESSAGE = 'namespace is not empty',
            DETAIL = p_ns;
    END IF;
    DELETE FROM kernel_documents d WHERE d.namespace = p_ns;
    DELETE FROM kernel_namespaces n WHERE n.name = p_ns;
    RETURN true;
END
$$;

-- Events --------------------------------------------------------------------------------------
--
-- Appenders insert events without a global position, in parallel, and record their transaction
-- id (xid8) in kernel_event_pending. The sequencer (kernel_sequence) numbers only events of
-- transactions older than the oldest running one, so no transaction can later commit an event
-- that belongs before a number already handed out: readers walking kernel_event_log by
-- position never skip anything. See docs/postgres.md.


CREATE TABLE kernel_events (
    seq             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream          text COLLATE "C" NOT NULL,
    category        text COLLATE "C" NOT NULL GENERATED ALWAYS AS (split_part(stream, '-', 1)) STORED,
    version         bigint NOT NULL CHECK (version > 0),
    id              uuid NOT NULL,
    event_type      text COLLATE "C" NOT NULL,
    payload         jsonb NOT NULL,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    correlation_id  text COLLATE "C",
    causation_id    text COLLATE "C",
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (stream, version),
    UNIQUE (stream, id)
);

CREATE INDEX kernel_events_type_idx ON kernel_events (event_type, seq);
CREATE INDEX kernel_events_correlation_idx ON kernel_events (correlation_id, seq)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX kernel_events_time_idx ON kernel_events (recorded_at);
CREATE INDEX kernel_events_payload_idx ON kernel_events USING gin (payload jsonb_path_ops);

-- The global order: position -> event. Written only by the sequencer.
CREATE TABLE kernel_event_log (
    position    bigint PRIMARY KEY CHECK (position > 0),
    seq         bigint NOT NULL UNIQUE
);

-- Committed (or in-flight) appends whose events have no position yet.
CREATE TABLE kernel_event_pending (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid        xid8 NOT NULL,
    seqs        bigint[] NOT NULL
);
CREATE INDEX kernel_event_pending_txid_idx ON kernel_event_pending (txid);
-- Every row is deleted moments after it is inserted: vacuum it often so scans stay short.
ALTER TABLE kernel_event_pending SET (autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0);

CREATE TABLE kernel_snapshots (
    stream      text COLLATE "C" PRIMARY KEY,
    version     bigint NOT NULL CHECK (version > 0),
    state       jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Stages an append: takes the stream's lock, checks idempotency and the expected version,
-- inserts the events without positions. p_expected_kind: 0 any, 1 no stream, 2 stream exists,
-- 3 exact p_expected. Returns o_written = true with the new stream version, or o_written =
-- false with the stored version of every id (NULL where absent) when some id is already in the
-- stream: the caller decides whether that is an idempotent retry. Raises KR004 on a version
-- mismatch.
--
-- The stream lock is an advisory lock taken before the first write, so the transaction id is
-- assigned after it: appends to one stream get increasing transaction ids, and the sequencer,
-- which numbers by transaction id, keeps every stream's events in version order.
CREATE FUNCTION kernel_append_stage(
    p_stream text, p_expected_kind smallint, p_expected bigint, p_ids uuid[], p_types text[],
    p_payloads jsonb[], p_metadata jsonb[], p_correlation text[], p_causation text[])
RETURNS TABLE (o_written boolean, o_stream_version bigint, o_stored bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    v_cur bigint;
    v_stored bigint[];
    v_seqs bigint[];
    v_n int := coalesce(array_length(p_ids, 1), 0);
    v_now timestamptz := clock_timestamp();
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_stream, 2718));
    -- The stream's version is its highest event version (a backward scan of the unique index);
    -- no per-stream row to update keeps an append to one insert per event plus one.
    SELECT coalesce(max(e.version), 0) INTO v_cur FROM kernel_events e WHERE e.stream = p_stream;
    SELECT array_agg(e.version ORDER BY t.ord) INTO v_stored
        FROM unnest(p_ids) WITH ORDINALITY AS t(id, ord)
        LEFT JOIN kernel_events e ON e.stream = p_stream AND e.id = t.id;
    IF EXISTS (SELECT 1 FROM unnest(v_stored) AS v WHERE v IS NOT NULL) THEN
        o_written := false;
        o_stream_version := v_cur;
        o_stored := v_stored;
        RETURN NEXT;
        RETURN;
    END IF;
    IF NOT (p_expected_kind = 0
            OR (p_expected_kind = 1 AND v_cur = 0)
            OR (p_expected_kind = 2 AND v_cur > 0)
            OR (p_expected_kind = 3 AND v_cur = p_expected)) THEN
        RAISE EXCEPTION USING ERRCODE = 'KR004', MESSAGE = 'stream version mismatch',
            DETAIL = p_stream, HINT = v_cur::text;
    END IF;
    WITH ins AS (
        INSERT INTO kernel_events
            (stream, version, id, event_type, payload, metadata, correlation_id, causation_id,
             recorded_at)
        SELECT p_stream, v_cur + t.ord, t.id, t.event_type, t.payload,
               coalesce(t.metadata, '{}'::jsonb), t.correlation_id, t.causation_id, v_now
        FROM unnest(p_ids, p_types, p_payloads, p_metadata, p_correlation, p_causation)
             WITH ORDINALITY AS t(id, event_type, payload, metadata, correlation_id,
                                  causation_id, ord)
        ORDER BY t.ord
        RETURNING seq, version
    )
    SELECT array_agg(ins.seq ORDER BY ins.version) INTO v_seqs FROM ins;
    INSERT INTO kernel_event_pending (txid, seqs) VALUES (pg_current_xact_id(), v_seqs);
    o_written := true;
    o_stream_version := v_cur + v_n;
    o_stored := NULL;
    RETURN NEXT;
END
$$;

-- One sequencer pass: gives positions to every pending event of a transaction older than the
-- oldest transaction still running, in (transaction id, append, version) order, after the
-- highest position handed out so far. Passes are serialised by an advisory lock held to commit.
-- Returns the head position after the pass (NULL when nothing was pending).
CREATE FUNCTION kernel_sequence()
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_xmin xid8;
    v_head bigint;
    v_count bigint;
BEGIN
    -- Nothing ready to number: return without taking the lock (an index range scan).
    IF NOT EXISTS (SELECT 1 FROM kernel_event_pending p
                   WHERE p.txid < pg_snapshot_xmin(pg_current_snapshot())
                   ORDER BY p.txid LIMIT 1) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(1263685452, 1);
    -- Positions can be recomputed identically from kernel_event_pending if this commit were
    -- lost in a crash (see docs/postgres.md), so the pass need not wait for its WAL flush while
    -- holding the sequencer lock.
    PERFORM set_config('synchronous_commit', 'off', true);
    -- Taken after the lock: every transaction below this xmin has finished, so its events (if
    -- it committed) are visible to the statements below, and no event of it can appear later.
    v_xmin := pg_snapshot_xmin(pg_current_snapshot());
    SELECT coalesce(max(l.position), 0) INTO v_head FROM kernel_event_log l;
    -- An ordered index scan (not a bitmap scan) marks the index entries of rows deleted by
    -- earlier passes as dead, so passes do not keep walking over them until vacuum runs.
    WITH done AS (
        DELETE FROM kernel_event_pending p WHERE p.id IN (
            SELECT q.id FROM kernel_event_pending q WHERE q.txid < v_xmin
            ORDER BY q.txid LIMIT 100000)
        RETURNING p.id, p.txid, p.seqs
    ), numbered AS (
        SELECT s.seq, row_number() OVER (ORDER BY d.txid, d.id, s.ord) AS rn
        FROM done d, unnest(d.seqs) WITH ORDINALITY AS s(seq, ord)
    )
    INSERT INTO kernel_event_log (position, seq)
        SELECT v_head + n.rn, n.seq FROM numbered n;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        PERFORM pg_notify('kernel_events', (v_head + v_count)::text);
    END IF;
    RETURN v_head + v_count;
END
$$;

-- Runs a sequencer pass if some of the events are still unpositioned, then returns their
-- positions in the order of p_ids (NULL for any still waiting on an older transaction).
CREATE FUNCTION kernel_event_positions(p_stream text, p_ids uuid[])
RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    v_positions bigint[];
BEGIN
    SELECT array_agg(l.position ORDER BY t.ord) INTO v_positions
        FROM unnest(p_ids) WITH ORDINALITY AS t(id, ord)
        LEFT JOIN kernel_events e ON e.stream = p_stream AND e.id = t.id
        LEFT JOIN kernel_event_log l ON l.seq = e.seq;
    IF EXISTS (SELECT 1 FROM unnest(v_positions) AS p WHERE p IS NULL) THEN
        PERFORM pg_advisory_xact_lock(1263685452, 1);
        -- While we waited for the lock, the pass before ours may have numbered our events:
        -- then there is nothing to write. Appenders queued on the lock so share one pass
        -- between them, the way group commit shares one WAL flush.
        SELECT array_agg(l.position ORDER BY t.ord) INTO v_positions
            FROM unnest(p_ids) WITH ORDINALITY AS t(id, ord)
            LEFT JOIN kernel_events e ON e.stream = p_stream AND e.id = t.id
            LEFT JOIN kernel_event_log l ON l.seq = e.seq;
        IF NOT EXISTS (SELECT 1 FROM unnest(v_positions) AS p WHERE p IS NULL) THEN
            RETURN v_positions;
        END IF;
        PERFORM kernel_sequence();
        SELECT array_agg(l.position ORDER BY t.ord) INTO v_positions
            FROM unnest(p_ids) WITH ORDINALITY AS t(id, ord)
            LEFT JOIN kernel_events e ON e.stream = p_stream AND e.id = t.id
            LEFT JOIN kernel_event_log l ON l.seq = e.seq;
    END IF;
    RETURN v_positions;
END
$$;

-- The SQL entry point for any client (psql, other languages): appends events with the same
-- checks as the driver. p_expected: NULL any, -1 stream exists, 0 no stream, n > 0 exact.
-- p_events: a JSON array of {"id"?, "type", "payload"?, "metadata"?, "correlation_id"?,
-- "causation_id"?}. Returns the stream version and id of every event. Re-appending the same
-- ids at the same place returns the stored versions and writes nothing.
--
-- Positions are given right after commit by the next sequencer pass: running drivers do one
-- when the 'kernel_pending' notification arrives; SELECT kernel_sequence() does one by hand.
-- It must be the first write of its transaction (so per-stream order is kept; see the docs).
CREATE FUNCTION kernel_append(p_stream text, p_expected bigint, p_events jsonb)
RETURNS TABLE (version bigint, id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    v_ids uuid[];
    v_types text[];
    v_payloads jsonb[];
    v_metadata jsonb[];
    v_correlation text[];
    v_causation text[];
    v_kind smallint;
    v_written boolean;
    v_version bigint;
    v_stored bigint[];
    v_n int;
    v_first bigint;
    i int;
BEGIN
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'KR006',
            MESSAGE = 'kernel_append must be the first write of its transaction';
    END IF;
    IF p_stream IS NULL OR p_stream !~ '^[A-Za-z0-9_.]+-[A-Za-z0-9_.-]*[A-Za-z0-9_.]$'
       OR p_stream LIKE '\_kernel%' OR octet_length(p_stream) > 128 THEN
        RAISE EXCEPTION USING ERRCODE = 'KR006', MESSAGE = 'stream name must be category-id',
            DETAIL = coalesce(p_stream, 'NULL');
    END IF;
    IF p_events IS NULL OR jsonb_typeof(p_events) <> 'array' OR jsonb_array_length(p_events) = 0
       OR jsonb_array_length(p_events) > 1000 THEN
        RAISE EXCEPTION USING ERRCODE = 'KR006',
            MESSAGE = 'events must be a JSON array of 1 to 1000 events';
    END IF;
    IF EXISTS (
        SELECT 1 FROM jsonb_array_elements(p_events) AS e(ev)
        WHERE jsonb_typeof(ev) <> 'object'
           OR jsonb_typeof(ev -> 'type') IS DISTINCT FROM 'string'
           OR octet_length(ev ->> 'type') NOT BETWEEN 1 AND 256
           OR (ev ? 'metadata' AND jsonb_typeof(ev -> 'metadata') <> 'object')
           OR (ev ? 'correlation_id' AND (jsonb_typeof(ev -> 'correlation_id') <> 'string'
               OR octet_length(ev ->> 'correlation_id') NOT BETWEEN 1 AND 256))
           OR (ev ? 'causation_id' AND (jsonb_typeof(ev -> 'causation_id') <> 'string'
               OR octet_length(ev ->> 'causation_id') NOT BETWEEN 1 AND 256))) THEN
        RAISE EXCEPTION USING ERRCODE = 'KR006',
            MESSAGE = 'every event needs a "type" string of 1..256 bytes; metadata must be an '
                      'object; correlation_id and causation_id strings of 1..256 bytes';
    END IF;
    SELECT array_agg(coalesce((ev ->> 'id')::uuid, gen_random_uuid()) ORDER BY ord),
           array_agg(ev ->> 'type' ORDER BY ord),
           array_agg(coalesce(ev -> 'payload', 'null'::jsonb) ORDER BY ord),
           array_agg(coalesce(ev -> 'metadata', '{}'::jsonb) ORDER BY ord),
           array_agg(ev ->> 'correlation_id' ORDER BY ord),
           array_agg(ev ->> 'causation_id' ORDER BY ord)
      INTO v_ids, v_types, v_payloads, v_metadata, v_correlation, v_causation
      FROM jsonb_array_elements(p_events) WITH ORDINALITY AS e(ev, ord);
    IF (SELECT count(DISTINCT x) FROM unnest(v_ids) AS x) <> array_length(v_ids, 1) THEN
        RAISE EXCEPTION USING ERRCODE = 'KR006',
            MESSAGE = 'the same event id appears twice in one append';
    END IF;
    v_kind := CASE WHEN p_expected IS NULL THEN 0 WHEN p_expected = 0 THEN 1
                   WHEN p_expected = -1 THEN 2 WHEN p_expected > 0 THEN 3 ELSE -1 END;
    IF v_kind < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'KR006',
            MESSAGE = 'expected version must be NULL, -1, 0 or positive';
    END IF;
    SELECT s.o_written, s.o_stream_version, s.o_stored INTO v_written, v_version, v_stored
        FROM kernel_append_stage(p_stream, v_kind, p_expected, v_ids, v_types, v_payloads,
                                 v_metadata, v_correlation, v_causation) AS s;
    v_n := array_length(v_ids, 1);
    IF v_written THEN
        PERFORM pg_notify('kernel_pending', p_stream);
        RETURN QUERY SELECT v_version - v_n + t.ord, t.id
            FROM unnest(v_ids) WITH ORDINALITY AS t(id, ord) ORDER BY t.ord;
        RETURN;
    END IF;
    -- Some id is stored: the same rule as kernel_core::event::check_idempotent.
    v_first := v_stored[1];
    IF v_first IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'KR007',
            MESSAGE = 'event id is already in the stream, but the append does not repeat the '
                      'events stored there', DETAIL = p_stream;
    END IF;
    IF (v_kind = 3 AND v_first <> p_expected + 1) OR (v_kind = 1 AND v_first <> 1) THEN
        RAISE EXCEPTION USING ERRCODE = 'KR007',
            MESSAGE = 'event ids are already in the stream at other places', DETAIL = p_stream,
            HINT = v_ids[1]::text;
    END IF;
    FOR i IN 1 .. v_n LOOP
        IF v_stored[i] IS DISTINCT FROM v_first + i - 1 THEN
            RAISE EXCEPTION USING ERRCODE = 'KR007',
                MESSAGE = 'event ids are already in the stream at other places',
                DETAIL = p_stream, HINT = v_ids[1]::text;
        END IF;
    END LOOP;
    RETURN QUERY SELECT v_first + t.ord - 1, t.id
        FROM unnest(v_ids) WITH ORDINALITY AS t(id, ord) ORDER BY t.ord;
END
$$;

-- Locks ---------------------------------------------------------------------------------------
--
-- One row per key, kept after release so the fencing counter never goes back.

CREATE TABLE kernel_locks (
    key         text COLLATE "C" PRIMARY KEY,
    token       text,
    fencing     bigint NOT NULL CHECK (fencing > 0),
    expires_at  timestamptz NOT NULL
);

-- Rate limits ---------------------------------------------------------------------------------

CREATE TABLE kernel_rate_limits (
    key         text COLLATE "C" PRIMARY KEY,
    tat_us      bigint NOT NULL
);

-- One GCRA step (kernel_core::rate_limit::gcra) on microseconds of clock_timestamp(), under the
-- key's row lock. Returns the decision; stores the new TAT only when allowed, and drops the row
-- once the key is back to its full burst.
CREATE FUNCTION kernel_rate_check(p_key text, p_interval_us bigint, p_period_us bigint,
                                  p_limit bigint, p_cost bigint)
RETURNS TABLE (o_allowed boolean, o_remaining bigint, o_retry_after_us bigint,
               o_reset_after_us bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
    v_tat bigint;
    v_new bigint;
    v_allow_at bigint;
    v_stored bigint;
BEGIN
    SELECT r.tat_us INTO v_tat FROM kernel_rate_limits r WHERE r.key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO kernel_rate_limits (key, tat_us) VALUES (p_key, v_now) ON CONFLICT DO NOTHING;
        SELECT r.tat_us INTO v_tat FROM kernel_rate_limits r WHERE r.key = p_key FOR UPDATE;
    END IF;
    v_tat := greatest(coalesce(v_tat, v_now), v_now);
    v_new := v_tat + p_interval_us * p_cost;
    v_allow_at := v_new - p_period_us;
    IF v_allow_at <= v_now THEN
        o_allowed := true;
        v_stored := v_new;
        o_retry_after_us := 0;
    ELSE
        o_allowed := false;
        v_stored := v_tat;
        o_retry_after_us := v_allow_at - v_now;
    END IF;
    o_remaining := least(p_limit,
        greatest(p_period_us - greatest(v_stored - v_now, 0), 0) / p_interval_us);
    o_reset_after_us := greatest(v_stored - v_now, 0);
    IF v_stored <= v_now THEN
        DELETE FROM kernel_rate_limits r WHERE r.key = p_key;
    ELSE
        UPDATE kernel_rate_limits r SET tat_us = v_stored WHERE r.key = p_key;
    END IF;
    RETURN NEXT;
END
$$;
