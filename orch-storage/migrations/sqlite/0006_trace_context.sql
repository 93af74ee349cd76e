-- The W3C trace context a task carries (`traceparent`, `tracestate`), checked by orch-core
-- before it is stored; NULL for tasks dispatched without one.
ALTER TABLE orch_tasks ADD COLUMN traceparent TEXT;
ALTER TABLE orch_tasks ADD COLUMN tracestate TEXT;
