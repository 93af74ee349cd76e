//! An attempt's spans: with a trace propagator, `orch.claim` continues the trace its task
//! carries, and `orch.engine` and `orch.outcome` are its children; without one, no span.

use std::sync::Arc;

use orch_core::{
    MemoryBackend, Orchestrator, TaskSpec, TaskStatus, TraceContext, TracePropagator, processor_fn,
};
use parking_lot::Mutex;
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::{Layer, registry::LookupSpan};

/// Span names, each with its parent's name.
type Names = Vec<(String, Option<String>)>;

/// Every span of target `orch::trace` opened, with its parent's name.
#[derive(Clone, Default)]
struct Opened(Arc<Mutex<Names>>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Opened {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().target() != orch_core::trace::SPAN_TARGET {
            return;
        }
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent())
            .map(|parent| parent.name().to_owned());
        self.0
            .lock()
            .push((attrs.metadata().name().to_owned(), parent));
    }
}

/// Records which span was asked to continue which trace.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<(String, String)>>>);

impl TracePropagator for Recording {
    fn continue_trace(&self, span: &tracing::Span, parent: &TraceContext) {
        let name = span.metadata().map_or("(disabled)", |m| m.name());
        self.0
            .lock()
            .push((name.to_owned(), parent.traceparent().to_owned()));
    }
    fn context_of(&self, _span: &tracing::Span) -> Option<TraceContext> {
        None
    }
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn run(propagator: Option<Recording>) -> Names {
    let opened = Opened::default();
    let subscriber = tracing_subscriber::registry().with(opened.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let mut builder = Orchestrator::builder(Arc::new(MemoryBackend::new()))
        .engine("echo", processor_fn(|_ctx, input| async move { Ok(input) }));
    if let Some(propagator) = propagator {
        builder = builder.trace_propagator(propagator);
    }
    let orch = builder.build().await.unwrap();
    let context = TraceContext::new(PARENT, None).unwrap();
    for spec in [
        TaskSpec::new("echo").trace_context(context),
        TaskSpec::new("echo"),
    ] {
        let task = orch.dispatch_and_wait(spec).await.unwrap();
        assert_eq!(task.status, TaskStatus::Succeeded);
    }
    orch.shutdown(std::time::Duration::from_secs(5)).await;
    opened.0.lock().clone()
}

#[tokio::test(flavor = "current_thread")]
async fn an_attempt_continues_the_trace_its_task_carries() {
    let recording = Recording::default();
    let opened = run(Some(recording.clone())).await;
    // Only the task with a context continued a trace, from its claim span.
    assert_eq!(
        *recording.0.lock(),
        [("orch.claim".to_owned(), PARENT.to_owned())]
    );
    let count = |name: &str, parent: Option<&str>| {
        opened
            .iter()
            .filter(|(n, p)| n == name && p.as_deref() == parent)
            .count()
    };
    assert_eq!(count("orch.claim", None), 2, "{opened:?}");
    assert_eq!(count("orch.engine", Some("orch.claim")), 2, "{opened:?}");
    assert_eq!(count("orch.outcome", Some("orch.claim")), 2, "{opened:?}");
    assert_eq!(opened.len(), 6, "{opened:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn without_a_propagator_no_span_is_opened() {
    let opened = run(None).await;
    assert!(opened.is_empty(), "{opened:?}");
}
