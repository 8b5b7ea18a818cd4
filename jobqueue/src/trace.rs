//! Trace context across the queue: with the `opentelemetry` feature, an enqueue writes the
//! current OpenTelemetry context into the payload under [`TRACE_KEY`] (a key Ruby Sidekiq
//! keeps and ignores), and the perform span takes it as its parent, so a job's run
//! continues the trace that enqueued it. The propagator is the one set globally
//! (`opentelemetry::global::set_text_map_propagator`), W3C trace context as a rule.
//! Without the feature these are no-ops.

use crate::envelope::Envelope;

/// The payload key that carries the enqueuing trace context.
pub const TRACE_KEY: &str = "trace_context";

/// Writes the current span's context into the payload.
#[cfg(feature = "opentelemetry")]
pub(crate) fn inject(envelope: &mut Envelope) {
    use std::collections::HashMap;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let cx = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    if !carrier.is_empty() {
        let carrier = carrier
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        envelope
            .extra
            .insert(TRACE_KEY.to_owned(), serde_json::Value::Object(carrier));
    }
}

/// Makes `span` continue the trace the payload carries, if any.
#[cfg(feature = "opentelemetry")]
pub(crate) fn continue_from(envelope: &Envelope, span: &tracing::Span) {
    use std::collections::HashMap;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let Some(serde_json::Value::Object(carrier)) = envelope.extra.get(TRACE_KEY) else {
        return;
    };
    let carrier: HashMap<String, String> = carrier
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect();
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let _ = span.set_parent(cx);
}

#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn inject(_: &mut Envelope) {}

#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn continue_from(_: &Envelope, _: &tracing::Span) {}
