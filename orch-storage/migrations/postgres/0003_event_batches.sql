-- Events are stored in rows of up to 256: one row per statement that raises them (a claim of
-- 50 tasks writes one row holding 50 `task.started` events), instead of a row per event, which
-- took a heap tuple and two index entries each, three times per task.
--
-- Numbering works as before, a row at a time: a pass gives an unnumbered row the numbers
-- `seq ..= last_seq` (as many as it holds events) above the counter's latest value, so events
-- keep one gapless-or-gapped, never repeated, global sequence in commit-visible order. A
-- row's events share its `at` (the statement's time, which they had anyway).
CREATE TABLE orch_event_batches (
    id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    n        integer     NOT NULL CHECK (n BETWEEN 1 AND 256),
    seq      bigint,
    last_seq bigint,
    at       timestamptz NOT NULL,
    kinds    text[]      NOT NULL,
    task_ids uuid[]      NOT NULL,
    core_ids text[]      NOT NULL,
    attempts integer[]   NOT NULL,
    data     jsonb       NOT NULL,
    CHECK (cardinality(kinds) = n AND cardinality(task_ids) = n AND cardinality(core_ids) = n
           AND cardinality(attempts) = n AND jsonb_array_length(data) = n),
    CHECK ((seq IS NULL) = (last_seq IS NULL) AND (seq IS NULL OR last_seq = seq + n - 1))
);
-- A row of 256 events is about 10 KB: kept in the row (uncompressed) up to a page.
ALTER TABLE orch_event_batches SET (toast_tuple_target = 8160);
CREATE INDEX orch_event_batches_unnumbered ON orch_event_batches (id) WHERE seq IS NULL;
CREATE UNIQUE INDEX orch_event_batches_last ON orch_event_batches (last_seq)
    WHERE last_seq IS NOT NULL;
CREATE INDEX orch_event_batches_at ON orch_event_batches USING brin (at);

-- Every stored event moves, in order, to a row of its own; unnumbered ones stay unnumbered.
-- Processes of an older version still running wait here (and fail once the table is gone)
-- instead of appending or numbering events the copy would miss.
LOCK TABLE orch_event_counter, orch_events IN EXCLUSIVE MODE;
INSERT INTO orch_event_batches (n, seq, last_seq, at, kinds, task_ids, core_ids, attempts, data)
SELECT 1, seq, seq, at, ARRAY[kind], ARRAY[task_id], ARRAY[core_id], ARRAY[attempt],
       jsonb_build_array(data)
FROM orch_events ORDER BY id;
DROP TABLE orch_events;
