"""Rate limits shared by two server processes through Redis: a tenant's budget is one budget,
whichever replica a call reaches."""

from __future__ import annotations

import time

import grpc
import pytest

from conftest import running_server

RATE = 5


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    with running_server(tmp_path_factory) as a:
        with running_server(tmp_path_factory, database=a.database) as b:
            yield a, b


def test_two_replicas_share_one_tenant_budget(replicas):
    a, b = replicas
    admin = a.client(a.admin_key)
    try:
        tenant = admin.call("memoire.v1.AdminService/CreateTenant", {"name": "limited"})["tenant"]["id"]
        updated = admin.call("memoire.v1.AdminService/UpdateTenant",
                             {"tenantId": tenant, "rateLimitRps": RATE, "rateLimitBurst": RATE})
        assert updated["tenant"]["rateLimitRps"] == RATE
        key = admin.call("memoire.v1.AdminService/CreateApiKey",
                         {"tenantId": tenant, "role": "KEY_ROLE_READER"})["secret"]
    finally:
        admin.close()

    clients = [a.client(key), b.client(key)]
    admitted, refused, served_by = 0, [], set()
    try:
        start = time.monotonic()
        for i in range(40):
            c = clients[i % 2]
            try:
                c.call("memoire.v1.MemoryService/ListMemories", {"user_id": "u"})
                admitted += 1
                served_by.add(i % 2)
                assert int(c.last_headers["x-ratelimit-remaining"]) >= 0
            except grpc.RpcError as e:
                refused.append(e)
        elapsed = time.monotonic() - start
    finally:
        for c in clients:
            c.close()

    # One budget: the burst plus what the rate refills while the calls ran. Two limiters
    # counting on their own would each admit that much of their half of the calls (at least
    # 2 * RATE + 2 * RATE * elapsed in all), past this bound however slow the calls.
    assert admitted >= RATE, (admitted, elapsed)
    assert admitted <= RATE + int(RATE * elapsed) + 1, (admitted, elapsed)
    assert served_by == {0, 1}
    e = refused[0]
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate_limit_rps" in e.details() and "retry in" in e.details()
    trailers = dict(e.trailing_metadata())
    assert trailers["x-ratelimit-remaining"] == "0"
    assert b"google.rpc.RetryInfo" in trailers["grpc-status-details-bin"]

    # The budget refills: after a second of rest, calls are admitted again on either replica.
    time.sleep(1.1)
    c = b.client(key)
    try:
        c.call("memoire.v1.MemoryService/ListMemories", {"user_id": "u"})
    finally:
        c.close()
