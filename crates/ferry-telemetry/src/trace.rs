//! Traces: OpenTelemetry spans exported over OTLP (HTTP/protobuf) when an endpoint is
//! configured, and the trace context carried between hosts so one download is one trace —
//! in gRPC metadata (`traceparent`, W3C) from a daemon to its scheduler, and in the piece
//! protocol's `Hello` from a child to its parent (see `ferry_proto::frame`).
//!
//! Without an endpoint nothing here costs more than a check: no exporter, no propagation.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState, TracerProvider as _};
use opentelemetry::{Context, KeyValue, SpanId, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The provider while tracing is on (flushed at exit by [`shutdown`]).
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Bytes of a trace context on the piece protocol: trace id, span id, flags.
pub const WIRE_LEN: usize = 25;

/// Starts exporting spans to `endpoint` (an OTLP/HTTP base URL such as
/// `http://collector:4318`; `/v1/traces` is added) as `service` (`ferry-daemon`, ...), with
/// `instance` (the host id) as `service.instance.id`. Returns the layer to add to the
/// subscriber.
pub fn layer<S>(endpoint: &str, service: &str, instance: &str) -> Result<impl tracing_subscriber::Layer<S>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry_otlp::WithExportConfig;
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .with_attribute(KeyValue::new("service.instance.id", instance.to_owned()))
        .build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("ferry");
    let _ = PROVIDER.set(provider);
    Ok(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// Whether spans are exported (and contexts worth carrying).
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Exports what is buffered; call before the process exits.
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.shutdown();
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataRef<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Puts the current span's context into a gRPC request's metadata.
pub fn inject_grpc(metadata: &mut tonic::metadata::MetadataMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut Metadata(metadata));
}

/// Makes `span` a child of the context a gRPC request carries, if it carries one.
pub fn follow_grpc(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    if !enabled() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&MetadataRef(metadata));
    if cx.span().span_context().is_valid() {
        span.set_parent(cx);
    }
}

/// The current span's context as the piece protocol carries it, when tracing is on.
pub fn current_wire() -> Option<[u8; WIRE_LEN]> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    let mut out = [0u8; WIRE_LEN];
    out[..16].copy_from_slice(&sc.trace_id().to_bytes());
    out[16..24].copy_from_slice(&sc.span_id().to_bytes());
    out[24] = sc.trace_flags().to_u8();
    Some(out)
}

/// Makes `span` a child of a context received on the piece protocol.
pub fn follow_wire(span: &tracing::Span, wire: &[u8; WIRE_LEN]) {
    if !enabled() {
        return;
    }
    let trace = TraceId::from_bytes(wire[..16].try_into().expect("16 bytes"));
    let id = SpanId::from_bytes(wire[16..24].try_into().expect("8 bytes"));
    let sc = SpanContext::new(trace, id, TraceFlags::new(wire[24]), true, TraceState::default());
    if sc.is_valid() {
        span.set_parent(Context::new().with_remote_span_context(sc));
    }
}
