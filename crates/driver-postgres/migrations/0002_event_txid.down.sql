-- Reverts 0002_event_txid: back to 0001's pending table. Events without a position yet are
-- recorded there again, one row per transaction, so 0001's sequencer numbers them next.

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

INSERT INTO kernel_event_pending (txid, seqs)
    SELECT e.txid, array_agg(e.seq ORDER BY e.seq)
    FROM kernel_events e
    WHERE e.txid <> '0' AND NOT EXISTS (SELECT 1 FROM kernel_event_log l WHERE l.seq = e.seq)
    GROUP BY e.txid
    ORDER BY e.txid;

DROP FUNCTION kernel_event_positions(bigint[]);
DROP FUNCTION kernel_last_append_positions();
DROP FUNCTION kernel_events_unpositioned(bigint);
DROP FUNCTION kernel_append_stage(text, smallint, bigint, uuid[], text[], jsonb[], jsonb[],
                                  text[], text[]);
DROP FUNCTION kernel_append_batch(text[], smallint[], bigint[], int[], uuid[], text[], jsonb[],
                                  jsonb[], text[], text[], boolean);

-- The functions as 0001 created them.

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
CREATE OR REPLACE FUNCTION kernel_sequence()
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
DROP FUNCTION kernel_sequence_cursor();
DROP INDEX kernel_events_txid_idx;
ALTER TABLE kernel_events DROP COLUMN txid;
