"""`memoire-worker` on its own: a server with its embedded worker switched off acknowledges
messages, and the separate worker process extracts them; the worker serves /metrics, /healthz and
/readyz on `worker_http_addr` and stops gracefully on SIGTERM."""

from __future__ import annotations

import subprocess
import urllib.request

import pytest

from conftest import binary, free_port, running_server, stop, wait_until


def http_get(addr: str, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
        return r.status, r.read().decode()


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    with running_server(tmp_path_factory, MEMOIRE_WORKER_EMBEDDED="false") as srv:
        http = f"127.0.0.1:{free_port()}"
        log = tmp_path_factory.mktemp("worker") / "worker.log"
        env = {**srv.env, "MEMOIRE_WORKER_HTTP_ADDR": http, "MEMOIRE_WORKER_POLL_INTERVAL_MS": "200"}
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(binary("memoire-worker"))], env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(proc, log, "memoire-worker", lambda: http_get(http, "/readyz")[0] == 200)
            yield srv, proc, http, log
        finally:
            stop(proc, log, "memoire-worker")


def test_a_separate_worker_extracts_what_the_server_acknowledged(split):
    srv, proc, http, log = split
    admin = srv.client(srv.admin_key)
    try:
        tenant = admin.call("memoire.v1.AdminService/CreateTenant", {"name": "split"})["tenant"]["id"]
        key = admin.call("memoire.v1.AdminService/CreateApiKey", {"tenantId": tenant, "role": "KEY_ROLE_WRITER"})["secret"]
    finally:
        admin.close()
    client = srv.client(key)
    try:
        reply = client.call("memoire.v1.MemoryService/Ingest", {
            "user_id": "u", "session_id": "s", "wait_for_extraction": True, "wait_timeout": "30s",
            "messages": [{"role": "MESSAGE_ROLE_USER", "content": "I live in Oslo and I work at Equinor."}],
        })
        assert reply["extraction"] == "EXTRACTION_STATE_COMPLETED", reply
        memories = client.call("memoire.v1.MemoryService/ListMemories", {"user_id": "u"})["memories"]
        slots = {m["slot"]: m["content"] for m in memories}
        assert "Oslo" in slots["user.home_city"] and "Equinor" in slots["user.employer"], slots
    finally:
        client.close()
    status, body = http_get(http, "/metrics")
    assert status == 200 and 'memoire_jobs_total{task="extract",outcome="ok"}' in body, body[:2000]
    # Each apalis worker's tasks are counted by the worker's tower layer, when the task ends
    # (after the episode is acknowledged, so a moment after Ingest's wait returned).
    counted = 'memoire_worker_tasks_total{worker="extract",outcome="ok"}'
    wait_until(proc, log, "memoire-worker", lambda: counted in http_get(http, "/metrics")[1], timeout=30)
    assert http_get(http, "/healthz") == (200, "ok\n")
    assert proc.poll() is None, log.read_text()
