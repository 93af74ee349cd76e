//! The SQL of the PostgreSQL task queue: one statement per transition (or per batch), each
//! writing its own events and, where other processes should hear of it, sending one
//! `pg_notify` (its payload parameter NULL when the statement must not notify).

/// Appends the events a statement raises, in rows of up to 256 (`orch_event_batches`), from
/// a query of their `kind`, `task_id`, `core_id`, `attempt`, `data` and order `o` (from 1).
/// No events, no row.
macro_rules! insert_events {
    ($select:expr) => {
        concat!(
            "INSERT INTO orch_event_batches (n, at, kinds, task_ids, core_ids, attempts, data)
    SELECT count(*), now(), array_agg(kind ORDER BY o), array_agg(task_id ORDER BY o),
           array_agg(core_id ORDER BY o), array_agg(attempt ORDER BY o),
           jsonb_agg(data ORDER BY o)
    FROM (",
            $select,
            ") AS e
    GROUP BY (o - 1) / 256
    ORDER BY min(o)"
        )
    };
}

/// Inserts a batch in input order, skipping tasks whose idempotency key exists, and appends a
/// `task.queued` event per inserted task; returns the id and database times of each inserted
/// task (the caller has the rest). Tasks without a key take a plain insert (`ON
/// CONFLICT` costs a speculative insertion per row), and an empty lock list skips its subquery.
pub(super) const CREATE_TASKS: &str = concat!(
    "WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int8[], $5::int4[],
                         $6::timestamptz[], $7::int8[], $8::text[], $9::text[], $10::text[],
                         $11::text[])
        WITH ORDINALITY AS u(id, core_id, priority, timeout_us, max_attempts, not_before,
                             delay_us, payload, metadata, idempotency_key, locks, ord)
), rows AS (
    SELECT id, core_id, 'queued' AS status, priority, timeout_us, max_attempts, 0 AS attempt,
           greatest(now() + delay_us * interval '1 microsecond', not_before) AS run_at,
           now() AS created_at, now() AS updated_at, payload::jsonb AS payload,
           metadata::jsonb AS metadata, idempotency_key,
           CASE WHEN locks = '[]' THEN '{}'::text[]
                ELSE ARRAY(SELECT jsonb_array_elements_text(locks::jsonb)) END AS locks,
           ord
    FROM input
), keyed AS (
    INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, attempt,
                            run_at, created_at, updated_at, payload, metadata, idempotency_key,
                            locks)
    SELECT id, core_id, status, priority, timeout_us, max_attempts, attempt, run_at,
           created_at, updated_at, payload, metadata, idempotency_key, locks
    FROM rows WHERE idempotency_key IS NOT NULL ORDER BY ord
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING *
), plain AS (
    INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, attempt,
                            run_at, created_at, updated_at, payload, metadata, idempotency_key,
                            locks)
    SELECT id, core_id, status, priority, timeout_us, max_attempts, attempt, run_at,
           created_at, updated_at, payload, metadata, idempotency_key, locks
    FROM rows WHERE idempotency_key IS NULL ORDER BY ord
    RETURNING *
), ins AS (
    SELECT * FROM keyed UNION ALL SELECT * FROM plain
), ev AS (
    ",
    insert_events!(
        "SELECT 'task.queued'::text AS kind, ins.id AS task_id, ins.core_id, ins.attempt,
           'null'::jsonb AS data, row_number() OVER (ORDER BY input.ord) AS o
    FROM ins JOIN input ON input.id = ins.id"
    ),
    "
)
SELECT ins.id, ins.run_at, ins.created_at,
       (SELECT 1 FROM pg_notify('orch_changes', $12)) AS notified
FROM ins"
);

/// [`CREATE_TASKS`] for one task, with the same parameters as scalars (`$11` a text array):
/// a plainer plan, for the latency of a single dispatch.
pub(super) const CREATE_TASK: &str = "\
WITH ins AS (
    INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, attempt,
                            run_at, created_at, updated_at, payload, metadata, idempotency_key,
                            locks)
    VALUES ($1, $2, 'queued', $3, $4, $5, 0,
            greatest(now() + $7::int8 * interval '1 microsecond', $6::timestamptz), now(),
            now(), $8::text::jsonb, $9::text::jsonb, $10, $11::text[])
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, core_id, attempt, run_at, created_at
), ev AS (
    INSERT INTO orch_event_batches (n, at, kinds, task_ids, core_ids, attempts, data)
    SELECT 1, now(), ARRAY['task.queued'], ARRAY[id], ARRAY[core_id], ARRAY[attempt],
           '[null]'::jsonb
    FROM ins
)
SELECT ins.id, ins.run_at, ins.created_at,
       (SELECT 1 FROM pg_notify('orch_changes', $12)) AS notified
FROM ins";

/// Creates one task already leased for `$9` microseconds (parameters `$1`..`$8` as in
/// [`CREATE_TASK`], no delay or idempotency key), with its `task.queued` and `task.started`
/// events; returns it. Stores nothing if `not_before` (`$6`) is still ahead by the database
/// clock.
pub(super) const CREATE_CLAIMED: &str = "\
WITH ins AS (
    INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, attempt,
                            run_at, created_at, updated_at, started_at, payload, metadata,
                            locks, lease_token, lease_expires_at)
    SELECT $1, $2, 'running', $3, $4, $5, 1, greatest(now(), $6::timestamptz), now(), now(),
           now(), $7::text::jsonb, $8::text::jsonb, $9::text[], gen_random_uuid(),
           now() + $10::int8 * interval '1 microsecond'
    WHERE $6::timestamptz IS NULL OR $6::timestamptz <= now()
    RETURNING *
), ev AS (
    INSERT INTO orch_event_batches (n, at, kinds, task_ids, core_ids, attempts, data)
    SELECT 2, now(), ARRAY['task.queued', 'task.started'], ARRAY[id, id],
           ARRAY[core_id, core_id], ARRAY[0, 1], '[null, null]'::jsonb
    FROM ins
)
SELECT ins.*,
       (SELECT 1 FROM pg_notify('orch_changes', $11) WHERE $11::text IS NOT NULL) AS notified
FROM ins";

/// Leases up to `$2` available tasks of core `$1` in claim order for `$3` microseconds.
pub(super) const CLAIM_TASKS: &str = concat!(
    "WITH picked AS (
    SELECT id FROM orch_tasks
    WHERE status = 'queued' AND core_id = $1 AND run_at <= now()
    ORDER BY priority DESC, run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE orch_tasks t SET status = 'running', attempt = t.attempt + 1, started_at = now(),
        updated_at = now(), lease_token = gen_random_uuid(),
        lease_expires_at = now() + $3::int8 * interval '1 microsecond'
    FROM picked WHERE t.id = picked.id
    RETURNING t.*
), ev AS (
    ",
    insert_events!("SELECT 'task.started'::text AS kind, id AS task_id, core_id, attempt, 'null'::jsonb AS data,
           row_number() OVER (ORDER BY priority DESC, run_at, id) AS o
    FROM claimed"),
    "
)
SELECT claimed.*,
       (SELECT 1 FROM pg_notify('orch_changes', $4) WHERE $4::text IS NOT NULL) AS notified
FROM claimed ORDER BY priority DESC, run_at, id"
);

/// Ends the attempt held with lease `$2` on task `$1`. `$3` target state; `$4` retry delay;
/// `$5` 1 to give the attempt back; `$6` result; `$7` error; `$8` whether the error is the
/// timeout message; `$9` event kind; `$10` whether the event data holds the error (else it is
/// null); `$11` extra event data fields.
pub(super) const FINISH_ATTEMPT: &str = concat!(
    "WITH t AS (
    UPDATE orch_tasks SET
        status = $3::text,
        updated_at = now(),
        finished_at = CASE WHEN $3::text = 'queued' THEN finished_at ELSE now() END,
        run_at = CASE WHEN $3::text = 'queued'
                      THEN now() + $4::int8 * interval '1 microsecond' ELSE run_at END,
        attempt = greatest(attempt - $5::int4, 0),
        result = coalesce($6::text::jsonb, result),
        error = CASE WHEN $8::bool THEN 'attempt ' || attempt || ' timed out'
                     ELSE coalesce($7::text, error) END,
        lease_token = NULL,
        lease_expires_at = NULL
    WHERE id = $1 AND status = 'running' AND lease_token = $2
    RETURNING *
), ev AS (
    ",
    insert_events!(
        "SELECT $9::text AS kind, t.id AS task_id, t.core_id, t.attempt,
           CASE WHEN $10::bool THEN jsonb_build_object('error', t.error) || $11::text::jsonb
                ELSE 'null'::jsonb END AS data,
           1 AS o
    FROM t"
    ),
    "
)
SELECT t.*,
       (SELECT 1 FROM pg_notify('orch_changes', $12) WHERE $12::text IS NOT NULL) AS notified
FROM t"
);

/// [`FINISH_ATTEMPT`] for a batch, in one statement: the arrays `$1`..`$11` hold one report
/// each (the same parameters as `FINISH_ATTEMPT`, in input order). Returns one row per report,
/// in input order: the task's new state, or NULL and whether the task exists. A task reported
/// twice is finished by the first report holding its current lease, as calling
/// `FINISH_ATTEMPT` in turn would; the others lose.
pub(super) const FINISH_ATTEMPTS: &str = concat!(
    "WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::int4[],
                         $6::text[], $7::text[], $8::bool[], $9::text[], $10::bool[],
                         $11::text[])
        WITH ORDINALITY AS u(id, token, target, delay_us, undo, result, error, timed_out,
                             kind, with_error, extra, ord)
), picked AS (
    -- LATERAL with LIMIT: one primary-key probe per report. (A join let the planner hash the
    -- reports against every `running` entry of the status index, dead versions included.)
    SELECT DISTINCT ON (input.id) input.*
    FROM input CROSS JOIN LATERAL (
        SELECT 1 FROM orch_tasks t
        WHERE t.id = input.id AND t.status = 'running' AND t.lease_token = input.token
        LIMIT 1
    ) AS held
    ORDER BY input.id, input.ord
), t AS (
    UPDATE orch_tasks SET
        status = p.target,
        updated_at = now(),
        finished_at = CASE WHEN p.target = 'queued' THEN finished_at ELSE now() END,
        run_at = CASE WHEN p.target = 'queued'
                      THEN now() + p.delay_us * interval '1 microsecond' ELSE run_at END,
        attempt = greatest(attempt - p.undo, 0),
        result = coalesce(p.result::jsonb, orch_tasks.result),
        error = CASE WHEN p.timed_out THEN 'attempt ' || attempt || ' timed out'
                     ELSE coalesce(p.error, orch_tasks.error) END,
        lease_token = NULL,
        lease_expires_at = NULL
    FROM picked p
    WHERE orch_tasks.id = p.id AND orch_tasks.status = 'running'
        AND orch_tasks.lease_token = p.token
    RETURNING orch_tasks.id, orch_tasks.core_id, orch_tasks.attempt, orch_tasks.status,
              orch_tasks.error, p.ord, p.kind, p.with_error, p.extra
), ev AS (
    ",
    insert_events!(
        "SELECT t.kind, t.id AS task_id, t.core_id, t.attempt,
           CASE WHEN t.with_error THEN jsonb_build_object('error', t.error) || t.extra::jsonb
                ELSE 'null'::jsonb END AS data,
           row_number() OVER (ORDER BY t.ord) AS o
    FROM t"
    ),
    "
)
SELECT t.status AS new_status,
       t.id IS NOT NULL OR EXISTS (SELECT 1 FROM orch_tasks x WHERE x.id = input.id) AS found,
       (SELECT 1 FROM pg_notify('orch_changes', $12)
        WHERE $12::text IS NOT NULL AND EXISTS (SELECT 1 FROM t))
           AS notified
FROM input LEFT JOIN t ON t.ord = input.ord
ORDER BY input.ord"
);

/// The common case of [`FINISH_ATTEMPTS`], a batch of successes of distinct tasks (`$1` ids,
/// `$2` lease tokens, `$3` results), with a quarter less work. Returns the tasks it finished;
/// a report that did not hold its task's lease finished nothing.
pub(super) const FINISH_SUCCESSES: &str = concat!(
    "WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[])
        WITH ORDINALITY AS u(id, token, result, ord)
), t AS (
    UPDATE orch_tasks SET status = 'succeeded', updated_at = now(), finished_at = now(),
        result = input.result::jsonb, lease_token = NULL, lease_expires_at = NULL
    FROM input
    WHERE orch_tasks.id = input.id AND orch_tasks.status = 'running'
        AND orch_tasks.lease_token = input.token
    RETURNING orch_tasks.id, orch_tasks.core_id, orch_tasks.attempt, input.ord
), ev AS (
    ",
    insert_events!("SELECT 'task.succeeded'::text AS kind, id AS task_id, core_id, attempt, 'null'::jsonb AS data,
           row_number() OVER (ORDER BY ord) AS o
    FROM t"),
    "
)
SELECT t.id,
       (SELECT 1 FROM pg_notify('orch_changes', $4) WHERE $4::text IS NOT NULL) AS notified
FROM t"
);

/// Finishes task `$1` (queued or running) as `$2` with result `$3` / error `$4`, appending an
/// event of kind `$5` with `from` and the extra fields `$6`. Returns the old state, and the
/// task when the transition was legal.
pub(super) const FINISH_TASK: &str = concat!(
    "WITH old AS (
    SELECT id, status FROM orch_tasks WHERE id = $1 FOR UPDATE
), t AS (
    UPDATE orch_tasks SET status = $2::text, updated_at = now(), finished_at = now(),
        result = coalesce($3::text::jsonb, orch_tasks.result),
        error = coalesce($4::text, orch_tasks.error),
        lease_token = NULL, lease_expires_at = NULL
    FROM old WHERE orch_tasks.id = old.id AND old.status IN ('queued', 'running')
    RETURNING orch_tasks.*
), ev AS (
    ",
    insert_events!(
        "SELECT $5::text AS kind, t.id AS task_id, t.core_id, t.attempt,
           jsonb_build_object('from', old.status) || $6::text::jsonb AS data, 1 AS o
    FROM t CROSS JOIN old"
    ),
    "
)
SELECT old.status AS from_status, t.*,
       (SELECT 1 FROM pg_notify('orch_changes', $7)
        WHERE $7::text IS NOT NULL AND EXISTS (SELECT 1 FROM t)) AS notified
FROM old LEFT JOIN t ON true"
);

/// Takes back up to `$1` running tasks whose lease expired by the database clock.
pub(super) const RESCUE_EXPIRED: &str = concat!(
    "WITH picked AS (
    SELECT id, lease_expires_at AS old_expiry FROM orch_tasks
    WHERE status = 'running' AND lease_expires_at <= now()
    ORDER BY lease_expires_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), t AS (
    UPDATE orch_tasks SET
        status = CASE WHEN attempt < max_attempts THEN 'queued' ELSE 'failed' END,
        run_at = CASE WHEN attempt < max_attempts THEN now() ELSE run_at END,
        finished_at = CASE WHEN attempt < max_attempts THEN finished_at ELSE now() END,
        updated_at = now(),
        error = CASE WHEN attempt < max_attempts
                     THEN 'lease expired during attempt ' || attempt
                     ELSE 'lease expired during final attempt ' || attempt END,
        lease_token = NULL,
        lease_expires_at = NULL
    FROM picked WHERE orch_tasks.id = picked.id
    RETURNING orch_tasks.*, picked.old_expiry
), ev AS (
    ",
    insert_events!(
        "SELECT e.kind, t.id AS task_id, t.core_id, t.attempt, e.data,
           row_number() OVER (ORDER BY t.old_expiry, t.id, e.n) AS o
    FROM t CROSS JOIN LATERAL (VALUES
        (1, 'task.rescued', jsonb_build_object('will_retry', t.status = 'queued')),
        (2, 'task.failed', jsonb_build_object('error', t.error))
    ) AS e(n, kind, data)
    WHERE e.n = 1 OR t.status = 'failed'"
    ),
    "
)
SELECT t.*, (SELECT 1 FROM pg_notify('orch_changes', $2)) AS notified
FROM t ORDER BY old_expiry, id"
);
