-- Locks by expiry: the list of held locks (`expires_at > now()`, read by every monitor pass),
-- the reclaim of expired ones and the forgetting of free rows a day old (`expires_at =
-- '-infinity' AND acquired_at < ...`) read ranges of this index instead of the whole table,
-- which holds a free row per resource ever locked (every webhook's replay key among them).
-- An index only: nothing existing changes.
CREATE INDEX orch_locks_expiry ON orch_locks (expires_at, acquired_at);
