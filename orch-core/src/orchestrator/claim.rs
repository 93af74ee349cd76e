//! The claim stage: concurrency slots, one claim loop per engine, and the idle engine's
//! direct start. Claimed tasks are registered with [`Attempts`](super::attempts::Attempts)
//! and handed to the attempt stage, one spawned attempt each.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::breaker::Admit;
use super::report::Report;
use super::{Engine, Inner, control};
use crate::clock;
use crate::error::{Error, Result};
use crate::model::{AttemptOutcome, AttemptReport, Claimed, NewTask, Task};

/// A concurrency slot: one permit of the engine's limit and one of the global limit.
pub(super) struct Slot {
    _engine: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

/// Waits until `count` slots are free at once and takes them, or `None` when `stop` fires
/// first.
pub(super) async fn acquire_slots(
    inner: &Inner,
    engine: &Engine,
    count: usize,
    stop: &CancellationToken,
) -> Option<Vec<Slot>> {
    let wanted = u32::try_from(count).ok()?;
    let mut engine_permit = tokio::select! {
        permit = engine.limit.slots.clone().acquire_many_owned(wanted) => permit.ok()?,
        _ = stop.cancelled() => return None,
    };
    let mut global_permit = tokio::select! {
        permit = inner.global.clone().acquire_many_owned(wanted) => permit.ok()?,
        _ = stop.cancelled() => return None,
    };
    let mut slots = Vec::with_capacity(count);
    for _ in 1..count {
        let (Some(engine), Some(global)) = (engine_permit.split(1), global_permit.split(1)) else {
            break;
        };
        slots.push(Slot {
            _engine: engine,
            _global: global,
        });
    }
    slots.push(Slot {
        _engine: engine_permit,
        _global: global_permit,
    });
    Some(slots)
}

/// Takes one free slot, if there is one.
pub(super) fn try_acquire_slot(inner: &Inner, engine: &Engine) -> Option<Slot> {
    let engine_permit = engine.limit.slots.clone().try_acquire_owned().ok()?;
    let global_permit = inner.global.clone().try_acquire_owned().ok()?;
    Some(Slot {
        _engine: engine_permit,
        _global: global_permit,
    })
}

/// Adds to `slots` as many free slots as one claim call may fill.
fn gather_slots(inner: &Inner, engine: &Engine, mut slots: Vec<Slot>) -> Vec<Slot> {
    while slots.len() < inner.config.tuning.claim_batch {
        match try_acquire_slot(inner, engine) {
            Some(slot) => slots.push(slot),
            None => break,
        }
    }
    slots
}

/// Slots taken for one claim call, and the wake-up version read before it.
struct ClaimRequest {
    slots: Vec<Slot>,
    seen: u64,
    /// The claim of a quarantined engine's one probe attempt.
    probe: bool,
}

/// One claim call for the slots of `request`.
async fn claim(
    inner: Arc<Inner>,
    engine: Arc<str>,
    request: ClaimRequest,
) -> (Result<Vec<Claimed>>, ClaimRequest) {
    let want = request.slots.len();
    let claimed = async {
        inner
            .backend
            .claim_tasks(&engine, want, inner.config.lease)
            .await
    }
    .instrument(tracing::debug_span!("claim", engine = %engine, want))
    .await;
    (claimed, request)
}

/// Registers the attempts of claimed tasks and spawns them, each with one of `slots`; the
/// slots left over are released.
pub(super) fn start_attempts(
    inner: &Arc<Inner>,
    engine: &Arc<Engine>,
    claimed: Vec<Claimed>,
    slots: Vec<Slot>,
) {
    for (task, slot) in claimed.into_iter().zip(slots) {
        // Registered before the attempt is spawned, so the lease keeper renews its lease
        // from the moment it was claimed, however long the attempt waits to be polled.
        let running = inner.attempts.register(task.task.id, task.lease_token);
        // Boxed so spawning moves a pointer, not the attempt's whole (large) state.
        inner.attempts.tracker.spawn(Box::pin(super::attempt::run(
            inner.clone(),
            engine.clone(),
            task,
            running,
            slot,
        )));
    }
}

/// Gives claimed tasks back to the queue unrun (their attempt not counted): the engine was
/// paused or quarantined, or the node taken out of rotation, while the claim was under way.
fn give_back(inner: &Inner, claimed: Vec<Claimed>) {
    for task in claimed {
        let report = Report::from(AttemptReport {
            task_id: task.task.id,
            lease_token: task.lease_token,
            attempt: task.task.attempt,
            outcome: AttemptOutcome::Abandoned,
        });
        // Without a reporter (the orchestrator is gone) the lease expires and the task is
        // rescued.
        let _ = inner.reports.send(report);
    }
}

/// Claims and starts tasks of one engine until shutdown.
///
/// Up to `claims_in_flight` claim calls run at once, each for the slots free when it started.
/// A call that finds nothing makes the loop idle: no new call starts until the ones under way
/// are back, and then it sleeps until the task signal changes (since the empty call began),
/// the next delayed task is due, or the poll floor passes. On shutdown no new call starts; the
/// ones under way are awaited and their tasks started (they are leased to us either way).
///
/// The controls ([`control::admit`]) come first: while the engine is paused or quarantined,
/// or the node is out of rotation, no call starts and the loop waits for a change of the
/// controls (or the end of a quarantine's cool-down); tasks of a call that was under way when
/// that began are given back unrun. A quarantined engine past its cool-down claims one task,
/// its probe.
pub(super) async fn claim_loop(inner: Arc<Inner>, engine: Arc<Engine>) {
    let stop = inner.stop_claiming.clone();
    let tuning = &inner.config.tuning;
    let signal = inner.wakeups.tasks.clone();
    let controls = inner.controls.changed.clone();
    let name = engine.name.clone();
    let max_in_flight = tuning.claims_in_flight.max(1);
    let mut in_flight: FuturesUnordered<_> = FuturesUnordered::new();
    // The signal's version seen before a claim that came back empty.
    let mut empty: Option<u64> = None;
    // After a failed claim: no new call starts before this instant.
    let mut backoff: Option<tokio::time::Instant> = None;
    let mut stopping = false;
    loop {
        // Read before looking at the controls, so a change right after is not missed.
        let controls_seen = controls.version();
        let admit = control::admit(&inner, &engine);
        if in_flight.is_empty() {
            if stopping {
                break;
            }
            if let Admit::Wait(until) = admit {
                let cool_down = async move {
                    match until {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = controls.changed_since(controls_seen) => {}
                    _ = cool_down => {}
                    _ = stop.cancelled() => break,
                }
                // Whatever was found before, look again once let through.
                empty = None;
                continue;
            }
            if let Some(until) = backoff.take() {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            if let Some(seen) = empty.take() {
                // A change while the empty call was under way: claim again at once, without
                // first asking for the next delayed task.
                if signal.version() != seen {
                    continue;
                }
                // Idle: sleep until a change, the next delayed task, or the poll floor.
                let mut sleep_for = tuning.poll_interval;
                if let Ok(Some(next)) = inner.backend.next_run_at(&name).await {
                    sleep_for = sleep_for.min(clock::until(next));
                }
                // While idle, a local dispatch may start its task itself.
                engine.idle.store(true, Ordering::Release);
                tokio::select! {
                    _ = signal.changed_since(seen) => {}
                    _ = tokio::time::sleep(sleep_for) => {}
                    _ = stop.cancelled() => {
                        engine.idle.store(false, Ordering::Release);
                        break;
                    }
                }
                engine.idle.store(false, Ordering::Release);
                continue;
            }
        }
        let probe = admit == Admit::Probe;
        let may_start = !stopping
            && empty.is_none()
            && backoff.is_none()
            && in_flight.len() < max_in_flight
            && match admit {
                Admit::All => true,
                Admit::Probe => in_flight.is_empty(),
                Admit::Wait(_) => false,
            };
        // The first call starts as soon as one slot is free; another one, beside it, only once
        // it can claim a good batch (else calls would split the work into crumbs): half a
        // batch.
        let wanted = if in_flight.is_empty() {
            1
        } else {
            tuning
                .claim_batch
                .min(engine.limit.get())
                .min(inner.config.global_concurrency)
                .div_ceil(2)
                .max(1)
        };
        tokio::select! {
            biased;
            _ = stop.cancelled(), if !stopping => stopping = true,
            Some((claimed, request)) = in_flight.next(), if !in_flight.is_empty() => {
                // (Names the types, which inference cannot see through the macro.)
                let (claimed, request): (Result<Vec<Claimed>>, ClaimRequest) = (claimed, request);
                let ClaimRequest { slots, seen, probe } = request;
                if probe {
                    let task = claimed.as_ref().ok().and_then(|c| c.first()).map(|c| c.task.id);
                    engine.breaker.probe_claimed(task);
                }
                match claimed {
                    Ok(claimed) if !probe
                        && !claimed.is_empty()
                        && control::admit(&inner, &engine) != Admit::All =>
                    {
                        give_back(&inner, claimed);
                    }
                    Ok(claimed) if claimed.is_empty() => {
                        // Keep the earliest version: a change since any empty call counts.
                        empty.get_or_insert(seen);
                    }
                    Ok(claimed) => {
                        // Work was found: whatever an earlier call saw, there may be more.
                        empty = None;
                        inner.wakeups.events_appended();
                        start_attempts(&inner, &engine, claimed, slots);
                        // Let the attempts just spawned start (and quick ones finish, freeing
                        // their slots) before the next call gathers slots.
                        tokio::task::yield_now().await;
                    }
                    Err(error) => {
                        tracing::warn!(engine = %name, %error, "claim failed; backing off");
                        backoff = Some(tokio::time::Instant::now() + tuning.poll_interval);
                    }
                }
            }
            slots = acquire_slots(&inner, &engine, wanted, &stop), if may_start => {
                let Some(slots) = slots else {
                    stopping = true;
                    continue;
                };
                // The controls may have changed while the slots were awaited.
                let admitted = match control::admit(&inner, &engine) {
                    Admit::All => !probe,
                    Admit::Probe => probe && engine.breaker.take_probe(),
                    Admit::Wait(_) => false,
                };
                if !admitted {
                    continue;
                }
                // Read before claiming, so a task created after the claim still wakes us.
                let seen = signal.version();
                let slots = if probe { slots } else { gather_slots(&inner, &engine, slots) };
                in_flight.push(claim(inner.clone(), name.clone(), ClaimRequest { slots, seen, probe }));
            }
        }
    }
}

/// Starts `task` at once if its engine is served here, idle and has a free slot, and the
/// backend stores tasks already claimed; else hands it back, having stored nothing.
pub(super) async fn start_directly(
    inner: &Arc<Inner>,
    task: NewTask,
) -> Result<std::result::Result<Task, NewTask>> {
    if !inner.direct_start
        || task.idempotency_key.is_some()
        || !task.dependencies.is_empty()
        || !task.delay.is_zero()
        || task.not_before.is_some_and(|at| at > clock::now())
    {
        return Ok(Err(task));
    }
    let engine = inner.engines.read().get(task.engine.as_str()).cloned();
    let Some(engine) = engine.filter(|engine| {
        engine.idle.load(Ordering::Acquire) && control::admit(inner, engine) == Admit::All
    }) else {
        return Ok(Err(task));
    };
    let Some(slot) = try_acquire_slot(inner, &engine) else {
        return Ok(Err(task));
    };
    // Keeps a shutdown that begins from here on waiting for this attempt too.
    let tracked = inner.attempts.tracker.token();
    if inner.stop_claiming.is_cancelled() {
        return Ok(Err(task));
    }
    let span = tracing::debug_span!("dispatch", count = 1, started_directly = true);
    // In a task of its own, so a caller that gives up cannot leave a task stored as claimed
    // that nothing runs (its lease would expire and spend an attempt).
    let inner = inner.clone();
    let started = tokio::spawn(
        async move {
            let _tracked = tracked;
            match inner
                .backend
                .create_claimed(task, inner.config.lease)
                .await?
            {
                Ok(claimed) => {
                    inner.wakeups.tasks_changed();
                    let started = claimed.task.clone();
                    start_attempts(&inner, &engine, vec![claimed], vec![slot]);
                    Ok(Ok(started))
                }
                // The slot goes back as it drops.
                Err(task) => Ok(Err(task)),
            }
        }
        .instrument(span),
    );
    started
        .await
        .map_err(|e| Error::backend("create_claimed", format!("dispatch task failed: {e}")))?
}
