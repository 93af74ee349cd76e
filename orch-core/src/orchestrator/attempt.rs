//! The attempt stage: one claimed task on its engine, under its locks, its timeout and its
//! cancellation token. The outcome goes to the report stage.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::Either;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::attempts::{Running, StopCause};
use super::breaker::Verdict;
use super::claim::{Slot, acquire_slots};
use super::report::{Report, record};
use super::{Engine, Inner, control};
use crate::backend::rules;
use crate::context::TaskContext;
use crate::error::{Error, TaskError};
use crate::locks::{LockGuard, LockOptions};
use crate::model::{AttemptOutcome, AttemptReport, Claimed, Task, TaskLock};

/// Runs one claimed attempt and hands its outcome to the reporter.
pub(super) async fn run(
    inner: Arc<Inner>,
    engine: Arc<Engine>,
    claimed: Claimed,
    running: Arc<Running>,
    slot: Slot,
) {
    let Claimed { task, lease_token } = claimed;
    let claim_span = claim_span(&inner, &task);
    let span = tracing::debug_span!("execute", task_id = %task.id, engine = %task.engine, attempt = task.attempt);
    let attempt = execute(&inner, &engine, &task, &running, slot, &claim_span);
    // Entering a disabled span on every poll still costs: skip it when nobody records spans.
    let outcome = if span.is_disabled() {
        attempt.await
    } else {
        attempt.instrument(span).await
    };
    // An attempt that never reached a verdict on the engine frees the breaker's probe (a
    // no-op otherwise).
    engine.breaker.record(task.id, Verdict::Unjudged, None);
    let Some(outcome) = outcome else {
        inner.attempts.finished(task.id, lease_token);
        return;
    };
    // Outcomes are recorded in batches by the reporter (one backend call for many attempts);
    // the attempt stays registered (and its lease renewed) until its outcome is recorded.
    running.mark_reporting();
    let report = Report {
        attempt: AttemptReport {
            task_id: task.id,
            lease_token,
            attempt: task.attempt,
            outcome,
        },
        span: claim_span,
    };
    if let Err(mpsc::error::SendError(report)) = inner.reports.send(report) {
        // The reporter has stopped (the orchestrator was dropped): record directly.
        record(&inner, vec![report]).await;
    }
}

/// The attempt's [`CLAIM_SPAN`](crate::trace::CLAIM_SPAN), in the trace its task carries;
/// disabled (and free) without a trace propagator.
fn claim_span(inner: &Inner, task: &Task) -> tracing::Span {
    let Some(propagator) = &inner.trace_propagator else {
        return tracing::Span::none();
    };
    let span = tracing::info_span!(
        target: "orch::trace",
        parent: None,
        "orch.claim",
        task_id = %task.id,
        core_id = %task.engine,
        attempt = task.attempt,
    );
    if let Some(context) = task.trace_context() {
        propagator.continue_trace(&span, &context);
    }
    span
}

/// The attempt's [`ENGINE_SPAN`](crate::trace::ENGINE_SPAN), a child of its claim span.
fn engine_span(claim_span: &tracing::Span, task: &Task) -> tracing::Span {
    if claim_span.is_disabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: "orch::trace",
        parent: claim_span,
        "orch.engine",
        task_id = %task.id,
        core_id = %task.engine,
        attempt = task.attempt,
        otel.status_code = tracing::field::Empty,
        error = tracing::field::Empty,
    )
}

/// The owner name of a task attempt's locks.
pub(super) fn lock_owner(task: &Task) -> String {
    format!("task:{}:{}", task.id, task.attempt)
}

/// The lock options of a task's locks: held for the attempt's timeout plus a lease, waited
/// for at the task's priority for at most its timeout.
pub(super) fn lock_options(inner: &Inner, task: &Task) -> LockOptions {
    LockOptions::default()
        .ttl(task.timeout + inner.config.lease)
        .priority(task.priority)
        .wait(Some(task.timeout))
}

/// Takes the task's locks (in sorted order), waiting without holding a concurrency slot.
/// `Ok(None)` when the attempt was stopped while waiting.
async fn take_locks(
    inner: &Inner,
    task: &Task,
    running: &Running,
) -> crate::error::Result<Option<Vec<LockGuard>>> {
    let owner = lock_owner(task);
    let options = lock_options(inner, task);
    let mut guards = Vec::with_capacity(task.locks.len());
    for resource in &task.locks {
        let guard = tokio::select! {
            guard = inner.locks.acquire(resource, &owner, options) => guard?,
            _ = running.cancel.cancelled() => return Ok(None),
        };
        guards.push(guard);
    }
    Ok(Some(guards))
}

/// What to report for an attempt that was stopped: only an abandoned one goes back to the
/// queue; for the others the change is already recorded (or belongs to someone else).
fn stopped(running: &Running) -> Option<AttemptOutcome> {
    match running.cause() {
        StopCause::Abandoned => Some(AttemptOutcome::Abandoned),
        _ => None,
    }
}

enum LockWait {
    /// Locks taken and a concurrency slot held again.
    Ready(Slot, Vec<LockGuard>),
    /// The attempt ends here with this outcome (or nothing to report).
    Done(Option<AttemptOutcome>),
}

/// Takes a task's locks without holding a concurrency slot, then takes a slot again.
async fn wait_for_locks(
    inner: &Inner,
    engine: &Engine,
    task: &Task,
    running: &Running,
    slot: Slot,
) -> LockWait {
    // Hold a lock-waiter permit instead of the concurrency slot while waiting.
    let waiter = tokio::select! {
        permit = inner.lock_waiters.clone().acquire_owned() => match permit {
            Ok(permit) => permit,
            Err(_) => return LockWait::Done(None),
        },
        _ = running.cancel.cancelled() => return LockWait::Done(stopped(running)),
    };
    drop(slot);
    let retry = &inner.config.retry;
    let guards = match take_locks(inner, task, running).await {
        Ok(Some(taken)) => taken,
        Ok(None) => return LockWait::Done(stopped(running)),
        Err(Error::LockTimeout(resource)) => {
            tracing::debug!(task_id = %task.id, resource, "timed out waiting for the task's lock");
            return LockWait::Done(Some(rules::timed_out_outcome(
                task.attempt,
                task.max_attempts,
                retry,
            )));
        }
        Err(error) => {
            let error = TaskError::retryable(format!("could not take the task's locks: {error}"));
            return LockWait::Done(Some(rules::engine_outcome(
                Err(error),
                task.attempt,
                task.max_attempts,
                retry,
            )));
        }
    };
    drop(waiter);
    match acquire_slots(inner, engine, 1, &running.cancel)
        .await
        .and_then(|mut slots| slots.pop())
    {
        Some(slot) => LockWait::Ready(slot, guards),
        None => LockWait::Done(stopped(running)),
    }
}

async fn release_all(task: &Task, guards: Vec<LockGuard>) {
    for guard in guards {
        if let Err(error) = guard.release().await {
            tracing::warn!(task_id = %task.id, %error, "releasing a task lock failed; it will expire");
        }
    }
}

/// What an engine call returned: `None` when the attempt was stopped first, `Some(None)` when
/// it timed out, else its result or its panic.
type Returned = Option<Option<std::thread::Result<Result<serde_json::Value, TaskError>>>>;

/// Counts an engine call for the monitor and the circuit breaker.
fn judge(
    inner: &Inner,
    engine: &Engine,
    task: &Task,
    returned: &Returned,
    took: std::time::Duration,
) {
    let (verdict, error) = match returned {
        // Stopped (cancelled, lease lost, shutdown): the engine is not to blame.
        None => return,
        Some(Some(Ok(Ok(_)))) => (Verdict::Succeeded, None),
        // A fatal error is the task's fault (bad input, a refused operation).
        Some(Some(Ok(Err(error)))) if !error.retryable => (Verdict::Unjudged, None),
        Some(Some(Ok(Err(error)))) => (Verdict::Failed, Some(error.message.as_str())),
        Some(Some(Err(_))) => (Verdict::Failed, Some("engine panicked")),
        Some(None) => (Verdict::Failed, Some("timed out")),
    };
    engine
        .stats
        .record(took, matches!(returned, Some(Some(Ok(Ok(_))))));
    engine.note_attempt(took);
    if let Some(transition) = engine.breaker.record(task.id, verdict, error) {
        control::breaker_moved(inner, engine, transition);
    }
}

/// Runs the engine. `None`: nothing to report (cancelled, or the lease is gone).
async fn execute(
    inner: &Inner,
    engine: &Engine,
    task: &Task,
    running: &Running,
    slot: Slot,
    claim_span: &tracing::Span,
) -> Option<AttemptOutcome> {
    // Stopped while it waited in the local queue (cancelled, lease lost, given back).
    if running.cancel.is_cancelled() {
        return stopped(running);
    }
    let retry = &inner.config.retry;
    let processor = engine.processor();
    if let Err(error) = processor.validate(&task.payload) {
        // Invalid input: no retry can fix it.
        let error = TaskError::fatal(format!("invalid input: {}", error.message));
        return Some(rules::engine_outcome(
            Err(error),
            task.attempt,
            task.max_attempts,
            retry,
        ));
    }
    let mut guards = Vec::new();
    let _slot = if task.locks.is_empty() {
        slot
    } else {
        // Boxed: the lock path is rare and its state would bloat every attempt's future.
        match Box::pin(wait_for_locks(inner, engine, task, running, slot)).await {
            LockWait::Ready(slot, taken) => {
                guards = taken;
                slot
            }
            LockWait::Done(outcome) => return outcome,
        }
    };

    let mut ctx = TaskContext::for_attempt(
        task.id,
        engine.name.clone(),
        task.attempt,
        task.max_attempts,
        running.cancel.clone(),
        inner.backend.clone(),
    );
    if !guards.is_empty() {
        ctx = ctx.with_locks(
            guards
                .iter()
                .map(|guard| TaskLock {
                    resource: guard.resource().to_owned(),
                    fencing_token: guard.fencing_token(),
                })
                .collect(),
        );
    }
    let started = tokio::time::Instant::now();
    let engine_span = engine_span(claim_span, task);
    let call = AssertUnwindSafe(processor.process(ctx, task.payload.clone())).catch_unwind();
    // As for `execute`'s span: no instrumentation at all when nobody records the span.
    let call = if engine_span.is_disabled() {
        Either::Left(call)
    } else {
        Either::Right(call.instrument(engine_span.clone()))
    };
    tokio::pin!(call);
    // Once the attempt is stopped (cancelled, lease lost, abandoned), a result the engine
    // returns in reaction is discarded: `biased` checks the stop first.
    let returned = tokio::select! {
        biased;
        _ = running.cancel.cancelled() => None,
        returned = &mut call => Some(Some(returned)),
        _ = tokio::time::sleep(task.timeout) => Some(None),
    };
    judge(inner, engine, task, &returned, started.elapsed());
    if !engine_span.is_disabled() {
        let error = match &returned {
            Some(Some(Ok(Err(error)))) => Some(error.message.as_str()),
            Some(Some(Err(_))) => Some("engine panicked"),
            Some(None) => Some("timed out"),
            _ => None,
        };
        if let Some(error) = error {
            engine_span.record("otel.status_code", "ERROR");
            engine_span.record("error", error);
        }
    }
    if !matches!(returned, Some(Some(_))) {
        // Timed out or stopped: tell the engine, and give it a moment to wind down.
        running.cancel.cancel();
        let _ = tokio::time::timeout(inner.config.cancel_grace, &mut call).await;
    }
    if !guards.is_empty() {
        Box::pin(release_all(task, guards)).await;
    }
    let returned = match returned {
        Some(returned) => returned,
        None => return stopped(running),
    };
    Some(match returned {
        Some(Ok(result)) => rules::engine_outcome(result, task.attempt, task.max_attempts, retry),
        Some(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            tracing::error!(task_id = %task.id, message, "engine panicked");
            let error = TaskError::retryable(format!("engine panicked: {message}"));
            rules::engine_outcome(Err(error), task.attempt, task.max_attempts, retry)
        }
        None => {
            tracing::debug!(task_id = %task.id, timeout = ?task.timeout, "attempt timed out");
            rules::timed_out_outcome(task.attempt, task.max_attempts, retry)
        }
    })
}
