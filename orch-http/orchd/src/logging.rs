//! [`JsonLines`]: orchd's JSON log lines. One JSON object per line with `timestamp`, `level`,
//! `target`, the event's fields at the top level, the innermost span as `span` (its name and
//! fields), and, for every line logged while a request is served, the request's
//! `correlation_id` at the top level whichever span is innermost.
//!
//! ```
//! use orchd::logging::JsonLines;
//! use tracing_subscriber::fmt::format::JsonFields;
//!
//! let subscriber = tracing_subscriber::fmt()
//!     .fmt_fields(JsonFields::new())
//!     .event_format(JsonLines)
//!     .with_writer(std::io::sink)
//!     .finish();
//! tracing::subscriber::with_default(subscriber, || {
//!     let request = tracing::info_span!("request", correlation_id = "r-1");
//!     let _inside = request.enter();
//!     tracing::info!("served");
//! });
//! ```

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The span field that names a request (set by orch-http's request span).
const CORRELATION_ID: &str = "correlation_id";

/// The event format of orchd's JSON logs; use it with
/// [`JsonFields`] as the field formatter, so that
/// span fields are kept as JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

/// Collects an event's fields into a JSON object.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".to_owned(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".to_owned(), Value::String(meta.level().to_string()));
        line.insert("target".to_owned(), Value::String(meta.target().to_owned()));
        event.record(&mut Fields(&mut line));
        let mut correlation_id = None;
        let mut innermost = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let fields = extensions
                    .get::<FormattedFields<JsonFields>>()
                    .and_then(|f| serde_json::from_str::<Map<String, Value>>(&f.fields).ok())
                    .unwrap_or_default();
                if let Some(id) = fields
                    .get(CORRELATION_ID)
                    .filter(|id| id.as_str() != Some(""))
                {
                    correlation_id = Some(id.clone());
                }
                let mut span_json = fields;
                span_json.insert("name".to_owned(), Value::String(span.name().to_owned()));
                innermost = Some(span_json);
            }
        }
        if let Some(span) = innermost {
            line.insert("span".to_owned(), Value::Object(span));
        }
        if let Some(id) = correlation_id {
            line.insert(CORRELATION_ID.to_owned(), id);
        }
        writeln!(writer, "{}", Value::Object(line))
    }
}
