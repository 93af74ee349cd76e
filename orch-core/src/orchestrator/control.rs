//! Run-time controls: pausing and resuming engines, changing their concurrency, letting a
//! quarantined engine back, and the node's readiness; and what claim loops may start given
//! all of them ([`admit`]).
//!
//! Where each control holds:
//! - A **pause** holds on every node sharing the backend: it is a key (`orch/paused/<engine>`)
//!   in the backend's key-value space, which every orchestrator reads every
//!   [`Tuning::control_refresh`](crate::Tuning::control_refresh). The node that pauses stops
//!   claiming at once; the others within one refresh. A pause may name an engine no node
//!   registers (external workers' claims honour it too).
//! - **Concurrency**, the **circuit breaker** and **readiness** are this node's: each node
//!   judges its own attempts and its own health, and sets its own limits.
//!
//! Every change appends an event naming its `actor` and `reason` ([`event_kinds`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::breaker::{Admit, Transition};
use super::{Engine, Inner, Orchestrator};
use crate::backend::ChangeSignal;
use crate::clock;
use crate::error::{Error, Result};
use crate::event_kinds;
use crate::model::{EventKind, NewEvent, check_name, limits};

/// Where pauses are kept in the backend's key-value space: one key per paused engine.
const PAUSED_PREFIX: &str = "orch/paused/";

/// Most engines paused at once, beyond which an engine not registered on the node pausing it
/// is refused: every node reads every pause at each refresh.
const MAX_PAUSES: usize = 1_000;

/// Who an automatic change names as its actor.
pub(crate) const MONITOR: &str = "monitor";

/// A pause of an engine: who asked for it, why and when.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Who paused it (`user:alice`, `monitor`, ...).
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The node that made the change.
    pub node: String,
}

/// A quarantine by this node's circuit breaker.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    /// When the breaker opened.
    pub since: DateTime<Utc>,
    /// When the next probe may start; `None` while one runs.
    pub probe_at: Option<DateTime<Utc>>,
    /// The last failure's error, if the engine returned one.
    pub last_error: Option<String>,
}

/// What an engine does on this node right now.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineStatus {
    /// Claiming and running its tasks.
    Running,
    /// Paused (on every node): claims nothing, running attempts finish.
    Paused,
    /// Quarantined by this node's circuit breaker: claims nothing until its cool-down ends.
    Quarantined,
    /// Quarantined, with one attempt allowed (or running) as a probe.
    Probing,
    /// This node is not ready (or shutting down): it claims nothing.
    NodeNotReady,
    /// Its claim loop panicked and, with restarts off, stays stopped.
    Stopped,
    /// Not registered on this node (listed because it is paused).
    NotRegistered,
}

/// An engine's state on this node, as [`Orchestrator::engine_states`] reports it.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineState {
    /// The engine's name.
    pub engine: String,
    /// What it does right now.
    pub status: EngineStatus,
    /// Its concurrency limit in force on this node (0 when not registered here).
    pub limit: usize,
    /// The limit it was registered with.
    pub registered_limit: usize,
    /// Concurrency slots taken on this node: running attempts and claims under way.
    pub in_flight: usize,
    /// An operator set the limit: the scaler leaves it alone.
    pub limit_pinned: bool,
    /// The pause, if paused.
    pub pause: Option<Pause>,
    /// The quarantine, if its breaker is open or probing.
    pub quarantine: Option<Quarantine>,
    /// How often its claim loop was restarted after a panic.
    pub claim_loop_restarts: u64,
    /// The version it runs (a plugin's version, or the one named at an upgrade).
    pub version: Option<String>,
    /// The version it can roll back to, if an upgrade left one loaded.
    pub previous_version: Option<String>,
}

/// Whether this node takes work, as a load balancer's readiness probe wants to know.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// The node claims work and should receive requests.
    pub ready: bool,
    /// Why not, when not ready.
    pub reason: Option<String>,
    /// Since when it is not ready.
    pub since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
struct NotReady {
    reason: String,
    since: DateTime<Utc>,
}

/// The controls' state in one orchestrator.
pub(super) struct Controls {
    /// Paused engines as this node knows them (its own changes at once, other nodes' at the
    /// next refresh).
    paused: Mutex<HashMap<String, Pause>>,
    /// Bumped (under `paused`'s lock) by every local pause or resume, so a refresh that read
    /// the shared space before it does not undo it.
    local_changes: AtomicU64,
    /// Raised on every change of a control: claim loops that may not claim wait on it.
    pub(super) changed: ChangeSignal,
    /// Why the node's health check took it out of rotation (`None`: it did not).
    not_ready: Mutex<Option<NotReady>>,
    ready: AtomicBool,
    /// Tasks whose expired lease this node rescued, per engine, since start.
    rescued: Mutex<BTreeMap<String, u64>>,
}

impl Controls {
    pub(super) fn new() -> Self {
        Controls {
            paused: Mutex::new(HashMap::new()),
            local_changes: AtomicU64::new(0),
            changed: ChangeSignal::new(),
            not_ready: Mutex::new(None),
            ready: AtomicBool::new(true),
            rescued: Mutex::new(BTreeMap::new()),
        }
    }

    fn pause_of(&self, engine: &str) -> Option<Pause> {
        self.paused.lock().get(engine).cloned()
    }

    /// Whether `engine` is paused.
    pub(super) fn is_paused(&self, engine: &str) -> bool {
        self.paused.lock().contains_key(engine)
    }

    /// Whether the node's health check holds it out of rotation.
    pub(super) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Counts rescued tasks.
    pub(super) fn rescued(&self, tasks: &[crate::model::Task]) {
        let mut rescued = self.rescued.lock();
        for task in tasks {
            *rescued.entry(task.engine.clone()).or_default() += 1;
        }
    }

    /// Tasks rescued by this node since start, per engine.
    pub(crate) fn rescued_so_far(&self) -> BTreeMap<String, u64> {
        self.rescued.lock().clone()
    }
}

/// What `engine`'s claim loop may start now.
pub(super) fn admit(inner: &Inner, engine: &Engine) -> Admit {
    if !inner.controls.is_ready() || engine.paused.load(Ordering::Acquire) {
        return Admit::Wait(None);
    }
    engine.breaker.admit()
}

/// Sets each engine's paused flag from the pause table and wakes claim loops that wait.
fn controls_changed(inner: &Inner) {
    {
        let paused = inner.controls.paused.lock();
        for (name, engine) in inner.engines.read().iter() {
            engine
                .paused
                .store(paused.contains_key(name), Ordering::Release);
        }
    }
    inner.controls.changed.raise();
}

/// Sets a newly registered engine's paused flag.
pub(super) fn init_engine(inner: &Inner, engine: &Engine) {
    engine
        .paused
        .store(inner.controls.is_paused(&engine.name), Ordering::Release);
}

/// An event about a control, with who made the change and why.
pub(crate) fn control_event(
    kind: &str,
    engine: Option<&str>,
    actor: &str,
    reason: &str,
    node: &str,
    mut data: serde_json::Map<String, Value>,
) -> NewEvent {
    data.insert("actor".into(), actor.into());
    data.insert("reason".into(), reason.into());
    data.insert("node".into(), node.into());
    NewEvent {
        kind: EventKind::Custom(kind.to_owned()),
        task_id: None,
        engine: engine.map(str::to_owned),
        attempt: None,
        data: Value::Object(data),
    }
}

fn fields(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

pub(super) fn check_actor(actor: &str, reason: &str) -> Result<()> {
    check_name("actor", actor, 128)?;
    if reason.len() > 1024 {
        return Err(Error::invalid("reason", "at most 1024 bytes allowed"));
    }
    Ok(())
}

/// Records a breaker's transition of `engine` as an event (in the background: it happens on
/// the attempt path) and wakes claim loops.
pub(super) fn breaker_moved(inner: &Inner, engine: &Engine, transition: Transition) {
    let Some(transition) = super::versions::roll_back_instead(inner, engine, transition) else {
        return;
    };
    let (kind, reason, data) = match transition {
        Transition::Quarantined {
            failures,
            cool_down,
            last_error,
        } => {
            tracing::warn!(engine = %engine.name, failures, ?cool_down, "engine quarantined after consecutive failures");
            (
                event_kinds::ENGINE_QUARANTINED,
                format!("{failures} consecutive attempts failed"),
                json!({"failures": failures, "cool_down_ms": cool_down.as_millis() as u64, "last_error": last_error}),
            )
        }
        Transition::ProbeFailed {
            probe,
            cool_down,
            last_error,
        } => {
            tracing::warn!(engine = %engine.name, ?cool_down, "engine probe failed; quarantined again");
            (
                event_kinds::ENGINE_PROBE_FAILED,
                format!("the probe attempt of task {probe} failed"),
                json!({"probe": probe, "cool_down_ms": cool_down.as_millis() as u64, "last_error": last_error}),
            )
        }
        Transition::Recovered { probe } => {
            tracing::info!(engine = %engine.name, "engine probe succeeded; quarantine ended");
            (
                event_kinds::ENGINE_RELEASED,
                format!("the probe attempt of task {probe} succeeded"),
                json!({"probe": probe}),
            )
        }
    };
    let event = control_event(
        kind,
        Some(&engine.name),
        MONITOR,
        &reason,
        &inner.config.node_id,
        fields(data),
    );
    inner.controls.changed.raise();
    let events = inner.events.clone();
    inner.background.spawn(async move {
        if let Err(error) = events.append(event).await {
            tracing::warn!(%error, "recording a circuit breaker's change failed");
        }
    });
}

impl Orchestrator {
    pub(super) fn engine_named(&self, engine: &str) -> Result<Arc<Engine>> {
        self.inner
            .engines
            .read()
            .get(engine)
            .cloned()
            .ok_or_else(|| Error::EngineNotFound(engine.to_owned()))
    }

    async fn record_control(
        &self,
        kind: &str,
        engine: Option<&str>,
        actor: &str,
        reason: &str,
        data: Value,
    ) -> Result<()> {
        self.inner
            .record_control(kind, engine, actor, reason, data)
            .await
    }

    /// Pauses `engine` on every node sharing the backend: its queued tasks wait, attempts
    /// already running finish, and claims (this node's claim loops, and external workers'
    /// [`Orchestrator::claim`]) hand out none of its tasks until it is resumed. This node
    /// stops claiming at once, the others within [`Tuning::control_refresh`](crate::Tuning).
    /// The engine need not be registered here. Returns `false` if it was already paused.
    ///
    /// `actor` names who asks (`user:alice`, `monitor`), `reason` why; both go into the
    /// [`event_kinds::ENGINE_PAUSED`] event.
    pub async fn pause_engine(&self, engine: &str, actor: &str, reason: &str) -> Result<bool> {
        check_name("engine", engine, limits::MAX_ENGINE_LEN)?;
        check_actor(actor, reason)?;
        if self.inner.controls.is_paused(engine) {
            return Ok(false);
        }
        let registered = self.inner.engines.read().contains_key(engine);
        if !registered && self.inner.controls.paused.lock().len() >= MAX_PAUSES {
            return Err(Error::invalid(
                "engine",
                format!(
                    "{MAX_PAUSES} engines are paused already; resume some before pausing an \
                     engine not registered on this node"
                ),
            ));
        }
        let pause = Pause {
            actor: actor.to_owned(),
            reason: reason.to_owned(),
            at: clock::now(),
            node: self.inner.config.node_id.clone(),
        };
        let key = format!("{PAUSED_PREFIX}{engine}");
        self.inner
            .backend
            .store(&key, serde_json::to_vec(&pause)?)
            .await?;
        {
            let controls = &self.inner.controls;
            let mut paused = controls.paused.lock();
            controls.local_changes.fetch_add(1, Ordering::AcqRel);
            paused.insert(engine.to_owned(), pause);
        }
        controls_changed(&self.inner);
        tracing::info!(engine, actor, reason, "engine paused");
        self.record_control(
            event_kinds::ENGINE_PAUSED,
            Some(engine),
            actor,
            reason,
            json!({}),
        )
        .await?;
        Ok(true)
    }

    /// Resumes a paused engine on every node. Returns `false` if it was not paused.
    pub async fn resume_engine(&self, engine: &str, actor: &str, reason: &str) -> Result<bool> {
        check_name("engine", engine, limits::MAX_ENGINE_LEN)?;
        check_actor(actor, reason)?;
        let key = format!("{PAUSED_PREFIX}{engine}");
        let stored = self.inner.backend.delete(&key).await?;
        let known = {
            let controls = &self.inner.controls;
            let mut paused = controls.paused.lock();
            controls.local_changes.fetch_add(1, Ordering::AcqRel);
            paused.remove(engine).is_some()
        };
        if !stored && !known {
            return Ok(false);
        }
        controls_changed(&self.inner);
        tracing::info!(engine, actor, reason, "engine resumed");
        self.record_control(
            event_kinds::ENGINE_RESUMED,
            Some(engine),
            actor,
            reason,
            json!({}),
        )
        .await?;
        Ok(true)
    }

    /// Sets `engine`'s concurrency limit on this node while it runs, and returns the previous
    /// one. Raising it lets more attempts start at once; lowering it stops no running attempt:
    /// new ones start only once fewer than the new limit run. The limit set here is pinned:
    /// the scaler (see [`Autoscale`](crate::Autoscale)) leaves it alone until
    /// [`Orchestrator::unpin_engine_concurrency`]. [`Error::EngineNotFound`] if the engine is
    /// not registered here.
    pub async fn set_engine_concurrency(
        &self,
        engine: &str,
        limit: usize,
        actor: &str,
        reason: &str,
    ) -> Result<usize> {
        check_actor(actor, reason)?;
        let handle = self.engine_named(engine)?;
        if limit == 0 {
            return Err(Error::invalid("concurrency", "must be at least 1"));
        }
        handle.pinned.store(true, Ordering::Release);
        self.inner
            .change_concurrency(&handle, limit, actor, reason)
            .await
    }

    /// Lets the scaler change `engine`'s limit again after an operator set it. Returns
    /// whether it was pinned.
    pub fn unpin_engine_concurrency(&self, engine: &str) -> Result<bool> {
        Ok(self
            .engine_named(engine)?
            .pinned
            .swap(false, Ordering::AcqRel))
    }

    /// Ends `engine`'s quarantine on this node now (its circuit breaker closes and counts
    /// failures afresh). Returns `false` if it was not quarantined.
    pub async fn release_engine(&self, engine: &str, actor: &str, reason: &str) -> Result<bool> {
        check_actor(actor, reason)?;
        let handle = self.engine_named(engine)?;
        if !handle.breaker.close() {
            return Ok(false);
        }
        self.inner.controls.changed.raise();
        tracing::info!(engine, actor, reason, "engine released from quarantine");
        self.record_control(
            event_kinds::ENGINE_RELEASED,
            Some(engine),
            actor,
            reason,
            json!({}),
        )
        .await?;
        Ok(true)
    }

    /// Releases the lock on `resource` whoever holds it (an operator freeing a lock a stuck
    /// holder keeps), and records [`event_kinds::LOCK_RELEASED`] naming `actor` and `reason`.
    /// Returns the grant released, `None` when the resource was free.
    /// [`Error::NotLockHolder`] when the lock changed hands while it was being released.
    pub async fn release_lock(
        &self,
        resource: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Option<crate::LockInfo>> {
        check_actor(actor, reason)?;
        let Some(held) = self.inner.locks.info(resource).await? else {
            return Ok(None);
        };
        match self
            .inner
            .locks
            .release(resource, &held.owner, held.fencing_token)
            .await
        {
            Ok(()) => {}
            // Released or expired since it was read, and nobody holds it now: it is free.
            Err(Error::NotLockHolder { .. })
                if self.inner.locks.info(resource).await?.is_none() =>
            {
                return Ok(None);
            }
            Err(error) => return Err(error),
        }
        tracing::info!(resource, owner = %held.owner, actor, reason, "lock released by an operator");
        self.record_control(
            event_kinds::LOCK_RELEASED,
            None,
            actor,
            reason,
            json!({
                "resource": resource,
                "owner": held.owner,
                "fencing_token": held.fencing_token.0,
            }),
        )
        .await?;
        Ok(Some(held))
    }

    /// The state of `engine` on this node; [`Error::EngineNotFound`] if it is neither
    /// registered here nor paused.
    pub fn engine_state(&self, engine: &str) -> Result<EngineState> {
        let handle = self.inner.engines.read().get(engine).cloned();
        match handle {
            Some(handle) => Ok(self.state_of(&handle)),
            None => {
                let pause = self
                    .inner
                    .controls
                    .pause_of(engine)
                    .ok_or_else(|| Error::EngineNotFound(engine.to_owned()))?;
                Ok(unregistered(engine, pause))
            }
        }
    }

    /// The state of every engine registered here, and of paused engines that are not, sorted
    /// by name.
    pub fn engine_states(&self) -> Vec<EngineState> {
        let engines: Vec<Arc<Engine>> = self.inner.engines.read().values().cloned().collect();
        let mut states: BTreeMap<String, EngineState> = engines
            .iter()
            .map(|engine| (engine.name.to_string(), self.state_of(engine)))
            .collect();
        let paused = self.inner.controls.paused.lock().clone();
        for (name, pause) in paused {
            states
                .entry(name.clone())
                .or_insert_with(|| unregistered(&name, pause));
        }
        states.into_values().collect()
    }

    fn state_of(&self, engine: &Engine) -> EngineState {
        let inner = &self.inner;
        let pause = inner.controls.pause_of(&engine.name);
        let quarantine = engine.breaker.quarantine().map(|open| Quarantine {
            since: open.since,
            probe_at: open.probe_at,
            last_error: open.last_error,
        });
        let status = if engine.stopped.load(Ordering::Acquire) {
            EngineStatus::Stopped
        } else if pause.is_some() {
            EngineStatus::Paused
        } else if !inner.controls.is_ready() || inner.stop_claiming.is_cancelled() {
            EngineStatus::NodeNotReady
        } else if quarantine.is_some() {
            if engine.breaker.is_probing() {
                EngineStatus::Probing
            } else {
                EngineStatus::Quarantined
            }
        } else {
            EngineStatus::Running
        };
        let (version, previous_version) = {
            let versions = engine.versions.read();
            (
                versions.current.version.clone(),
                versions.previous.as_ref().and_then(|p| p.version.clone()),
            )
        };
        EngineState {
            version,
            previous_version,
            engine: engine.name.to_string(),
            status,
            limit: engine.limit.get(),
            registered_limit: engine.registered_limit,
            in_flight: engine.limit.in_use(),
            limit_pinned: engine.pinned.load(Ordering::Acquire),
            pause,
            quarantine,
            claim_loop_restarts: engine.restarts.load(Ordering::Acquire),
        }
    }

    /// Whether this node takes work: not shutting down, and not taken out of rotation by its
    /// health check (see [`NodeHealthCheck`](crate::NodeHealthCheck)). What a readiness
    /// probe (`/health/ready`) reports.
    pub fn readiness(&self) -> Readiness {
        if self.inner.stop_claiming.is_cancelled() {
            return Readiness {
                ready: false,
                reason: Some("shutting down".to_owned()),
                since: None,
            };
        }
        match &*self.inner.controls.not_ready.lock() {
            None => Readiness {
                ready: true,
                reason: None,
                since: None,
            },
            Some(not_ready) => Readiness {
                ready: false,
                reason: Some(not_ready.reason.clone()),
                since: Some(not_ready.since),
            },
        }
    }

    /// Puts this node back in rotation now, overriding its health check (which takes it out
    /// again if its health keeps failing). Returns `false` if it was in rotation.
    pub async fn mark_ready(&self, actor: &str, reason: &str) -> Result<bool> {
        check_actor(actor, reason)?;
        if !self.inner.set_ready() {
            return Ok(false);
        }
        self.record_control(event_kinds::NODE_READY, None, actor, reason, json!({}))
            .await?;
        Ok(true)
    }
}

impl Inner {
    /// Appends the event of a control's change.
    pub(crate) async fn record_control(
        &self,
        kind: &str,
        engine: Option<&str>,
        actor: &str,
        reason: &str,
        data: Value,
    ) -> Result<()> {
        let event = control_event(
            kind,
            engine,
            actor,
            reason,
            &self.config.node_id,
            fields(data),
        );
        self.events.append(event).await.map(drop)
    }

    /// Changes an engine's limit (pinned or not, the caller decides) and records it; returns
    /// the previous limit.
    pub(super) async fn change_concurrency(
        &self,
        engine: &Arc<Engine>,
        limit: usize,
        actor: &str,
        reason: &str,
    ) -> Result<usize> {
        let previous = engine.limit.set(limit, &self.stop_background, |collector| {
            self.background.spawn(collector);
        });
        self.controls.changed.raise();
        if previous != limit {
            tracing::info!(engine = %engine.name, from = previous, to = limit, actor, reason, "engine concurrency changed");
            self.record_control(
                event_kinds::ENGINE_CONCURRENCY_CHANGED,
                Some(&engine.name),
                actor,
                reason,
                json!({"from": previous, "to": limit}),
            )
            .await?;
        }
        Ok(previous)
    }

    /// Takes the node out of rotation (its claim loops stop claiming); returns whether it was
    /// in rotation. The caller records the event.
    pub(crate) fn set_not_ready(&self, reason: &str) -> bool {
        let controls = &self.controls;
        let mut not_ready = controls.not_ready.lock();
        if not_ready.is_some() {
            return false;
        }
        *not_ready = Some(NotReady {
            reason: reason.to_owned(),
            since: clock::now(),
        });
        controls.ready.store(false, Ordering::Release);
        drop(not_ready);
        tracing::warn!(reason, "node taken out of rotation");
        controls.changed.raise();
        true
    }

    /// Puts the node back in rotation; returns whether it was out. The caller records the
    /// event.
    pub(crate) fn set_ready(&self) -> bool {
        let controls = &self.controls;
        let was_out = controls.not_ready.lock().take().is_some();
        controls.ready.store(true, Ordering::Release);
        if was_out {
            tracing::info!("node back in rotation");
            controls.changed.raise();
        }
        was_out
    }
}

fn unregistered(engine: &str, pause: Pause) -> EngineState {
    EngineState {
        engine: engine.to_owned(),
        status: EngineStatus::NotRegistered,
        limit: 0,
        registered_limit: 0,
        in_flight: 0,
        limit_pinned: false,
        pause: Some(pause),
        quarantine: None,
        claim_loop_restarts: 0,
        version: None,
        previous_version: None,
    }
}

/// One refresh of the pause table from the backend's key-value space. Returns whether it
/// changed anything.
pub(super) async fn refresh_once(inner: &Inner) -> Result<bool> {
    let controls = &inner.controls;
    let seen = controls.local_changes.load(Ordering::Acquire);
    let keys = inner.backend.list(PAUSED_PREFIX).await?;
    let names: std::collections::HashSet<&str> = keys
        .iter()
        .filter_map(|key| key.strip_prefix(PAUSED_PREFIX))
        .collect();
    let unknown: Vec<&str> = {
        let paused = controls.paused.lock();
        names
            .iter()
            .copied()
            .filter(|name| !paused.contains_key(*name))
            .collect()
    };
    let mut added = Vec::with_capacity(unknown.len());
    for name in unknown {
        let pause = match inner
            .backend
            .retrieve(&format!("{PAUSED_PREFIX}{name}"))
            .await?
        {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| Pause {
                actor: "unknown".to_owned(),
                reason: String::new(),
                at: clock::now(),
                node: String::new(),
            }),
            // Resumed in the meantime.
            None => continue,
        };
        added.push((name.to_owned(), pause));
    }
    let changed = {
        let mut paused = controls.paused.lock();
        if controls.local_changes.load(Ordering::Acquire) != seen {
            // A local change raced this refresh: the next one reads it.
            return Ok(false);
        }
        let before = paused.len();
        paused.retain(|name, _| names.contains(name.as_str()));
        let changed = paused.len() != before || !added.is_empty();
        for (name, pause) in added {
            tracing::info!(engine = %name, actor = %pause.actor, node = %pause.node, "engine paused by another node");
            paused.insert(name, pause);
        }
        changed
    };
    if changed {
        controls_changed(inner);
    }
    Ok(changed)
}

/// Reads the shared pauses every `control_refresh` until `stop` fires.
pub(super) async fn refresher(inner: Arc<Inner>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(inner.config.tuning.control_refresh);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => break,
        }
        if let Err(error) = refresh_once(&inner).await {
            tracing::debug!(%error, "reading the shared engine pauses failed; retrying");
        }
    }
}
