//! Claim loops under supervision: a loop that panics (a backend that panics in `claim_tasks`,
//! a bug) is restarted after a delay that doubles while it keeps panicking, when
//! [`Healing::restart`](super::Healing::restart) is on; with it off the engine is marked
//! stopped. Either way the panic is recorded as an event. Slots the loop held are released
//! as it unwinds, and the tasks waiting in its local queue are given back; tasks of claims
//! it had under way are rescued when their lease expires.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use super::{Engine, Inner, MONITOR, claim, control_event};
use crate::event_kinds;

/// The text of a panic's payload.
pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Runs `engine`'s claim loop until shutdown, restarting it after a panic.
pub(super) async fn claim_loop(inner: Arc<Inner>, engine: Arc<Engine>) {
    let mut delay: Option<Duration> = None;
    loop {
        let started = tokio::time::Instant::now();
        let run = tokio::spawn(claim::claim_loop(inner.clone(), engine.clone()));
        let error = match run.await {
            Ok(()) => return,
            Err(error) if error.is_panic() => panic_message(&*error.into_panic()),
            // The runtime is shutting down.
            Err(_) => return,
        };
        engine.idle.store(false, Ordering::Release);
        let restarts = engine.restarts.fetch_add(1, Ordering::AcqRel) + 1;
        let node = &inner.config.node_id;
        let Some(policy) = inner.config.healing.restart().copied() else {
            engine.stopped.store(true, Ordering::Release);
            tracing::error!(engine = %engine.name, %error, "claim loop panicked; restarts are off, the engine claims nothing more");
            let event = control_event(
                event_kinds::ENGINE_CLAIM_LOOP_STOPPED,
                Some(&engine.name),
                MONITOR,
                &format!("the claim loop panicked: {error}"),
                node,
                json!({"error": error})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            );
            if let Err(error) = inner.events.append(event).await {
                tracing::warn!(%error, "recording a stopped claim loop failed");
            }
            return;
        };
        let next = match delay {
            Some(previous) if started.elapsed() < policy.reset_after => {
                previous.saturating_mul(2).min(policy.max)
            }
            _ => policy.initial,
        };
        delay = Some(next);
        tracing::error!(engine = %engine.name, %error, restarts, ?next, "claim loop panicked; restarting it");
        let event = control_event(
            event_kinds::ENGINE_CLAIM_LOOP_RESTARTED,
            Some(&engine.name),
            MONITOR,
            &format!("the claim loop panicked: {error}"),
            node,
            json!({"error": error, "restarts": restarts, "delay_ms": next.as_millis() as u64})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        if let Err(error) = inner.events.append(event).await {
            tracing::warn!(%error, "recording a claim loop's restart failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = inner.stop_claiming.cancelled() => return,
        }
    }
}
