//! Traces: orchd's spans as OpenTelemetry spans over OTLP/HTTP, and [`OtelPropagator`], the
//! [`TracePropagator`] that makes a task's spans continue the trace its `traceparent` names.
//!
//! What is exported is the spans of [`orch_core::trace`] (target `orch::trace`) and nothing
//! else: `orch.dispatch` (orch-http, `POST /dispatch`), then, in the process that claims the
//! task, `orch.claim` with its children `orch.engine` and `orch.outcome`. Spans leave in
//! batches from the SDK's own thread; an unreachable receiver costs a log line, never a
//! request. [`Exporter::shutdown`] sends what is left.
//!
//! ```
//! use orchd::settings::Settings;
//!
//! // Without an endpoint there is nothing to start.
//! let settings = Settings::from_yaml("", &|_| None).unwrap();
//! assert!(settings.trace_export().unwrap().is_none());
//! ```

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use orch_core::{TraceContext, TracePropagator};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;

use crate::settings::TraceExport;

/// How long one export may take before it is given up (and logged).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The OTLP exporter and the tracer provider around it. Dropping it without
/// [`Exporter::shutdown`] loses the spans not yet sent.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Starts the batch exporter to `export.traces_url`. Nothing is sent until a span ends; a
    /// receiver that is down is only found (and logged) then.
    pub fn start(export: &TraceExport) -> Result<Exporter, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(export.traces_url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot start the OTLP exporter: {e}"))?;
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(export.sample_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(export.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Exporter { provider })
    }

    /// The `tracing` layer that turns the spans of target `orch::trace` into OpenTelemetry
    /// spans (and ignores every other span and event).
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        let tracer = self.provider.tracer("orchd");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_filter(
                Targets::new().with_target(orch_core::trace::SPAN_TARGET, LevelFilter::INFO),
            )
    }

    /// Sends the spans not yet sent and stops the exporter. Blocks for up to the export
    /// timeout: call it off the async runtime's threads (`spawn_blocking`).
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "sending the last spans failed");
        }
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "stopping the span exporter failed");
        }
    }
}

/// The W3C trace context propagator of OpenTelemetry, over `tracing` spans bridged by
/// `tracing-opentelemetry`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtelPropagator;

impl TracePropagator for OtelPropagator {
    fn continue_trace(&self, span: &tracing::Span, parent: &TraceContext) {
        let mut carrier = HashMap::with_capacity(2);
        carrier.insert("traceparent".to_owned(), parent.traceparent().to_owned());
        if let Some(state) = parent.tracestate() {
            carrier.insert("tracestate".to_owned(), state.to_owned());
        }
        let context = TraceContextPropagator::new().extract(&carrier);
        if let Err(error) = span.set_parent(context) {
            tracing::debug!(%error, "a span could not continue its task's trace");
        }
    }

    fn context_of(&self, span: &tracing::Span) -> Option<TraceContext> {
        let context = span.context();
        if !context.span().span_context().is_valid() {
            return None;
        }
        let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
        TraceContextPropagator::new().inject_context(&context, &mut carrier);
        let traceparent = carrier.remove("traceparent")?;
        let tracestate = carrier.remove("tracestate").filter(|s| !s.is_empty());
        TraceContext::new(traceparent, tracestate).ok()
    }
}
