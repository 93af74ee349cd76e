//! Periodic tasks: a named [`Schedule`] dispatches a task at every tick of a fixed interval or a
//! cron expression.
//!
//! Ticks are computed from the wall clock alone (intervals are aligned to the Unix epoch), so
//! every process sharing a backend computes the same tick times; each tick's task carries the
//! idempotency key `<schedule>:<tick time>`, so the backend keeps exactly one task per tick however
//! many processes run the schedule.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::error::{Error, Result};
use crate::model::{TaskSpec, check_name};
use crate::orchestrator::Orchestrator;

/// When a schedule fires.
#[derive(Debug, Clone)]
enum Trigger {
    Every(TimeDelta),
    Cron(Box<croner::Cron>),
}

/// A named periodic task.
///
/// ```
/// use std::time::Duration;
/// use orch_core::{Schedule, TaskSpec};
///
/// let every_minute = Schedule::every("cleanup", Duration::from_secs(60), TaskSpec::new("janitor"))?;
/// let nightly = Schedule::cron("report", "0 3 * * *", TaskSpec::new("reports"))?;
/// assert!(Schedule::cron("bad", "not a cron line", TaskSpec::new("x")).is_err());
/// # Ok::<(), orch_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Schedule {
    name: String,
    trigger: Trigger,
    spec: TaskSpec,
}

impl Schedule {
    /// Fires every `interval` (at least one second), at multiples of it since the Unix epoch.
    pub fn every(name: impl Into<String>, interval: Duration, spec: TaskSpec) -> Result<Self> {
        let name = name.into();
        check_name("schedule name", &name, 128)?;
        spec.validate()?;
        if interval < Duration::from_secs(1) {
            return Err(Error::invalid("schedule interval", "must be at least 1 s"));
        }
        let interval = TimeDelta::from_std(interval)
            .map_err(|_| Error::invalid("schedule interval", "is too large"))?;
        Ok(Schedule {
            name,
            trigger: Trigger::Every(interval),
            spec,
        })
    }

    /// Fires at each match of a cron expression (5 fields, or 6 with seconds first), in UTC.
    pub fn cron(name: impl Into<String>, expression: &str, spec: TaskSpec) -> Result<Self> {
        let name = name.into();
        check_name("schedule name", &name, 128)?;
        spec.validate()?;
        let cron = croner::Cron::new(expression)
            .with_seconds_optional()
            .parse()
            .map_err(|e| Error::invalid("cron expression", format!("{expression:?}: {e}")))?;
        Ok(Schedule {
            name,
            trigger: Trigger::Cron(Box::new(cron)),
            spec,
        })
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first tick strictly after `after`.
    pub fn next_tick(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.trigger {
            Trigger::Every(interval) => {
                let step = interval.num_microseconds()?;
                let now = after.timestamp_micros();
                let next = (now.div_euclid(step) + 1).checked_mul(step)?;
                DateTime::from_timestamp_micros(next)
            }
            Trigger::Cron(cron) => cron.find_next_occurrence(&after, false).ok(),
        }
    }

    /// The idempotency key of the task for `tick`.
    pub fn tick_key(&self, tick: DateTime<Utc>) -> String {
        format!(
            "{}:{}",
            self.name,
            tick.to_rfc3339_opts(SecondsFormat::Millis, true)
        )
    }

    /// Dispatches at every tick until `stop` fires.
    pub(crate) async fn run(self, orch: Orchestrator, stop: CancellationToken) {
        loop {
            let Some(tick) = self.next_tick(clock::now()) else {
                tracing::warn!(schedule = %self.name, "schedule has no further ticks");
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep(clock::until(tick)) => {}
                _ = stop.cancelled() => return,
            }
            // Sleep may end a hair early against the wall clock; never fire before the tick.
            while clock::now() < tick {
                tokio::time::sleep(clock::until(tick).max(Duration::from_millis(1))).await;
            }
            let spec = self.spec.clone().idempotency_key(self.tick_key(tick));
            match orch.dispatch(spec).await {
                Ok(task) => {
                    tracing::debug!(schedule = %self.name, %tick, task_id = %task.id, "schedule fired")
                }
                Err(Error::ShuttingDown) => return,
                Err(error) => {
                    tracing::warn!(schedule = %self.name, %tick, %error, "schedule could not dispatch")
                }
            }
        }
    }
}
