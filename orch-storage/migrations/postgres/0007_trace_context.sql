-- The W3C trace context a task carries (`traceparent`, `tracestate`), checked by orch-core
-- before it is stored; NULL for tasks dispatched without one. Adding nullable columns without
-- a default rewrites nothing: existing rows read NULL.
ALTER TABLE orch_tasks ADD COLUMN traceparent text, ADD COLUMN tracestate text;
