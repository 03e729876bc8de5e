-- 0009: cheaper appends. See docs/postgres.md, "Append performance".
--
-- 1. The driver's batch append (0005's kernel_append_batch with p_recorded) checks and writes a
--    batch of appends to distinct streams with a fixed number of statements instead of three
--    per append.
-- 2. The sequencer's horizon leaves out transactions of other databases of the cluster
--    (kernel_event_horizon): they cannot write this database's events, yet every one of them
--    held every new event back from its position until it ended.
--
-- 1. The batch append.
--
-- 0005 ran, per append, a head probe, an id probe and an INSERT: three statements through
-- PL/pgSQL's executor for every append, which measured about two thirds of a 16-append
-- batch's server time (the indexes and the rows are the rest). When every append of the batch
-- goes to a different stream (the common case: the writer batches appends of many callers), no
-- append can see another's rows, so the heads and the id probes of all appends are one
-- statement, the expected-version checks are array arithmetic, and the events of every append
-- that passes are one INSERT. A batch that names a stream twice runs 0005's per-append loop
-- (kept below unchanged): its appends must see each other in order.
--
-- Same signature, same results, same locks taken in the same order, so a driver built before
-- this migration keeps working against it. CREATE OR REPLACE drops SET clauses: both are
-- declared again (enable_seqscan = off, 0002; kernel.appending = 'on', 0006).
CREATE OR REPLACE FUNCTION kernel_append_batch(
    p_streams text[], p_kinds smallint[], p_expected bigint[], p_counts int[], p_ids uuid[],
    p_types text[], p_payloads jsonb[], p_metadata jsonb[], p_correlation text[],
    p_causation text[], p_recorded timestamptz[], p_wait boolean)
RETURNS TABLE (o_status smallint, o_stream_version bigint, o_stored bigint[], o_seqs bigint[])
LANGUAGE plpgsql SET enable_seqscan = off SET kernel.appending = 'on' AS $$
DECLARE
    v_n int := coalesce(cardinality(p_streams), 0);
    v_from int := 1;
    v_to int;
    v_stream text;
    v_kind smallint;
    v_cur bigint;
    v_seq bigint;
    v_busy text[];
    v_heads bigint[];
    v_hits boolean[];
    v_status smallint[];
    v_firsts int[];
    v_seqs_by bigint[];
    v_total int;
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
    -- Where each append's events start in the event arrays, checking the counts on the way.
    v_firsts := array_fill(0, ARRAY[v_n]);
    FOR i IN 1 .. v_n LOOP
        IF p_counts[i] IS NULL OR p_counts[i] < 1 THEN
            RAISE EXCEPTION USING ERRCODE = 'KR006',
                MESSAGE = 'kernel_append_batch: every append needs at least one event';
        END IF;
        v_firsts[i] := v_from;
        v_from := v_from + p_counts[i];
    END LOOP;
    v_total := v_from - 1;
    IF v_total IS DISTINCT FROM coalesce(cardinality(p_ids), 0) THEN
        RAISE EXCEPTION USING ERRCODE = 'KR006',
            MESSAGE = 'kernel_append_batch: the counts do not add up to the number of events';
    END IF;

    IF v_n > 1 AND (SELECT count(DISTINCT s) FROM unnest(p_streams) AS s) < v_n THEN
        -- A stream named twice: 0005's loop, each append seeing the ones before it.
        v_from := 1;
        FOR i IN 1 .. v_n LOOP
            v_stream := p_streams[i];
            v_kind := p_kinds[i];
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
            ELSE
                WITH ins AS (
                    INSERT INTO kernel_events
                        (stream, version, id, event_type, payload, metadata, correlation_id,
                         causation_id, recorded_at)
                    SELECT v_stream, v_cur + t.ord, t.id, t.event_type, t.payload,
                           coalesce(t.metadata, '{}'::jsonb), t.correlation_id, t.causation_id,
                           coalesce(t.recorded_at, clock_timestamp())
                    FROM unnest(p_ids[v_from:v_to], p_types[v_from:v_to],
                                p_payloads[v_from:v_to], p_metadata[v_from:v_to],
                                p_correlation[v_from:v_to], p_causation[v_from:v_to],
                                p_recorded[v_from:v_to])
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
    ELSE
        -- Every stream once. One statement for every append's head and id probe: one descent
        -- of (stream, version) per append, one of (stream, id) per event of a stream that has
        -- events (a new stream holds no ids). A busy append is probed too (harmless reads; it
        -- is reported busy below whatever they find).
        SELECT array_agg(h.cur ORDER BY a.ord), array_agg(h.cur > 0 AND EXISTS (
                   SELECT 1 FROM generate_series(v_firsts[a.ord],
                                                 v_firsts[a.ord] + p_counts[a.ord] - 1) AS j
                   CROSS JOIN LATERAL (SELECT 1 FROM kernel_events e
                                       WHERE e.stream = a.s AND e.id = p_ids[j] LIMIT 1) AS hit)
                   ORDER BY a.ord)
            INTO v_heads, v_hits
            FROM unnest(p_streams) WITH ORDINALITY AS a(s, ord)
            CROSS JOIN LATERAL (SELECT coalesce((SELECT e.version FROM kernel_events e
                                    WHERE e.stream = a.s ORDER BY e.version DESC LIMIT 1), 0)
                                AS cur) AS h;
        v_status := array_fill(0::smallint, ARRAY[v_n]);
        FOR i IN 1 .. v_n LOOP
            v_kind := p_kinds[i];
            v_cur := v_heads[i];
            IF v_busy IS NOT NULL AND p_streams[i] = ANY (v_busy) THEN
                v_status[i] := 3;
            ELSIF v_hits[i] THEN
                v_status[i] := 1;
            ELSIF NOT (v_kind = 0
                       OR (v_kind = 1 AND v_cur = 0)
                       OR (v_kind = 2 AND v_cur > 0)
                       OR (v_kind = 3 AND v_cur = p_expected[i])) THEN
                v_status[i] := 2;
            END IF;
        END LOOP;
        -- Every passing append's events in one INSERT, in batch order (seqs ascend with each
        -- stream's versions, as the sequencer's (txid, seq) walk needs). The seqs come back in
        -- batch order, then version: each written append's are the next p_counts[i] of them.
        WITH ins AS (
            INSERT INTO kernel_events
                (stream, version, id, event_type, payload, metadata, correlation_id,
                 causation_id, recorded_at)
            SELECT p_streams[a.ord], v_heads[a.ord] + (j - v_firsts[a.ord] + 1), p_ids[j],
                   p_types[j], p_payloads[j], coalesce(p_metadata[j], '{}'::jsonb),
                   p_correlation[j], p_causation[j], coalesce(p_recorded[j], clock_timestamp())
            FROM unnest(v_status) WITH ORDINALITY AS a(st, ord)
            CROSS JOIN LATERAL generate_series(v_firsts[a.ord],
                                               v_firsts[a.ord] + p_counts[a.ord] - 1) AS j
            WHERE a.st = 0
            ORDER BY j
            RETURNING seq, stream, version
        )
        SELECT array_agg(ins.seq ORDER BY array_position(p_streams, ins.stream), ins.version)
            INTO v_seqs_by FROM ins;
        v_from := 1;
        FOR i IN 1 .. v_n LOOP
            o_status := v_status[i];
            o_stored := NULL;
            o_seqs := NULL;
            IF o_status = 0 THEN
                o_stream_version := v_heads[i] + p_counts[i];
                o_seqs := v_seqs_by[v_from : v_from + p_counts[i] - 1];
                v_from := v_from + p_counts[i];
            ELSIF o_status = 3 THEN
                o_stream_version := NULL;
            ELSE
                o_stream_version := v_heads[i];
            END IF;
            IF o_status = 1 THEN
                v_to := v_firsts[i] + p_counts[i] - 1;
                SELECT array_agg(e.version ORDER BY t.ord), array_agg(e.seq ORDER BY t.ord)
                    INTO o_stored, o_seqs
                    FROM unnest(p_ids[v_firsts[i]:v_to]) WITH ORDINALITY AS t(id, ord)
                    LEFT JOIN LATERAL (SELECT e.version, e.seq FROM kernel_events e
                                       WHERE e.stream = p_streams[i] AND e.id = t.id
                                       LIMIT 1) AS e
                           ON true;
            END IF;
            RETURN NEXT;
        END LOOP;
    END IF;
    -- For kernel_last_append_positions, sent right behind this call on the same session (a
    -- session setting made in a transaction stays after its commit).
    PERFORM set_config('kernel.last_append',
                       coalesce(pg_current_xact_id_if_assigned()::text, ''), false);
END
$$;

-- 2. The sequencer's horizon.
--
-- 0002's pass numbered only events of transactions below pg_snapshot_xmin: the oldest
-- transaction still running anywhere in the cluster, since transaction ids are cluster-wide. A
-- transaction of another database cannot write this database's kernel_events, so waiting for it
-- only delays positions: on a server shared with other applications, measured, about one append
-- in three came back without its position from the pass behind its batch and waited for the
-- other database's commit (its WAL flush included). The horizon is now the oldest transaction
-- running at the snapshot that is not known to belong to another database: pg_stat_activity
-- names the database of every backend and the transaction id it runs. A transaction it does
-- not show (ended meanwhile, a prepared transaction, a backend whose row is hidden) counts as
-- this database's, which is what 0002 did for every transaction. A transaction id the view
-- shows under another database is that transaction's, for as long as it runs: a backend never
-- changes database.
--
-- Why it stays gapless: every transaction below the horizon has ended or belongs to another
-- database; of the ended ones, the statements after this call see every commit (each takes a
-- new snapshot), and a transaction that starts later gets an id at or above the snapshot's
-- xmax, which is not below the horizon. The proof of docs/postgres.md, "Events: global order
-- without gaps", reads the same with "every transaction below xmin" replaced by "every
-- transaction of this database below the horizon".
CREATE FUNCTION kernel_event_horizon()
RETURNS xid8
LANGUAGE plpgsql AS $$
DECLARE
    v_snap pg_snapshot := pg_current_snapshot();
    v_horizon xid8;
BEGIN
    IF pg_snapshot_xmin(v_snap) = pg_snapshot_xmax(v_snap) THEN
        -- Nothing running: the usual case on a quiet server, without reading the activity.
        RETURN pg_snapshot_xmax(v_snap);
    END IF;
    -- The activity a transaction reads is kept until it ends: read it afresh, so a
    -- transaction that began since the last read is known for what it is.
    PERFORM pg_stat_clear_snapshot();
    SELECT min(x) INTO v_horizon
        FROM pg_snapshot_xip(v_snap) AS x
        WHERE NOT EXISTS (
            SELECT 1 FROM pg_stat_get_activity(NULL) AS a
            WHERE a.backend_xid = xid(x)
              AND a.datid IS DISTINCT FROM (SELECT d.oid FROM pg_database d
                                            WHERE d.datname = current_database()));
    RETURN coalesce(v_horizon, pg_snapshot_xmax(v_snap));
END
$$;

-- 0002's pass with the horizon above in place of pg_snapshot_xmin. SECURITY DEFINER (0007) and
-- enable_seqscan = off (0002) are declared again: CREATE OR REPLACE resets them.
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
    v_xmin := kernel_event_horizon();
    PERFORM FROM kernel_events e
        WHERE (e.txid, e.seq) > (v_txid, v_seq) AND e.txid < v_xmin
        ORDER BY e.txid, e.seq LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(1263685452, 1);
    -- Positions can be recomputed identically from the events if this commit were lost in a
    -- crash (see docs/postgres.md), so the pass need not wait for its WAL flush while holding
    -- the sequencer lock.
    PERFORM set_config('synchronous_commit', 'off', true);
    -- Taken after the lock: every transaction of this database below the horizon has ended, so
    -- its events (if it committed) are visible to the statements below, and none of its events
    -- can appear later.
    v_xmin := kernel_event_horizon();
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
