//! The SQL of the PostgreSQL task queue: one statement per transition (or per batch), each
//! writing its own events and, where other processes should hear of it, sending one
//! `pg_notify` (its payload parameter NULL when the statement must not notify; the statements
//! that create tasks always notify).
//!
//! The statements apply orch-core's task rules: [`APPLY_CHANGES`] takes each change's fields
//! as parameters (the caller computes them with the rules); the others, which apply one
//! fixed rule inside the database (create, claim, a batch of successes), name states and event
//! kinds through rule placeholders that [`Rendered`] fills in from the rules.

use crate::rule_sql::Rendered;

/// The claim rule applied to the tasks of a CTE `picked` (their ids), for [`CLAIM_TASKS`] and
/// [`CLAIM_TASKS_AFTER`]: leased for `$3` microseconds, with their events; returns them in
/// claim order.
macro_rules! claim_picked {
    () => {
        concat!(
            "claimed AS (
    UPDATE orch_tasks t SET status = {claim.to}, attempt = t.attempt + 1, started_at = now(),
        updated_at = now(), lease_token = gen_random_uuid(),
        lease_expires_at = now() + $3::int8 * interval '1 microsecond'
    FROM picked WHERE t.id = picked.id
    RETURNING t.*
), ev AS (
    ",
            insert_events!(
                "SELECT {claim.event}::text AS kind, id AS task_id, core_id, attempt, 'null'::jsonb AS data,
           row_number() OVER (ORDER BY priority DESC, run_at, id) AS o
    FROM claimed"
            ),
            "
)
SELECT claimed.*,
       (SELECT 1 FROM pg_notify('orch_changes', $4) WHERE $4::text IS NOT NULL) AS notified
FROM claimed ORDER BY priority DESC, run_at, id"
        )
    };
}

/// Inserts a batch in input order, skipping tasks whose idempotency key exists, and appends a
/// `task.queued` event per inserted task; returns the id and database times of each inserted
/// task (the caller has the rest). Tasks without a key take a plain insert (`ON
/// CONFLICT` costs a speculative insertion per row), and an empty lock list skips its subquery.
pub(super) static CREATE_TASKS: Rendered = Rendered::new(concat!(
    "WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int8[], $5::int4[],
                         $6::timestamptz[], $7::int8[], $8::text[], $9::text[], $10::text[],
                         $11::text[], $13::text[], $14::text[])
        WITH ORDINALITY AS u(id, core_id, priority, timeout_us, max_attempts, not_before,
                             delay_us, payload, metadata, idempotency_key, locks, traceparent,
                             tracestate, ord)
), rows AS (
    SELECT id, core_id, {created} AS status, priority, timeout_us, max_attempts, 0 AS attempt,
           greatest(now() + delay_us * interval '1 microsecond', not_before) AS run_at,
           now() AS created_at, now() AS updated_at, payload::jsonb AS payload,
           metadata::jsonb AS metadata, idempotency_key,
           CASE WHEN locks = '[]' THEN '{}'::text[]
                ELSE ARRAY(SELECT jsonb_array_elements_text(locks::jsonb)) END AS locks,
           traceparent, tracestate, ord
    FROM input
), keyed AS (
    INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, attempt,
                            run_at, created_at, updated_at, payload, metadata, idempotency_key,
                            locks, traceparent, tracestate)
    SELECT id, core_id, status, priority, timeout_us, max_attempts, attempt, run_at,
           created_at, updated_at, payload, metadata, idempotency_key, locks, traceparent,
           tracestate
    FROM rows WHERE idempotency_key IS NOT NULL ORDER BY ord
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING *
), plain AS (
    INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, attempt,
                            run_at, created_at, updated_at, payload, metadata, idempotency_key,
                            locks, traceparent, tracestate)
    SELECT id, core_id, status, priority, timeout_us, max_attempts, attempt, run_at,
           created_at, updated_at, payload, metadata, idempotency_key, locks, traceparent,
           tracestate
    FROM rows WHERE idempotency_key IS NULL ORDER BY ord
    RETURNING *
), ins AS (
    SELECT * FROM keyed UNION ALL SELECT * FROM plain
), ev AS (
    ",
    insert_events!(
        "SELECT {created.event}::text AS kind, ins.id AS task_id, ins.core_id, ins.attempt,
           'null'::jsonb AS data, row_number() OVER (ORDER BY input.ord) AS o
    FROM ins JOIN input ON input.id = ins.id"
    ),
    "
)
SELECT ins.id, ins.run_at, ins.created_at,
       (SELECT 1 FROM pg_notify('orch_changes', $12)) AS notified
FROM ins"
));

/// [`CREATE_TASKS`] for a batch in which no task has an idempotency key, so every task is
/// stored: a plain insert straight from the arrays, the events cut from the same arrays in
/// rows of 256, and one row back, the statement's time (each task's `run_at` follows from it,
/// its delay and its start time). About 1.45 times as fast per 1,000 tasks as the general
/// statement, which sorts and joins what it inserted to write the events.
///
/// `$1` holds the ids. Every other column comes as an array and a value: the array holds the
/// column's value for each task, or is empty when every task of the batch has the same one,
/// which then comes alone as the value (so a column the batch shares costs no array to
/// unnest); the value is NULL when the array is not empty. In order: engine (`$2`, `$3`),
/// priority (`$4`, `$5`), timeout in microseconds (`$6`, `$7`), most attempts (`$8`, `$9`),
/// start time (`$10`, `$11`), delay in microseconds (`$12`, `$13`), payload (`$14`, `$15`),
/// metadata (`$16`, `$17`), locks as a JSON array (`$18`, `$19`), trace context (`$20`,
/// `$21` and `$22`, `$23`); `$24` is the notification payload. Never called with no tasks.
pub(super) static CREATE_TASKS_UNKEYED: Rendered = Rendered::new(
    "\
WITH ins AS (
    INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, attempt,
                            run_at, created_at, updated_at, payload, metadata, locks,
                            traceparent, tracestate)
    SELECT id, coalesce(core_id, $3::text), {created}, coalesce(priority, $5::int4),
           coalesce(timeout_us, $7::int8), coalesce(max_attempts, $9::int4), 0,
           greatest(now() + coalesce(delay_us, $13::int8) * interval '1 microsecond',
                    coalesce(not_before, $11::timestamptz)),
           now(), now(), coalesce(payload, $15::text)::jsonb,
           coalesce(metadata, $17::text)::jsonb,
           CASE WHEN coalesce(locks, $19::text) = '[]' THEN '{}'::text[]
                ELSE ARRAY(SELECT jsonb_array_elements_text(coalesce(locks, $19::text)::jsonb))
           END,
           coalesce(traceparent, $21::text), coalesce(tracestate, $23::text)
    FROM unnest($1::uuid[], $2::text[], $4::int4[], $6::int8[], $8::int4[],
                $10::timestamptz[], $12::int8[], $14::text[], $16::text[], $18::text[],
                $20::text[], $22::text[])
        AS u(id, core_id, priority, timeout_us, max_attempts, not_before, delay_us, payload,
             metadata, locks, traceparent, tracestate)
), ev AS (
    INSERT INTO orch_event_batches (n, at, kinds, task_ids, core_ids, attempts, data)
    SELECT m, now(), array_fill({created.event}::text, ARRAY[m]), $1[lo:lo + m - 1],
           CASE WHEN cardinality($2::text[]) = 0 THEN array_fill($3::text, ARRAY[m])
                ELSE $2[lo:lo + m - 1] END,
           array_fill(0, ARRAY[m]), to_jsonb(array_fill(NULL::int, ARRAY[m]))
    FROM (SELECT g + 1 AS lo, least(256, cardinality($1::uuid[]) - g) AS m
          FROM generate_series(0, cardinality($1::uuid[]) - 1, 256) AS g) AS chunks
    ORDER BY lo
)
SELECT now() AS at, (SELECT 1 FROM pg_notify('orch_changes', $24)) AS notified",
);

/// [`CREATE_TASKS`] for one task, with the same parameters as scalars (`$11` a text array):
/// a plainer plan, for the latency of a single dispatch.
pub(super) static CREATE_TASK: Rendered = Rendered::new(
    "\
WITH ins AS (
    INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, attempt,
                            run_at, created_at, updated_at, payload, metadata, idempotency_key,
                            locks, traceparent, tracestate)
    VALUES ($1, $2, {created}, $3, $4, $5, 0,
            greatest(now() + $7::int8 * interval '1 microsecond', $6::timestamptz), now(),
            now(), $8::text::jsonb, $9::text::jsonb, $10, $11::text[], $13::text, $14::text)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, core_id, attempt, run_at, created_at
), ev AS (
    INSERT INTO orch_event_batches (n, at, kinds, task_ids, core_ids, attempts, data)
    SELECT 1, now(), ARRAY[{created.event}], ARRAY[id], ARRAY[core_id], ARRAY[attempt],
           '[null]'::jsonb
    FROM ins
)
SELECT ins.id, ins.run_at, ins.created_at,
       (SELECT 1 FROM pg_notify('orch_changes', $12)) AS notified
FROM ins",
);

/// Creates one task already leased for `$10` microseconds (as [`CREATE_TASK`] and then
/// [`CLAIM_TASKS`] would leave it; no delay or idempotency key), with both their events;
/// returns it. Stores nothing if `not_before` (`$6`) is still ahead by the database
/// clock.
pub(super) static CREATE_CLAIMED: Rendered = Rendered::new(
    "\
WITH ins AS (
    INSERT INTO orch_tasks (id, core_id, status, priority, timeout_us, max_attempts, attempt,
                            run_at, created_at, updated_at, started_at, payload, metadata,
                            locks, lease_token, lease_expires_at, traceparent, tracestate)
    SELECT $1, $2, {claim.to}, $3, $4, $5, 1, greatest(now(), $6::timestamptz), now(), now(),
           now(), $7::text::jsonb, $8::text::jsonb, $9::text[], gen_random_uuid(),
           now() + $10::int8 * interval '1 microsecond', $12::text, $13::text
    WHERE $6::timestamptz IS NULL OR $6::timestamptz <= now()
    RETURNING *
), ev AS (
    INSERT INTO orch_event_batches (n, at, kinds, task_ids, core_ids, attempts, data)
    SELECT 2, now(), ARRAY[{created.event}, {claim.event}], ARRAY[id, id],
           ARRAY[core_id, core_id], ARRAY[0, 1], '[null, null]'::jsonb
    FROM ins
)
SELECT ins.*,
       (SELECT 1 FROM pg_notify('orch_changes', $11) WHERE $11::text IS NOT NULL) AS notified
FROM ins",
);

/// Leases up to `$2` available tasks of core `$1` of priority above `$5` in claim order for
/// `$3` microseconds.
pub(super) static CLAIM_TASKS: Rendered = Rendered::new(concat!(
    "WITH picked AS (
    SELECT id FROM orch_tasks
    WHERE status = {claim.from} AND core_id = $1 AND run_at <= now() AND priority > $5::int8
    ORDER BY priority DESC, run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), ",
    claim_picked!()
));

/// [`CLAIM_TASKS`] resuming after the task it last claimed, of priority `$6`, due at `$7`,
/// id `$8`: tasks of that priority after it in claim order, then tasks of lower priorities.
/// The index walk starts past the entries of the tasks claimed before it, which stay in the
/// claim index, pointing at row versions no transaction needs, until vacuum removes them, and
/// a transaction holding an old snapshot keeps vacuum from removing them: a claim from the
/// head of the index would visit every one of them.
pub(super) static CLAIM_TASKS_AFTER: Rendered = Rendered::new(concat!(
    "WITH level AS (
    SELECT id, priority, run_at FROM orch_tasks
    WHERE status = {claim.from} AND core_id = $1 AND run_at <= now() AND priority > $5::int8
        AND priority = $6::int4 AND (run_at, id) > ($7::timestamptz, $8::uuid)
    ORDER BY run_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), lower AS (
    SELECT id, priority, run_at FROM orch_tasks
    WHERE status = {claim.from} AND core_id = $1 AND run_at <= now() AND priority > $5::int8
        AND priority < $6::int4
    ORDER BY priority DESC, run_at, id
    LIMIT greatest($2 - (SELECT count(*) FROM level), 0)
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT id FROM level UNION ALL SELECT id FROM lower
), ",
    claim_picked!()
));

/// Applies changes decided by orch-core's rules, several tasks in one statement, with what
/// the tasks it ends mean for the tasks waiting for them. The arrays hold one change each, in
/// input order: the task `$1`; the guard it must still meet (state `$2`, lease token `$3` or
/// none, attempt `$4` when not NULL, lease expired by the database clock when `$5`, marked to
/// end by a parent when `$15`, not due yet by the database clock when `$16`); the change (state `$6`, attempt step `$7`, run time `$8`
/// microseconds from now or unchanged when NULL, `finished_at` set when `$9`, result `$10` and
/// error `$11` when not NULL; the lease and any mark dropped), and its events `$12` (a JSON
/// array of `{"kind", "data"}`). `$13` is the notification payload when no task was released
/// (NULL: none), `$14` when one was. A task named twice is changed by the first entry whose
/// guard holds. Returns one row per entry, in input order: the task as changed (NULL columns
/// when its guard did not hold), whether the task exists, and on every row how many waiting
/// tasks were released (and left queued) and how many are marked to end; then, in claim
/// order, one row per released task claimed at once (`handed`): of each engine in `$17`, up
/// to its number in `$18` of the released tasks that are due, leased for `$19` microseconds
/// (by the claim rule, with its event after the release's).
///
/// Locks: every task row the statement changes (the entries and their waiting children) is
/// locked first, in ascending id order (`locked`), then workflow rows in ascending id order:
/// two statements ending different parents of shared children wait for each other in one
/// order and never deadlock. A waiting task counts its parents down (`waiting_for`) under its
/// row lock, so of two parents ending at once exactly one statement sees the count reach zero
/// and releases it. The children are found through the snapshot; a task that gained a
/// dependent after the snapshot (its `dependents` grew) fails the statement with 40001, and
/// the backend runs it again on a fresh snapshot.
///
/// Each task is first found through its primary key alone (a LATERAL probe with LIMIT 1: a
/// join let the planner hash the entries against every `running` entry of an index, dead
/// versions included).
pub(super) static APPLY_CHANGES: Rendered = Rendered::new(concat!(
    "WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::int4[], $5::bool[],
                         $6::text[], $7::int4[], $8::int8[], $9::bool[], $10::text[],
                         $11::text[], $12::text[], $15::bool[], $16::bool[])
        WITH ORDINALITY AS u(id, from_status, token, attempt, expired, to_status, step,
                             run_in_us, finished, result, error, events, doomed, not_due,
                             ord)
), probe AS (
    -- Each entry's task as the snapshot has it: whether its guard holds, and how many
    -- dependents it had.
    SELECT input.*, s.held, s.dependents AS snap_dependents
    FROM input CROSS JOIN LATERAL (
        SELECT t.dependents,
            t.status = input.from_status
            AND t.lease_token IS NOT DISTINCT FROM input.token
            AND (input.attempt IS NULL OR t.attempt = input.attempt)
            AND (NOT input.expired OR t.lease_expires_at <= now())
            AND (NOT input.doomed OR t.doom IS NOT NULL)
            AND (NOT input.not_due OR t.run_at > clock_timestamp()) AS held
        FROM orch_tasks t WHERE t.id = input.id LIMIT 1
    ) AS s
), kids AS (
    -- Probed through the index per parent (OFFSET 0 keeps the planner from turning this into a
    -- scan of every dependency row when its statistics are young).
    SELECT d.child_id AS id FROM probe CROSS JOIN LATERAL (
        SELECT child_id FROM orch_task_deps WHERE parent_id = probe.id OFFSET 0
    ) AS d
    WHERE probe.held AND probe.snap_dependents > 0
), locked AS MATERIALIZED (
    SELECT t.id, t.status, t.waiting_for, t.doom IS NULL AS clean, t.core_id, t.priority,
           t.run_at
    FROM orch_tasks t
    WHERE t.id = ANY (ARRAY(SELECT id FROM probe UNION SELECT id FROM kids))
    ORDER BY t.id
    FOR UPDATE
), picked AS (
    SELECT DISTINCT ON (p.id) p.*
    FROM probe p
    WHERE p.held AND p.id IN (SELECT id FROM locked)
    ORDER BY p.id, p.ord
), t AS (
    UPDATE orch_tasks SET
        status = p.to_status,
        updated_at = now(),
        -- Set when the change ends the task, cleared when it reopens one.
        finished_at = CASE WHEN p.finished THEN now()
                           WHEN p.from_status IN ({terminal}) THEN NULL
                           ELSE orch_tasks.finished_at END,
        run_at = CASE WHEN p.run_in_us IS NULL THEN orch_tasks.run_at
                      ELSE now() + p.run_in_us * interval '1 microsecond' END,
        attempt = greatest(orch_tasks.attempt + p.step, 0),
        -- Kept unless the change sets them, cleared when it reopens a finished task.
        result = CASE WHEN p.result IS NOT NULL THEN p.result::jsonb
                      WHEN p.from_status IN ({terminal}) THEN NULL
                      ELSE orch_tasks.result END,
        error = CASE WHEN p.error IS NOT NULL THEN p.error
                     WHEN p.from_status IN ({terminal}) THEN NULL
                     ELSE orch_tasks.error END,
        lease_token = NULL,
        lease_expires_at = NULL,
        waiting_for = CASE WHEN p.to_status = {waiting} THEN orch_tasks.waiting_for ELSE 0 END,
        doom = NULL
    FROM picked p
    -- The whole guard again: a row changed since it was picked (a renewal, a claim) is
    -- checked anew when the update waits for it, and left alone if it no longer matches.
    WHERE orch_tasks.id = p.id AND orch_tasks.status = p.from_status
        AND orch_tasks.lease_token IS NOT DISTINCT FROM p.token
        AND (p.attempt IS NULL OR orch_tasks.attempt = p.attempt)
        AND (NOT p.expired OR orch_tasks.lease_expires_at <= now())
        AND (NOT p.doomed OR orch_tasks.doom IS NOT NULL)
        -- The time of this check, not of the statement's start: a requeue that waited for
        -- another's commit sees the `run_at` it set as due.
        AND (NOT p.not_due OR orch_tasks.run_at > clock_timestamp())
    RETURNING orch_tasks.*, p.ord, p.events, p.finished AS ends,
        p.snap_dependents
), ended AS (
    SELECT id, status, dependents, workflow_id FROM t WHERE ends
), late AS (
    SELECT id FROM t WHERE ends AND dependents > snap_dependents
), edges AS (
    SELECT d.child_id, d.position, d.on_failure, e.id AS parent_id, e.status AS parent_status
    FROM ended e CROSS JOIN LATERAL (
        SELECT child_id, position, on_failure FROM orch_task_deps WHERE parent_id = e.id
        OFFSET 0
    ) AS d
    WHERE e.dependents > 0
), per_child AS (
    SELECT e.child_id,
        count(*) FILTER (WHERE e.parent_status = {success.to}
                         OR e.on_failure = {policy.run_anyway}) AS satisfied,
        (array_agg(jsonb_build_object(
             'parent', e.parent_id, 'status', e.parent_status, 'position', e.position,
             'to', CASE WHEN e.on_failure = {policy.fail} THEN {ends.fail} ELSE {ends.cancel} END)
             ORDER BY e.position)
         FILTER (WHERE e.parent_status <> {success.to}
                 AND e.on_failure <> {policy.run_anyway}))[1] AS doom
    FROM edges e GROUP BY e.child_id
), plan AS MATERIALIZED (
    -- Each waiting child's count-down (the state as locked, the newest, not as the snapshot
    -- had it), and whether it is released and claimed at once for the caller (`hand`): of
    -- each engine in `$17`, up to its number in `$18` of the released tasks that are due, in
    -- claim order.
    SELECT k.child_id, k.satisfied, k.doom, r.releases,
        r.releases AND w.n IS NOT NULL AND l.run_at <= now()
        AND row_number() OVER (
            PARTITION BY r.releases AND w.n IS NOT NULL AND l.run_at <= now(), l.core_id
            ORDER BY l.priority DESC, l.id) <= w.n AS hand
    FROM per_child k JOIN locked l ON l.id = k.child_id
    CROSS JOIN LATERAL (
        SELECT l.clean AND k.doom IS NULL AND l.waiting_for <= k.satisfied AS releases
    ) AS r
    LEFT JOIN unnest($17::text[], $18::int4[]) AS w(core_id, n) ON w.core_id = l.core_id
    WHERE l.status = {release.from} AND k.child_id NOT IN (SELECT id FROM input)
), children AS (
    UPDATE orch_tasks c SET
        waiting_for = greatest(c.waiting_for - k.satisfied, 0),
        doom = coalesce(c.doom, k.doom),
        status = CASE WHEN NOT k.releases THEN c.status
                      WHEN k.hand THEN {claim.to} ELSE {release.to} END,
        run_at = CASE WHEN k.releases THEN greatest(c.run_at, now()) ELSE c.run_at END,
        updated_at = now(),
        -- What a claim sets, for the handed tasks.
        attempt = CASE WHEN k.hand THEN c.attempt + 1 ELSE c.attempt END,
        started_at = CASE WHEN k.hand THEN now() ELSE c.started_at END,
        lease_token = CASE WHEN k.hand THEN gen_random_uuid() ELSE c.lease_token END,
        lease_expires_at = CASE WHEN k.hand THEN now() + $19::int8 * interval '1 microsecond'
                                ELSE c.lease_expires_at END
    FROM plan k
    WHERE c.id = k.child_id
    RETURNING c.*, c.doom IS NOT NULL AS doomed
), let_go AS (
    -- Released, or released and claimed (handed); numbered for their events (`n`) and in
    -- claim order (`claim_order`).
    SELECT c.*, row_number() OVER (ORDER BY c.id) AS n,
           row_number() OVER (ORDER BY c.priority DESC, c.id) AS claim_order
    FROM children c WHERE c.status IN ({release.to}, {claim.to})
), released AS (
    SELECT * FROM children WHERE status = {release.to}
), wf_delta AS (
    SELECT e.workflow_id AS id, count(*) AS ended,
           count(*) FILTER (WHERE e.status = {success.to}) AS succeeded
    FROM ended e WHERE e.workflow_id IS NOT NULL GROUP BY e.workflow_id
), wf_locked AS MATERIALIZED (
    SELECT w.id FROM orch_workflows w WHERE w.id IN (SELECT id FROM wf_delta)
    ORDER BY w.id
    FOR UPDATE
), wf AS (
    -- WorkflowStatus::of on the new counts.
    UPDATE orch_workflows w SET
        unfinished = greatest(w.unfinished - d.ended, 0),
        succeeded = w.succeeded + d.succeeded,
        status = CASE WHEN w.unfinished > d.ended THEN 'running'
                      WHEN w.succeeded + d.succeeded >= w.tasks THEN 'succeeded'
                      WHEN w.succeeded + d.succeeded = 0 THEN 'failed'
                      ELSE 'partly' END,
        finished_at = CASE WHEN w.unfinished > d.ended THEN w.finished_at ELSE now() END
    FROM wf_delta d
    WHERE w.id = d.id AND d.id IN (SELECT id FROM wf_locked)
    RETURNING w.id, w.status, w.tasks, w.succeeded, w.unfinished
), ev AS (
    ",
    insert_events!(
        "SELECT kind, task_id, core_id, attempt, data,
           row_number() OVER (ORDER BY src, k1, k2) AS o
    FROM (
        SELECT e.value ->> 'kind' AS kind, t.id AS task_id, t.core_id, t.attempt,
               e.value -> 'data' AS data, 0 AS src, t.ord AS k1, e.n AS k2
        FROM t CROSS JOIN LATERAL jsonb_array_elements(t.events::jsonb)
            WITH ORDINALITY AS e(value, n)
        UNION ALL
        SELECT {release.event}, r.id, r.core_id,
               r.attempt - CASE WHEN r.status = {claim.to} THEN 1 ELSE 0 END, 'null'::jsonb, 1,
               r.n, 0
        FROM let_go r
        UNION ALL
        SELECT {claim.event}, h.id, h.core_id, h.attempt, 'null'::jsonb, 1, h.n, 1
        FROM let_go h WHERE h.status = {claim.to}
        UNION ALL
        SELECT CASE WHEN w.status = 'succeeded' THEN {workflow.succeeded}
                    ELSE {workflow.failed} END,
               NULL::uuid, NULL::text, NULL::int4,
               jsonb_build_object('workflow_id', w.id, 'status', w.status, 'tasks', w.tasks,
                                  'succeeded', w.succeeded),
               2, row_number() OVER (ORDER BY w.id), 0
        FROM wf w WHERE w.unfinished = 0
    ) AS all_events"
    ),
    "
)
SELECT t.id, t.core_id, t.status, t.priority, t.timeout_us, t.max_attempts, t.attempt,
       t.run_at, t.created_at, t.updated_at, t.started_at, t.finished_at, t.lease_expires_at,
       t.payload, t.metadata, t.result, t.error, t.idempotency_key, t.locks, t.lease_token,
       t.workflow_id, t.waiting_for, t.traceparent, t.tracestate, t.dependents,
       t.id IS NOT NULL OR EXISTS (SELECT 1 FROM orch_tasks x WHERE x.id = input.id) AS found,
       false AS handed, input.ord,
       (SELECT count(*) FROM released) AS released,
       (SELECT count(*) FROM children WHERE doomed) AS doomed,
       (SELECT orch_raise('40001', 'a task gained a dependent while it ended')
        FROM late LIMIT 1) AS rerun,
       (SELECT 1 FROM pg_notify('orch_changes',
            CASE WHEN EXISTS (SELECT 1 FROM released) THEN $14 ELSE $13 END)
        WHERE EXISTS (SELECT 1 FROM t)
            AND ($13::text IS NOT NULL OR EXISTS (SELECT 1 FROM released)))
           AS notified
FROM input LEFT JOIN t ON t.ord = input.ord
UNION ALL
SELECT h.id, h.core_id, h.status, h.priority, h.timeout_us, h.max_attempts, h.attempt,
       h.run_at, h.created_at, h.updated_at, h.started_at, h.finished_at, h.lease_expires_at,
       h.payload, h.metadata, h.result, h.error, h.idempotency_key, h.locks, h.lease_token,
       h.workflow_id, h.waiting_for, h.traceparent, h.tracestate, h.dependents,
       true, true, h.claim_order, NULL, NULL, NULL, NULL
FROM let_go h WHERE h.status = {claim.to}
ORDER BY handed, ord"
));

/// The leases that expired by the database clock, oldest first, at most `$1`: what a rescue
/// needs of each task to apply [`rules::rescue`](orch_core::backend::rules::rescue).
pub(super) static EXPIRED_LEASES: Rendered = Rendered::new(
    "SELECT id, lease_token, attempt, max_attempts FROM orch_tasks
WHERE status = {running} AND lease_expires_at <= now()
ORDER BY lease_expires_at, id
LIMIT $1",
);

/// The common case of the end of attempts, a batch of successes of distinct tasks (`$1` ids,
/// `$2` lease tokens, `$3` results, `$5` attempts), with a quarter less work than
/// [`APPLY_CHANGES`]. Returns the tasks it finished; a report that did not hold its task's
/// lease finished nothing; when a task of the batch has dependents or belongs to a workflow,
/// the statement finishes nothing and [`APPLY_CHANGES`] ends the whole batch (in input order,
/// with what the ends mean).
pub(super) static FINISH_SUCCESSES: Rendered = Rendered::new(concat!(
    "WITH input AS (
    -- What a task this statement may finish has: no dependents, no workflow.
    SELECT u.*, 0 AS no_dependents, NULL::uuid AS no_workflow
    FROM unnest($1::uuid[], $2::uuid[], $3::text[], $5::int4[])
        WITH ORDINALITY AS u(id, token, result, attempt, ord)
), mixed AS (
    -- One primary-key probe per report, stopping at the first task that has dependents or
    -- a workflow.
    SELECT 1 FROM input CROSS JOIN LATERAL (
        SELECT 1 FROM orch_tasks m
        WHERE m.id = input.id AND (m.dependents > 0 OR m.workflow_id IS NOT NULL)
        LIMIT 1
    ) AS found
    LIMIT 1
), t AS (
    UPDATE orch_tasks SET status = {success.to}, updated_at = now(), finished_at = now(),
        result = input.result::jsonb, lease_token = NULL, lease_expires_at = NULL
    FROM input
    WHERE orch_tasks.id = input.id AND orch_tasks.status = {success.from}
        AND orch_tasks.lease_token = input.token AND orch_tasks.attempt = input.attempt
        -- Checked again on the newest version of the row (a dependent added since the
        -- snapshot), as a join condition: a condition on the table alone made the planner
        -- expect one row and scan the whole table.
        AND orch_tasks.dependents = input.no_dependents
        AND orch_tasks.workflow_id IS NOT DISTINCT FROM input.no_workflow
        AND NOT EXISTS (SELECT 1 FROM mixed)
    RETURNING orch_tasks.id, orch_tasks.core_id, orch_tasks.attempt, input.ord
), ev AS (
    ",
    insert_events!("SELECT {success.event}::text AS kind, id AS task_id, core_id, attempt, 'null'::jsonb AS data,
           row_number() OVER (ORDER BY ord) AS o
    FROM t"),
    "
)
SELECT t.id,
       (SELECT 1 FROM pg_notify('orch_changes', $4) WHERE $4::text IS NOT NULL) AS notified
FROM t"
));
