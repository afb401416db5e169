//! OpenTelemetry traces: the server exports its spans over OTLP/gRPC to the collector that
//! `otlp_endpoint` names — here one in this process (a tonic server implementing the OTLP trace
//! service) — and a call that brings a W3C `traceparent` is traced under the caller's span.
//! One Recall and one Ingest arrive as span trees: the RPC's span with the Recall stages (query
//! embedding, full text, vector search, hydration, ranking, packing) or the Ingest steps under
//! it, and the extraction that follows the Ingest as a trace of its own (extractor, resolve and
//! write). The Rust SDK sends the trace context of the caller's current span by itself.
//!
//! Its own test binary: the `tracing` subscriber it installs is the process's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use memoire_config::Config;
use memoire_tests::otlp::{Collector, Received};
use memoire_tests::{TestServer, fact, proto as pb};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

/// The spans of one trace, by span id.
fn trace(spans: &[Received], trace_id: &[u8]) -> HashMap<Vec<u8>, Received> {
    spans
        .iter()
        .filter(|r| r.span.trace_id == trace_id)
        .map(|r| (r.span.span_id.clone(), r.clone()))
        .collect()
}

/// The names of the direct children of `parent` in `spans`.
fn children(spans: &HashMap<Vec<u8>, Received>, parent: &[u8]) -> Vec<String> {
    let mut names: Vec<String> = spans
        .values()
        .filter(|r| r.span.parent_span_id == parent)
        .map(|r| r.span.name.clone())
        .collect();
    names.sort();
    names
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A request carrying the W3C trace context of a caller's (sampled) span.
fn traced<T>(message: T, trace_id: &[u8; 16], span_id: &[u8; 8]) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    let header = format!("00-{}-{}-01", hex(trace_id), hex(span_id));
    req.metadata_mut()
        .insert("traceparent", header.parse().expect("header"));
    req
}

/// Polls the collector until `done` holds for what it has received (panics after 20 s).
async fn wait_for(
    collector: &Collector,
    telemetry: &memoire_app::Telemetry,
    done: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        telemetry.flush();
        let spans = collector.spans();
        if done(&spans) {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "the collector did not receive the spans: {:#?}",
            spans
                .iter()
                .map(|r| (&r.span.name, hex(&r.span.trace_id)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_recall_and_one_ingest_arrive_at_the_collector_as_span_trees() {
    let (collector, addr) = Collector::start().await.expect("collector");
    let config = Config {
        otlp_endpoint: Some(format!("http://{addr}")),
        ..Config::default()
    };
    let telemetry = memoire_app::init_tracing(&config, "memoire-server");
    assert!(telemetry.exporting());

    let server = TestServer::start().await;
    let (_, client) = server.tenant("t", pb::KeyRole::Writer).await;
    client
        .memory()
        .teach(fact("ada", "Prefers jasmine tea"))
        .await
        .expect("teach");

    // One Recall under a caller's span.
    let (recall_trace, caller) = ([0x11; 16], [0x22; 8]);
    let recall = pb::RecallRequest {
        user_id: "ada".into(),
        query: "which tea does ada prefer".into(),
        k: 5,
        include_episodes: Some(true),
        ..Default::default()
    };
    client
        .memory()
        .recall(traced(recall, &recall_trace, &caller))
        .await
        .expect("recall");
    let spans = wait_for(&collector, &telemetry, |s| {
        let t = trace(s, &recall_trace);
        t.values()
            .any(|r| r.span.name == "memoire.v1.MemoryService/Recall")
    })
    .await;
    let tree = trace(&spans, &recall_trace);
    let root = tree
        .values()
        .find(|r| r.span.name == "memoire.v1.MemoryService/Recall")
        .expect("the RPC's span");
    assert_eq!(root.span.parent_span_id, caller, "under the caller's span");
    assert_eq!(root.span.kind, SpanKind::Server as i32);
    assert_eq!(root.service, "memoire-server");
    let stages = children(&tree, &root.span.span_id);
    for stage in [
        "query_embedding",
        "scope_stats",
        "full_text",
        "vector",
        "hydrate",
        "rank",
        "pack",
    ] {
        assert!(stages.iter().any(|s| s == stage), "{stage}: {stages:?}");
    }
    // Both tables (memories, conversation turns) were searched, each in its own spans; a table
    // with candidates scores and hydrates them side by side (two spans, both kept).
    let count = |stage: &str| stages.iter().filter(|s| *s == stage).count();
    for stage in ["scope_stats", "full_text", "vector"] {
        assert_eq!(count(stage), 2, "{stage} per table: {stages:?}");
    }
    assert!(count("hydrate") >= 1, "{stages:?}");
    assert_eq!(count("hydrate"), count("text_scores"), "{stages:?}");
    // Every span of the trace hangs from the RPC's.
    for r in tree.values() {
        if r.span.span_id != root.span.span_id {
            assert!(
                tree.contains_key(&r.span.parent_span_id),
                "{} has no parent in the trace",
                r.span.name
            );
        }
    }

    // The Rust SDK sends the trace context of the caller's current span by itself.
    let caller_span = tracing::info_span!(target: "memoire_tests::caller", "caller");
    tracing::Instrument::instrument(
        client.memory().get_memory(pb::GetMemoryRequest {
            memory_id: uuid::Uuid::nil().to_string(),
        }),
        caller_span,
    )
    .await
    .expect_err("no such memory");
    let spans = wait_for(&collector, &telemetry, |s| {
        s.iter().any(|r| r.span.name == "caller")
            && s.iter()
                .any(|r| r.span.name == "memoire.v1.MemoryService/GetMemory")
    })
    .await;
    let caller = spans
        .iter()
        .find(|r| r.span.name == "caller")
        .expect("caller");
    let rpc = spans
        .iter()
        .find(|r| r.span.name == "memoire.v1.MemoryService/GetMemory")
        .expect("rpc");
    assert_eq!(rpc.span.trace_id, caller.span.trace_id);
    assert_eq!(rpc.span.parent_span_id, caller.span.span_id);

    // One Ingest, waiting for its extraction.
    let (ingest_trace, caller) = ([0x33; 16], [0x44; 8]);
    let ingest = pb::IngestRequest {
        user_id: "ada".into(),
        session_id: "s".into(),
        messages: vec![pb::Message {
            role: pb::MessageRole::User as i32,
            content: "I love green tea.".into(),
            ..Default::default()
        }],
        wait_for_extraction: true,
        ..Default::default()
    };
    client
        .memory()
        .ingest(traced(ingest, &ingest_trace, &caller))
        .await
        .expect("ingest");
    let spans = wait_for(&collector, &telemetry, |s| {
        trace(s, &ingest_trace)
            .values()
            .any(|r| r.span.name == "memoire.v1.MemoryService/Ingest")
            && s.iter().any(|r| r.span.name == "extract_run")
    })
    .await;
    let tree = trace(&spans, &ingest_trace);
    let root = tree
        .values()
        .find(|r| r.span.name == "memoire.v1.MemoryService/Ingest")
        .expect("the RPC's span");
    assert_eq!(root.span.parent_span_id, caller);
    let steps = children(&tree, &root.span.span_id);
    for step in ["store_episodes", "wait_for_extraction"] {
        assert!(steps.iter().any(|s| s == step), "{step}: {steps:?}");
    }
    // The extraction the worker did for it: a trace of its own.
    let extraction = spans
        .iter()
        .find(|r| r.span.name == "extract_episode")
        .expect("the extraction's span");
    let tree = trace(&spans, &extraction.span.trace_id);
    let steps = children(&tree, &extraction.span.span_id);
    for step in ["extraction_input", "extractor", "resolve_write"] {
        assert!(steps.iter().any(|s| s == step), "{step}: {steps:?}");
    }
    // Under the run the worker took the user's due turns in.
    let run = tree
        .get(&extraction.span.parent_span_id)
        .expect("the run's span");
    assert_eq!(run.span.name, "extract_run");
    telemetry.shutdown();
}
