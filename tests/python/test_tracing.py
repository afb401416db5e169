"""Traces across the Python SDK and the server binary: a call made inside an OpenTelemetry span
carries the span's W3C `traceparent`, and the span the server exports for that call — over
OTLP/gRPC from the real `memoire-server`, configured by MEMOIRE_OTLP_ENDPOINT, to a collector in
this test — is that span's child; a call outside any span starts a trace of its own."""

from __future__ import annotations

import time
import uuid
from concurrent import futures

import grpc
import pytest

from conftest import running_server

memoire = pytest.importorskip("memoire", reason="pip install ./sdk-python (make test does)")
otel_sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.proto.collector.trace.v1 import (  # noqa: E402
    trace_service_pb2,
    trace_service_pb2_grpc,
)


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list = []

    def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                self.spans.extend(ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture(scope="module")
def collector():
    c = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(c, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield c, port
    server.stop(0)


def rpc_spans(c: Collector, trace_id: bytes) -> list:
    return [s for s in c.spans if s.trace_id == trace_id and s.name == "memoire.v1.MemoryService/Recall"]


def test_a_call_inside_a_span_is_traced_under_it(tmp_path_factory, collector):
    c, port = collector
    # The batch exporter sends every 5 s by default; the SDK's own variable shortens that.
    with running_server(tmp_path_factory, MEMOIRE_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
                        OTEL_BSP_SCHEDULE_DELAY="200") as srv:
        admin = memoire.Memoire(f"http://{srv.target}", srv.admin_key)
        tenant = admin.create_tenant(f"trace-{uuid.uuid4().hex[:8]}")["tenant"]["id"]
        key = admin.create_api_key(tenant, role="writer")["secret"]
        m = memoire.Memoire(f"http://{srv.target}", key, user="ada")
        m.teach("Prefers jasmine tea", kind="preference")

        tracer = otel_sdk.TracerProvider().get_tracer("test")
        with tracer.start_as_current_span("caller") as span:
            m.recall("what does ada drink")
        ctx = span.get_span_context()
        trace_id, span_id = ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big")
        m.recall("what does ada drink, untraced")

        deadline = time.monotonic() + 20
        while not rpc_spans(c, trace_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        ours = rpc_spans(c, trace_id)
        assert len(ours) == 1, [s.name for s in c.spans]
        assert ours[0].parent_span_id == span_id
        # The untraced call is a root span of another trace.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            roots = [s for s in c.spans if s.name == "memoire.v1.MemoryService/Recall" and not s.parent_span_id]
            if roots:
                break
            time.sleep(0.2)
        assert roots and all(s.trace_id != trace_id for s in roots)
