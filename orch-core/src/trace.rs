//! Distributed traces: the spans orch opens for a task and [`TracePropagator`], the bridge
//! that makes them part of the trace whose W3C context the task carries.
//!
//! orch-core depends on no tracer. It opens plain `tracing` spans (target [`SPAN_TARGET`],
//! names below) and only while a propagator is installed
//! ([`OrchestratorBuilder::trace_propagator`](crate::OrchestratorBuilder::trace_propagator)):
//! without one, a task's trace context is stored and handed back, and nothing else happens.
//!
//! The spans of one attempt, in the process that claimed it:
//! - [`CLAIM_SPAN`] `orch.claim`: from the claim to the recorded outcome; its parent is the
//!   span the task's `traceparent` names (the dispatch, possibly in another process).
//! - [`ENGINE_SPAN`] `orch.engine`: the engine call, a child of `orch.claim`.
//! - [`OUTCOME_SPAN`] `orch.outcome`: recording the outcome, a child of `orch.claim`.
//!
//! Each has the fields `task_id`, `core_id` and `attempt`; `orch.outcome` also `status`, the
//! state the task moved to. `orch-http` adds [`DISPATCH_SPAN`] `orch.dispatch` for
//! `POST /dispatch`, whose context it stores in the task.

use crate::model::TraceContext;

/// The `tracing` target of every span in this list (a subscriber may route them alone).
pub const SPAN_TARGET: &str = "orch::trace";
/// A task's dispatch (opened by the HTTP front).
pub const DISPATCH_SPAN: &str = "orch.dispatch";
/// One attempt in the process that claimed it, from the claim to its recorded outcome.
pub const CLAIM_SPAN: &str = "orch.claim";
/// The engine call of an attempt.
pub const ENGINE_SPAN: &str = "orch.engine";
/// Recording an attempt's outcome.
pub const OUTCOME_SPAN: &str = "orch.outcome";

/// Carries W3C trace context between `tracing` spans and tasks, for a tracer orch-core does
/// not know (orchd's implementation speaks OpenTelemetry).
///
/// Contract: both methods are called on a span just opened by orch and not yet entered; they
/// must not block, must not panic, and answer quickly (they run on the dispatch path). A
/// propagator that cannot use a context ignores it: a span without a remote parent starts a
/// trace of its own.
pub trait TracePropagator: Send + Sync + 'static {
    /// Makes `span` a child of the span `parent` names (a remote parent: another process, or
    /// a caller's).
    fn continue_trace(&self, span: &tracing::Span, parent: &TraceContext);

    /// The W3C context naming `span`, to store in a task so that its claim continues from
    /// there; `None` when `span` is not recorded by the tracer.
    fn context_of(&self, span: &tracing::Span) -> Option<TraceContext>;
}

impl<P: TracePropagator + ?Sized> TracePropagator for std::sync::Arc<P> {
    fn continue_trace(&self, span: &tracing::Span, parent: &TraceContext) {
        (**self).continue_trace(span, parent)
    }

    fn context_of(&self, span: &tracing::Span) -> Option<TraceContext> {
        (**self).context_of(span)
    }
}
