//! The built-in engines `orchd` registers so a fresh daemon has something to run:
//! `echo` (the result is the task's payload) and `sleep` (waits `payload.ms` milliseconds,
//! stopping early when the task is cancelled or times out).

use std::time::Duration;

use async_trait::async_trait;
use orch_core::{Processor, TaskContext, TaskError};
use serde_json::{Value, json};

/// Longest `sleep` accepted: one day.
pub const MAX_SLEEP_MS: u64 = 24 * 3600 * 1000;

/// `echo`: returns its input.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

#[async_trait]
impl Processor for Echo {
    async fn process(&self, _ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        Ok(input)
    }
}

/// `sleep`: waits `payload.ms` (default 1000) and returns `{"slept_ms": ms}`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sleep;

fn sleep_ms(input: &Value) -> Result<u64, TaskError> {
    match input.get("ms") {
        None | Some(Value::Null) => Ok(1000),
        Some(ms) => ms.as_u64().filter(|&ms| ms <= MAX_SLEEP_MS).ok_or_else(|| {
            TaskError::fatal(format!(
                "payload.ms must be an integer between 0 and {MAX_SLEEP_MS}"
            ))
        }),
    }
}

#[async_trait]
impl Processor for Sleep {
    fn validate(&self, input: &Value) -> Result<(), TaskError> {
        sleep_ms(input).map(|_| ())
    }
    async fn process(&self, ctx: TaskContext, input: Value) -> Result<Value, TaskError> {
        let ms = sleep_ms(&input)?;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({"slept_ms": ms})),
            _ = ctx.cancelled() => Err(TaskError::fatal("sleep interrupted: task cancelled or timed out")),
        }
    }
}
