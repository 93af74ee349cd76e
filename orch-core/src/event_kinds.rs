//! The dotted names of the events the orchestrator appends beside task events: run-time
//! engine controls, self-healing actions, node readiness and alerts. They arrive as
//! [`EventKind::Custom`](crate::EventKind::Custom); match them with these constants (or a
//! pattern such as `engine.*` for an [`EventHandler`](crate::EventHandler)).
//!
//! Every one of them carries in its data `actor` (who or what made the change: `monitor` for
//! the orchestrator's own repairs, or what the caller of a control named, such as
//! `user:alice`), `reason` and `node` (the orchestrator's node id), and names the engine in
//! [`Event::engine`](crate::Event::engine) when it concerns one. Alerts carry the
//! [`Alert`](crate::monitor::Alert) instead.

/// An engine was paused: its queued tasks wait, running ones finish.
pub const ENGINE_PAUSED: &str = "engine.paused";
/// A paused engine was resumed.
pub const ENGINE_RESUMED: &str = "engine.resumed";
/// An engine's concurrency limit changed on one node (`from`, `to`).
pub const ENGINE_CONCURRENCY_CHANGED: &str = "engine.concurrency_changed";
/// An engine's circuit breaker opened on one node: it claims nothing until a probe succeeds
/// (`failures`, `cool_down_ms`, `last_error`).
pub const ENGINE_QUARANTINED: &str = "engine.quarantined";
/// A quarantined engine's probe failed: quarantined again (`probe`, `cool_down_ms`,
/// `last_error`).
pub const ENGINE_PROBE_FAILED: &str = "engine.probe_failed";
/// A quarantined engine was let back: its probe succeeded, or an operator released it.
pub const ENGINE_RELEASED: &str = "engine.released";
/// An engine runs a new version on one node; the one it replaces stays loaded for a
/// rollback (`from_version`, `to_version`).
pub const ENGINE_UPGRADED: &str = "engine.upgraded";
/// An engine went back to its previous version on one node: its new version kept failing,
/// or an operator asked (`from_version`, `to_version`).
pub const ENGINE_ROLLED_BACK: &str = "engine.rolled_back";
/// An engine's claim loop panicked and will be restarted after `delay_ms` (`error`,
/// `restarts`).
pub const ENGINE_CLAIM_LOOP_RESTARTED: &str = "engine.claim_loop_restarted";
/// An engine's claim loop panicked and, with restarts off, stays stopped (`error`).
pub const ENGINE_CLAIM_LOOP_STOPPED: &str = "engine.claim_loop_stopped";
/// An operator deleted a finished task (`task_id`, `status`); its earlier events stay.
pub const TASK_DELETED: &str = "task.deleted";
/// An operator released a lock its holder still held (`resource`, `owner`, `fencing_token`);
/// the holder's next extend or release is refused.
pub const LOCK_RELEASED: &str = "lock.released";
/// A plugin's isolated process died and was restarted (`plugin`, `version`, `restarts`: how
/// many times so far). Recorded by the monitor, which sees the plugin's restart count.
pub const PLUGIN_RESTARTED: &str = "plugin.restarted";
/// The node took itself out of rotation: it claims nothing and reports not ready.
pub const NODE_NOT_READY: &str = "node.not_ready";
/// The node is back in rotation.
pub const NODE_READY: &str = "node.ready";
/// The node rescued tasks whose lease had expired (`count`, `engines`: counts per engine).
pub const RESCUE_REPORTED: &str = "rescue.reported";
/// An alert fired: its condition held for its rule's duration.
pub const ALERT_FIRED: &str = "alert.fired";
/// A firing alert resolved: its condition stayed clear for its rule's `clear_for`.
pub const ALERT_RESOLVED: &str = "alert.resolved";
