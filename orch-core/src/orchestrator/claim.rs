//! The claim stage: concurrency slots, one claim loop per engine, and the idle engine's
//! direct start. Claimed tasks are registered with [`Attempts`](super::attempts::Attempts)
//! and handed to the attempt stage, one spawned attempt each.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use super::attempts::{Running, StopCause};
use super::breaker::Admit;
use super::report::Report;
use super::{Engine, Inner, control};
use crate::clock;
use crate::error::{Error, Result};
use crate::model::{AttemptOutcome, AttemptReport, Claimed, NewTask, Task, TaskId};

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

/// Adds to `slots` free slots until there are `count`, or no more are free.
fn gather_slots(inner: &Inner, engine: &Engine, mut slots: Vec<Slot>, count: usize) -> Vec<Slot> {
    while slots.len() < count {
        match try_acquire_slot(inner, engine) {
            Some(slot) => slots.push(slot),
            None => break,
        }
    }
    slots
}

/// Slots free for this engine now (its own and the global ones).
fn free_slots(inner: &Inner, engine: &Engine) -> usize {
    engine
        .limit
        .slots
        .available_permits()
        .min(inner.global.available_permits())
}

/// Waits until a slot of the engine is free (without keeping it), or `stop` fires.
async fn slot_freed(inner: &Inner, engine: &Engine, stop: &CancellationToken) {
    drop(acquire_slots(inner, engine, 1, stop).await);
}

/// What one claim call asks for, and the wake-up version read before it.
struct ClaimRequest {
    want: usize,
    seen: u64,
    /// Keeps a shutdown that begins meanwhile waiting until what the call brings is handled
    /// (started, queued or given back).
    _tracked: TaskTrackerToken,
    /// The claim of a quarantined engine's one probe attempt, with the slot it runs in.
    probe: Option<Slot>,
    /// A claim of tasks above this priority only, for a full local queue.
    above: Option<i32>,
}

/// One claim call for `request`.
async fn claim(
    inner: Arc<Inner>,
    engine: Arc<str>,
    request: ClaimRequest,
) -> (Result<Vec<Claimed>>, ClaimRequest) {
    let want = request.want;
    let lease = inner.config.lease;
    let claimed = async {
        match request.above {
            Some(priority) => {
                inner
                    .backend
                    .claim_tasks_above(&engine, want, lease, priority)
                    .await
            }
            None => inner.backend.claim_tasks(&engine, want, lease).await,
        }
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
        spawn_attempt(inner, engine, task, running, slot);
    }
}

/// Spawns the attempt of a claimed task whose attempt is registered.
fn spawn_attempt(
    inner: &Arc<Inner>,
    engine: &Arc<Engine>,
    task: Claimed,
    running: Arc<Running>,
    slot: Slot,
) {
    // Boxed so spawning moves a pointer, not the attempt's whole (large) state.
    inner.attempts.tracker.spawn(Box::pin(super::attempt::run(
        inner.clone(),
        engine.clone(),
        task,
        running,
        slot,
    )));
}

/// The report that gives a claimed task back to the queue unrun (its attempt not counted).
pub(super) fn abandoned(task: &Claimed) -> Report {
    Report::from(AttemptReport {
        task_id: task.task.id,
        lease_token: task.lease_token,
        attempt: task.task.attempt,
        outcome: AttemptOutcome::Abandoned,
    })
}

/// Gives claimed tasks back to the queue unrun (their attempt not counted): the engine was
/// paused or quarantined, or the node taken out of rotation, while the claim was under way.
fn give_back(inner: &Inner, claimed: Vec<Claimed>) {
    for task in claimed {
        // Without a reporter (the orchestrator is gone) the lease expires and the task is
        // rescued.
        let _ = inner.reports.send(abandoned(&task));
    }
}

/// Keeps an engine's inbox of handed tasks open while its claim loop runs: when the loop
/// ends (also by a panic), the inbox closes and what is still in it is given back.
struct Inbox {
    inner: Arc<Inner>,
    engine: Arc<Engine>,
}

impl Inbox {
    fn open(inner: &Arc<Inner>, engine: &Arc<Engine>) -> Self {
        *engine.handed.lock() = Some(Vec::new());
        Inbox {
            inner: inner.clone(),
            engine: engine.clone(),
        }
    }

    /// The tasks handed since the last look.
    fn take(&self) -> Vec<Claimed> {
        self.engine
            .handed
            .lock()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let left = self.engine.handed.lock().take().unwrap_or_default();
        self.engine.held.store(0, Ordering::Relaxed);
        give_back(&self.inner, left);
    }
}

/// The room granted to the outcome statements under way, per engine: counted against the
/// room of the next grant until the statement's answer is handed over (so statements side by
/// side do not each get it whole). The claim loop does not count it: most such statements
/// hand nothing, and its claims would stall behind them; a hand-over racing a claim may leave
/// the local queue over its bound by what the statement handed, until it drains.
pub(super) struct Granted(Vec<(Arc<Engine>, usize)>);

impl Drop for Granted {
    fn drop(&mut self) {
        for (engine, room) in &self.0 {
            engine.granted.fetch_sub(*room, Ordering::Relaxed);
        }
    }
}

/// The room each engine has for tasks an outcome's statement claims for it
/// ([`TaskStore::finish_attempts_and_claim`](crate::backend::TaskStore::finish_attempts_and_claim)):
/// what its free slots and local queue could take beyond what its claim loop holds and asks
/// for, what it has been handed and what statements under way may hand it. None while claims
/// stop (shutdown), nor for an engine paused, quarantined, out of rotation or without a
/// running claim loop. The grant counts until the returned guard drops.
pub(super) fn room_for_handed(inner: &Inner) -> (Vec<crate::model::EngineRoom>, Granted) {
    let mut granted = Granted(Vec::new());
    if inner.stop_claiming.is_cancelled() {
        return (Vec::new(), granted);
    }
    let room = inner
        .engines
        .read()
        .values()
        .filter_map(|engine| {
            if control::admit(inner, engine) != Admit::All {
                return None;
            }
            let handed = engine.handed.lock().as_ref().map(Vec::len)?;
            let held = engine.held.load(Ordering::Relaxed)
                + handed
                + engine.granted.load(Ordering::Relaxed);
            let room =
                (free_slots(inner, engine) + local_capacity(inner, engine)).saturating_sub(held);
            if room == 0 {
                return None;
            }
            engine.granted.fetch_add(room, Ordering::Relaxed);
            granted.0.push((engine.clone(), room));
            Some(crate::model::EngineRoom {
                engine: engine.name.to_string(),
                limit: room,
            })
        })
        .collect();
    (room, granted)
}

/// Hands tasks an outcome's statement claimed to their engines' claim loops; returns the
/// ones no claim loop can take (it ended meanwhile), to be given back.
pub(super) fn hand_over(inner: &Inner, claimed: Vec<Claimed>) -> Vec<Claimed> {
    let mut unwanted = Vec::new();
    let engines = inner.engines.read();
    let mut raised: Vec<&Arc<Engine>> = Vec::new();
    for task in claimed {
        let Some(engine) = engines.get(task.task.engine.as_str()) else {
            unwanted.push(task);
            continue;
        };
        match engine.handed.lock().as_mut() {
            Some(inbox) => inbox.push(task),
            None => {
                unwanted.push(task);
                continue;
            }
        }
        if !raised.iter().any(|e| Arc::ptr_eq(e, engine)) {
            raised.push(engine);
        }
    }
    for engine in raised {
        engine.handed_signal.raise();
    }
    unwanted
}

/// Claim order: higher priority first, then earlier due time, then smaller id.
type ClaimKey = (i32, std::cmp::Reverse<(i64, TaskId)>);

/// A claimed task in an engine's local queue, waiting for a slot; its attempt is registered
/// (so its lease is renewed and a cancel reaches it). Small (the task is boxed, its order
/// key kept beside it), so the heap moves little.
struct Waiting {
    key: ClaimKey,
    claimed: Box<Claimed>,
    running: Arc<Running>,
}

impl Waiting {
    fn new(claimed: Claimed, running: Arc<Running>) -> Self {
        let task = &claimed.task;
        let key = (
            task.priority,
            std::cmp::Reverse((task.run_at.timestamp_micros(), task.id)),
        );
        Waiting {
            key,
            claimed: Box::new(claimed),
            running,
        }
    }
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

/// An engine's local queue: tasks claimed ahead of free slots, best first. Whatever is still
/// in it when it is dropped (shutdown, a panicking claim loop) is given back to the queue.
struct LocalQueue {
    inner: Arc<Inner>,
    waiting: std::collections::BinaryHeap<Waiting>,
    /// Held while tasks wait: shutdown waits for them to be given back.
    tracked: Option<TaskTrackerToken>,
}

impl LocalQueue {
    fn new(inner: Arc<Inner>) -> Self {
        LocalQueue {
            inner,
            waiting: std::collections::BinaryHeap::new(),
            tracked: None,
        }
    }

    fn len(&self) -> usize {
        self.waiting.len()
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The lowest priority waiting, and how many tasks wait at it.
    fn lowest_priority(&self) -> Option<(i32, usize)> {
        self.waiting.iter().fold(None, |lowest, w| match lowest {
            Some((p, n)) if p < w.key.0 => Some((p, n)),
            Some((p, n)) if p == w.key.0 => Some((p, n + 1)),
            _ => Some((w.key.0, 1)),
        })
    }

    /// Starts claimed tasks (in claim order, as the backend returns them) in the slots free
    /// now when nothing waits, and queues the rest (registering their attempts).
    fn take(&mut self, engine: &Arc<Engine>, claimed: Vec<Claimed>) {
        if !self.is_empty() {
            self.extend(claimed);
            self.start_ready(engine, Vec::new());
            return;
        }
        let slots = gather_slots(&self.inner, engine, Vec::new(), claimed.len());
        let mut claimed = claimed.into_iter();
        start_attempts(
            &self.inner,
            engine,
            claimed.by_ref().take(slots.len()).collect(),
            slots,
        );
        self.extend(claimed.collect());
    }

    /// Registers claimed tasks' attempts and queues them.
    fn extend(&mut self, claimed: Vec<Claimed>) {
        if claimed.is_empty() {
            return;
        }
        if self.tracked.is_none() {
            self.tracked = Some(self.inner.attempts.tracker.token());
        }
        for task in claimed {
            let running = self.inner.attempts.register(task.task.id, task.lease_token);
            self.waiting.push(Waiting::new(task, running));
        }
    }

    /// Lets a shutdown go on once nothing waits.
    fn untrack_if_empty(&mut self) {
        if self.waiting.is_empty() {
            self.tracked = None;
        }
    }

    /// The best waiting task.
    fn pop(&mut self) -> Option<Waiting> {
        let next = self.waiting.pop();
        self.untrack_if_empty();
        next
    }

    /// Gives the lowest waiting tasks back until at most `keep` wait.
    fn trim(&mut self, keep: usize) {
        if self.waiting.len() <= keep {
            return;
        }
        let mut all = std::mem::take(&mut self.waiting).into_sorted_vec();
        // Ascending: the lowest first.
        let surplus = all.len() - keep;
        let rest = all.split_off(surplus);
        self.waiting = rest.into();
        self.give_back_these(all);
        self.untrack_if_empty();
    }

    /// Gives every waiting task back.
    fn give_back(&mut self) {
        let all = std::mem::take(&mut self.waiting).into_vec();
        self.give_back_these(all);
        self.untrack_if_empty();
    }

    /// Sends each task's abandoned report; a task stopped as cancelled or with its lease lost
    /// is only forgotten.
    fn give_back_these(&self, tasks: Vec<Waiting>) {
        for waiting in tasks {
            let Claimed { task, lease_token } = &*waiting.claimed;
            if matches!(
                waiting.running.cause(),
                StopCause::Cancelled | StopCause::LeaseLost
            ) {
                self.inner.attempts.finished(task.id, *lease_token);
                continue;
            }
            // Registered (its lease renewed) until the report is recorded, as an attempt's
            // outcome is; no longer counted among the attempts a shutdown stops.
            waiting.running.mark_reporting();
            if self
                .inner
                .reports
                .send(abandoned(&waiting.claimed))
                .is_err()
            {
                // No reporter: the lease expires and the task is rescued.
                self.inner.attempts.finished(task.id, *lease_token);
            }
        }
    }

    /// Takes the waiting tasks that were stopped while they waited out of the queue: given
    /// back when stopped as abandoned (a shutdown's deadline), else (cancelled, resolved,
    /// lease lost) forgotten. They would only take a slot and a place in the queue.
    fn drop_stopped(&mut self) {
        if !self.waiting.iter().any(|w| w.running.cancel.is_cancelled()) {
            return;
        }
        let (stopped, live): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.waiting)
            .into_vec()
            .into_iter()
            .partition(|w| w.running.cancel.is_cancelled());
        self.waiting = live.into();
        self.give_back_these(stopped);
        self.untrack_if_empty();
    }

    /// Starts waiting tasks, best first, in the slots free now.
    fn start_ready(&mut self, engine: &Arc<Engine>, slots: Vec<Slot>) {
        let want = self.len();
        let slots = gather_slots(&self.inner, engine, slots, want);
        for slot in slots {
            let Some(waiting) = self.pop() else { break };
            spawn_attempt(&self.inner, engine, *waiting.claimed, waiting.running, slot);
        }
    }
}

impl Drop for LocalQueue {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Attempts shorter than this on average let an engine keep its whole local queue; longer
/// ones, as many waiting tasks as it has slots.
const SHORT_ATTEMPT: Duration = Duration::from_millis(10);

/// How many claimed tasks the engine may keep waiting for a slot: [`Tuning::local_queue`]
/// while its attempts are short (a claim's round trip is then worth many of them), else no
/// more than its concurrency limit (tasks claimed far ahead of a slow engine would wait
/// long, and another node could have run them). Until an attempt has finished, the limit.
/// When the capacity shrinks (attempts grew slower, the limit was lowered), the tasks already
/// waiting stay (giving them back to claim others would only churn); no claim is made until
/// fewer wait.
///
/// [`Tuning::local_queue`]: super::Tuning::local_queue
fn local_capacity(inner: &Inner, engine: &Engine) -> usize {
    let configured = inner.local_queue;
    let mean = engine.attempt_micros.load(Ordering::Relaxed);
    let short = mean > 0 && u128::from(mean) < SHORT_ATTEMPT.as_micros();
    if short {
        configured
    } else {
        configured.min(engine.limit.get())
    }
}

/// Shortest time between two looks for tasks more urgent than a full local queue's lowest:
/// the task signal changes with every task created or requeued anywhere, and most such looks
/// find nothing.
const URGENT_LOOK_EVERY: Duration = Duration::from_millis(20);

/// Claims and starts tasks of one engine until shutdown.
///
/// Claims run ahead of the engine's free slots: up to `claims_in_flight` calls at once, each
/// for what the free slots and the engine's local queue (see
/// [`Tuning::local_queue`](super::Tuning::local_queue)) can take beyond what already waits
/// and what the calls under way ask for. Claimed tasks start best first as slots free; the
/// rest wait in the local queue, their leases renewed. A call that finds nothing makes the
/// loop idle once nothing waits: no new call starts until the ones under way are back, and
/// then it sleeps until the task signal changes (since the empty call began), the next delayed
/// task is due, or the poll floor passes. While the local queue is full, a change of the task
/// signal (or the poll floor) makes the loop claim tasks of higher priority than the lowest
/// waiting one (at most every [`URGENT_LOOK_EVERY`]), giving back as many of the lowest as it
/// got and could not start at once. On shutdown no new call starts; what waits and what the
/// calls under way bring is given back unrun (what waits when shutdown's deadline stops every
/// attempt too).
///
/// The controls ([`control::admit`]) come first: while the engine is paused or quarantined,
/// or the node is out of rotation, no call starts, what waits is given back as soon as the
/// controls change, and the loop waits for a change of the controls (or the end of a
/// quarantine's cool-down); tasks of a call that was under way when that began are given back
/// unrun. A quarantined engine past its cool-down claims one task, its probe, in a slot taken
/// first, and starts it.
pub(super) async fn claim_loop(inner: Arc<Inner>, engine: Arc<Engine>) {
    let stop = inner.stop_claiming.clone();
    let tuning = &inner.config.tuning;
    let signal = inner.wakeups.tasks.clone();
    let controls = inner.controls.changed.clone();
    let name = engine.name.clone();
    let max_in_flight = tuning.claims_in_flight.max(1);
    let mut in_flight: FuturesUnordered<_> = FuturesUnordered::new();
    // Declared before the local queue, so it closes after the queue is given back.
    let inbox = Inbox::open(&inner, &engine);
    let mut local = LocalQueue::new(inner.clone());
    // Tasks asked for by the calls under way.
    let mut asked = 0usize;
    // The signal's version seen before a claim that came back empty.
    let mut empty: Option<u64> = None;
    // The signal's version when the local queue last looked for more urgent tasks, and the
    // earliest instant of the next look.
    let mut urgent_seen = signal.version();
    // The version of `Attempts::stopped` when the local queue was last looked at for stopped
    // tasks.
    let mut stops_checked = inner.attempts.stopped.version();
    let mut next_urgent_look = tokio::time::Instant::now();
    // While tasks wait, when to look again without a signal (the poll floor).
    let mut next_poll = tokio::time::Instant::now() + tuning.poll_interval;
    // After a failed claim: no new call starts before this instant.
    let mut backoff: Option<tokio::time::Instant> = None;
    let mut stopping = false;
    let claim_request = |want: usize, seen: u64, above: Option<i32>| ClaimRequest {
        want,
        seen,
        _tracked: inner.attempts.tracker.token(),
        probe: None,
        above,
    };
    loop {
        // Read before looking at the controls, so a change right after is not missed.
        let controls_seen = controls.version();
        let stops_seen = inner.attempts.stopped.version();
        let stopped_since = stops_seen != stops_checked;
        stops_checked = stops_seen;
        let handed_seen = engine.handed_signal.version();
        let admit = control::admit(&inner, &engine);
        let handed = inbox.take();
        if stopping || admit != Admit::All {
            local.give_back();
            give_back(&inner, handed);
        } else if !handed.is_empty() {
            inner.wakeups.events_appended();
            local.take(&engine, handed);
        }
        engine.held.store(local.len() + asked, Ordering::Relaxed);
        if stopped_since {
            local.drop_stopped();
        }
        if backoff.is_some_and(|until| tokio::time::Instant::now() >= until) && !local.is_empty() {
            backoff = None;
        }
        if in_flight.is_empty() && local.is_empty() {
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
                    _ = engine.handed_signal.changed_since(handed_seen) => {}
                    _ = stop.cancelled() => break,
                }
                // Whatever was found before, look again once let through.
                empty = None;
                continue;
            }
            if let Some(until) = backoff.take() {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = engine.handed_signal.changed_since(handed_seen) => {
                        // Not through yet: the backoff holds for claims.
                        backoff = Some(until);
                    }
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
                    _ = engine.handed_signal.changed_since(handed_seen) => {
                        // Handed tasks say nothing of the queue: still idle.
                        empty = Some(seen);
                    }
                    _ = stop.cancelled() => {
                        engine.idle.store(false, Ordering::Release);
                        break;
                    }
                }
                engine.idle.store(false, Ordering::Release);
                continue;
            }
        }
        // The poll floor holds while tasks wait too (a delayed task come due raises no
        // signal, nor does another process's work on a backend without change signals).
        let polled = !local.is_empty() && tokio::time::Instant::now() >= next_poll;
        if let Some(seen) = empty
            && (polled || signal.version() != seen)
        {
            // Something changed since a call came back empty: worth another.
            empty = None;
        }
        let calm = !stopping && backoff.is_none() && in_flight.len() < max_in_flight;
        let free = free_slots(&inner, &engine);
        // The local queue is full and the task signal changed: a look for more urgent tasks
        // is due now, or later (`next_urgent_look`).
        let mut urgent_waits = false;
        if admit == Admit::All && calm {
            let capacity = local_capacity(&inner, &engine);
            // (Room granted to outcome statements under way is not counted: most hand
            // nothing, and claims would stall behind them.)
            let room = (free + capacity).saturating_sub(local.len() + asked);
            // The first call starts as soon as there is room for one task; another one, beside
            // it, only once it can claim a good batch (else calls would split the work into
            // crumbs): half a batch.
            let worth = if in_flight.is_empty() {
                1
            } else {
                tuning
                    .claim_batch
                    .min(engine.limit.get() + capacity)
                    .min(inner.config.global_concurrency + capacity)
                    .div_ceil(2)
                    .max(1)
            };
            if empty.is_none() && room >= worth {
                let want = room.min(tuning.claim_batch);
                asked += want;
                // Read before claiming, so a task created after the claim still wakes us.
                let seen = signal.version();
                urgent_seen = seen;
                next_poll = tokio::time::Instant::now() + tuning.poll_interval;
                in_flight.push(claim(
                    inner.clone(),
                    name.clone(),
                    claim_request(want, seen, None),
                ));
                continue;
            }
            let version = signal.version();
            if capacity > 0
                && local.len() >= capacity
                && (polled || version != urgent_seen)
                && let Some((lowest, at_lowest)) = local.lowest_priority()
                && lowest < i32::MAX
            {
                if tokio::time::Instant::now() >= next_urgent_look {
                    urgent_seen = version;
                    next_urgent_look = tokio::time::Instant::now() + URGENT_LOOK_EVERY;
                    next_poll = tokio::time::Instant::now() + tuning.poll_interval;
                    let want = at_lowest.min(tuning.claim_batch);
                    in_flight.push(claim(
                        inner.clone(),
                        name.clone(),
                        claim_request(want, version, Some(lowest)),
                    ));
                    continue;
                }
                urgent_waits = true;
            } else {
                // Nothing to look for: this change (and this poll) is seen.
                urgent_seen = version;
                if polled {
                    next_poll = tokio::time::Instant::now() + tuning.poll_interval;
                }
            }
        }
        let may_start = !stopping && admit == Admit::All && !local.is_empty();
        let may_probe = admit == Admit::Probe
            && calm
            && in_flight.is_empty()
            && local.is_empty()
            && empty.is_none();
        // No room to claim for (every slot busy, the local queue off): look again when a slot
        // frees.
        let wait_for_slot = !stopping && admit == Admit::All && local.is_empty() && free == 0;
        // Tasks wait: look again when the task signal changes (see above), when the controls
        // change (a pause gives them back), or when a backoff ends.
        let watch = !stopping && !local.is_empty();
        let backoff_until = backoff;
        tokio::select! {
            biased;
            _ = stop.cancelled(), if !stopping => stopping = true,
            Some((claimed, request)) = in_flight.next(), if !in_flight.is_empty() => {
                // (Names the types, which inference cannot see through the macro.)
                let (claimed, request): (Result<Vec<Claimed>>, ClaimRequest) = (claimed, request);
                let ClaimRequest { want, seen, probe, above, _tracked } = request;
                if above.is_none() {
                    // (A look for more urgent tasks is not counted: it makes its own room.)
                    asked = asked.saturating_sub(want);
                }
                if let Some(slot) = probe {
                    let task = claimed.as_ref().ok().and_then(|c| c.first()).map(|c| c.task.id);
                    engine.breaker.probe_claimed(task);
                    if let Ok(found) = &claimed
                        && !found.is_empty()
                    {
                        // The probe runs whatever the controls say now (it is their test).
                        start_attempts(&inner, &engine, claimed.unwrap_or_default(), vec![slot]);
                        continue;
                    }
                }
                match claimed {
                    Ok(claimed) if !claimed.is_empty()
                        && (stopping || control::admit(&inner, &engine) != Admit::All) =>
                    {
                        give_back(&inner, claimed);
                    }
                    Ok(claimed) if claimed.is_empty() => {
                        // A look for more urgent tasks finding none says nothing of the rest.
                        if above.is_none() {
                            // Keep the earliest version: a change since any empty call counts.
                            empty.get_or_insert(seen);
                        }
                    }
                    Ok(claimed) => {
                        // Work was found: whatever an earlier call saw, there may be more.
                        if above.is_none() {
                            empty = None;
                        }
                        inner.wakeups.events_appended();
                        let held = local.len();
                        local.take(&engine, claimed);
                        if above.is_some() {
                            // As many of the lowest go back as more urgent ones came (and did
                            // not start at once).
                            // Room left for the regular claims under way counts as taken.
                            let bound = local_capacity(&inner, &engine).saturating_sub(asked);
                            local.trim(held.max(bound));
                        }
                        // Let the attempts just spawned start (and quick ones finish, freeing
                        // their slots) before the next call is sized.
                        tokio::task::yield_now().await;
                    }
                    Err(error) => {
                        tracing::warn!(engine = %name, %error, "claim failed; backing off");
                        backoff = Some(tokio::time::Instant::now() + tuning.poll_interval);
                    }
                }
            }
            slots = acquire_slots(&inner, &engine, 1, &stop), if may_start => {
                let Some(slots) = slots else {
                    stopping = true;
                    continue;
                };
                // The controls may have changed while the slot was awaited.
                if control::admit(&inner, &engine) == Admit::All {
                    local.start_ready(&engine, slots);
                }
            }
            slots = acquire_slots(&inner, &engine, 1, &stop), if may_probe => {
                let Some(mut slots) = slots else {
                    stopping = true;
                    continue;
                };
                // The controls may have changed while the slot was awaited.
                if control::admit(&inner, &engine) != Admit::Probe || !engine.breaker.take_probe() {
                    continue;
                }
                let seen = signal.version();
                asked += 1;
                let mut request = claim_request(1, seen, None);
                request.probe = slots.pop();
                in_flight.push(claim(inner.clone(), name.clone(), request));
            }
            _ = slot_freed(&inner, &engine, &stop), if wait_for_slot => {}
            // Only while calm: then every change is seen above (claimed for, looked at, or
            // waiting for the next look).
            _ = signal.changed_since(urgent_seen), if watch && calm && !urgent_waits => {}
            _ = tokio::time::sleep_until(next_urgent_look), if watch && urgent_waits => {}
            _ = controls.changed_since(controls_seen), if watch => {}
            _ = tokio::time::sleep_until(next_poll), if watch && calm && !urgent_waits => {}
            _ = inner.attempts.stopped.changed_since(stops_seen), if watch => {}
            _ = engine.handed_signal.changed_since(handed_seen), if !stopping => {}
            _ = async { if let Some(until) = backoff_until { tokio::time::sleep_until(until).await } },
                if watch && backoff_until.is_some() => {}
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
