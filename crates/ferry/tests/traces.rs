//! Traces: with an OTLP endpoint set, one download is one trace with spans from the
//! downloading daemon, its scheduler and the parent that served it. The collector is an
//! OTLP/HTTP receiver in this test, decoding what the real exporters send.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bin, download};
use ferry_demo::cluster::Cluster;
use ferry_demo::data;
use ferry_testkit::wait_until;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;

#[derive(Clone, Debug)]
struct Span {
    service: String,
    instance: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
}

type Spans = Arc<Mutex<Vec<Span>>>;

fn attr(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> String {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

/// An OTLP/HTTP trace receiver on loopback; returns its base URL and what it received.
async fn collector() -> (String, Spans) {
    let spans: Spans = Default::default();
    let store = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
                let mut out = store.lock().unwrap();
                for rs in req.resource_spans {
                    let attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
                    let (service, instance) = (attr(&attrs, "service.name"), attr(&attrs, "service.instance.id"));
                    for s in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                        out.push(Span {
                            service: service.clone(),
                            instance: instance.clone(),
                            name: s.name,
                            trace: s.trace_id,
                            id: s.span_id,
                            parent: s.parent_span_id,
                        });
                    }
                }
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_download_is_one_trace_across_daemon_scheduler_and_parent() {
    let (endpoint, spans) = collector().await;
    // The processes inherit this: export every 100 ms instead of every 5 s.
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    let files = [("f.bin".to_owned(), data::generate(3, 4 << 20))].into_iter().collect();
    let origin = ferry_demo::origin::Origin::start(files, Default::default()).await.unwrap();
    let mut cluster = Cluster::new(bin()).unwrap();
    let otlp = ["--otlp-endpoint", endpoint.as_str()];
    cluster.start_scheduler_with("scheduler", "127.0.0.1:0", &otlp).await.unwrap();
    let args = ["--otlp-endpoint", endpoint.as_str(), "--piece-size", "256KiB"];
    cluster.start_daemon("seed", true, &args).await.unwrap();
    let a = cluster.start_daemon("peer-a", false, &args).await.unwrap();
    let b = cluster.start_daemon("peer-b", false, &args).await.unwrap();
    let url = origin.url("f.bin");
    let dir = tempfile::tempdir().unwrap();
    download(&a, &url, &dir.path().join("a")).await.unwrap();
    download(&b, &url, &dir.path().join("b")).await.unwrap();

    let (trace, got) = wait_until("peer-b's download as one trace", Duration::from_secs(30), || async {
        let all = spans.lock().unwrap().clone();
        let root = all.iter().find(|s| s.instance == "peer-b" && s.name == "download" && s.parent.is_empty())?;
        let trace: Vec<Span> = all.iter().filter(|s| s.trace == root.trace).cloned().collect();
        let scheduler = trace.iter().any(|s| s.service == "ferry-scheduler" && s.name == "announce_peer");
        let parent = trace.iter().any(|s| s.name == "serve_task" && s.instance != "peer-b");
        // The task runs in the download's trace, and so does each pull from a parent.
        let task = trace.iter().any(|s| s.instance == "peer-b" && s.name == "task");
        let pulls = trace.iter().any(|s| s.instance == "peer-b" && s.name == "from_parent");
        // Every span received so far hangs off another of the trace (spans of one trace come
        // from four processes, each exporting on its own schedule).
        let whole = trace.iter().filter(|s| !s.parent.is_empty()).all(|s| trace.iter().any(|p| p.id == s.parent));
        (scheduler && parent && task && pulls && whole).then(|| (root.trace.clone(), trace))
    })
    .await;
    // One tree: a single root.
    let roots: Vec<&Span> = got.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "{roots:?}");
    // peer-a's download is a trace of its own (each daemon exports on its own schedule).
    let a_trace = wait_until("peer-a's download span", Duration::from_secs(30), || async {
        let all = spans.lock().unwrap().clone();
        all.iter().find(|s| s.instance == "peer-a" && s.name == "download").map(|s| s.trace.clone())
    })
    .await;
    assert_ne!(a_trace, trace);
}
