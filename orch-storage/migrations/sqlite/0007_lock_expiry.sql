-- Locks by expiry: the list of held locks (read by every monitor pass) and the reclaim of
-- expired ones read a range of this index instead of the whole table. An index only: nothing
-- existing changes.
CREATE INDEX orch_locks_expiry ON orch_locks (expires_at);
