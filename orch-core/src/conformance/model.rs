//! The model-based property: random sequences of dispatch (tasks that may depend on earlier
//! tasks and on each other, with each failure policy), claim, attempt outcomes (one by one
//! and in batches), heartbeat, cancel, resolve, rescue and prune, run against a backend and
//! against a reference model that applies orch-core's [`rules`] to a plain list of tasks
//! (what a task's end means for the tasks waiting for it, level by level, as the backend
//! contract orders it).
//! After every operation the backend must answer as the model does (which tasks a claim
//! returns and in what order, which reports it accepts, what a cancel or a prune does); at
//! the end every task's state, the counts per engine and the whole event sequence must be the
//! model's. Every backend that passes gives the same states and the same events for the same
//! operations.
//!
//! Time: each operation happens at least a millisecond after the one before (the runner
//! sleeps, which tokio's paused clock turns into an instant advance), so "now" strictly grows
//! from one operation to the next on every backend clock, and the model keeps one tick per
//! operation. Delays are an hour (never due during a run) or zero; a short lease is a
//! microsecond (expired by the next operation), a long one an hour.
//!
//! A failing sequence is shrunk (operations removed one at a time while it still fails) and
//! printed with the random seed that generated it; `ORCH_MODEL_SEED=<seed>` replays a run.

use std::cmp::Reverse;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use std::collections::{BTreeMap, HashMap};

use crate::backend::SharedBackend;
use crate::error::Error;
use crate::model::rules::{self, Change, DependencyEnd as Doom};
use crate::model::{
    AttemptOutcome, AttemptReport, EngineCounts, HeldLease, LeaseToken, NewDependency, NewTask,
    OnParentFailure, QueueDepth, Resolution, Step, Task, TaskId, TaskSpec, TaskStatus,
};

/// [`rules::dependency_counts`] at a position counted by `enumerate`.
fn counts(status: TaskStatus, dependency: &NewDependency, position: usize) -> Option<Option<Doom>> {
    rules::dependency_counts(
        status,
        dependency,
        u32::try_from(position).unwrap_or(u32::MAX),
    )
}

/// Operations per generated sequence, at most.
const MAX_OPS: usize = 40;

const ENGINES: [&str; 2] = ["e0", "e1"];
const LONG: Duration = Duration::from_secs(3600);
const SHORT: Duration = Duration::from_micros(1);

/// A retry after an attempt failed or timed out.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Retry {
    No,
    Now,
    Later,
}

impl Retry {
    fn delay(self) -> Option<Duration> {
        match self {
            Retry::No => None,
            Retry::Now => Some(Duration::ZERO),
            Retry::Later => Some(LONG),
        }
    }
}

/// How a reported attempt ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    Succeeded(u8),
    Failed(Retry),
    TimedOut(Retry),
    Abandoned,
}

impl Ending {
    fn outcome(self) -> AttemptOutcome {
        match self {
            Ending::Succeeded(n) => AttemptOutcome::Succeeded {
                result: json!({ "n": n }),
            },
            Ending::Failed(retry) => AttemptOutcome::Failed {
                error: format!("failure {}", retry as u8),
                retry_in: retry.delay(),
            },
            Ending::TimedOut(retry) => AttemptOutcome::TimedOut {
                retry_in: retry.delay(),
            },
            Ending::Abandoned => AttemptOutcome::Abandoned,
        }
    }
}

/// A parent a dispatched task names.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pick {
    /// A task dispatched before (by dispatch order, modulo their number).
    Earlier(usize),
    /// A task earlier in the same dispatch (modulo the task's position in it).
    Batch(usize),
}

/// One task of a dispatch.
#[derive(Debug, Clone, PartialEq)]
struct Dispatched {
    engine: usize,
    priority: i32,
    delayed: bool,
    max_attempts: u32,
    key: Option<u8>,
    after: Vec<(Pick, OnParentFailure)>,
}

/// One operation. Picks choose among the tasks dispatched (or the attempts claimed) so far,
/// modulo their number, so any sequence is valid and shrinking keeps it so.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Dispatch(Vec<Dispatched>),
    Claim {
        engine: usize,
        limit: usize,
        short: bool,
    },
    Finish(Vec<(usize, Ending)>),
    Heartbeat(usize),
    Cancel(usize),
    Resolve(usize, bool),
    Rescue,
    Prune,
}

fn generate(seed: u64) -> Vec<Op> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let len = rng.usize(5..=MAX_OPS);
    let retry = |rng: &mut fastrand::Rng| match rng.u8(0..3) {
        0 => Retry::No,
        1 => Retry::Now,
        _ => Retry::Later,
    };
    let policy = |rng: &mut fastrand::Rng| match rng.u8(0..3) {
        0 => OnParentFailure::Fail,
        1 => OnParentFailure::Cancel,
        _ => OnParentFailure::RunAnyway,
    };
    (0..len)
        .map(|_| match rng.u8(0..20) {
            0..=4 => Op::Dispatch(
                (0..rng.usize(1..=3))
                    .map(|_| Dispatched {
                        engine: rng.usize(0..ENGINES.len()),
                        priority: rng.i32(0..3),
                        delayed: rng.u8(0..6) == 0,
                        max_attempts: rng.u32(1..=3),
                        key: (rng.u8(0..4) == 0).then(|| rng.u8(0..3)),
                        after: (0..rng.usize(0..=2) * usize::from(rng.u8(0..3) > 0))
                            .map(|_| {
                                let pick = if rng.bool() {
                                    Pick::Earlier(rng.usize(0..64))
                                } else {
                                    Pick::Batch(rng.usize(0..64))
                                };
                                (pick, policy(&mut rng))
                            })
                            .collect(),
                    })
                    .collect(),
            ),
            5..=8 => Op::Claim {
                engine: rng.usize(0..ENGINES.len()),
                limit: rng.usize(1..=3),
                short: rng.u8(0..4) == 0,
            },
            9..=13 => Op::Finish(
                (0..rng.usize(1..=3))
                    .map(|_| {
                        let ending = match rng.u8(0..6) {
                            0 | 1 => Ending::Succeeded(rng.u8(0..100)),
                            2 => Ending::Failed(retry(&mut rng)),
                            3 => Ending::TimedOut(retry(&mut rng)),
                            _ => Ending::Abandoned,
                        };
                        (rng.usize(0..64), ending)
                    })
                    .collect(),
            ),
            14 => Op::Heartbeat(rng.usize(0..64)),
            15 | 16 => Op::Cancel(rng.usize(0..64)),
            17 => Op::Resolve(rng.usize(0..64), rng.bool()),
            18 => Op::Rescue,
            _ => Op::Prune,
        })
        .collect()
}

/// A task in the model.
struct ModelTask {
    task: Task,
    /// Its dependencies, resolved.
    parents: Vec<NewDependency>,
    /// The tasks that depend on it.
    children: Vec<TaskId>,
    /// The model's token of the current lease (`Some` exactly while running).
    lease: Option<LeaseToken>,
    /// Whether the current lease has expired (a short lease, not renewed since).
    expired_at: Option<u64>,
    /// The tick the task finished at.
    finished_tick: Option<u64>,
}

/// An attempt handed out by a claim: the backend's token and the model's.
struct Attempt {
    task_id: TaskId,
    attempt: u32,
    backend_token: LeaseToken,
    model_token: LeaseToken,
}

/// An event without its sequence number and time: kind, task (by dispatch order), engine,
/// attempt, data.
type EventShape = (String, Option<usize>, Option<String>, Option<u32>, Value);

/// The reference model: the rules applied to a list of tasks, with a logical clock.
#[derive(Default)]
struct Model {
    tasks: Vec<ModelTask>,
    /// Every task id dispatched, in order (pruned ones too): the picks' domain and the labels
    /// of events.
    ids: Vec<TaskId>,
    attempts: Vec<Attempt>,
    events: Vec<EventShape>,
    tick: u64,
    /// Tasks that finished in the operation under way, in order.
    ended: Vec<TaskId>,
}

fn at(tick: u64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + TimeDelta::milliseconds(tick as i64)
}

impl Model {
    fn now(&self) -> DateTime<Utc> {
        at(self.tick)
    }

    fn label(&self, id: Option<TaskId>) -> Option<usize> {
        id.and_then(|id| self.ids.iter().position(|known| *known == id))
    }

    fn find(&mut self, id: TaskId) -> Option<&mut ModelTask> {
        self.tasks.iter_mut().find(|t| t.task.id == id)
    }

    /// Applies a change to task `id` and records its events.
    fn apply(&mut self, id: TaskId, change: Change) -> Result<TaskStatus, String> {
        let now = self.now();
        let tick = self.tick;
        let lease = change.lease;
        let finishes = change.to.is_terminal() && !change.from.is_terminal();
        let task = self.find(id).ok_or("model: no such task")?;
        let events = change
            .apply(&mut task.task, now)
            .map_err(|e| format!("model: {e}"))?;
        let status = task.task.status;
        task.lease = (status == TaskStatus::Running).then(LeaseToken::new);
        task.expired_at = match lease {
            Some(lease) if lease == SHORT => Some(tick),
            _ => None,
        };
        if status.is_terminal() && finishes {
            task.finished_tick = Some(tick);
            self.ended.push(id);
        }
        for event in events {
            let label = self.label(event.task_id);
            self.events.push((
                event.kind.to_string(),
                label,
                event.engine,
                event.attempt,
                event.data,
            ));
        }
        Ok(status)
    }

    fn claim(&mut self, engine: &str, limit: usize, lease: Duration) -> Vec<TaskId> {
        let now = self.now();
        let mut due: Vec<&ModelTask> = self
            .tasks
            .iter()
            .filter(|t| {
                t.task.status == TaskStatus::Queued
                    && t.task.engine == engine
                    && t.task.run_at <= now
            })
            .collect();
        due.sort_by_key(|t| (Reverse(t.task.priority), t.task.run_at, t.task.id));
        let picked: Vec<TaskId> = due.into_iter().take(limit).map(|t| t.task.id).collect();
        for id in &picked {
            self.apply(*id, rules::claim(lease))
                .expect("a due queued task can be claimed");
        }
        picked
    }

    /// What ending the attempt with `outcome` does: the new state, or why it is refused.
    fn finish(&mut self, attempt: usize, outcome: AttemptOutcome) -> Result<TaskStatus, Refusal> {
        let (task_id, number, token) = {
            let a = &self.attempts[attempt];
            (a.task_id, a.attempt, a.model_token)
        };
        let Some(task) = self.find(task_id) else {
            return Err(Refusal::NotFound);
        };
        if task.lease != Some(token) || task.task.attempt != number {
            return Err(Refusal::LeaseLost);
        }
        self.apply(task_id, rules::end_attempt(number, outcome))
            .map_err(Refusal::Model)
    }

    /// Applies what the tasks ended in this operation, and the tasks marked to end (`doomed`),
    /// mean for the tasks waiting for them, level by level in the backend contract's order.
    fn settle(&mut self, mut doomed: BTreeMap<TaskId, Doom>) -> Result<(), String> {
        loop {
            let level = std::mem::take(&mut self.ended);
            if !level.is_empty() {
                let mut per_child: BTreeMap<TaskId, (u32, Option<Doom>)> = BTreeMap::new();
                for parent in &level {
                    let Some(p) = self.tasks.iter().find(|t| t.task.id == *parent) else {
                        continue;
                    };
                    let status = p.task.status;
                    // Each child once; each of its edges to this parent counts (two stood-in
                    // steps can make one task a parent twice).
                    let children: std::collections::BTreeSet<TaskId> =
                        p.children.iter().copied().collect();
                    for child in children {
                        let Some(c) = self.tasks.iter().find(|t| t.task.id == child) else {
                            continue;
                        };
                        if c.task.status != TaskStatus::Waiting {
                            continue;
                        }
                        for (position, dependency) in c
                            .parents
                            .iter()
                            .enumerate()
                            .filter(|(_, d)| d.parent == *parent)
                        {
                            let entry = per_child.entry(child).or_default();
                            match counts(status, dependency, position) {
                                None => entry.0 += 1,
                                Some(Some(doom))
                                    if entry
                                        .1
                                        .is_none_or(|first| doom.position < first.position) =>
                                {
                                    entry.1 = Some(doom);
                                }
                                Some(_) => {}
                            }
                        }
                    }
                }
                for (child, (satisfied, doom)) in per_child {
                    let task = self.find(child).ok_or("model: a child vanished")?;
                    task.task.waiting_for = task.task.waiting_for.saturating_sub(satisfied);
                    if let Some(doom) = doom {
                        doomed.entry(child).or_insert(doom);
                    } else if task.task.waiting_for == 0 && !doomed.contains_key(&child) {
                        self.apply(child, rules::release())?;
                    }
                }
                continue;
            }
            if doomed.is_empty() {
                return Ok(());
            }
            for (id, doom) in std::mem::take(&mut doomed) {
                if self.find(id).map(|t| t.task.status) != Some(TaskStatus::Waiting) {
                    continue;
                }
                let change = rules::dependency_failed(doom.parent, doom.parent_status, doom.to)
                    .map_err(|e| format!("model: {e}"))?;
                self.apply(id, change)?;
            }
        }
    }

    /// Stores a planned dispatch as a backend does; `Err(None)` when a backend must refuse
    /// it (an unknown parent), nothing stored. Returns, per task, the id it stands for.
    fn create(&mut self, news: Vec<NewTask>) -> Result<Vec<(TaskId, bool)>, Option<String>> {
        let now = self.now();
        let mut stand_in: HashMap<TaskId, TaskId> = HashMap::new();
        let mut batch_keys: HashMap<String, TaskId> = HashMap::new();
        for new in &news {
            if let Some(key) = &new.idempotency_key {
                if let Some(existing) = self
                    .tasks
                    .iter()
                    .find(|t| t.task.idempotency_key.as_ref() == Some(key))
                {
                    stand_in.insert(new.id, existing.task.id);
                } else if let Some(first) = batch_keys.get(key) {
                    stand_in.insert(new.id, *first);
                } else {
                    batch_keys.insert(key.clone(), new.id);
                }
            }
        }
        let stored: Vec<TaskId> = news
            .iter()
            .map(|n| n.id)
            .filter(|id| !stand_in.contains_key(id))
            .collect();
        let resolve = |id: TaskId| stand_in.get(&id).copied().unwrap_or(id);
        for new in news.iter().filter(|n| stored.contains(&n.id)) {
            for dependency in &new.dependencies {
                let parent = resolve(dependency.parent);
                if !stored.contains(&parent) && self.tasks.iter().all(|t| t.task.id != parent) {
                    return Err(None);
                }
            }
        }
        let mut out = Vec::with_capacity(news.len());
        let mut doomed = BTreeMap::new();
        for mut new in news {
            if let Some(existing) = stand_in.get(&new.id) {
                out.push((*existing, false));
                continue;
            }
            let mut waiting_for = 0;
            let mut doom = None;
            for dependency in &mut new.dependencies {
                dependency.parent = resolve(dependency.parent);
            }
            for (position, dependency) in new.dependencies.iter().enumerate() {
                let status = if stored.contains(&dependency.parent) {
                    TaskStatus::Waiting
                } else {
                    self.tasks
                        .iter()
                        .find(|t| t.task.id == dependency.parent)
                        .map_or(TaskStatus::Succeeded, |t| t.task.status)
                };
                if let Some(ends) = counts(status, dependency, position) {
                    waiting_for += 1;
                    if doom.is_none() {
                        doom = ends;
                    }
                }
            }
            let parents = std::mem::take(&mut new.dependencies);
            let run_at = rules::first_run_at(&new, now);
            let (task, event) = if waiting_for > 0 {
                rules::create_waiting(new, now, run_at, waiting_for)
            } else {
                rules::create(new, now, run_at)
            };
            if let Some(doom) = doom {
                doomed.insert(task.id, doom);
            }
            for dependency in &parents {
                if let Some(parent) = self.find(dependency.parent) {
                    parent.children.push(task.id);
                }
            }
            self.ids.push(task.id);
            self.events.push((
                event.kind.to_string(),
                self.label(event.task_id),
                event.engine,
                event.attempt,
                event.data,
            ));
            out.push((task.id, true));
            self.tasks.push(ModelTask {
                task,
                parents,
                children: Vec::new(),
                lease: None,
                expired_at: None,
                finished_tick: None,
            });
        }
        // Children stored before their parents in the dispatch.
        let links: Vec<(TaskId, TaskId)> = self
            .tasks
            .iter()
            .flat_map(|t| t.parents.iter().map(move |d| (d.parent, t.task.id)))
            .collect();
        for (parent, child) in links {
            if let Some(p) = self.find(parent)
                && !p.children.contains(&child)
            {
                p.children.push(child);
            }
        }
        self.settle(doomed).map_err(Some)?;
        Ok(out)
    }

    fn counts(&self) -> (Vec<QueueDepth>, Vec<EngineCounts>) {
        let now = self.now();
        let mut depth: Vec<QueueDepth> = Vec::new();
        let mut counts: Vec<EngineCounts> = Vec::new();
        let mut tasks: Vec<&Task> = self.tasks.iter().map(|t| &t.task).collect();
        tasks.sort_by_key(|t| (t.engine.clone(), t.priority));
        for task in tasks {
            if task.status == TaskStatus::Queued {
                match depth.last_mut() {
                    Some(last) if last.engine == task.engine && last.priority == task.priority => {
                        last.queued += 1
                    }
                    _ => depth.push(QueueDepth {
                        engine: task.engine.clone(),
                        priority: task.priority,
                        queued: 1,
                    }),
                }
            }
            if counts.last().is_none_or(|last| last.engine != task.engine) {
                counts.push(EngineCounts::new(task.engine.clone()));
            }
            if let Some(last) = counts.last_mut() {
                last.add(task.status, task.run_at > now, 1);
            }
        }
        (depth, counts)
    }
}

/// Why the model refuses a report.
#[derive(Debug, PartialEq)]
enum Refusal {
    NotFound,
    LeaseLost,
    Model(String),
}

macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

macro_rules! call {
    ($step:expr, $expr:expr) => {
        $expr
            .await
            .map_err(|e| format!("step {}: {} failed: {e}", $step, stringify!($expr)))?
    };
}

/// Runs `ops` against `backend` and the model; `Err` says where they first disagree.
async fn run(backend: SharedBackend, ops: &[Op]) -> Result<(), String> {
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        // Every operation at a later instant than the one before, on every clock.
        tokio::time::sleep(Duration::from_millis(1)).await;
        model.tick += 1;
        match op {
            Op::Dispatch(specs) => {
                let mut planned = Vec::with_capacity(specs.len());
                let with_dependencies = specs.iter().any(|d| !d.after.is_empty());
                let mut keys = Vec::new();
                for (position, d) in specs.iter().enumerate() {
                    let mut spec = TaskSpec::new(ENGINES[d.engine])
                        .priority(d.priority)
                        .max_attempts(d.max_attempts);
                    if d.delayed {
                        spec = spec.delay(LONG);
                    }
                    // Keys of one graph differ (a planner's rule): later repeats go.
                    if let Some(key) = d.key
                        && (!with_dependencies || !keys.contains(&key))
                    {
                        keys.push(key);
                        spec = spec.idempotency_key(format!("key-{key}"));
                    }
                    let mut named = Vec::new();
                    for (pick, policy) in &d.after {
                        let parent: crate::model::Parent = match pick {
                            Pick::Earlier(_) if model.ids.is_empty() => continue,
                            Pick::Earlier(n) => model.ids[n % model.ids.len()].into(),
                            Pick::Batch(_) if position == 0 => continue,
                            Pick::Batch(n) => Step(n % position).into(),
                        };
                        if !named.contains(&parent) {
                            named.push(parent);
                            spec = spec.after_with(parent, *policy);
                        }
                    }
                    planned.push(spec);
                }
                let news = crate::backend::plan_tasks(planned, None)
                    .map_err(|e| format!("step {step}: planning failed: {e}"))?;
                let created = backend.create_tasks(news.clone()).await;
                let expected = model.create(news.clone());
                match (expected, created) {
                    (Err(None), Err(Error::Invalid { field, .. })) => {
                        check!(field == "depends_on", "step {step}: refused naming {field}");
                    }
                    (Err(None), other) => {
                        return Err(format!(
                            "step {step}: a dispatch naming an unknown parent gave {other:?}"
                        ));
                    }
                    (Err(Some(why)), _) => return Err(format!("step {step}: {why}")),
                    (Ok(_), Err(error)) => {
                        return Err(format!("step {step}: create_tasks failed: {error}"));
                    }
                    (Ok(expected), Ok(created)) => {
                        check!(
                            created.len() == news.len(),
                            "step {step}: {} answers",
                            created.len()
                        );
                        for ((id, made), created) in expected.into_iter().zip(created) {
                            check!(
                                created.created == made && created.task.id == id,
                                "step {step}: expected task {:?} (created: {made}), got {:?}",
                                model.label(Some(id)),
                                created
                            );
                        }
                    }
                }
            }
            Op::Claim {
                engine,
                limit,
                short,
            } => {
                let lease = if *short { SHORT } else { LONG };
                let expected = model.claim(ENGINES[*engine], *limit, lease);
                let claimed = call!(step, backend.claim_tasks(ENGINES[*engine], *limit, lease));
                let got: Vec<TaskId> = claimed.iter().map(|c| c.task.id).collect();
                check!(
                    got == expected,
                    "step {step}: claimed {:?}, the model claims {:?}",
                    labels(&model, &got),
                    labels(&model, &expected)
                );
                for c in claimed {
                    let model_token = model
                        .tasks
                        .iter()
                        .find(|t| t.task.id == c.task.id)
                        .and_then(|t| t.lease)
                        .ok_or("model: claimed task has no lease")?;
                    model.attempts.push(Attempt {
                        task_id: c.task.id,
                        attempt: c.task.attempt,
                        backend_token: c.lease_token,
                        model_token,
                    });
                }
            }
            Op::Finish(reports) if model.attempts.is_empty() => {
                let _ = reports;
            }
            Op::Finish(reports) => {
                let n = model.attempts.len();
                let batch: Vec<(usize, AttemptOutcome)> = reports
                    .iter()
                    .map(|(pick, ending)| (pick % n, ending.outcome()))
                    .collect();
                let sent = batch
                    .iter()
                    .map(|(attempt, outcome)| {
                        let a = &model.attempts[*attempt];
                        AttemptReport {
                            task_id: a.task_id,
                            lease_token: a.backend_token,
                            attempt: a.attempt,
                            outcome: outcome.clone(),
                        }
                    })
                    .collect();
                let answers = call!(step, backend.finish_attempts(sent));
                check!(
                    answers.len() == batch.len(),
                    "step {step}: {} answers",
                    answers.len()
                );
                for ((attempt, outcome), answer) in batch.into_iter().zip(answers) {
                    let expected = model.finish(attempt, outcome);
                    let agrees = match (&expected, &answer) {
                        (Ok(want), Ok(got)) => want == got,
                        (Err(Refusal::LeaseLost), Err(Error::LeaseLost(_)))
                        | (Err(Refusal::NotFound), Err(Error::TaskNotFound(_))) => true,
                        _ => false,
                    };
                    check!(
                        agrees,
                        "step {step}: report of attempt {attempt}: backend {answer:?}, model {expected:?}"
                    );
                }
                model.settle(BTreeMap::new())?;
            }
            Op::Heartbeat(_) if model.attempts.is_empty() => {}
            Op::Heartbeat(pick) => {
                let a = &model.attempts[pick % model.attempts.len()];
                let (task_id, backend_token, model_token) =
                    (a.task_id, a.backend_token, a.model_token);
                let renewed = call!(
                    step,
                    backend.renew_leases(
                        vec![HeldLease {
                            task_id,
                            lease_token: backend_token
                        }],
                        LONG
                    )
                );
                let held = model.find(task_id).filter(|t| t.lease == Some(model_token));
                let expected = held.is_some();
                if let Some(task) = held {
                    task.expired_at = None;
                }
                check!(
                    renewed.len() == 1 && renewed[0].is_some() == expected,
                    "step {step}: renewal {renewed:?}, the model holds the lease: {expected}"
                );
            }
            Op::Cancel(_) | Op::Resolve(..) if model.ids.is_empty() => {}
            Op::Cancel(pick) | Op::Resolve(pick, _) => {
                let id = model.ids[pick % model.ids.len()];
                let (answer, rule): (_, Box<dyn Fn(TaskStatus) -> crate::Result<Change>>) = match op
                {
                    Op::Cancel(_) => (
                        backend.cancel_task(id).await,
                        Box::new(move |from| rules::cancel(id, from)),
                    ),
                    Op::Resolve(_, ok) => {
                        let resolution = if *ok {
                            Resolution::Succeeded(json!("external"))
                        } else {
                            Resolution::Failed("external failure".into())
                        };
                        let copy = resolution.clone();
                        (
                            backend.resolve_task(id, resolution).await,
                            Box::new(move |from| rules::resolve(id, from, copy.clone())),
                        )
                    }
                    _ => unreachable!("matched above"),
                };
                let expected = match model.find(id).map(|t| t.task.status) {
                    None => Err("not found".to_owned()),
                    Some(from) => match rule(from) {
                        Ok(change) => model.apply(id, change).map_err(|e| e.to_string()),
                        Err(error) => Err(format!("refused: {error}")),
                    },
                };
                model.settle(BTreeMap::new())?;
                let agrees = match (&expected, &answer) {
                    (Ok(want), Ok(task)) => *want == task.status,
                    (Err(why), Err(Error::TaskNotFound(_))) => why == "not found",
                    (Err(why), Err(Error::IllegalTransition { .. })) => why.starts_with("refused"),
                    _ => false,
                };
                check!(
                    agrees,
                    "step {step}: {op:?} on task {:?}: backend {answer:?}, model {expected:?}",
                    model.label(Some(id))
                );
            }
            Op::Rescue => {
                let mut expired: Vec<(u64, TaskId, u32, u32)> = model
                    .tasks
                    .iter()
                    .filter(|t| t.task.status == TaskStatus::Running)
                    .filter_map(|t| {
                        t.expired_at
                            .map(|tick| (tick, t.task.id, t.task.attempt, t.task.max_attempts))
                    })
                    .collect();
                expired.sort();
                let mut expected = Vec::with_capacity(expired.len());
                for (_, id, attempt, max_attempts) in expired {
                    let status = model.apply(id, rules::rescue(attempt, max_attempts))?;
                    expected.push((id, status));
                }
                model.settle(BTreeMap::new())?;
                let rescued = call!(step, backend.rescue_expired(100));
                let got: Vec<(TaskId, TaskStatus)> =
                    rescued.iter().map(|t| (t.id, t.status)).collect();
                check!(
                    got == expected,
                    "step {step}: rescued {got:?}, the model rescues {expected:?}"
                );
            }
            Op::Prune => {
                let tick = model.tick;
                let before = model.tasks.len();
                // A finished task some unfinished task depends on stays.
                let unfinished = |id: &TaskId| {
                    model
                        .tasks
                        .iter()
                        .any(|t| t.task.id == *id && !t.task.status.is_terminal())
                };
                let kept: Vec<bool> = model
                    .tasks
                    .iter()
                    .map(|t| {
                        t.finished_tick.is_none_or(|finished| finished >= tick)
                            || t.children.iter().any(unfinished)
                    })
                    .collect();
                let mut kept = kept.into_iter();
                model.tasks.retain(|_| kept.next().unwrap_or(true));
                let expected = (before - model.tasks.len()) as u64;
                let pruned = call!(step, backend.prune_tasks(crate::clock::now(), 1000));
                check!(
                    pruned == expected,
                    "step {step}: pruned {pruned}, the model prunes {expected}"
                );
            }
        }
    }
    compare_end_state(&backend, &model).await
}

fn labels(model: &Model, ids: &[TaskId]) -> Vec<Option<usize>> {
    ids.iter().map(|id| model.label(Some(*id))).collect()
}

/// Every task's state, the counts and the event sequence, against the model's.
async fn compare_end_state(backend: &SharedBackend, model: &Model) -> Result<(), String> {
    let step = "end";
    for (label, id) in model.ids.iter().enumerate() {
        let stored = call!(step, backend.get_task(*id));
        let expected = model.tasks.iter().find(|t| t.task.id == *id);
        match (stored, expected) {
            (None, None) => {}
            (Some(stored), Some(expected)) => {
                let want = &expected.task;
                let shape = |t: &Task| {
                    (
                        t.status,
                        t.attempt,
                        t.error.clone(),
                        t.result.clone(),
                        t.started_at.is_some(),
                        t.finished_at.is_some(),
                        t.lease_expires_at.is_some(),
                        t.priority,
                        t.engine.clone(),
                        t.waiting_for,
                    )
                };
                check!(
                    shape(&stored) == shape(want),
                    "task {label}: stored {:?}, the model has {:?}",
                    shape(&stored),
                    shape(want)
                );
            }
            (stored, _) => {
                return Err(format!(
                    "task {label}: stored {}, the model has {}",
                    if stored.is_some() { "a task" } else { "none" },
                    if expected.is_some() { "one" } else { "none" }
                ));
            }
        }
    }
    let (depth, counts) = model.counts();
    let stored_depth = call!(step, backend.queue_depth());
    check!(
        stored_depth == depth,
        "queue depth {stored_depth:?}, the model has {depth:?}"
    );
    let stored_counts = call!(step, backend.count_tasks());
    check!(
        stored_counts == counts,
        "task counts {stored_counts:?}, the model has {counts:?}"
    );
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let batch = call!(step, backend.read_events(after, 1000));
        let Some(last) = batch.last().map(|e| e.seq) else {
            break;
        };
        after = last;
        events.extend(batch.into_iter().map(|e| {
            (
                e.kind.to_string(),
                model.label(e.task_id),
                e.engine,
                e.attempt,
                e.data,
            )
        }));
    }
    for (i, (got, want)) in events.iter().zip(&model.events).enumerate() {
        check!(
            got == want,
            "event {i}: stored {got:?}, the model has {want:?}"
        );
    }
    check!(
        events.len() == model.events.len(),
        "{} events stored, the model has {}",
        events.len(),
        model.events.len()
    );
    Ok(())
}

/// Removes operations one at a time while the sequence still fails.
async fn shrink<F, Fut>(factory: &F, mut ops: Vec<Op>, mut why: String) -> (Vec<Op>, String)
where
    F: Fn() -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    let mut i = 0;
    while i < ops.len() {
        let mut shorter = ops.clone();
        shorter.remove(i);
        match run(factory().await, &shorter).await {
            Err(still) => {
                ops = shorter;
                why = still;
            }
            Ok(()) => i += 1,
        }
    }
    (ops, why)
}

/// Runs `cases` random operation sequences (see the module docs) against fresh backends from
/// `factory` and the reference model; panics with the shrunk failing sequence and its seed.
/// `ORCH_MODEL_SEED` fixes the first seed (to replay a failure).
pub async fn assert_model_conformance<F, Fut>(backend_name: &str, cases: usize, factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    let first = std::env::var("ORCH_MODEL_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    for case in 0..cases as u64 {
        let seed = first.wrapping_add(case);
        let ops = generate(seed);
        if let Err(why) = run(factory().await, &ops).await {
            let (ops, why) = shrink(&factory, ops, why).await;
            let listing: Vec<String> = ops
                .iter()
                .enumerate()
                .map(|(i, op)| format!("  {i}: {op:?}"))
                .collect();
            panic!(
                "backend {backend_name:?} differs from the model (seed {seed}, \
                 ORCH_MODEL_SEED={seed} replays it): {why}\nshrunk sequence:\n{}",
                listing.join("\n")
            );
        }
    }
    println!(
        "model[{backend_name}]: {cases} random sequences agree with the model (first seed {first})"
    );
}
