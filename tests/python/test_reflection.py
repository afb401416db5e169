"""What grpcurl relies on, checked with a reflection-only client: both reflection versions, the
documentation in the descriptors, health per service, JSON calls, and field-naming errors."""

from __future__ import annotations

import urllib.request

import grpc
import pytest


@pytest.mark.parametrize("v1", [False, True], ids=["v1alpha", "v1"])
def test_reflection_lists_every_service(server, v1):
    client = server.client(v1=v1)
    try:
        services = client.list_services()
    finally:
        client.close()
    for name in ["memoire.v1.MemoryService", "memoire.v1.AdminService", "grpc.health.v1.Health"]:
        assert name in services


def test_descriptors_carry_the_proto_documentation(server):
    client = server.client()
    try:
        client.load("memoire.v1.MemoryService")
        sd = client.pool.FindServiceByName("memoire.v1.MemoryService")
        assert set(sd.methods_by_name) == {
            "Ingest", "Recall", "Conscious", "Teach", "Forget", "GetMemory", "ListMemories", "History",
            "WhoAmI", "ListUsers", "ListEpisodes", "Chat",
        }
        # grpcurl `describe` prints these comments.
        assert client.leading_comment("memoire/v1/memory.proto", "A direct, labeled memory write")
        assert client.leading_comment("memoire/v1/memory.proto", "The user the memory belongs to")
        client.load("memoire.v1.AdminService")
        assert client.leading_comment("memoire/v1/admin.proto", "Creates a tenant")
    finally:
        client.close()


@pytest.mark.parametrize("service", ["", "memoire.v1.MemoryService", "memoire.v1.AdminService"])
def test_health_reports_serving_per_service(server, service):
    client = server.client()
    try:
        assert client.call("grpc.health.v1.Health/Check", {"service": service}) == {"status": "SERVING"}
    finally:
        client.close()


def test_json_calls_and_field_named_errors(server):
    admin = server.client(server.admin_key)
    try:
        tenant = admin.call("memoire.v1.AdminService/CreateTenant", {"name": "reflection-tests"})["tenant"]["id"]
        key = admin.call("memoire.v1.AdminService/CreateApiKey",
                         {"tenantId": tenant, "role": "KEY_ROLE_WRITER"})["secret"]
    finally:
        admin.close()
    client = server.client(key)
    try:
        taught = client.call("memoire.v1.MemoryService/Teach", {
            "user_id": "u", "kind": "MEMORY_KIND_PREFERENCE", "content": "Prefers aisle seats",
            "tags": ["Travel"], "importance": 0.8, "pinned": True, "expires_at": "2999-01-01T00:00:00Z",
        })
        assert taught["outcome"] == "WRITE_OUTCOME_CREATED"
        assert taught["memory"]["tags"] == ["travel"]
        assert taught["memory"]["expiresAt"] == "2999-01-01T00:00:00Z"
        with pytest.raises(grpc.RpcError) as e:
            client.call("memoire.v1.MemoryService/Teach", {"user_id": "u", "kind": "MEMORY_KIND_FACT", "content": "x" * 20000})
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "content" in e.value.details() and "16384" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            client.call("memoire.v1.MemoryService/ListMemories", {"user_id": "u", "page_size": -1})
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_size" in e.value.details()
        conscious = client.call("memoire.v1.MemoryService/Conscious", {"user_id": "u"})
        assert "Prefers aisle seats" in conscious["context"], conscious
        assert conscious["source"] in ("CONSCIOUS_SOURCE_POSTGRES", "CONSCIOUS_SOURCE_REDIS")
    finally:
        client.close()
    with pytest.raises(grpc.RpcError) as e:
        server.client().call("memoire.v1.MemoryService/ListMemories", {"user_id": "u"})
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_metrics_and_health_endpoints(server):
    body = urllib.request.urlopen(f"http://{server.http}/metrics", timeout=5).read().decode()
    assert "memoire_rpc_requests_total" in body
    assert urllib.request.urlopen(f"http://{server.http}/healthz", timeout=5).status == 200
    assert urllib.request.urlopen(f"http://{server.http}/readyz", timeout=5).status == 200
