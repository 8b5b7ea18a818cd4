//! OpenTelemetry trace context across a real Redis round trip: the perform span's parent is
//! the enqueue span, in the same trace, though the job was pushed, stored and fetched.

mod support;

use std::time::Duration;

use opentelemetry::global;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use support::jobs::{self, Note};
use support::{eventually, start, Backend};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

const LIMIT: Duration = Duration::from_secs(20);

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_perform_span_continues_the_enqueuing_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("jobqueue-test")));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber here");
    global::set_text_map_propagator(TraceContextPropagator::new());

    let b = Backend::redis().await;
    let t = jobs::token();
    let request = tracing::info_span!("http.request");
    let jid = b
        .client()
        .enqueue(&Note::new(&t, "traced"))
        .instrument(request)
        .await
        .unwrap();
    let h = start(b.worker().register::<Note>());
    eventually(LIMIT, "the job ran", || async {
        !jobs::runs(&t).is_empty()
    })
    .await;
    h.stop().await;
    provider.force_flush().expect("flush the spans");

    let spans = exporter.get_finished_spans().expect("the finished spans");
    let ours = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name && attribute(s, "jid").as_deref() == Some(jid.as_str()))
            .unwrap_or_else(|| panic!("no {name} span for {jid}"))
    };
    let request = spans.iter().find(|s| s.name == "http.request").unwrap();
    let enqueue = ours("jobqueue.enqueue");
    let perform = ours("jobqueue.perform");
    assert_eq!(enqueue.parent_span_id, request.span_context.span_id());
    assert_eq!(
        perform.parent_span_id,
        enqueue.span_context.span_id(),
        "the perform span's parent is the enqueue span"
    );
    assert_eq!(
        perform.span_context.trace_id(),
        request.span_context.trace_id(),
        "one trace from the request to the job's run"
    );
    assert_eq!(attribute(perform, "class").as_deref(), Some("Note"));
}
