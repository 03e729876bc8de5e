-- Reverts 0009: kernel_append_batch (the 12-argument form) runs 0005's per-append loop again,
-- with the SET clauses 0005 and 0006 gave it.
CREATE OR REPLACE FUNCTION kernel_append_batch(
    p_streams text[], p_kinds smallint[], p_expected bigint[], p_counts int[], p_ids uuid[],
    p_types text[], p_payloads jsonb[], p_metadata jsonb[], p_correlation text[],
    p_causation text[], p_recorded timestamptz[], p_wait boolean)
RETURNS TABLE (o_status smallint, o_stream_version bigint, o_stored bigint[], o_seqs bigint[])
LANGUAGE plpgsql SET enable_seqscan = off SET kernel.appending = 'on' AS $$
-- Written for the one-event append, the common case: plain expressions where they do (no query
-- to run), and one single-row INSERT for a one-event append.
DECLARE
    v_n int := coalesce(cardinality(p_streams), 0);
    v_from int := 1;
    v_to int;
    v_stream text;
    v_kind smallint;
    v_cur bigint;
    v_seq bigint;
    v_busy text[];
    i int;
BEGIN
    IF cardinality(p_kinds) IS DISTINCT FROM v_n OR cardinality(p_expected) IS DISTINCT FROM v_n
       OR cardinality(p_counts) IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION USING ERRCODE = 'KR006',
            MESSAGE = 'kernel_append_batch: one stream, kind, expected version and count per append';
    END IF;
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'KR006',
            MESSAGE = 'appends must be the first write of their transaction';
    END IF;
    IF p_wait AND v_n = 1 THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(p_streams[1], 2718));
    ELSIF p_wait THEN
        PERFORM pg_advisory_xact_lock(t.h)
            FROM (SELECT DISTINCT hashtextextended(s, 2718) AS h FROM unnest(p_streams) AS s
                  ORDER BY 1) AS t;
    ELSE
        -- Without waiting: a stream another transaction holds is left out of this batch, so
        -- one busy stream never stalls the appends to every other stream.
        SELECT array_agg(t.s) INTO v_busy
            FROM (SELECT DISTINCT s FROM unnest(p_streams) AS s) AS t
            WHERE NOT pg_try_advisory_xact_lock(hashtextextended(t.s, 2718));
    END IF;
    FOR i IN 1 .. v_n LOOP
        v_stream := p_streams[i];
        v_kind := p_kinds[i];
        IF p_counts[i] IS NULL OR p_counts[i] < 1 THEN
            RAISE EXCEPTION USING ERRCODE = 'KR006',
                MESSAGE = 'kernel_append_batch: every append needs at least one event';
        END IF;
        v_to := v_from + p_counts[i] - 1;
        IF v_busy IS NOT NULL AND v_stream = ANY (v_busy) THEN
            o_status := 3;
            o_stream_version := NULL;
            o_stored := NULL;
            o_seqs := NULL;
            RETURN NEXT;
            v_from := v_to + 1;
            CONTINUE;
        END IF;
        -- The stream's version is its highest event version: no per-stream row to update.
        -- Both probes are written so that the only sensible plan is one descent of the right
        -- unique index, (stream, version) and (stream, id); a plan that reaches them through
        -- the other index would read the whole stream on every append.
        SELECT e.version INTO v_cur FROM kernel_events e
            WHERE e.stream = v_stream ORDER BY e.version DESC LIMIT 1;
        v_cur := coalesce(v_cur, 0);
        o_stored := NULL;
        o_seqs := NULL;
        IF v_cur > 0 AND EXISTS (
               SELECT 1 FROM unnest(p_ids[v_from:v_to]) AS t(id)
               CROSS JOIN LATERAL (SELECT 1 FROM kernel_events e
                                   WHERE e.stream = v_stream AND e.id = t.id LIMIT 1) AS hit) THEN
            o_status := 1;
            o_stream_version := v_cur;
            SELECT array_agg(e.version ORDER BY t.ord), array_agg(e.seq ORDER BY t.ord)
                INTO o_stored, o_seqs
                FROM unnest(p_ids[v_from:v_to]) WITH ORDINALITY AS t(id, ord)
                LEFT JOIN LATERAL (SELECT e.version, e.seq FROM kernel_events e
                                   WHERE e.stream = v_stream AND e.id = t.id LIMIT 1) AS e
                       ON true;
        ELSIF NOT (v_kind = 0
                   OR (v_kind = 1 AND v_cur = 0)
                   OR (v_kind = 2 AND v_cur > 0)
                   OR (v_kind = 3 AND v_cur = p_expected[i])) THEN
            o_status := 2;
            o_stream_version := v_cur;
        ELSIF v_to = v_from THEN
            INSERT INTO kernel_events
                (stream, version, id, event_type, payload, metadata, correlation_id,
                 causation_id, recorded_at)
            VALUES (v_stream, v_cur + 1, p_ids[v_from], p_types[v_from], p_payloads[v_from],
                    coalesce(p_metadata[v_from], '{}'::jsonb), p_correlation[v_from],
                    p_causation[v_from], coalesce(p_recorded[v_from], clock_timestamp()))
            RETURNING seq INTO v_seq;
            o_status := 0;
            o_stream_version := v_cur + 1;
            o_seqs := ARRAY[v_seq];
        ELSE
            WITH ins AS (
                INSERT INTO kernel_events
                    (stream, version, id, event_type, payload, metadata, correlation_id,
                     causation_id, recorded_at)
                SELECT v_stream, v_cur + t.ord, t.id, t.event_type, t.payload,
                       coalesce(t.metadata, '{}'::jsonb), t.correlation_id, t.causation_id,
                       coalesce(t.recorded_at, clock_timestamp())
                FROM unnest(p_ids[v_from:v_to], p_types[v_from:v_to], p_payloads[v_from:v_to],
                            p_metadata[v_from:v_to], p_correlation[v_from:v_to],
                            p_causation[v_from:v_to], p_recorded[v_from:v_to])
                     WITH ORDINALITY AS t(id, event_type, payload, metadata, correlation_id,
                                          causation_id, recorded_at, ord)
                ORDER BY t.ord
                RETURNING seq, version
            )
            SELECT array_agg(ins.seq ORDER BY ins.version) INTO o_seqs FROM ins;
            o_status := 0;
            o_stream_version := v_cur + p_counts[i];
        END IF;
        RETURN NEXT;
        v_from := v_to + 1;
    END LOOP;
    IF v_from - 1 IS DISTINCT FROM coalesce(cardinality(p_ids), 0) THEN
        RAISE EXCEPTION USING ERRCODE = 'KR006',
            MESSAGE = 'kernel_append_batch: the counts do not add up to the number of events';
    END IF;
    -- For kernel_last_append_positions, sent right behind this call on the same session (a
    -- session setting made in a transaction stays after its commit).
    PERFORM set_config('kernel.last_append',
                       coalesce(pg_current_xact_id_if_assigned()::text, ''), false);
END
$$;

-- The pass waits for every transaction of the cluster again (0002's, with 0007's SECURITY
-- DEFINER).
CREATE OR REPLACE FUNCTION kernel_sequence()
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET enable_seqscan = off AS $$
DECLARE
    v_xmin xid8;
    v_head bigint;
    v_txid xid8;
    v_seq bigint;
    v_count bigint;
BEGIN
    -- kernel_sequence_cursor, inlined: this runs on every pass.
    SELECT l.position, l.seq INTO v_head, v_seq FROM kernel_event_log l
        ORDER BY l.position DESC LIMIT 1;
    SELECT e.txid INTO v_txid FROM kernel_events e WHERE e.seq = v_seq;
    IF v_txid IS NULL OR v_txid = '0' THEN
        v_txid := '0';
        v_seq := 9223372036854775807;
    END IF;
    -- Nothing ready to number: return without taking the lock. One index probe: the ORDER BY
    -- keeps the planner on the (txid, seq) index, where an EXISTS would scan the table.
    PERFORM FROM kernel_events e
        WHERE (e.txid, e.seq) > (v_txid, v_seq)
          AND e.txid < pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY e.txid, e.seq LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(1263685452, 1);
    -- Positions can be recomputed identically from the events if this commit were lost in a
    -- crash (see docs/postgres.md), so the pass need not wait for its WAL flush while holding
    -- the sequencer lock.
    PERFORM set_config('synchronous_commit', 'off', true);
    -- Taken after the lock: every transaction below this xmin has ended, so its events (if it
    -- committed) are visible to the statements below, and none of its events can appear later.
    v_xmin := pg_snapshot_xmin(pg_current_snapshot());
    -- Read again under the lock: the pass before ours may have moved the walk on.
    SELECT l.position, l.seq INTO v_head, v_seq FROM kernel_event_log l
        ORDER BY l.position DESC LIMIT 1;
    SELECT e.txid INTO v_txid FROM kernel_events e WHERE e.seq = v_seq;
    v_head := coalesce(v_head, 0);
    IF v_txid IS NULL OR v_txid = '0' THEN
        v_txid := '0';
        v_seq := 9223372036854775807;
    END IF;
    INSERT INTO kernel_event_log (position, seq)
        SELECT v_head + row_number() OVER (ORDER BY t.txid, t.seq), t.seq
        FROM (SELECT e.txid, e.seq FROM kernel_events e
              WHERE (e.txid, e.seq) > (v_txid, v_seq) AND e.txid < v_xmin
              ORDER BY e.txid, e.seq LIMIT 10000) AS t;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        PERFORM pg_notify('kernel_events', (v_head + v_count)::text);
    END IF;
    RETURN v_head + v_count;
END
$$;
DROP FUNCTION kernel_event_horizon();
