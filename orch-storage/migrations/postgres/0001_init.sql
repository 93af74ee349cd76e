-- orch schema for PostgreSQL. Every table is prefixed `orch_` so it can live beside an
-- application's own tables (transactional dispatch). Sorted text columns use the "C" collation
-- so their order is byte order, as in the other backends.

CREATE TABLE orch_tasks (
    id               uuid        NOT NULL PRIMARY KEY,
    core_id          text        COLLATE "C" NOT NULL,
    status           text        NOT NULL CHECK (status IN
                         ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    priority         integer     NOT NULL,
    timeout_us       bigint      NOT NULL,
    max_attempts     integer     NOT NULL,
    attempt          integer     NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    lease_token      uuid,
    lease_expires_at timestamptz,
    payload          jsonb       NOT NULL,
    metadata         jsonb       NOT NULL,
    result           jsonb,
    error            text,
    idempotency_key  text        UNIQUE,
    locks            text[]      NOT NULL DEFAULT '{}'
);

-- Claim order among available tasks of a core (partial: only queued rows).
CREATE INDEX orch_tasks_claim ON orch_tasks (core_id, priority DESC, run_at, id)
    WHERE status = 'queued';
-- Rescue of expired leases.
CREATE INDEX orch_tasks_lease ON orch_tasks (lease_expires_at, id) WHERE status = 'running';
-- Pruning of finished tasks.
CREATE INDEX orch_tasks_finished ON orch_tasks (finished_at) WHERE finished_at IS NOT NULL;
-- Listing by state.
CREATE INDEX orch_tasks_status ON orch_tasks (status, id);

-- Events are inserted with `seq` NULL by the statement that makes the change (so writers never
-- serialise on the log), then numbered by passes that run one at a time (each holds the row lock
-- on orch_event_counter) and number committed, unnumbered events above the counter. A reader
-- sees only numbered events, and a pass's numbers become visible together, after every earlier
-- pass's: reading `seq > cursor` never skips an event that commits late.
CREATE TABLE orch_events (
    id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq     bigint      UNIQUE,
    kind    text        NOT NULL,
    at      timestamptz NOT NULL,
    task_id uuid,
    core_id text,
    attempt integer,
    data    jsonb       NOT NULL
);
CREATE INDEX orch_events_unnumbered ON orch_events (id) WHERE seq IS NULL;
CREATE INDEX orch_events_at ON orch_events (at);

CREATE TABLE orch_event_counter (
    id   integer PRIMARY KEY CHECK (id = 1),
    last bigint  NOT NULL
);
INSERT INTO orch_event_counter (id, last) VALUES (1, 0);

CREATE SEQUENCE orch_lock_tokens;

CREATE TABLE orch_locks (
    resource      text        COLLATE "C" NOT NULL PRIMARY KEY,
    owner         text        NOT NULL,
    fencing_token bigint      NOT NULL,
    acquired_at   timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL
);

CREATE TABLE orch_kv (
    key   text  COLLATE "C" NOT NULL PRIMARY KEY,
    value bytea NOT NULL
);
