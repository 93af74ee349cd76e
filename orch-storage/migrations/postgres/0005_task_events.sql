-- The log by task: a task's events (`GET /jobs/{id}/events`, an event stream of one task) are
-- found through the rows that hold them, by this index over each row's task ids, instead of a
-- scan of the log. A task's events are spread over a few rows (its creation, each claim, each
-- outcome), each shared with other tasks of the same statement: an index entry per (task, row).
--
-- Partial on numbered rows: a row enters the index once, when a numbering pass gives it its
-- numbers (the insert of an unnumbered row, on the transitions' path, adds nothing to it), and
-- readers only ever read numbered rows. The numbering itself is unchanged: the same passes, the
-- same counter. Without the pending list (`fastupdate = off`) a reader never scans unmerged
-- entries, and with time-ordered task ids the entries land near each other; measured here, a
-- numbering pass costs about 2 µs more per event. An index only: nothing existing changes.
CREATE INDEX orch_event_batches_tasks ON orch_event_batches USING gin (task_ids)
    WITH (fastupdate = off) WHERE seq IS NOT NULL;
