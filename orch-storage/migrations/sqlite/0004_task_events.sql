-- The log by task: a task's events (`GET /jobs/{id}/events`, an event stream of one task) are
-- read through this index instead of a scan of the log. Events of no task (security events,
-- an application's own) take no entry. An index only: nothing existing changes. (`seq` is the
-- rowid, which every entry holds: the task's entries are in sequence order.)
CREATE INDEX orch_events_task ON orch_events (task_id) WHERE task_id IS NOT NULL;
