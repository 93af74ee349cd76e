//! [`Breaker`]: the circuit breaker of one engine in this process.
//!
//! Closed, it counts consecutive failed engine calls; at [`CircuitBreaker::failures`] it opens: the
//! engine is quarantined and claims nothing (its tasks wait in the queue, none is failed by the
//! breaker). After the cool-down it lets exactly one attempt through (the probe). The probe's
//! success closes it; a failure opens it again with the cool-down doubled, up to
//! [`CircuitBreaker::max_cool_down`]. Only the probe's outcome moves a half-open breaker: attempts
//! that were already running when it opened end without effect.
//!
//! The hot path (an outcome while closed) costs one atomic operation.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::healing::CircuitBreaker;
use crate::clock;
use crate::model::TaskId;

/// How an engine call ended, as the breaker judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The engine returned a result.
    Succeeded,
    /// The engine failed in a way another attempt may not (a retryable error, a panic, a
    /// timeout): the engine (or what it depends on) is in trouble.
    Failed,
    /// Nothing to judge the engine by (the task's input was refused, its error was fatal, the
    /// attempt was stopped or never reached the engine).
    Unjudged,
}

/// What the claim loop may start for an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// Claims as usual.
    All,
    /// One attempt: the breaker's probe.
    Probe,
    /// Nothing; look again after a change of the controls, or at this instant.
    Wait(Option<Instant>),
}

/// A breaker's change of phase that the orchestrator records as an event.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Transition {
    /// Opened after `failures` consecutive failures, for `cool_down`.
    Quarantined {
        failures: u32,
        cool_down: Duration,
        last_error: Option<String>,
    },
    /// The probe succeeded: closed again.
    Recovered { probe: TaskId },
    /// The probe failed: open again for `cool_down`.
    ProbeFailed {
        probe: TaskId,
        cool_down: Duration,
        last_error: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// No probe under way: the next claim may take one.
    Free,
    /// A claim for the probe is under way.
    Claiming,
    /// The probe runs this task.
    Running(TaskId),
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen(Probe),
}

struct State {
    phase: Phase,
    /// Consecutive trips without a recovery (the cool-down doubles with each).
    trips: u32,
    /// When the breaker last opened, by the wall clock.
    opened_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

/// A quarantine as [`EngineState`](crate::EngineState) shows it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Open {
    pub(super) since: DateTime<Utc>,
    /// When the next probe may start; `None` while one is under way.
    pub(super) probe_at: Option<DateTime<Utc>>,
    pub(super) last_error: Option<String>,
}

pub(super) struct Breaker {
    config: Option<CircuitBreaker>,
    /// Consecutive failures while closed.
    failures: AtomicU32,
    /// The phase is not `Closed` (read without the lock on the hot path).
    tripped: AtomicBool,
    state: Mutex<State>,
}

impl Breaker {
    /// A closed breaker; `None` never opens.
    pub(super) fn new(config: Option<CircuitBreaker>) -> Self {
        Breaker {
            config,
            failures: AtomicU32::new(0),
            tripped: AtomicBool::new(false),
            state: Mutex::new(State {
                phase: Phase::Closed,
                trips: 0,
                opened_at: None,
                last_error: None,
            }),
        }
    }

    fn cool_down(config: &CircuitBreaker, trips: u32) -> Duration {
        let doublings = trips.saturating_sub(1).min(16);
        config
            .cool_down
            .saturating_mul(1 << doublings)
            .min(config.max_cool_down.max(config.cool_down))
    }

    fn open(&self, state: &mut State, config: &CircuitBreaker) -> Duration {
        state.trips = state.trips.saturating_add(1);
        let cool_down = Self::cool_down(config, state.trips);
        state.phase = Phase::Open {
            until: Instant::now() + cool_down,
        };
        state.opened_at.get_or_insert_with(clock::now);
        self.tripped.store(true, Ordering::Release);
        cool_down
    }

    /// Records how an attempt of `task` ended on the engine; returns the transition it caused.
    pub(super) fn record(
        &self,
        task: TaskId,
        verdict: Verdict,
        error: Option<&str>,
    ) -> Option<Transition> {
        let config = self.config.as_ref()?;
        if !self.tripped.load(Ordering::Acquire) {
            match verdict {
                Verdict::Succeeded => {
                    if self.failures.load(Ordering::Relaxed) != 0 {
                        self.failures.store(0, Ordering::Relaxed);
                    }
                    return None;
                }
                Verdict::Unjudged => return None,
                Verdict::Failed => {
                    let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
                    if failures < config.failures {
                        return None;
                    }
                }
            }
        }
        let mut state = self.state.lock();
        match state.phase {
            Phase::Closed => {
                let failures = self.failures.load(Ordering::Acquire);
                if verdict != Verdict::Failed || failures < config.failures {
                    return None;
                }
                self.failures.store(0, Ordering::Release);
                state.last_error = error.map(str::to_owned);
                let cool_down = self.open(&mut state, config);
                Some(Transition::Quarantined {
                    failures,
                    cool_down,
                    last_error: state.last_error.clone(),
                })
            }
            Phase::HalfOpen(Probe::Running(probe)) if probe == task => match verdict {
                Verdict::Succeeded => {
                    *state = State {
                        phase: Phase::Closed,
                        trips: 0,
                        opened_at: None,
                        last_error: None,
                    };
                    self.failures.store(0, Ordering::Release);
                    self.tripped.store(false, Ordering::Release);
                    Some(Transition::Recovered { probe })
                }
                Verdict::Failed => {
                    if let Some(error) = error {
                        state.last_error = Some(error.to_owned());
                    }
                    let cool_down = self.open(&mut state, config);
                    Some(Transition::ProbeFailed {
                        probe,
                        cool_down,
                        last_error: state.last_error.clone(),
                    })
                }
                Verdict::Unjudged => {
                    state.phase = Phase::HalfOpen(Probe::Free);
                    None
                }
            },
            _ => None,
        }
    }

    /// What may be claimed now. Moves an open breaker whose cool-down has passed to half-open.
    pub(super) fn admit(&self) -> Admit {
        if !self.tripped.load(Ordering::Acquire) {
            return Admit::All;
        }
        let mut state = self.state.lock();
        match state.phase {
            Phase::Closed => Admit::All,
            Phase::Open { until } if Instant::now() < until => Admit::Wait(Some(until)),
            Phase::Open { .. } => {
                state.phase = Phase::HalfOpen(Probe::Free);
                Admit::Probe
            }
            Phase::HalfOpen(Probe::Free) => Admit::Probe,
            Phase::HalfOpen(_) => Admit::Wait(None),
        }
    }

    /// Takes the probe for a claim about to start; `false` if another one has it.
    pub(super) fn take_probe(&self) -> bool {
        let mut state = self.state.lock();
        match state.phase {
            Phase::HalfOpen(Probe::Free) => {
                state.phase = Phase::HalfOpen(Probe::Claiming);
                true
            }
            _ => false,
        }
    }

    /// The probe's claim came back with `task` (`None`: nothing was due).
    pub(super) fn probe_claimed(&self, task: Option<TaskId>) {
        let mut state = self.state.lock();
        if let Phase::HalfOpen(Probe::Claiming) = state.phase {
            state.phase = Phase::HalfOpen(task.map_or(Probe::Free, Probe::Running));
        }
    }

    /// Closes the breaker (an operator let the engine back); returns whether it was open.
    pub(super) fn close(&self) -> bool {
        let mut state = self.state.lock();
        let was_open = !matches!(state.phase, Phase::Closed);
        *state = State {
            phase: Phase::Closed,
            trips: 0,
            opened_at: None,
            last_error: None,
        };
        self.failures.store(0, Ordering::Release);
        self.tripped.store(false, Ordering::Release);
        was_open
    }

    /// The quarantine, if the breaker is not closed.
    pub(super) fn quarantine(&self) -> Option<Open> {
        if !self.tripped.load(Ordering::Acquire) {
            return None;
        }
        let state = self.state.lock();
        let probe_at = match state.phase {
            Phase::Closed => return None,
            Phase::Open { until } => {
                Some(clock::now() + until.saturating_duration_since(Instant::now()))
            }
            Phase::HalfOpen(Probe::Free) => Some(clock::now()),
            Phase::HalfOpen(_) => None,
        };
        Some(Open {
            since: state.opened_at.unwrap_or_else(clock::now),
            probe_at,
            last_error: state.last_error.clone(),
        })
    }

    /// Whether the breaker is half-open (a probe may run or runs).
    pub(super) fn is_probing(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
            && matches!(self.state.lock().phase, Phase::HalfOpen(_))
    }
}
