//! The loops behind the dispatcher: claiming, running one attempt, renewing leases, rescuing.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Core, Inner, Running, StopCause};
use crate::clock;
use crate::context::TaskContext;
use crate::contracts::StorageProvider;
use crate::error::{Error, Result};
use crate::locks::{LockGuard, LockOptions};
use crate::model::{AttemptOutcome, Claimed, LeaseToken, Task, TaskId};

/// A concurrency slot: one permit of the core's limit and one of the global limit.
pub(super) struct Permits {
    _core: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

/// Waits until `count` slots are free at once and takes them, or `None` when `stop` fires
/// first.
async fn acquire_slots(
    inner: &Inner,
    core: &Core,
    count: usize,
    stop: &CancellationToken,
) -> Option<Vec<Permits>> {
    let wanted = u32::try_from(count).ok()?;
    let mut core_permit = tokio::select! {
        permit = core.slots.clone().acquire_many_owned(wanted) => permit.ok()?,
        _ = stop.cancelled() => return None,
    };
    let mut global_permit = tokio::select! {
        permit = inner.global.clone().acquire_many_owned(wanted) => permit.ok()?,
        _ = stop.cancelled() => return None,
    };
    let mut slots = Vec::with_capacity(count);
    for _ in 1..count {
        let (Some(core), Some(global)) = (core_permit.split(1), global_permit.split(1)) else {
            break;
        };
        slots.push(Permits {
            _core: core,
            _global: global,
        });
    }
    slots.push(Permits {
        _core: core_permit,
        _global: global_permit,
    });
    Some(slots)
}

pub(super) fn try_acquire_slot(inner: &Inner, core: &Core) -> Option<Permits> {
    let core_permit = core.slots.clone().try_acquire_owned().ok()?;
    let global_permit = inner.global.clone().try_acquire_owned().ok()?;
    Some(Permits {
        _core: core_permit,
        _global: global_permit,
    })
}

/// Slots taken for one claim call, and the wake-up version read before it.
struct ClaimRequest {
    slots: Vec<Permits>,
    seen: Option<u64>,
}

/// Adds to `slots` as many free slots as one claim call may fill.
fn gather_slots(inner: &Inner, core: &Core, mut slots: Vec<Permits>) -> Vec<Permits> {
    while slots.len() < inner.config.claim_batch {
        match try_acquire_slot(inner, core) {
            Some(slot) => slots.push(slot),
            None => break,
        }
    }
    slots
}

/// One claim call for the slots of `request`.
async fn claim(
    inner: Arc<Inner>,
    core_id: Arc<str>,
    request: ClaimRequest,
) -> (Result<Vec<Claimed>>, ClaimRequest) {
    let want = request.slots.len();
    let claimed = async {
        inner
            .backend
            .claim_tasks(&core_id, want, inner.config.lease)
            .await
    }
    .instrument(tracing::debug_span!("claim", core_id = %core_id, want))
    .await;
    (claimed, request)
}

/// Registers and spawns the attempts of a claim, each with one of the request's slots; the
/// slots left over are released.
pub(super) fn start_attempts(
    inner: &Arc<Inner>,
    core: &Arc<Core>,
    claimed: Vec<Claimed>,
    slots: Vec<Permits>,
) {
    for (task, slot) in claimed.into_iter().zip(slots) {
        // Registered before the attempt is spawned, so the lease keeper renews its lease
        // from the moment it was claimed, however long the attempt waits to be polled.
        let running = Arc::new(Running {
            token: task.lease_token,
            cancel: CancellationToken::new(),
            cause: AtomicU8::new(StopCause::None as u8),
        });
        inner.running.insert(task.task.id, running.clone());
        // Boxed so spawning moves a pointer, not the attempt's whole (large) state.
        inner.attempts.spawn(Box::pin(run_attempt(
            inner.clone(),
            core.clone(),
            task,
            running,
            slot,
        )));
    }
}

/// Claims and starts tasks of one core until shutdown.
///
/// Up to `claims_in_flight` claim calls run at once, each for the slots free when it started.
/// A call that finds nothing makes the loop idle: no new call starts until the ones under way
/// are back, and then it sleeps until a wake-up hint (raised since the empty call began), the
/// next delayed task, or the poll floor. On shutdown no new call starts; the ones under way
/// are awaited and their tasks started (they are leased to us either way).
pub(super) async fn claim_loop(inner: Arc<Inner>, core: Arc<Core>) {
    let stop = inner.stop_claiming.clone();
    let wakeups = inner.backend.task_wakeups();
    let core_id = core.core_id.clone();
    let max_in_flight = inner.config.claims_in_flight.max(1);
    // Slots a call beside one under way waits for: half a batch.
    let beside = (inner.config.claim_batch)
        .min(core.limit)
        .min(inner.config.global_concurrency)
        .div_ceil(2)
        .max(1);
    let mut in_flight: FuturesUnordered<_> = FuturesUnordered::new();
    // The wake-up version seen before a claim that came back empty.
    let mut empty: Option<Option<u64>> = None;
    // After a failed claim: no new call starts before this instant.
    let mut backoff: Option<tokio::time::Instant> = None;
    let mut stopping = false;
    loop {
        if in_flight.is_empty() {
            if stopping {
                break;
            }
            if let Some(until) = backoff.take() {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            if let Some(seen) = empty.take() {
                // A hint that came while the empty call was under way: claim again at once,
                // without first asking for the next delayed task.
                let hinted = matches!((&wakeups, seen), (Some(signal), Some(seen)) if signal.version() != seen);
                if hinted || core.wake.notified().now_or_never().is_some() {
                    continue;
                }
                // Idle: sleep until a wake-up hint, the next delayed task, or the poll floor.
                let mut sleep_for = inner.config.poll_interval;
                if let Ok(Some(next)) = inner.backend.next_run_at(&core_id).await {
                    sleep_for = sleep_for.min(clock::until(next));
                }
                let hint = async {
                    match (&wakeups, seen) {
                        (Some(signal), Some(seen)) => signal.changed_since(seen).await,
                        _ => std::future::pending::<()>().await,
                    }
                };
                // While idle, a local dispatch may start its task itself.
                core.idle.store(true, std::sync::atomic::Ordering::Release);
                tokio::select! {
                    _ = core.wake.notified() => {}
                    _ = hint => {}
                    _ = tokio::time::sleep(sleep_for) => {}
                    _ = stop.cancelled() => {
                        core.idle.store(false, std::sync::atomic::Ordering::Release);
                        break;
                    }
                }
                core.idle.store(false, std::sync::atomic::Ordering::Release);
                continue;
            }
        }
        let may_start =
            !stopping && empty.is_none() && backoff.is_none() && in_flight.len() < max_in_flight;
        // The first call starts as soon as one slot is free; another one, beside it, only once
        // it can claim a good batch (else calls would split the work into crumbs).
        let wanted = if in_flight.is_empty() { 1 } else { beside };
        tokio::select! {
            biased;
            _ = stop.cancelled(), if !stopping => stopping = true,
            Some((claimed, request)) = in_flight.next(), if !in_flight.is_empty() => {
                // (Names the types, which inference cannot see through the macro.)
                let (claimed, request): (Result<Vec<Claimed>>, ClaimRequest) = (claimed, request);
                let ClaimRequest { slots, seen } = request;
                match claimed {
                    Ok(claimed) if claimed.is_empty() => {
                        // Keep the earliest version: a hint raised since any empty call counts.
                        empty.get_or_insert(seen);
                    }
                    Ok(claimed) => {
                        // Work was found: whatever an earlier call saw, there may be more.
                        empty = None;
                        inner.events.poke();
                        start_attempts(&inner, &core, claimed, slots);
                        // Let the attempts just spawned start (and quick ones finish, freeing
                        // their slots) before the next call gathers slots.
                        tokio::task::yield_now().await;
                    }
                    Err(error) => {
                        tracing::warn!(core_id = %core_id, %error, "claim failed; backing off");
                        backoff = Some(tokio::time::Instant::now() + inner.config.poll_interval);
                    }
                }
            }
            slots = acquire_slots(&inner, &core, wanted, &stop), if may_start => {
                let Some(slots) = slots else {
                    stopping = true;
                    continue;
                };
                // Read before claiming, so a task created after the claim still wakes us.
                let seen = wakeups.as_ref().map(|w| w.version());
                let slots = gather_slots(&inner, &core, slots);
                in_flight.push(claim(inner.clone(), core_id.clone(), ClaimRequest { slots, seen }));
            }
        }
    }
}

/// Runs one claimed attempt and reports its outcome with the lease token.
async fn run_attempt(
    inner: Arc<Inner>,
    core: Arc<Core>,
    claimed: Claimed,
    running: Arc<Running>,
    slot: Permits,
) {
    let Claimed { task, lease_token } = claimed;
    let span = tracing::debug_span!("execute", task_id = %task.id, core_id = %task.core_id, attempt = task.attempt);
    let attempt = execute(&inner, &core, &task, &running, slot);
    // Entering a disabled span on every poll still costs: skip it when nobody records spans.
    let outcome = if span.is_disabled() {
        attempt.await
    } else {
        attempt.instrument(span).await
    };
    let Some(outcome) = outcome else {
        inner.running.remove(&task.id);
        return;
    };
    // Outcomes are recorded in batches by the reporter (one backend call for many attempts);
    // the attempt stays in `running` until its outcome is recorded.
    let report = Report {
        id: task.id,
        token: lease_token,
        outcome,
        core,
    };
    if let Err(mpsc::error::SendError(report)) = inner.reports.send(report) {
        // The reporter has stopped (the orchestrator was dropped): record directly.
        record(&inner, vec![report]).await;
    }
}

/// Most outcomes recorded in one backend call: large enough to share a round trip, small enough
/// that an in-memory backend's lock is never held for long.
const REPORT_BATCH: usize = 128;

/// Outcomes that must be waiting before a batch starts beside one under way.
const REPORT_BESIDE: usize = 32;

/// An attempt's outcome, waiting to be recorded.
pub(super) struct Report {
    id: TaskId,
    token: LeaseToken,
    outcome: AttemptOutcome,
    core: Arc<Core>,
}

/// Records outcomes in batches until `stop` fires, then records what is left and ends.
///
/// A batch starts as soon as there is an outcome and no batch is being recorded; while some
/// are, outcomes gather, and another batch starts beside them only once [`REPORT_BESIDE`] are
/// waiting, up to `reports_in_flight` at once. Light load gets prompt single calls; heavy load
/// gets good batches in parallel.
pub(super) async fn reporter(
    inner: Arc<Inner>,
    mut reports: mpsc::UnboundedReceiver<Report>,
    stop: CancellationToken,
) {
    let max_in_flight = inner.config.reports_in_flight.max(1);
    let mut in_flight = FuturesUnordered::new();
    let mut pending: Vec<Report> = Vec::new();
    let mut open = true;
    while open || !in_flight.is_empty() || !pending.is_empty() {
        while !pending.is_empty()
            && (in_flight.is_empty()
                || (pending.len() >= REPORT_BESIDE && in_flight.len() < max_in_flight))
        {
            let rest = pending.split_off(pending.len().min(REPORT_BATCH));
            let batch = std::mem::replace(&mut pending, rest);
            in_flight.push(record(&inner, batch));
        }
        // Enough gathered to fill every batch that could start: leave the rest in the channel.
        let room = (REPORT_BATCH * max_in_flight).saturating_sub(pending.len());
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            received = reports.recv_many(&mut pending, room), if open && room > 0 => {
                if received == 0 {
                    open = false;
                }
            }
            _ = stop.cancelled(), if open => {
                // Closed first: a report sent from now on is recorded by its sender.
                reports.close();
                while let Ok(report) = reports.try_recv() {
                    pending.push(report);
                }
                open = false;
            }
        }
    }
}

/// Records a batch of outcomes with one backend call.
async fn record(inner: &Inner, batch: Vec<Report>) {
    if batch.is_empty() {
        return;
    }
    let mut cores = Vec::with_capacity(batch.len());
    let mut outcomes = Vec::with_capacity(batch.len());
    for report in batch {
        cores.push((report.id, report.core));
        outcomes.push((report.id, report.token, report.outcome));
    }
    // A failed call (a dropped connection, a deadlock victim) is retried a few times: the
    // attempts stay in `running` meanwhile, so their leases keep being renewed.
    let mut result = inner.backend.finish_attempts(outcomes.clone()).await;
    let mut delay = Duration::from_millis(50);
    for _ in 0..6 {
        let Err(error) = &result else { break };
        tracing::warn!(%error, count = outcomes.len(), "recording attempt outcomes failed; retrying");
        tokio::time::sleep(delay).await;
        delay *= 2;
        result = inner.backend.finish_attempts(outcomes.clone()).await;
    }
    match result {
        Ok(statuses) => {
            for ((id, core), status) in cores.into_iter().zip(statuses) {
                inner.running.remove(&id);
                match status {
                    Ok(crate::model::TaskStatus::Queued) => core.wake.notify_one(),
                    Ok(_) => {}
                    Err(Error::LeaseLost(_)) => {
                        tracing::warn!(task_id = %id, "attempt finished after its lease was lost; outcome discarded");
                    }
                    Err(error) => {
                        tracing::error!(task_id = %id, %error, "could not record the attempt's outcome; the lease will expire and the task will be rescued");
                    }
                }
            }
        }
        Err(error) => {
            tracing::error!(%error, count = cores.len(), "could not record attempt outcomes; their leases will expire and the tasks will be rescued");
            for (id, _) in cores {
                inner.running.remove(&id);
            }
        }
    }
    inner.events.poke();
}

fn retry_in(inner: &Inner, task: &Task, retryable: bool) -> Option<Duration> {
    (retryable && task.has_attempts_left()).then(|| inner.config.retry.delay(task.attempt))
}

/// Takes the task's locks (in sorted order), waiting without holding a concurrency slot.
/// `Ok(None)` when the attempt was stopped while waiting.
async fn take_locks(
    inner: &Inner,
    task: &Task,
    running: &Running,
) -> Result<Option<Vec<LockGuard>>> {
    let owner = format!("task:{}", task.id);
    let options = LockOptions {
        ttl: task.timeout + inner.config.lease,
        priority: task.priority,
        wait: Some(task.timeout),
    };
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

/// What to report for an attempt that was stopped: only an abandoned one goes back to the queue.
fn stopped(running: &Running) -> Option<AttemptOutcome> {
    match running.cause() {
        StopCause::Abandoned => Some(AttemptOutcome::Abandoned),
        _ => None,
    }
}

enum LockWait {
    /// Locks taken and a concurrency slot held again.
    Ready(Permits, Vec<LockGuard>),
    /// The attempt ends here with this outcome (or nothing to report).
    Done(Option<AttemptOutcome>),
}

/// Takes a task's locks without holding a concurrency slot, then takes a slot again.
async fn wait_for_locks(
    inner: &Inner,
    core: &Core,
    task: &Task,
    running: &Running,
    slot: Permits,
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
    let guards = match take_locks(inner, task, running).await {
        Ok(Some(taken)) => taken,
        Ok(None) => return LockWait::Done(stopped(running)),
        Err(Error::LockTimeout(resource)) => {
            tracing::debug!(task_id = %task.id, resource, "timed out waiting for the task's lock");
            return LockWait::Done(Some(AttemptOutcome::TimedOut {
                retry_in: retry_in(inner, task, true),
            }));
        }
        Err(error) => {
            return LockWait::Done(Some(AttemptOutcome::Failed {
                error: format!("could not take the task's locks: {error}"),
                retry_in: retry_in(inner, task, true),
            }));
        }
    };
    drop(waiter);
    match acquire_slots(inner, core, 1, &running.cancel)
        .await
        .and_then(|mut slots| slots.pop())
    {
        Some(permits) => LockWait::Ready(permits, guards),
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

/// Runs the engine. `None`: nothing to report (cancelled, or the lease is gone).
async fn execute(
    inner: &Inner,
    core: &Core,
    task: &Task,
    running: &Running,
    slot: Permits,
) -> Option<AttemptOutcome> {
    if let Err(error) = core.engine.validate(&task.payload) {
        return Some(AttemptOutcome::Failed {
            error: format!("invalid input: {}", error.message),
            retry_in: None,
        });
    }
    let mut guards = Vec::new();
    let _slot = if task.locks.is_empty() {
        slot
    } else {
        // Boxed: the lock path is rare and its state would bloat every attempt's future.
        match Box::pin(wait_for_locks(inner, core, task, running, slot)).await {
            LockWait::Ready(permits, taken) => {
                guards = taken;
                permits
            }
            LockWait::Done(outcome) => return outcome,
        }
    };

    let storage: Arc<dyn StorageProvider> = inner.backend.clone();
    let mut ctx = TaskContext::for_attempt(
        task.id,
        core.core_id.clone(),
        task.attempt,
        task.max_attempts,
        running.cancel.clone(),
        storage,
    );
    if !guards.is_empty() {
        ctx = ctx.with_fencing_tokens(
            guards
                .iter()
                .map(|g| (g.resource().to_owned(), g.fencing_token()))
                .collect(),
        );
    }
    let engine = AssertUnwindSafe(core.engine.process(ctx, task.payload.clone())).catch_unwind();
    tokio::pin!(engine);
    // Once the attempt is stopped (cancelled, lease lost, abandoned), a result the engine
    // returns in reaction is discarded: `biased` checks the stop first.
    let result = tokio::select! {
        biased;
        _ = running.cancel.cancelled() => None,
        result = &mut engine => Some(Ok(result)),
        _ = tokio::time::sleep(task.timeout) => Some(Err(())),
    };
    if !matches!(result, Some(Ok(_))) {
        // Timed out or stopped: tell the engine, and give it a moment to wind down.
        running.cancel.cancel();
        let _ = tokio::time::timeout(inner.config.cancel_grace, &mut engine).await;
    }
    if !guards.is_empty() {
        Box::pin(release_all(task, guards)).await;
    }
    let result = match result {
        Some(result) => result,
        None => return stopped(running),
    };
    Some(match result {
        Ok(Ok(Ok(value))) => AttemptOutcome::Succeeded { result: value },
        Ok(Ok(Err(error))) => AttemptOutcome::Failed {
            retry_in: retry_in(inner, task, error.retryable),
            error: error.message,
        },
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            tracing::error!(task_id = %task.id, message, "engine panicked");
            AttemptOutcome::Failed {
                error: format!("engine panicked: {message}"),
                retry_in: retry_in(inner, task, true),
            }
        }
        Err(()) => {
            tracing::debug!(task_id = %task.id, timeout = ?task.timeout, "attempt timed out");
            AttemptOutcome::TimedOut {
                retry_in: retry_in(inner, task, true),
            }
        }
    })
}

/// Renews the leases of every running attempt in one backend call per interval; stops attempts
/// whose lease was lost.
pub(super) async fn lease_keeper(inner: Arc<Inner>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(inner.config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break,
        }
        let leases: Vec<_> = inner
            .running
            .iter()
            .map(|entry| (*entry.key(), entry.value().token))
            .collect();
        if leases.is_empty() {
            continue;
        }
        let ids: Vec<_> = leases.iter().map(|(id, _)| *id).collect();
        match inner.backend.renew_leases(leases, inner.config.lease).await {
            Ok(renewed) => {
                for (id, expires) in ids.into_iter().zip(renewed) {
                    if expires.is_none()
                        && let Some(running) = inner.running.get(&id)
                    {
                        tracing::warn!(task_id = %id, "lease lost; stopping the attempt");
                        running.stop(StopCause::LeaseLost);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "renewing leases failed; retrying next tick"),
        }
    }
}

/// One rescue pass.
pub(super) async fn rescue_once(inner: &Inner) -> Result<Vec<Task>> {
    let rescued = inner.backend.rescue_expired(1000).await?;
    if !rescued.is_empty() {
        tracing::info!(count = rescued.len(), "rescued tasks whose lease expired");
        inner.events.poke();
        let engines = inner.engines.read();
        for task in &rescued {
            if let Some(core) = engines.get(&task.core_id) {
                core.wake.notify_one();
            }
        }
    }
    Ok(rescued)
}

/// Rescues expired leases every `rescue_interval`.
pub(super) async fn rescuer(inner: Arc<Inner>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(inner.config.rescue_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break,
        }
        if let Err(error) = rescue_once(&inner).await {
            tracing::warn!(%error, "rescue pass failed; retrying next tick");
        }
    }
}

/// Deletes finished tasks and events older than the retention, in bounded batches.
pub(super) async fn prune_once(inner: &Inner, retention: super::Retention) -> Result<(u64, u64)> {
    const BATCH: usize = 10_000;
    let now = clock::now();
    let task_cutoff = now
        - chrono::TimeDelta::from_std(retention.finished_tasks).unwrap_or(chrono::TimeDelta::MAX);
    let event_cutoff =
        now - chrono::TimeDelta::from_std(retention.events).unwrap_or(chrono::TimeDelta::MAX);
    let mut tasks = 0;
    loop {
        let pruned = inner.backend.prune_tasks(task_cutoff, BATCH).await?;
        tasks += pruned;
        if pruned < BATCH as u64 {
            break;
        }
    }
    let events = inner.backend.prune_events(event_cutoff).await?;
    if tasks > 0 || events > 0 {
        tracing::info!(tasks, events, "pruned finished tasks and old events");
    }
    Ok((tasks, events))
}

/// Prunes every `retention.interval`.
pub(super) async fn pruner(
    inner: Arc<Inner>,
    retention: super::Retention,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(retention.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break,
        }
        if let Err(error) = prune_once(&inner, retention).await {
            tracing::warn!(%error, "pruning failed; retrying next interval");
        }
    }
}
