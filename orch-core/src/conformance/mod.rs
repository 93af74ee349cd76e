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

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::backend::{SharedBackend, rules};
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

mod attempts;
mod events;
mod locks;
mod tasks;
mod workflows;

use attempts::*;
use events::*;
use locks::*;
use tasks::*;
use workflows::*;

checks!(
    create_and_get,
    idempotency_key_returns_first_task,
    a_batch_returns_what_it_stores,
    tasks_are_found_by_idempotency_key,
    claim_order_priority_then_fifo,
    claims_above_a_priority_take_only_more_urgent_tasks,
    claim_skips_tasks_not_yet_due,
    claim_is_per_core_and_bounded,
    claim_leases_and_logs,
    leases_are_distinct_and_next_run_at_is_the_earliest,
    nul_characters_are_stored,
    trace_context_is_stored_and_returned,
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
    events_are_read_by_task,
    the_tail_starts_below_what_comes_next,
    a_large_batch_logs_its_tasks_in_order,
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
    dependent_waits_until_its_parent_succeeds,
    diamond_runs_in_order,
    fan_out_and_fan_in_of_a_thousand,
    failure_policies_and_their_cascades,
    rescue_and_resolve_end_parents,
    bad_graphs_are_refused_with_nothing_stored,
    retried_parent_releases_its_child_once,
    dependencies_on_finished_tasks,
    released_tasks_keep_priority_and_delay,
    idempotency_keys_in_graphs,
    cancelling_a_workflow_cancels_what_has_not_run,
    retrying_a_workflow_reopens_the_failed_part,
    retry_reopens_a_finished_task,
    requeue_runs_a_waiting_task_now,
    a_cancel_names_its_caller,
    delete_removes_a_finished_task,
    pruning_keeps_graphs_whole,
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

/// Every event of the log after `after`, in order.
async fn events_after(b: &SharedBackend, after: u64) -> Result<Vec<crate::model::Event>, String> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(after, |e: &crate::model::Event| e.seq);
        let batch = ok!(b.read_events(after, 1000).await);
        if batch.is_empty() {
            return Ok(all);
        }
        all.extend(batch);
    }
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
