-- 0002: events carry their own transaction id; the pending table goes.
--
-- The functions that run on every append or pass are declared with enable_seqscan = off. Every
-- statement in them is an index probe or an index range, and a session caches the plan it made
-- when the tables were small: without it, a plan made on an empty table keeps scanning the
-- table as it grows (until autovacuum analyzes it), and one pass costs milliseconds.
--
-- 0001 recorded every append twice: its events, and a row in kernel_event_pending that the
-- sequencer deleted again. Each append paid for a second table with two indexes, and every pass
-- for the deletes. Now each event row carries the id of the transaction that wrote it (xid8),
-- indexed with its seq, and the sequencer walks that index from the last event it numbered:
-- everything at or before that event in (txid, seq) order has a position, everything after it
-- whose transaction has ended is next. An append writes only its events, and the driver writes
-- the appends that arrive together in one statement and one commit (kernel_append_batch).
-- See docs/postgres.md, "Events: global order without gaps".

-- Rows already numbered get txid 0, which the sequencer never walks again (0001 numbered them in
-- its own order, not by seq). Rows still waiting take the transaction id recorded for them,
-- which is above 0, so the first pass numbers them in the order 0001 would have.
ALTER TABLE kernel_events ADD COLUMN txid xid8 NOT NULL DEFAULT '0';
UPDATE kernel_events e SET txid = p.txid
    FROM kernel_event_pending p, unnest(p.seqs) AS s(seq)
    WHERE e.seq = s.seq;
ALTER TABLE kernel_events ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
CREATE INDEX kernel_events_txid_idx ON kernel_events (txid, seq);

DROP FUNCTION kernel_event_positions(text, uuid[]);
DROP FUNCTION kernel_append_stage(text, smallint, bigint, uuid[], text[], jsonb[], jsonb[],
                                  text[], text[]);
DROP TABLE kernel_event_pending;

-- Stages several appends in one transaction: the driver's group commit. Append i writes the
-- next p_counts[i] events of the event arrays to p_streams[i], expecting p_kinds[i] (0 any,
-- 1 no stream, 2 stream exists, 3 exactly p_expected[i]). The appends are independent: each
-- one is checked and written on its own, and one that fails its check writes nothing while the
-- others go on. One row per append, in order:
--   o_status 0: written; o_stream_version is the new version, o_seqs the events' seqs.
--   o_status 1: some id is already in the stream; nothing written; o_stored and o_seqs hold
--               the stored version and seq of every id (NULL where absent): the caller decides
--               whether that is an idempotent retry.
--   o_status 2: the stream is not at the expected version (o_stream_version); nothing written.
--   o_status 3: without p_wait only: another transaction holds the stream's lock; nothing
--               written (the driver sends it again on its own, with p_wait).
-- Appends to the same stream in one call run in order, each seeing the ones before it.
--
-- Every stream's advisory lock is taken before the first write: waiting, in one sorted order
-- (two batches over the same streams cannot deadlock), or not at all without p_wait. The
-- transaction id is assigned after them,
-- so appends to one stream get increasing transaction ids, and the sequencer, which numbers
-- by transaction id, keeps every stream's events in version order.
CREATE FUNCTION kernel_append_batch(
    p_streams text[], p_kinds smallint[], p_expected bigint[], p_counts int[], p_ids uuid[],
    p_types text[], p_payloads jsonb[], p_metadata jsonb[], p_correlation text[],
    p_causation text[], p_wait boolean)
RETURNS TABLE (o_status smallint, o_stream_version bigint, o_stored bigint[], o_seqs bigint[])
LANGUAGE plpgsql SET enable_seqscan = off AS $$
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
                    p_causation[v_from], clock_timestamp())
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
                       clock_timestamp()
                FROM unnest(p_ids[v_from:v_to], p_types[v_from:v_to], p_payloads[v_from:v_to],
                            p_metadata[v_from:v_to], p_correlation[v_from:v_to],
                            p_causation[v_from:v_to])
                     WITH ORDINALITY AS t(id, event_type, payload, metadata, correlation_id,
                                          causation_id, ord)
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


-- One append, for SQL callers (kernel_append): kernel_append_batch with a single append that
-- raises KR004 on a version mismatch. o_written is false when some id is already stored.
CREATE FUNCTION kernel_append_stage(
    p_stream text, p_expected_kind smallint, p_expected bigint, p_ids uuid[], p_types text[],
    p_payloads jsonb[], p_metadata jsonb[], p_correlation text[], p_causation text[])
RETURNS TABLE (o_written boolean, o_stream_version bigint, o_stored bigint[], o_seqs bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM kernel_append_batch(
        ARRAY[p_stream], ARRAY[p_expected_kind], ARRAY[p_expected],
        ARRAY[coalesce(array_length(p_ids, 1), 0)], p_ids, p_types, p_payloads, p_metadata,
        p_correlation, p_causation, true) AS b;
    IF r.o_status = 2 THEN
        RAISE EXCEPTION USING ERRCODE = 'KR004', MESSAGE = 'stream version mismatch',
            DETAIL = p_stream, HINT = r.o_stream_version::text;
    END IF;
    RETURN QUERY SELECT r.o_status = 0, r.o_stream_version, r.o_stored, r.o_seqs;
END
$$;

-- Where the sequencer's walk stands: the head position, and the (txid, seq) of the newest
-- numbered event. Every event at or before it in (txid, seq) order has a position; the ones
-- after it do not yet. Transaction id 0 marks the events numbered before this migration (and
-- stands for an empty log): the walk resumes after all of them.
CREATE FUNCTION kernel_sequence_cursor(OUT o_head bigint, OUT o_txid xid8, OUT o_seq bigint)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
BEGIN
    -- Two probes by primary key, not a join: a plan made while the tables were small (and
    -- cached by the session) must not turn into scans as they grow.
    SELECT l.position, l.seq INTO o_head, o_seq FROM kernel_event_log l
        ORDER BY l.position DESC LIMIT 1;
    SELECT e.txid INTO o_txid FROM kernel_events e WHERE e.seq = o_seq;
    o_head := coalesce(o_head, 0);
    IF o_txid IS NULL OR o_txid = '0' THEN
        o_txid := '0';
        o_seq := 9223372036854775807;
    END IF;
END
$$;

-- One sequencer pass: gives positions, after the highest one handed out so far, to the next
-- events in (transaction id, seq) order whose transaction is older than the oldest one still
-- running (at most 10000 per pass). Passes are serialised by an advisory lock held to commit.
-- Returns the head position after the pass, or NULL when nothing was ready to number.
CREATE OR REPLACE FUNCTION kernel_sequence()
RETURNS bigint
LANGUAGE plpgsql SET enable_seqscan = off AS $$
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

-- How many committed events have no position yet, counting at most p_limit. Near zero in a
-- healthy system; a count that grows means a long-running writing transaction holds the
-- horizon back, or no driver is running passes (SELECT kernel_sequence() runs one).
CREATE FUNCTION kernel_events_unpositioned(p_limit bigint DEFAULT 1000000)
RETURNS bigint
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_txid xid8;
    v_seq bigint;
BEGIN
    SELECT c.o_txid, c.o_seq INTO v_txid, v_seq FROM kernel_sequence_cursor() c;
    RETURN (SELECT count(*) FROM (
        SELECT 1 FROM kernel_events e WHERE (e.txid, e.seq) > (v_txid, v_seq)
        ORDER BY e.txid, e.seq LIMIT p_limit) AS t);
END
$$;

-- Runs a sequencer pass, then returns the seq and position (NULL when it has none yet) of every
-- event written by the session's last committed kernel_append_batch: the driver sends it right
-- behind the batch, in the same network round trip, so a batch that nothing older holds back
-- comes back with its positions.
CREATE FUNCTION kernel_last_append_positions()
RETURNS TABLE (o_seq bigint, o_position bigint)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_txid xid8 := nullif(current_setting('kernel.last_append', true), '')::xid8;
BEGIN
    IF v_txid IS NULL THEN
        RETURN;
    END IF;
    PERFORM kernel_sequence();
    RETURN QUERY
        SELECT e.seq, (SELECT l.position FROM kernel_event_log l WHERE l.seq = e.seq)
        FROM kernel_events e WHERE e.txid = v_txid ORDER BY e.seq;
END
$$;

-- Runs a sequencer pass, then returns the positions of the given events (by seq), in order:
-- NULL for any still waiting on an older transaction. One call serves every appender a driver
-- has waiting.
CREATE FUNCTION kernel_event_positions(p_seqs bigint[])
RETURNS bigint[]
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    v_positions bigint[];
BEGIN
    PERFORM kernel_sequence();
    -- One primary-key probe per seq, whatever the planner believes about the table's size.
    SELECT array_agg((SELECT l.position FROM kernel_event_log l WHERE l.seq = t.seq)
                     ORDER BY t.ord)
        INTO v_positions
        FROM unnest(p_seqs) WITH ORDINALITY AS t(seq, ord);
    RETURN v_positions;
END
$$;
