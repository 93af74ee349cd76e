//! The backend conformance suite (feature `test-util`): every behavioural check a backend must
//! pass, as one public entry point that any backend crate calls from its tests.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::sync::Arc;
//! use orch_core::{conformance, MemoryBackend, SharedBackend};
//!
//! conformance::assert_conformance("memory", || async {
//!     Arc::new(MemoryBackend::new()) as SharedBackend
//! })
//! .await;
//! # }
//! ```
//!
//! Each check gets a fresh backend from the factory. Checks that need time to pass (lease and
//! lock expiry, delayed tasks) use short durations and `tokio::time::sleep`, so they run on
//! tokio's paused clock for the memory backend and in real time (a few hundred milliseconds)
//! for database backends, whose clocks cannot be paused.

mod model;

pub use model::assert_model_conformance;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::json;

use crate::backend::SharedBackend;
use crate::clock;
use crate::error::Error;
use crate::model::{
    AttemptOutcome, AttemptReport, Claimed, EventKind, FencingToken, HeldLease, LeaseToken,
    LockAttempt, LockRequest, LockTurn, LockWaiter, LockWaiterId, NewEvent, NewLockWaiter, NewTask,
    QueueDepth, Resolution, Task, TaskFilter, TaskId, TaskSpec, TaskStatus,
};

type CheckResult = Result<(), String>;
type CheckFn = fn(SharedBackend) -> Pin<Box<dyn Future<Output = CheckResult> + Send>>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

macro_rules! ok {
    ($expr:expr) => {
        $expr.map_err(|e| format!("{} failed: {e}", stringify!($expr)))?
    };
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        /// The names of every check, in the order they run.
        pub const CHECKS: &[&str] = &[$(stringify!($name)),*];
        fn all_checks() -> Vec<(&'static str, CheckFn)> {
            vec![$((stringify!($name), (|b| Box::pin($name(b))) as CheckFn)),*]
        }
    };
}

checks!(
    create_and_get,
    idempotency_key_returns_first_task,
    claim_order_priority_then_fifo,
    claim_skips_tasks_not_yet_due,
    claim_is_per_core_and_bounded,
    claim_leases_and_logs,
    leases_are_distinct_and_next_run_at_is_the_earliest,
    nul_characters_are_stored,
    finish_succeeded,
    finish_attempts_in_one_call,
    finish_attempts_duplicates_and_unknowns,
    finish_attempts_successes_with_stale_and_unknown,
    stale_token_is_refused,
    retry_requeues_with_delay,
    final_failure_and_timeout,
    abandon_gives_attempt_back,
    cancel_queued_and_running,
    resolve_without_lease,
    renew_leases_checks_token,
    rescue_expired_leases,
    unknown_task_errors,
    list_filters_and_pages,
    events_are_ordered_and_replayable,
    concurrent_claims_never_overlap,
    lock_grant_release_and_fencing,
    lock_expiry_and_extend,
    storage_provider_kv,
    prune_finished_tasks,
    queue_depth_counts_queued,
    lock_queue_serves_by_rank,
    lock_queue_expired_waiter_does_not_block,
    lock_queue_leaving_unblocks,
    lock_queue_is_not_overtaken_without_an_entry,
    lock_queue_keeps_fencing_increasing,
);

/// What [`run_conformance`] found.
#[derive(Debug, Clone, Default)]
pub struct ConformanceReport {
    /// Checks that passed.
    pub passed: Vec<&'static str>,
    /// Checks that failed, with why.
    pub failed: Vec<(&'static str, String)>,
}

/// Runs every check against fresh backends from `factory` and reports.
pub async fn run_conformance<F, Fut>(factory: F) -> ConformanceReport
where
    F: Fn() -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    let mut report = ConformanceReport::default();
    for (name, check) in all_checks() {
        let backend = factory().await;
        let outcome = tokio::time::timeout(Duration::from_secs(60), check(backend)).await;
        match outcome {
            Ok(Ok(())) => report.passed.push(name),
            Ok(Err(why)) => report.failed.push((name, why)),
            Err(_) => report
                .failed
                .push((name, "did not finish within 60 s".to_owned())),
        }
    }
    report
}

/// Runs every check and panics (failing the calling test) with the list of failures. Prints one
/// line per check naming the backend.
pub async fn assert_conformance<F, Fut>(backend_name: &str, factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    let report = run_conformance(factory).await;
    for name in &report.passed {
        println!("conformance[{backend_name}] {name} ... ok");
    }
    for (name, why) in &report.failed {
        println!("conformance[{backend_name}] {name} ... FAILED: {why}");
    }
    println!(
        "conformance[{backend_name}]: {} passed, {} failed",
        report.passed.len(),
        report.failed.len()
    );
    if !report.failed.is_empty() {
        let list: Vec<String> = report
            .failed
            .iter()
            .map(|(name, why)| format!("  {name}: {why}"))
            .collect();
        panic!(
            "backend {backend_name:?} fails {} conformance check(s):\n{}",
            report.failed.len(),
            list.join("\n")
        );
    }
}

fn new_task(spec: TaskSpec) -> NewTask {
    spec.into_new_task().expect("conformance specs are valid")
}

async fn create(b: &SharedBackend, spec: TaskSpec) -> Result<crate::model::Task, String> {
    let mut created = ok!(b.create_tasks(vec![new_task(spec)]).await);
    created
        .pop()
        .map(|c| c.task)
        .ok_or_else(|| "create_tasks returned nothing".to_owned())
}

async fn claim_one(
    b: &SharedBackend,
    core: &str,
    lease: Duration,
) -> Result<crate::model::Claimed, String> {
    let mut claimed = ok!(b.claim_tasks(core, 1, lease).await);
    claimed
        .pop()
        .ok_or_else(|| format!("nothing to claim on core {core}"))
}

async fn events_of(b: &SharedBackend, id: TaskId) -> Result<Vec<EventKind>, String> {
    let mut kinds = Vec::new();
    let mut after = 0;
    loop {
        let batch = ok!(b.read_events(after, 1000).await);
        let Some(last) = batch.last().map(|e| e.seq) else {
            break;
        };
        after = last;
        kinds.extend(
            batch
                .into_iter()
                .filter(|e| e.task_id == Some(id))
                .map(|e| e.kind),
        );
    }
    Ok(kinds)
}

const LEASE: Duration = Duration::from_secs(30);

/// The report of `c`'s attempt ending with `outcome`.
fn report(c: &Claimed, outcome: AttemptOutcome) -> AttemptReport {
    AttemptReport {
        task_id: c.task.id,
        lease_token: c.lease_token,
        attempt: c.task.attempt,
        outcome,
    }
}

/// The lease `c` holds.
fn held(c: &Claimed) -> HeldLease {
    HeldLease {
        task_id: c.task.id,
        lease_token: c.lease_token,
    }
}

/// Ends `c`'s attempt with `outcome` and returns the task as it is now.
async fn finish(b: &SharedBackend, c: &Claimed, outcome: AttemptOutcome) -> crate::Result<Task> {
    finish_report(b, report(c, outcome)).await
}

/// Records one report and returns the task as it is now.
async fn finish_report(b: &SharedBackend, report: AttemptReport) -> crate::Result<Task> {
    let id = report.task_id;
    b.finish_attempts(vec![report])
        .await?
        .pop()
        .ok_or_else(|| Error::backend("finish_attempts", "returned no answer"))??;
    b.get_task(id).await?.ok_or(Error::TaskNotFound(id))
}

async fn create_and_get(b: SharedBackend) -> CheckResult {
    let spec = TaskSpec::new("core-a")
        .priority(7)
        .timeout(Duration::from_secs(12))
        .max_attempts(4)
        .payload(json!({"x": 1}))
        .metadata(json!({"source": "test"}))
        .lock("r2")
        .lock("r1");
    let task = create(&b, spec).await?;
    let got = ok!(b.get_task(task.id).await).ok_or("created task not found")?;
    ensure!(
        got == task,
        "get_task differs from created: {got:?} vs {task:?}"
    );
    ensure!(got.status == TaskStatus::Queued, "status {}", got.status);
    ensure!(got.attempt == 0, "attempt {}", got.attempt);
    ensure!(
        got.priority == 7 && got.max_attempts == 4,
        "fields not kept: {got:?}"
    );
    ensure!(
        got.timeout == Duration::from_secs(12),
        "timeout {:?}",
        got.timeout
    );
    ensure!(got.payload == json!({"x": 1}), "payload {}", got.payload);
    ensure!(
        got.metadata == json!({"source": "test"}),
        "metadata {}",
        got.metadata
    );
    ensure!(got.locks == ["r1", "r2"], "locks {:?}", got.locks);
    ensure!(
        events_of(&b, task.id).await? == [EventKind::TaskQueued],
        "expected one task.queued event"
    );
    Ok(())
}

async fn idempotency_key_returns_first_task(b: SharedBackend) -> CheckResult {
    let first = create(&b, TaskSpec::new("c").idempotency_key("k1")).await?;
    let batch = ok!(b
        .create_tasks(vec![
            new_task(TaskSpec::new("c").idempotency_key("k1").priority(9)),
            new_task(TaskSpec::new("c").idempotency_key("k2")),
            new_task(TaskSpec::new("c").idempotency_key("k2")),
        ])
        .await);
    ensure!(batch.len() == 3, "expected 3 results, got {}", batch.len());
    ensure!(
        !batch[0].created && batch[0].task.id == first.id,
        "k1 should return the first task"
    );
    ensure!(
        batch[0].task.priority == 1,
        "the first task must be unchanged"
    );
    ensure!(batch[1].created, "k2 first use should create");
    ensure!(
        !batch[2].created && batch[2].task.id == batch[1].task.id,
        "k2 repeated within a batch should return the task created earlier in the batch"
    );
    let all = ok!(b.list_tasks(TaskFilter::default()).await);
    ensure!(
        all.len() == 2,
        "expected 2 stored tasks, found {}",
        all.len()
    );
    Ok(())
}

async fn claim_order_priority_then_fifo(b: SharedBackend) -> CheckResult {
    let mut ids = Vec::new();
    for priority in [1, 5, 3, 5, 1] {
        ids.push(create(&b, TaskSpec::new("c").priority(priority)).await?.id);
        // Distinct creation instants, so FIFO is observable on coarse clocks too.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let expected = [ids[1], ids[3], ids[2], ids[0], ids[4]];
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(claim_one(&b, "c", LEASE).await?.task.id);
    }
    ensure!(
        got == expected,
        "claim order {got:?}, expected {expected:?}"
    );
    ensure!(
        ok!(b.claim_tasks("c", 10, LEASE).await).is_empty(),
        "queue should be empty"
    );
    Ok(())
}

async fn claim_skips_tasks_not_yet_due(b: SharedBackend) -> CheckResult {
    let later = create(
        &b,
        TaskSpec::new("c")
            .priority(10)
            .delay(Duration::from_secs(3600)),
    )
    .await?;
    let at = create(
        &b,
        TaskSpec::new("c").run_at(clock::now() + chrono::TimeDelta::hours(2)),
    )
    .await?;
    let now = create(&b, TaskSpec::new("c")).await?;
    let claimed = ok!(b.claim_tasks("c", 10, LEASE).await);
    ensure!(
        claimed.len() == 1 && claimed[0].task.id == now.id,
        "only the due task may be claimed, got {claimed:?}"
    );
    let next = ok!(b.next_run_at("c").await).ok_or("next_run_at should see the delayed tasks")?;
    ensure!(
        (next - later.run_at).num_milliseconds().abs() < 5,
        "next_run_at {next} should be the earliest delayed run_at {}",
        later.run_at
    );
    ensure!(
        at.run_at > later.run_at,
        "run_at should honour the absolute time"
    );
    Ok(())
}

async fn claim_is_per_core_and_bounded(b: SharedBackend) -> CheckResult {
    for _ in 0..5 {
        create(&b, TaskSpec::new("a")).await?;
    }
    create(&b, TaskSpec::new("b")).await?;
    let claimed = ok!(b.claim_tasks("a", 3, LEASE).await);
    ensure!(claimed.len() == 3, "limit 3 gave {}", claimed.len());
    ensure!(
        claimed.iter().all(|c| c.task.engine == "a"),
        "claimed another core's task"
    );
    let rest = ok!(b.claim_tasks("a", 10, LEASE).await);
    ensure!(
        rest.len() == 2,
        "expected the 2 remaining, got {}",
        rest.len()
    );
    ensure!(
        ok!(b.claim_tasks("b", 0, LEASE).await).is_empty(),
        "limit 0 must claim nothing"
    );
    ensure!(
        ok!(b.claim_tasks("zzz", 10, LEASE).await).is_empty(),
        "unknown core has no tasks"
    );
    Ok(())
}

async fn claim_leases_and_logs(b: SharedBackend) -> CheckResult {
    let task = create(&b, TaskSpec::new("c")).await?;
    let before = clock::now();
    let claimed = claim_one(&b, "c", Duration::from_secs(60)).await?;
    let t = &claimed.task;
    ensure!(
        t.id == task.id && t.status == TaskStatus::Running,
        "claimed {t:?}"
    );
    ensure!(t.attempt == 1, "attempt should be 1, is {}", t.attempt);
    let expires = t
        .lease_expires_at
        .ok_or("running task has no lease expiry")?;
    let ahead = (expires - before).num_seconds();
    ensure!(
        (55..=65).contains(&ahead),
        "lease expires {ahead} s ahead, expected ~60"
    );
    ensure!(t.started_at.is_some(), "started_at unset");
    let stored = ok!(b.get_task(task.id).await).ok_or("task vanished")?;
    ensure!(
        stored.status == TaskStatus::Running,
        "stored status {}",
        stored.status
    );
    ensure!(
        events_of(&b, task.id).await? == [EventKind::TaskQueued, EventKind::TaskStarted],
        "expected queued, started"
    );
    Ok(())
}

/// Every claim gets a lease token of its own, and `next_run_at` names the earliest queued task
/// of the engine, due or not.
async fn leases_are_distinct_and_next_run_at_is_the_earliest(b: SharedBackend) -> CheckResult {
    let delayed = create(
        &b,
        TaskSpec::new("c")
            .priority(9)
            .delay(Duration::from_secs(3600)),
    )
    .await?;
    for _ in 0..5 {
        create(&b, TaskSpec::new("c")).await?;
    }
    let claimed = ok!(b.claim_tasks("c", 10, LEASE).await);
    ensure!(
        claimed.len() == 5,
        "claimed {} of the 5 due tasks",
        claimed.len()
    );
    let tokens: HashSet<LeaseToken> = claimed.iter().map(|c| c.lease_token).collect();
    ensure!(tokens.len() == 5, "lease tokens are not unique");
    // At the microsecond precision every backend keeps.
    let next = ok!(b.next_run_at("c").await).map(|at| at.timestamp_micros());
    ensure!(
        next == Some(delayed.run_at.timestamp_micros()),
        "next_run_at {next:?}, the delayed task runs at {}",
        delayed.run_at
    );
    ensure!(
        ok!(b.next_run_at("nobody").await).is_none(),
        "an engine without tasks has no next run"
    );
    Ok(())
}

/// An error message or a result holding NUL (which PostgreSQL's text and `jsonb` refuse) is
/// stored, the NUL replaced if the backend must, and the rest kept.
async fn nul_characters_are_stored(b: SharedBackend) -> CheckResult {
    for _ in 0..2 {
        create(&b, TaskSpec::new("c").max_attempts(1)).await?;
    }
    let claimed = ok!(b.claim_tasks("c", 2, LEASE).await);
    ensure!(claimed.len() == 2, "claimed {}", claimed.len());
    let answers = ok!(b
        .finish_attempts(vec![
            report(
                &claimed[0],
                AttemptOutcome::Failed {
                    error: "bad\0byte".into(),
                    retry_in: None,
                },
            ),
            report(
                &claimed[1],
                AttemptOutcome::Succeeded {
                    result: json!({"a\u{0}": ["x\u{0}y"]}),
                },
            ),
        ])
        .await);
    ensure!(
        matches!(
            answers[..],
            [Ok(TaskStatus::Failed), Ok(TaskStatus::Succeeded)]
        ),
        "{answers:?}"
    );
    let failed = ok!(b.get_task(claimed[0].task.id).await).ok_or("task vanished")?;
    let error = failed.error.unwrap_or_default();
    ensure!(
        error.starts_with("bad") && error.ends_with("byte"),
        "stored error {error:?}"
    );
    let succeeded = ok!(b.get_task(claimed[1].task.id).await).ok_or("task vanished")?;
    let result = succeeded.result.ok_or("no result stored")?;
    let text = result.to_string();
    ensure!(
        text.starts_with("{\"a") && text.contains("x") && text.contains("y"),
        "stored result {text}"
    );
    Ok(())
}

async fn finish_succeeded(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c")).await?;
    let c = claim_one(&b, "c", LEASE).await?;
    let done = ok!(finish(
        &b,
        &c,
        AttemptOutcome::Succeeded {
            result: json!({"ok": true})
        }
    )
    .await);
    ensure!(
        done.status == TaskStatus::Succeeded,
        "status {}",
        done.status
    );
    ensure!(
        done.result == Some(json!({"ok": true})),
        "result {:?}",
        done.result
    );
    ensure!(
        done.finished_at.is_some() && done.lease_expires_at.is_none(),
        "timestamps {done:?}"
    );
    let again = finish(&b, &c, AttemptOutcome::Succeeded { result: json!(1) }).await;
    ensure!(
        matches!(again, Err(Error::LeaseLost(_))),
        "second report must be refused, got {again:?}"
    );
    ensure!(
        events_of(&b, c.task.id).await?.last() == Some(&EventKind::TaskSucceeded),
        "expected task.succeeded last"
    );
    Ok(())
}

async fn finish_attempts_in_one_call(b: SharedBackend) -> CheckResult {
    for _ in 0..3 {
        create(&b, TaskSpec::new("c").max_attempts(2)).await?;
    }
    let claimed = ok!(b.claim_tasks("c", 3, LEASE).await);
    ensure!(claimed.len() == 3, "claimed {}", claimed.len());
    let statuses = ok!(b
        .finish_attempts(vec![
            report(
                &claimed[0],
                AttemptOutcome::Succeeded { result: json!("a") }
            ),
            AttemptReport {
                lease_token: LeaseToken::new(),
                ..report(
                    &claimed[1],
                    AttemptOutcome::Succeeded { result: json!("b") }
                )
            },
            report(
                &claimed[2],
                AttemptOutcome::Failed {
                    error: "again".into(),
                    retry_in: Some(Duration::ZERO)
                }
            ),
        ])
        .await);
    ensure!(statuses.len() == 3, "one status per report expected");
    ensure!(
        matches!(statuses[0], Ok(TaskStatus::Succeeded)),
        "first: {:?}",
        statuses[0]
    );
    ensure!(
        matches!(statuses[1], Err(Error::LeaseLost(_))),
        "stale token: {:?}",
        statuses[1]
    );
    ensure!(
        matches!(statuses[2], Ok(TaskStatus::Queued)),
        "retry: {:?}",
        statuses[2]
    );
    let first = ok!(b.get_task(claimed[0].task.id).await).ok_or("task vanished")?;
    ensure!(first.result == Some(json!("a")), "result not stored");
    let second = ok!(b.get_task(claimed[1].task.id).await).ok_or("task vanished")?;
    ensure!(
        second.status == TaskStatus::Running,
        "a refused report in a batch changed its task"
    );
    ensure!(
        events_of(&b, claimed[2].task.id).await?.last() == Some(&EventKind::TaskRetrying),
        "batched outcomes must log their events"
    );
    Ok(())
}

/// A batch answers as calling `finish_attempt` once per report, in order, would: of two reports
/// of one task the first that holds the lease wins; an unknown task fails only its own item.
async fn finish_attempts_duplicates_and_unknowns(b: SharedBackend) -> CheckResult {
    for _ in 0..7 {
        create(&b, TaskSpec::new("c")).await?;
    }
    let claimed = ok!(b.claim_tasks("c", 7, LEASE).await);
    ensure!(claimed.len() == 7, "claimed {}", claimed.len());
    let success = |n: i64| AttemptOutcome::Succeeded { result: json!(n) };
    let (x, y) = (&claimed[0], &claimed[1]);
    let mut reports = vec![
        // x: a stale report first, then the one holding the lease.
        AttemptReport {
            lease_token: LeaseToken::new(),
            ..report(x, success(1))
        },
        report(x, success(2)),
        // y: the same report twice.
        report(y, success(3)),
        report(y, success(4)),
        // A task that does not exist.
        AttemptReport {
            task_id: TaskId::new(),
            lease_token: LeaseToken::new(),
            attempt: 1,
            outcome: success(5),
        },
    ];
    for (n, c) in (6..).zip(&claimed[2..]) {
        reports.push(report(c, success(n)));
    }
    let statuses = ok!(b.finish_attempts(reports).await);
    ensure!(statuses.len() == 10, "one status per report expected");
    ensure!(
        matches!(statuses[0], Err(Error::LeaseLost(_))),
        "stale first report: {:?}",
        statuses[0]
    );
    ensure!(
        matches!(statuses[1], Ok(TaskStatus::Succeeded)),
        "holder after a stale report: {:?}",
        statuses[1]
    );
    ensure!(
        matches!(statuses[2], Ok(TaskStatus::Succeeded)),
        "first of two: {:?}",
        statuses[2]
    );
    ensure!(
        matches!(statuses[3], Err(Error::LeaseLost(_))),
        "second of two: {:?}",
        statuses[3]
    );
    ensure!(
        matches!(statuses[4], Err(Error::TaskNotFound(_))),
        "unknown task: {:?}",
        statuses[4]
    );
    for (i, status) in statuses.iter().enumerate().skip(5) {
        ensure!(
            matches!(status, Ok(TaskStatus::Succeeded)),
            "report {i}: {status:?}"
        );
    }
    let x_now = ok!(b.get_task(x.task.id).await).ok_or("task vanished")?;
    ensure!(
        x_now.result == Some(json!(2)),
        "x result {:?}",
        x_now.result
    );
    let y_now = ok!(b.get_task(y.task.id).await).ok_or("task vanished")?;
    ensure!(
        y_now.result == Some(json!(3)),
        "y result {:?}",
        y_now.result
    );
    for (n, c) in (6..).zip(&claimed[2..]) {
        let task = ok!(b.get_task(c.task.id).await).ok_or("task vanished")?;
        ensure!(task.result == Some(json!(n)), "result {:?}", task.result);
    }
    let y_events = events_of(&b, y.task.id).await?;
    ensure!(
        y_events
            .iter()
            .filter(|k| **k == EventKind::TaskSucceeded)
            .count()
            == 1,
        "one success event per task: {y_events:?}"
    );
    Ok(())
}

/// Successes only, of distinct tasks (a backend's likely fast path), one of them stale and one
/// of a task that does not exist.
async fn finish_attempts_successes_with_stale_and_unknown(b: SharedBackend) -> CheckResult {
    for _ in 0..3 {
        create(&b, TaskSpec::new("c")).await?;
    }
    let claimed = ok!(b.claim_tasks("c", 3, LEASE).await);
    ensure!(claimed.len() == 3, "claimed {}", claimed.len());
    let success = |n: i64| AttemptOutcome::Succeeded { result: json!(n) };
    let statuses = ok!(b
        .finish_attempts(vec![
            report(&claimed[0], success(0)),
            AttemptReport {
                lease_token: LeaseToken::new(),
                ..report(&claimed[1], success(1))
            },
            AttemptReport {
                task_id: TaskId::new(),
                lease_token: LeaseToken::new(),
                attempt: 1,
                outcome: success(2),
            },
            report(&claimed[2], success(3)),
        ])
        .await);
    ensure!(statuses.len() == 4, "one status per report expected");
    ensure!(
        matches!(statuses[0], Ok(TaskStatus::Succeeded))
            && matches!(statuses[3], Ok(TaskStatus::Succeeded)),
        "holders: {statuses:?}"
    );
    ensure!(
        matches!(statuses[1], Err(Error::LeaseLost(_))),
        "stale: {:?}",
        statuses[1]
    );
    ensure!(
        matches!(statuses[2], Err(Error::TaskNotFound(_))),
        "unknown: {:?}",
        statuses[2]
    );
    let stale = ok!(b.get_task(claimed[1].task.id).await).ok_or("task vanished")?;
    ensure!(
        stale.status == TaskStatus::Running && stale.result.is_none(),
        "a stale report changed its task: {stale:?}"
    );
    let last = ok!(b.get_task(claimed[2].task.id).await).ok_or("task vanished")?;
    ensure!(last.result == Some(json!(3)), "result {:?}", last.result);
    ensure!(
        events_of(&b, claimed[2].task.id).await?.last() == Some(&EventKind::TaskSucceeded),
        "success event"
    );
    Ok(())
}

async fn stale_token_is_refused(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c")).await?;
    let c = claim_one(&b, "c", LEASE).await?;
    let wrong = b
        .finish_attempts(vec![AttemptReport {
            lease_token: LeaseToken::new(),
            ..report(&c, AttemptOutcome::Succeeded { result: json!(1) })
        }])
        .await
        .map(|mut statuses| statuses.pop());
    ensure!(
        matches!(wrong, Ok(Some(Err(Error::LeaseLost(_))))),
        "wrong token must be LeaseLost, got {wrong:?}"
    );
    let stored = ok!(b.get_task(c.task.id).await).ok_or("task vanished")?;
    ensure!(
        stored.status == TaskStatus::Running && stored.result.is_none(),
        "a refused report changed the task"
    );
    Ok(())
}

async fn retry_requeues_with_delay(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c").max_attempts(3)).await?;
    let c = claim_one(&b, "c", LEASE).await?;
    let before = clock::now();
    let t = ok!(finish(
        &b,
        &c,
        AttemptOutcome::Failed {
            error: "boom".into(),
            retry_in: Some(Duration::from_secs(60))
        }
    )
    .await);
    ensure!(t.status == TaskStatus::Queued, "status {}", t.status);
    ensure!(t.error.as_deref() == Some("boom"), "error {:?}", t.error);
    ensure!(
        (t.run_at - before).num_seconds() >= 59,
        "run_at not delayed: {}",
        t.run_at
    );
    ensure!(
        ok!(b.claim_tasks("c", 1, LEASE).await).is_empty(),
        "retry claimed before its delay"
    );
    let t2 = ok!(b.create_tasks(vec![new_task(TaskSpec::new("d"))]).await);
    let c2 = claim_one(&b, "d", LEASE).await?;
    ensure!(c2.task.id == t2[0].task.id, "other core unaffected");
    let retried = ok!(finish(
        &b,
        &c2,
        AttemptOutcome::TimedOut {
            retry_in: Some(Duration::ZERO)
        }
    )
    .await);
    ensure!(
        retried.status == TaskStatus::Queued,
        "timed-out attempt with retry should requeue"
    );
    let again = claim_one(&b, "d", LEASE).await?;
    ensure!(
        again.task.attempt == 2,
        "second attempt numbered {}",
        again.task.attempt
    );
    ensure!(
        again.lease_token != c2.lease_token,
        "a new attempt needs a new lease token"
    );
    let kinds = events_of(&b, c.task.id).await?;
    ensure!(
        kinds.last() == Some(&EventKind::TaskRetrying),
        "expected task.retrying, got {kinds:?}"
    );
    Ok(())
}

async fn final_failure_and_timeout(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c")).await?;
    create(&b, TaskSpec::new("c")).await?;
    let a = claim_one(&b, "c", LEASE).await?;
    let z = claim_one(&b, "c", LEASE).await?;
    let failed = ok!(finish(
        &b,
        &a,
        AttemptOutcome::Failed {
            error: "bad".into(),
            retry_in: None
        }
    )
    .await);
    ensure!(
        failed.status == TaskStatus::Failed && failed.error.as_deref() == Some("bad"),
        "{failed:?}"
    );
    let timed = ok!(finish(&b, &z, AttemptOutcome::TimedOut { retry_in: None }).await);
    ensure!(
        timed.status == TaskStatus::TimedOut,
        "status {}",
        timed.status
    );
    ensure!(
        events_of(&b, a.task.id).await?.last() == Some(&EventKind::TaskFailed),
        "task.failed missing"
    );
    ensure!(
        events_of(&b, z.task.id).await?.last() == Some(&EventKind::TaskTimedOut),
        "task.timed_out missing"
    );
    Ok(())
}

async fn abandon_gives_attempt_back(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c").max_attempts(1)).await?;
    let c = claim_one(&b, "c", LEASE).await?;
    let t = ok!(finish(&b, &c, AttemptOutcome::Abandoned).await);
    ensure!(
        t.status == TaskStatus::Queued && t.attempt == 0,
        "abandoned task {t:?}"
    );
    let again = claim_one(&b, "c", LEASE).await?;
    ensure!(
        again.task.attempt == 1,
        "attempt after abandon {}",
        again.task.attempt
    );
    Ok(())
}

async fn cancel_queued_and_running(b: SharedBackend) -> CheckResult {
    let queued = create(&b, TaskSpec::new("c")).await?;
    let t = ok!(b.cancel_task(queued.id).await);
    ensure!(t.status == TaskStatus::Cancelled, "status {}", t.status);
    let again = b.cancel_task(queued.id).await;
    ensure!(
        matches!(
            again,
            Err(Error::IllegalTransition {
                from: TaskStatus::Cancelled,
                ..
            })
        ),
        "cancelling twice must be an illegal transition, got {again:?}"
    );
    ensure!(
        ok!(b.claim_tasks("c", 10, LEASE).await).is_empty(),
        "a cancelled task was claimed"
    );
    create(&b, TaskSpec::new("c")).await?;
    let c = claim_one(&b, "c", LEASE).await?;
    ok!(b.cancel_task(c.task.id).await);
    let late = finish(&b, &c, AttemptOutcome::Succeeded { result: json!(1) }).await;
    ensure!(
        matches!(late, Err(Error::LeaseLost(_))),
        "holder of a cancelled task must be refused, got {late:?}"
    );
    let renewed = ok!(b.renew_leases(vec![held(&c)], LEASE).await);
    ensure!(renewed == [None], "heartbeat of a cancelled task must fail");
    ensure!(
        events_of(&b, c.task.id).await?.last() == Some(&EventKind::TaskCancelled),
        "task.cancelled missing"
    );
    Ok(())
}

async fn resolve_without_lease(b: SharedBackend) -> CheckResult {
    let queued = create(&b, TaskSpec::new("c")).await?;
    let t = ok!(b
        .resolve_task(queued.id, Resolution::Succeeded(json!({"out": 1})))
        .await);
    ensure!(
        t.status == TaskStatus::Succeeded && t.result == Some(json!({"out": 1})),
        "{t:?}"
    );
    let again = b
        .resolve_task(queued.id, Resolution::Failed("late".into()))
        .await;
    ensure!(
        matches!(again, Err(Error::IllegalTransition { .. })),
        "resolving a finished task must be refused, got {again:?}"
    );
    create(&b, TaskSpec::new("c")).await?;
    let c = claim_one(&b, "c", LEASE).await?;
    let t = ok!(b
        .resolve_task(c.task.id, Resolution::Failed("external".into()))
        .await);
    ensure!(
        t.status == TaskStatus::Failed && t.error.as_deref() == Some("external"),
        "{t:?}"
    );
    let late = finish(&b, &c, AttemptOutcome::Succeeded { result: json!(1) }).await;
    ensure!(
        matches!(late, Err(Error::LeaseLost(_))),
        "holder of a resolved task must be refused"
    );
    Ok(())
}

async fn renew_leases_checks_token(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c")).await?;
    let c = claim_one(&b, "c", Duration::from_secs(10)).await?;
    let renewed = ok!(b
        .renew_leases(
            vec![
                held(&c),
                HeldLease {
                    task_id: c.task.id,
                    lease_token: LeaseToken::new(),
                },
                HeldLease {
                    task_id: TaskId::new(),
                    lease_token: LeaseToken::new(),
                }
            ],
            Duration::from_secs(120)
        )
        .await);
    ensure!(renewed.len() == 3, "one answer per lease expected");
    let expires = renewed[0].ok_or("the valid lease was not renewed")?;
    ensure!(
        (expires - clock::now()).num_seconds() >= 100,
        "renewal did not extend to ~120 s"
    );
    ensure!(
        renewed[1].is_none() && renewed[2].is_none(),
        "stale or unknown leases renewed: {renewed:?}"
    );
    let stored = ok!(b.get_task(c.task.id).await).ok_or("task vanished")?;
    ensure!(
        stored.lease_expires_at == Some(expires),
        "stored expiry not updated"
    );
    Ok(())
}

async fn rescue_expired_leases(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c").max_attempts(2)).await?;
    create(&b, TaskSpec::new("c").max_attempts(1).priority(0)).await?;
    let retryable = claim_one(&b, "c", Duration::from_millis(200)).await?;
    let last = claim_one(&b, "c", Duration::from_millis(200)).await?;
    ensure!(
        ok!(b.rescue_expired(100).await).is_empty(),
        "rescued a live lease"
    );
    let mut rescued = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rescued.extend(ok!(b.rescue_expired(100).await));
        if rescued.len() >= 2 {
            break;
        }
    }
    ensure!(
        rescued.len() == 2,
        "expected 2 rescued tasks, got {}",
        rescued.len()
    );
    let r = ok!(b.get_task(retryable.task.id).await).ok_or("task vanished")?;
    ensure!(
        r.status == TaskStatus::Queued,
        "task with attempts left should be queued, is {}",
        r.status
    );
    let l = ok!(b.get_task(last.task.id).await).ok_or("task vanished")?;
    ensure!(
        l.status == TaskStatus::Failed,
        "task without attempts left should fail, is {}",
        l.status
    );
    let stale = finish(
        &b,
        &retryable,
        AttemptOutcome::Succeeded { result: json!(1) },
    )
    .await;
    ensure!(
        matches!(stale, Err(Error::LeaseLost(_))),
        "old holder's report must be refused, got {stale:?}"
    );
    let again = claim_one(&b, "c", LEASE).await?;
    ensure!(
        again.task.id == retryable.task.id && again.task.attempt == 2,
        "rescued task should run again as attempt 2"
    );
    ensure!(
        events_of(&b, retryable.task.id)
            .await?
            .contains(&EventKind::TaskRescued),
        "task.rescued missing"
    );
    Ok(())
}

async fn unknown_task_errors(b: SharedBackend) -> CheckResult {
    let id = TaskId::new();
    ensure!(ok!(b.get_task(id).await).is_none(), "unknown task found");
    let r = b.cancel_task(id).await;
    ensure!(
        matches!(r, Err(Error::TaskNotFound(_))),
        "cancel unknown: {r:?}"
    );
    let r = b.resolve_task(id, Resolution::Succeeded(json!(1))).await;
    ensure!(
        matches!(r, Err(Error::TaskNotFound(_))),
        "resolve unknown: {r:?}"
    );
    let r = finish_report(
        &b,
        AttemptReport {
            task_id: id,
            lease_token: LeaseToken::new(),
            attempt: 1,
            outcome: AttemptOutcome::Succeeded { result: json!(1) },
        },
    )
    .await;
    ensure!(
        matches!(r, Err(Error::TaskNotFound(_))),
        "finish unknown: {r:?}"
    );
    Ok(())
}

async fn list_filters_and_pages(b: SharedBackend) -> CheckResult {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            create(&b, TaskSpec::new(if i % 2 == 0 { "even" } else { "odd" }))
                .await?
                .id,
        );
    }
    let c = claim_one(&b, "odd", LEASE).await?;
    let page1 = ok!(b
        .list_tasks(TaskFilter {
            limit: 2,
            ..Default::default()
        })
        .await);
    ensure!(
        page1.iter().map(|t| t.id).collect::<Vec<_>>() == ids[..2],
        "first page {page1:?}"
    );
    let page2 = ok!(b
        .list_tasks(TaskFilter {
            limit: 2,
            after: Some(ids[1]),
            ..Default::default()
        })
        .await);
    ensure!(
        page2.iter().map(|t| t.id).collect::<Vec<_>>() == ids[2..4],
        "second page wrong"
    );
    let even = ok!(b
        .list_tasks(TaskFilter {
            engine: Some("even".into()),
            ..Default::default()
        })
        .await);
    ensure!(
        even.len() == 3 && even.iter().all(|t| t.engine == "even"),
        "core filter"
    );
    let running = ok!(b
        .list_tasks(TaskFilter {
            status: Some(TaskStatus::Running),
            ..Default::default()
        })
        .await);
    ensure!(
        running.len() == 1 && running[0].id == c.task.id,
        "status filter"
    );
    Ok(())
}

async fn events_are_ordered_and_replayable(b: SharedBackend) -> CheckResult {
    let start = ok!(b.last_event_seq().await);
    let custom = ok!(b
        .append_event(
            NewEvent::new(EventKind::Custom("test.custom".into())).with_data(json!({"n": 1}))
        )
        .await);
    ensure!(custom.seq > start, "sequence did not grow");
    ensure!(
        custom.kind.as_str() == "test.custom" && custom.data == json!({"n": 1}),
        "{custom:?}"
    );
    for _ in 0..3 {
        create(&b, TaskSpec::new("c")).await?;
    }
    let all = ok!(b.read_events(start, 100).await);
    ensure!(all.len() == 4, "expected 4 events, got {}", all.len());
    ensure!(
        all.windows(2)
            .all(|w| w[0].seq < w[1].seq && w[0].at <= w[1].at),
        "sequence or time not increasing"
    );
    ensure!(
        ok!(b.last_event_seq().await) == all[3].seq,
        "last_event_seq wrong"
    );
    let rest = ok!(b.read_events(all[1].seq, 100).await);
    ensure!(
        rest == all[2..],
        "replay after seq {} should return exactly the rest",
        all[1].seq
    );
    let limited = ok!(b.read_events(start, 2).await);
    ensure!(limited == all[..2], "limit not honoured");
    ensure!(
        ok!(b.read_events(all[3].seq, 10).await).is_empty(),
        "nothing after the last"
    );
    Ok(())
}

async fn concurrent_claims_never_overlap(b: SharedBackend) -> CheckResult {
    let specs: Vec<NewTask> = (0..200).map(|_| new_task(TaskSpec::new("c"))).collect();
    ok!(b.create_tasks(specs).await);
    let mut handles = Vec::new();
    for _ in 0..8 {
        let b = b.clone();
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = b
                    .claim_tasks("c", 7, LEASE)
                    .await
                    .map_err(|e| e.to_string())?;
                if claimed.is_empty() {
                    return Ok::<_, String>(mine);
                }
                mine.extend(claimed.into_iter().map(|c| c.task.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    for handle in handles {
        let mine = handle.await.map_err(|e| e.to_string())??;
        for id in mine {
            ensure!(seen.insert(id), "task {id} was claimed twice");
        }
    }
    ensure!(seen.len() == 200, "claimed {} of 200", seen.len());
    Ok(())
}

async fn lock_grant_release_and_fencing(b: SharedBackend) -> CheckResult {
    let ttl = Duration::from_secs(30);
    let LockAttempt::Acquired(first) = ok!(b.try_acquire_lock("res", "alice", ttl).await) else {
        return Err("free lock not granted".into());
    };
    match ok!(b.try_acquire_lock("res", "bob", ttl).await) {
        LockAttempt::Held(holder) => ensure!(holder.owner == "alice", "holder {holder:?}"),
        LockAttempt::Acquired(_) => return Err("held lock granted twice".into()),
    }
    ensure!(
        matches!(
            ok!(b.try_acquire_lock("res", "alice", ttl).await),
            LockAttempt::Held(_)
        ),
        "locks must not be re-entrant"
    );
    ensure!(
        !ok!(b.release_lock("res", "bob", first.fencing_token.0).await),
        "non-owner released"
    );
    ensure!(
        !ok!(b
            .release_lock("res", "alice", first.fencing_token.0 + 1)
            .await),
        "wrong token released"
    );
    let info = ok!(b.lock_info("res").await).ok_or("lock_info missing")?;
    ensure!(info == first, "lock_info {info:?}");
    ensure!(
        ok!(b.release_lock("res", "alice", first.fencing_token.0).await),
        "owner could not release"
    );
    ensure!(
        ok!(b.lock_info("res").await).is_none(),
        "released lock still listed"
    );
    let mut last = first.fencing_token;
    for owner in ["bob", "carol", "dave"] {
        let LockAttempt::Acquired(grant) = ok!(b.try_acquire_lock("res", owner, ttl).await) else {
            return Err(format!("free lock not granted to {owner}"));
        };
        ensure!(
            grant.fencing_token > last,
            "fencing token did not increase: {} then {}",
            last,
            grant.fencing_token
        );
        last = grant.fencing_token;
        ensure!(
            ok!(b.release_lock("res", owner, grant.fencing_token.0).await),
            "release failed"
        );
    }
    let LockAttempt::Acquired(_) = ok!(b.try_acquire_lock("other", "x", ttl).await) else {
        return Err("independent resource not granted".into());
    };
    let LockAttempt::Acquired(_) = ok!(b.try_acquire_lock("alpha", "y", ttl).await) else {
        return Err("independent resource not granted".into());
    };
    let listed: Vec<String> = ok!(b.list_locks().await)
        .into_iter()
        .map(|l| l.resource)
        .collect();
    ensure!(listed == ["alpha", "other"], "list_locks {listed:?}");
    Ok(())
}

async fn lock_expiry_and_extend(b: SharedBackend) -> CheckResult {
    let short = Duration::from_millis(300);
    let LockAttempt::Acquired(a) = ok!(b.try_acquire_lock("r", "a", short).await) else {
        return Err("not granted".into());
    };
    let extended = ok!(b
        .extend_lock("r", "a", a.fencing_token.0, Duration::from_secs(60))
        .await)
    .ok_or("holder could not extend")?;
    ensure!(
        extended.expires_at > a.expires_at,
        "extend did not move the expiry"
    );
    ensure!(
        ok!(b
            .extend_lock("r", "b", a.fencing_token.0, Duration::from_secs(60))
            .await)
        .is_none(),
        "non-holder extended"
    );
    ensure!(
        ok!(b.release_lock("r", "a", a.fencing_token.0).await),
        "release after extend"
    );
    let LockAttempt::Acquired(first) = ok!(b.try_acquire_lock("r", "a", short).await) else {
        return Err("not granted".into());
    };
    let mut taken = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let LockAttempt::Acquired(grant) = ok!(b.try_acquire_lock("r", "b", short * 10).await) {
            taken = Some(grant);
            break;
        }
    }
    let taken = taken.ok_or("expired lock was never reclaimed")?;
    ensure!(
        taken.fencing_token > first.fencing_token,
        "takeover must get a greater token"
    );
    ensure!(
        !ok!(b.release_lock("r", "a", first.fencing_token.0).await),
        "expired holder released the new grant"
    );
    ensure!(
        ok!(b
            .extend_lock("r", "a", first.fencing_token.0, Duration::from_secs(5))
            .await)
        .is_none(),
        "expired holder extended"
    );
    let LockAttempt::Acquired(gone) = ok!(b.try_acquire_lock("z", "a", short).await) else {
        return Err("not granted".into());
    };
    let mut reclaimed = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        reclaimed = ok!(b.reclaim_expired_locks().await);
        if !reclaimed.is_empty() {
            break;
        }
    }
    ensure!(
        reclaimed
            .iter()
            .any(|l| l.resource == "z" && l.fencing_token == gone.fencing_token),
        "reclaim_expired_locks should return the expired lock, got {reclaimed:?}"
    );
    ensure!(
        ok!(b.lock_info("z").await).is_none(),
        "expired lock still reported"
    );
    Ok(())
}

async fn storage_provider_kv(b: SharedBackend) -> CheckResult {
    ok!(b.store("snap/1", b"one".to_vec()).await);
    ok!(b.store("snap/2", b"two".to_vec()).await);
    ok!(b.store("snapshot", b"x".to_vec()).await);
    ok!(b.store("result/1", vec![0, 255]).await);
    ensure!(
        ok!(b.retrieve("snap/1").await) == Some(b"one".to_vec()),
        "retrieve"
    );
    ok!(b.store("snap/1", b"uno".to_vec()).await);
    ensure!(
        ok!(b.retrieve("snap/1").await) == Some(b"uno".to_vec()),
        "overwrite"
    );
    ensure!(ok!(b.retrieve("missing").await).is_none(), "missing key");
    ensure!(
        ok!(b.list("snap/").await) == ["snap/1", "snap/2"],
        "list by prefix"
    );
    ensure!(ok!(b.list("").await).len() == 4, "empty prefix lists all");
    ensure!(
        ok!(b.list("snap%").await).is_empty(),
        "prefix must be literal, not a pattern"
    );
    for key in ["é/y", "é/x", "é0"] {
        ok!(b.store(key, key.as_bytes().to_vec()).await);
    }
    ensure!(
        ok!(b.list("é/").await) == ["é/x", "é/y"],
        "a prefix beyond ASCII"
    );
    for key in ["é/y", "é/x", "é0"] {
        ok!(b.delete(key).await);
    }
    ensure!(ok!(b.delete("snap/2").await), "delete existing");
    ensure!(!ok!(b.delete("snap/2").await), "delete missing");
    ensure!(
        ok!(b.retrieve("result/1").await) == Some(vec![0, 255]),
        "binary value"
    );
    ensure!(
        matches!(b.store("", vec![]).await, Err(Error::Invalid { .. })),
        "empty key must be refused"
    );
    Ok(())
}

async fn prune_finished_tasks(b: SharedBackend) -> CheckResult {
    create(&b, TaskSpec::new("c").idempotency_key("gone")).await?;
    let keep = create(&b, TaskSpec::new("c")).await?;
    let c = claim_one(&b, "c", LEASE).await?;
    ok!(finish(&b, &c, AttemptOutcome::Succeeded { result: json!(1) }).await);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let pruned = ok!(b.prune_tasks(clock::now(), 100).await);
    ensure!(pruned == 1, "pruned {pruned}");
    ensure!(
        ok!(b.get_task(c.task.id).await).is_none(),
        "pruned task still there"
    );
    ensure!(
        ok!(b.get_task(keep.id).await).is_some(),
        "queued task pruned"
    );
    let again = create(&b, TaskSpec::new("c").idempotency_key("gone")).await?;
    ensure!(
        again.id != c.task.id,
        "idempotency key of a pruned task should be free again"
    );
    Ok(())
}

async fn queue_depth_counts_queued(b: SharedBackend) -> CheckResult {
    for p in [1, 1, 2] {
        create(&b, TaskSpec::new("a").priority(p)).await?;
    }
    create(&b, TaskSpec::new("b")).await?;
    create(&b, TaskSpec::new("b")).await?;
    claim_one(&b, "b", LEASE).await?;
    let depth = ok!(b.queue_depth().await);
    let row = |engine: &str, priority, queued| QueueDepth {
        engine: engine.to_owned(),
        priority,
        queued,
    };
    ensure!(
        depth == [row("a", 1, 2), row("a", 2, 1), row("b", 1, 1)],
        "queue_depth {depth:?}"
    );
    Ok(())
}

/// A queue entry of `resource` for `owner` at `rank`, living `ttl`.
fn waiter(resource: &str, owner: &str, rank: i64, ttl: Duration) -> NewLockWaiter {
    NewLockWaiter {
        resource: resource.to_owned(),
        waiter: LockWaiterId::new(),
        owner: owner.to_owned(),
        priority: 1,
        rank,
        ttl,
    }
}

/// The acquisition in turn of the entry `w` (for 30 s).
fn turn_of(w: &NewLockWaiter) -> LockRequest {
    LockRequest {
        resource: w.resource.clone(),
        owner: w.owner.clone(),
        ttl: Duration::from_secs(30),
        rank: w.rank,
        waiter: Some(w.waiter),
    }
}

/// An acquisition in turn without a queue entry.
fn unqueued(resource: &str, owner: &str, rank: i64) -> LockRequest {
    LockRequest {
        resource: resource.to_owned(),
        owner: owner.to_owned(),
        ttl: Duration::from_secs(30),
        rank,
        waiter: None,
    }
}

fn owners(waiters: &[LockWaiter]) -> Vec<(&str, &str)> {
    waiters
        .iter()
        .map(|w| (w.resource.as_str(), w.owner.as_str()))
        .collect()
}

/// Waits (up to 5 s, in 100 ms steps) until `probe` holds.
async fn until<F, Fut>(what: &str, mut probe: F) -> CheckResult
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, String>>,
{
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if probe().await? {
            return Ok(());
        }
    }
    Err(format!("timed out waiting until {what}"))
}

async fn lock_queue_serves_by_rank(b: SharedBackend) -> CheckResult {
    let minute = Duration::from_secs(60);
    let first = waiter("q", "first", 100, minute);
    let second = waiter("q", "second", 200, minute);
    // Joined later with the same rank: after `second` (a later id), ties go by id.
    let third = waiter("q", "third", 200, minute);
    for w in [&third, &second, &first] {
        let joined = ok!(b.join_lock_queue(w).await);
        ensure!(
            joined.waiter == w.waiter && joined.rank == w.rank && joined.owner == w.owner,
            "join returned {joined:?}"
        );
        ensure!(joined.expires_at > joined.enqueued_at, "entry {joined:?}");
    }
    let other = waiter("p", "elsewhere", 500, minute);
    ok!(b.join_lock_queue(&other).await);
    let listed = ok!(b.lock_waiters("q").await);
    ensure!(
        owners(&listed) == [("q", "first"), ("q", "second"), ("q", "third")],
        "lock_waiters {:?}",
        owners(&listed)
    );
    let all = ok!(b.list_lock_waiters().await);
    ensure!(
        owners(&all)
            == [
                ("p", "elsewhere"),
                ("q", "first"),
                ("q", "second"),
                ("q", "third")
            ],
        "list_lock_waiters {:?}",
        owners(&all)
    );
    // A refresh keeps the place in line and when it joined.
    let before = listed[0].clone();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let refreshed = ok!(b.join_lock_queue(&first).await);
    ensure!(
        refreshed.enqueued_at == before.enqueued_at && refreshed.expires_at > before.expires_at,
        "refresh gave {refreshed:?} after {before:?}"
    );
    ensure!(
        ok!(b.lock_waiters("q").await).len() == 3,
        "a refresh added an entry"
    );

    // The lock is free, but only the first in line gets it.
    for (w, name) in [(&third, "third"), (&second, "second")] {
        match ok!(b.acquire_lock_in_turn(&turn_of(w)).await) {
            LockTurn::Behind(ahead) => ensure!(
                ahead.waiter == first.waiter,
                "{name} is behind {ahead:?}, not the first in line"
            ),
            other => return Err(format!("{name} overtook the first in line: {other:?}")),
        }
    }
    match ok!(b
        .acquire_lock_in_turn(&unqueued("q", "newcomer", 150))
        .await)
    {
        LockTurn::Behind(ahead) => ensure!(ahead.waiter == first.waiter, "behind {ahead:?}"),
        other => return Err(format!("a newcomer overtook the queue: {other:?}")),
    }
    // Equal rank without an entry comes after the entry.
    match ok!(b.acquire_lock_in_turn(&unqueued("q", "tie", 100)).await) {
        LockTurn::Behind(ahead) => ensure!(ahead.waiter == first.waiter, "behind {ahead:?}"),
        other => return Err(format!("a newcomer won a tie against an entry: {other:?}")),
    }
    let LockTurn::Acquired(granted) = ok!(b.acquire_lock_in_turn(&turn_of(&first)).await) else {
        return Err("the first in line was not granted the free lock".into());
    };
    ensure!(
        granted.owner == "first" && ok!(b.lock_info("q").await) == Some(granted.clone()),
        "grant {granted:?}"
    );
    ensure!(
        owners(&ok!(b.lock_waiters("q").await)) == [("q", "second"), ("q", "third")],
        "the grant did not take the waiter out of line"
    );
    // While held, everyone (the next in line included) sees the holder.
    match ok!(b.acquire_lock_in_turn(&turn_of(&second)).await) {
        LockTurn::Held(holder) => ensure!(holder == granted, "held by {holder:?}"),
        other => return Err(format!("a held lock gave {other:?}")),
    }
    ensure!(
        ok!(b.release_lock("q", "first", granted.fencing_token.0).await),
        "release"
    );
    // Ties in rank go by waiter id: `second` before `third`.
    match ok!(b.acquire_lock_in_turn(&turn_of(&third)).await) {
        LockTurn::Behind(ahead) => ensure!(ahead.waiter == second.waiter, "behind {ahead:?}"),
        other => return Err(format!("a tie was not broken by waiter id: {other:?}")),
    }
    let LockTurn::Acquired(next) = ok!(b.acquire_lock_in_turn(&turn_of(&second)).await) else {
        return Err("the second in line was not granted".into());
    };
    ensure!(
        next.fencing_token > granted.fencing_token,
        "fencing token went from {} to {}",
        granted.fencing_token,
        next.fencing_token
    );
    // Another resource's queue is its own.
    ensure!(
        matches!(
            ok!(b.acquire_lock_in_turn(&turn_of(&other)).await),
            LockTurn::Acquired(_)
        ),
        "the only waiter of another resource was not granted"
    );
    Ok(())
}

async fn lock_queue_expired_waiter_does_not_block(b: SharedBackend) -> CheckResult {
    let minute = Duration::from_secs(60);
    let short = Duration::from_millis(300);
    let dead = waiter("q", "dead", 0, short);
    let alive = waiter("q", "alive", 10, minute);
    ok!(b.join_lock_queue(&dead).await);
    ok!(b.join_lock_queue(&alive).await);
    match ok!(b.acquire_lock_in_turn(&turn_of(&alive)).await) {
        LockTurn::Behind(ahead) => ensure!(ahead.waiter == dead.waiter, "behind {ahead:?}"),
        other => return Err(format!("a live entry ahead did not block: {other:?}")),
    }
    // Once its entry expires (nobody refreshes it), the dead waiter blocks nobody and is no
    // longer listed.
    until("the unrefreshed entry expires", || async {
        Ok(ok!(b.lock_waiters("q").await).len() == 1)
    })
    .await?;
    let LockTurn::Acquired(_) = ok!(b.acquire_lock_in_turn(&turn_of(&alive)).await) else {
        return Err("an expired entry still blocked the queue".into());
    };
    ensure!(
        ok!(b.list_lock_waiters().await).is_empty(),
        "expired entry listed"
    );

    // Expired entries are deleted by reclaim_expired_locks.
    let gone = waiter("r", "gone", 0, short);
    ok!(b.join_lock_queue(&gone).await);
    until("the entry expires", || async {
        Ok(ok!(b.list_lock_waiters().await).is_empty())
    })
    .await?;
    ok!(b.reclaim_expired_locks().await);
    ensure!(
        !ok!(b.leave_lock_queue("r", gone.waiter).await),
        "reclaim_expired_locks left an expired entry in the queue"
    );
    // Bad entries are refused, naming the field.
    let mut zero = waiter("r", "x", 0, Duration::ZERO);
    ensure!(
        matches!(
            b.join_lock_queue(&zero).await,
            Err(Error::Invalid { field: "ttl", .. })
        ),
        "a zero TTL must be refused"
    );
    zero.ttl = minute;
    zero.resource = String::new();
    ensure!(
        matches!(
            b.join_lock_queue(&zero).await,
            Err(Error::Invalid {
                field: "resource",
                ..
            })
        ),
        "an empty resource must be refused"
    );
    ensure!(
        matches!(
            b.acquire_lock_in_turn(&unqueued("", "x", 0)).await,
            Err(Error::Invalid {
                field: "resource",
                ..
            })
        ),
        "an empty resource must be refused"
    );
    Ok(())
}

async fn lock_queue_leaving_unblocks(b: SharedBackend) -> CheckResult {
    let minute = Duration::from_secs(60);
    let first = waiter("q", "first", 0, minute);
    let second = waiter("q", "second", 10, minute);
    ok!(b.join_lock_queue(&first).await);
    ok!(b.join_lock_queue(&second).await);
    ensure!(
        matches!(
            ok!(b.acquire_lock_in_turn(&turn_of(&second)).await),
            LockTurn::Behind(_)
        ),
        "not blocked by the first in line"
    );
    ensure!(
        !ok!(b.leave_lock_queue("other", first.waiter).await),
        "left the queue of another resource"
    );
    ensure!(
        ok!(b.leave_lock_queue("q", first.waiter).await),
        "could not leave"
    );
    ensure!(
        !ok!(b.leave_lock_queue("q", first.waiter).await),
        "left twice"
    );
    let LockTurn::Acquired(_) = ok!(b.acquire_lock_in_turn(&turn_of(&second)).await) else {
        return Err("still blocked after the waiter ahead left".into());
    };
    ensure!(ok!(b.lock_waiters("q").await).is_empty(), "queue not empty");
    Ok(())
}

async fn lock_queue_is_not_overtaken_without_an_entry(b: SharedBackend) -> CheckResult {
    let queued = waiter("q", "queued", i64::MAX - 1, Duration::from_secs(60));
    ok!(b.join_lock_queue(&queued).await);
    // What `LockManager::try_acquire` asks: after every queued live waiter.
    match ok!(b
        .acquire_lock_in_turn(&unqueued("q", "eager", i64::MAX))
        .await)
    {
        LockTurn::Behind(ahead) => ensure!(ahead.waiter == queued.waiter, "behind {ahead:?}"),
        other => {
            return Err(format!(
                "an unqueued request overtook a live waiter: {other:?}"
            ));
        }
    }
    ensure!(
        ok!(b.lock_info("q").await).is_none(),
        "a refused request left a grant"
    );
    // With nobody queued for it, a resource is granted to an unqueued request.
    let LockTurn::Acquired(_) = ok!(b
        .acquire_lock_in_turn(&unqueued("free", "eager", i64::MAX))
        .await)
    else {
        return Err("a free resource with an empty queue was not granted".into());
    };
    Ok(())
}

async fn lock_queue_keeps_fencing_increasing(b: SharedBackend) -> CheckResult {
    let short = Duration::from_millis(300);
    let mut last = FencingToken(0);
    let check = |last: &mut FencingToken, grant: &crate::model::LockInfo, how: &str| {
        ensure!(
            grant.fencing_token > *last,
            "{how}: fencing token went from {last} to {}",
            grant.fencing_token
        );
        *last = grant.fencing_token;
        Ok(())
    };
    let LockAttempt::Acquired(plain) = ok!(b.try_acquire_lock("r", "plain", short).await) else {
        return Err("not granted".into());
    };
    check(&mut last, &plain, "grant")?;
    ensure!(
        ok!(b.release_lock("r", "plain", plain.fencing_token.0).await),
        "release"
    );
    for round in 0..3 {
        let w = waiter("r", &format!("w{round}"), round, Duration::from_secs(60));
        ok!(b.join_lock_queue(&w).await);
        let mut request = turn_of(&w);
        request.ttl = short;
        let LockTurn::Acquired(grant) = ok!(b.acquire_lock_in_turn(&request).await) else {
            return Err(format!("round {round}: the only waiter was not granted"));
        };
        check(&mut last, &grant, "grant in turn")?;
        if round < 2 {
            ensure!(
                ok!(b.release_lock("r", &w.owner, grant.fencing_token.0).await),
                "release"
            );
        }
    }
    // A takeover of the expired grant in turn gets a greater token, and the old holder can
    // neither extend nor release.
    let holder = last;
    let next = waiter("r", "taker", 100, Duration::from_secs(60));
    ok!(b.join_lock_queue(&next).await);
    let mut taken = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let LockTurn::Acquired(grant) = ok!(b.acquire_lock_in_turn(&turn_of(&next)).await) {
            taken = Some(grant);
            break;
        }
    }
    let taken = taken.ok_or("the expired grant was never taken over in turn")?;
    check(&mut last, &taken, "takeover in turn")?;
    ensure!(
        !ok!(b.release_lock("r", "w2", holder.0).await),
        "expired holder released the new grant"
    );
    Ok(())
}
