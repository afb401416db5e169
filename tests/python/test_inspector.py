"""The Memory Inspector (issue: "edit the memory, edit the agent"): served by the server binary on
its HTTP port, speaking memoire.v1 over gRPC-Web. The browser walk-through runs in Debian's
Chromium through playwright-core (ui/tests/inspector.e2e.mjs); screenshots of each step are kept
in target/test-artifacts/inspector/."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import urllib.error
import urllib.request
import uuid

import pytest

from conftest import ROOT, private_pki, running_server

ARTIFACTS = ROOT / "target" / "test-artifacts" / "inspector"


@pytest.fixture(scope="module")
def server(tmp_path_factory, fake):
    """The server, with a (fake) chat model answering the Inspector's chat."""
    with running_server(tmp_path_factory, MEMOIRE_CHAT_MODEL="fake-chat", MEMOIRE_LLM_BASE_URL=fake.url) as srv:
        yield srv


def keys(srv, name: str, admin_key: bool = False):
    """A fresh tenant's id, writer key and reader key (and admin key, with `admin_key`)."""
    admin = srv.client(srv.admin_key)
    try:
        tenant = admin.call("memoire.v1.AdminService/CreateTenant", {"name": name})["tenant"]["id"]
        writer = admin.call("memoire.v1.AdminService/CreateApiKey",
                            {"tenantId": tenant, "name": "writer", "role": "KEY_ROLE_WRITER"})["secret"]
        reader = admin.call("memoire.v1.AdminService/CreateApiKey",
                            {"tenantId": tenant, "name": "reader", "role": "KEY_ROLE_READER"})["secret"]
        if admin_key:
            owner = admin.call("memoire.v1.AdminService/CreateApiKey",
                               {"tenantId": tenant, "name": "admin", "role": "KEY_ROLE_ADMIN"})["secret"]
            return tenant, writer, reader, owner
    finally:
        admin.close()
    return tenant, writer, reader


def get(url: str, **headers: str) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body)."""
    try:
        req = urllib.request.Request(url, headers={k.replace("_", "-"): v for k, v in headers.items()})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def grpc_web(http: str, method: str, message: bytes, key: str | None) -> tuple[int, dict, list[tuple[int, bytes]]]:
    """One unary gRPC-Web call, framed by hand: (HTTP status, headers, [(flag, frame)])."""
    req = urllib.request.Request(f"http://{http}/memoire.v1.MemoryService/{method}",
                                 data=b"\x00" + struct.pack(">I", len(message)) + message, method="POST",
                                 headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"})
    if key:
        req.add_header("authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=10) as r:
        body, headers, status = r.read(), dict(r.headers), r.status
    frames = []
    while body:
        flag, size = body[0], struct.unpack(">I", body[1:5])[0]
        frames.append((flag, body[5:5 + size]))
        body = body[5 + size:]
    return status, headers, frames


def grpc_status(headers: dict, frames: list[tuple[int, bytes]]) -> str:
    """The grpc-status of a gRPC-Web reply: in the headers (trailers-only) or the trailer frame."""
    lower = {k.lower(): v for k, v in headers.items()}
    if "grpc-status" in lower:
        return lower["grpc-status"]
    for flag, frame in frames:
        if flag & 0x80:
            for line in frame.decode().split("\r\n"):
                if line.lower().startswith("grpc-status:"):
                    return line.split(":", 1)[1].strip()
    raise AssertionError(f"no grpc-status in {headers} / {frames}")


def test_the_inspector_is_served_from_the_binary_with_a_strict_policy(server):
    status, headers, body = get(f"http://{server.http}/ui/")
    assert status == 200, body
    assert b"<title>M\xc3\xa9moire Inspector</title>" in body
    policy = headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    status, headers, body = get(f"http://{server.http}/ui/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert len(body) > 1000
    # Browsers that accept gzip get the precompressed copy: the same script in fewer bytes.
    status, headers, zipped = get(f"http://{server.http}/ui/app.js", Accept_Encoding="gzip, br")
    assert status == 200 and headers["content-encoding"] == "gzip" and "accept-encoding" in headers["vary"]
    assert gzip.decompress(zipped) == body and len(zipped) < len(body) / 2
    assert get(f"http://{server.http}/ui/nope.js")[0] == 404
    # /metrics and the probes are still there.
    assert get(f"http://{server.http}/healthz")[0] == 200


def test_grpc_web_carries_the_same_keys_and_roles_as_grpc(server):
    from memoire import _messages  # the SDK's codec: messages by method name

    _, writer, reader = keys(server, "grpc-web")
    _, headers, frames = grpc_web(server.http, "WhoAmI", b"", None)
    assert grpc_status(headers, frames) == "16"  # UNAUTHENTICATED
    _, headers, frames = grpc_web(server.http, "WhoAmI", b"", "not-a-key")
    assert grpc_status(headers, frames) == "16"
    _, headers, frames = grpc_web(server.http, "WhoAmI", b"", reader)
    assert grpc_status(headers, frames) == "0"
    data = [frame for flag, frame in frames if not flag & 0x80]
    assert _messages.decode("WhoAmI", data[0])["role"] == "KEY_ROLE_READER"
    # A write with a reader key is refused as on the gRPC port: PERMISSION_DENIED.
    teach = _messages.encode("Teach", {"user_id": "u", "kind": "MEMORY_KIND_FACT", "content": "hi"})
    _, headers, frames = grpc_web(server.http, "Teach", teach, reader)
    assert grpc_status(headers, frames) == "7"
    _, headers, frames = grpc_web(server.http, "Teach", teach, writer)
    assert grpc_status(headers, frames) == "0"
    # A request the client got wrong is INVALID_ARGUMENT naming the field, not INTERNAL.
    no_content = _messages.encode("Teach", {"user_id": "u", "kind": "MEMORY_KIND_FACT"})
    _, headers, frames = grpc_web(server.http, "Teach", no_content, writer)
    assert grpc_status(headers, frames) == "3"


def test_grpc_web_needs_a_key_even_in_dev_mode_and_unknown_paths_share_one_metric(tmp_path_factory):
    with running_server(tmp_path_factory, MEMOIRE_DEV_MODE="true") as srv:
        # On the gRPC port dev mode lets a call without a key act as the dev tenant's admin; a
        # browser's call must carry one (a page the browser was tricked into has none).
        client = srv.client()
        try:
            assert client.call("memoire.v1.MemoryService/WhoAmI", {})["role"] == "KEY_ROLE_ADMIN"
        finally:
            client.close()
        _, headers, frames = grpc_web(srv.http, "WhoAmI", b"", None)
        assert grpc_status(headers, frames) == "16"
        for i in range(3):
            grpc_web(srv.http, f"MadeUp{i}", b"", None)
        metrics = get(f"http://{srv.http}/metrics")[2].decode()
        assert 'method="unknown"' in metrics
        assert "MadeUp" not in metrics


def test_with_tls_on_the_grpc_port_the_plaintext_http_port_serves_no_api(tmp_path_factory):
    _, cert, key = private_pki(tmp_path_factory.mktemp("pki"))
    with running_server(tmp_path_factory, MEMOIRE_TLS_CERT_PATH=str(cert), MEMOIRE_TLS_KEY_PATH=str(key)) as srv:
        assert get(f"http://{srv.http}/ui/")[0] == 404
        with pytest.raises(urllib.error.HTTPError) as refused:
            grpc_web(srv.http, "WhoAmI", b"", srv.admin_key)
        assert refused.value.code == 404
        assert get(f"http://{srv.http}/healthz")[0] == 200


def test_ui_enabled_false_serves_neither_the_app_nor_grpc_web(tmp_path_factory):
    with running_server(tmp_path_factory, MEMOIRE_UI_ENABLED="false") as srv:
        assert get(f"http://{srv.http}/ui/")[0] == 404
        with pytest.raises(urllib.error.HTTPError) as refused:
            grpc_web(srv.http, "WhoAmI", b"", srv.admin_key)
        assert refused.value.code == 404
        assert get(f"http://{srv.http}/healthz")[0] == 200


def test_chat_builds_the_same_prompt_as_the_python_sdk(server):
    from memoire._wrap import _MEMORY_HEADER

    _, writer, _ = keys(server, "same-prompt")
    client = server.client(writer)
    try:
        client.call("memoire.v1.MemoryService/Teach",
                    {"userId": "sam", "kind": "MEMORY_KIND_FACT", "content": "Lives in Porto", "slot": "user.home_city"})
        r = client.call("memoire.v1.MemoryService/Chat",
                        {"userId": "sam", "sessionId": "s", "content": "Plan my day", "dryRun": True})
    finally:
        client.close()
    system, user = r["prompt"]
    assert system["role"] == "MESSAGE_ROLE_SYSTEM" and system["content"].startswith(_MEMORY_HEADER + "\n")
    assert "Lives in Porto" in system["content"]
    assert user == {"role": "MESSAGE_ROLE_USER", "content": "Plan my day"}


def test_the_walkthrough_in_a_real_browser(server, fake):
    node, chromium = shutil.which("node"), os.environ.get("MEMOIRE_CHROMIUM", "/usr/bin/chromium")
    assert node, "node is missing: scripts/setup.sh installs it"
    assert os.path.exists(chromium), f"{chromium} is missing: scripts/setup.sh installs Debian's chromium"
    _, writer, reader, owner = keys(server, "inspector", admin_key=True)
    user = f"ui-{uuid.uuid4().hex[:8]}"
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    run = subprocess.run(
        [node, "tests/inspector.e2e.mjs"], cwd=ROOT / "ui", capture_output=True, text=True, timeout=300,
        env={**os.environ, "MEMOIRE_UI_URL": f"http://{server.http}/ui/", "MEMOIRE_WRITER_KEY": writer,
             "MEMOIRE_READER_KEY": reader, "MEMOIRE_ADMIN_KEY": owner, "MEMOIRE_BOOTSTRAP_KEY": server.admin_key,
             "MEMOIRE_USER_ID": user, "MEMOIRE_ARTIFACTS": str(ARTIFACTS)})
    print(run.stdout)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\nserver log: {server.log}"
    assert len(list(ARTIFACTS.glob("*.png"))) >= 8
    # The model answered each turn with memory in its system prompt; after the edit, the
    # corrected text; after forgetting, not any more.
    systems = [fake.system_text(i) for i in range(len(fake.requests))]
    corrected = [i for i, s in enumerate(systems) if "Porto, Portugal" in s]
    assert corrected, systems
    assert "Porto, Portugal" not in systems[-1]
    # What the browser did is what the API shows: the forgotten memory is gone from Recall.
    client = server.client(writer)
    try:
        recalled = client.call("memoire.v1.MemoryService/Recall",
                               {"userId": user, "query": "Where does the user live?", "includeEpisodes": False})
        assert all("Porto" not in item["memory"]["content"] for item in recalled.get("items", []))
        # The purge in the browser erased the user's memories and turns.
        listed = client.call("memoire.v1.MemoryService/ListMemories", {"userId": user, "includeSuperseded": True})
        assert not listed.get("memories"), listed
        users = client.call("memoire.v1.MemoryService/ListUsers", {})
        assert user not in [u["userId"] for u in users.get("users", [])]
    finally:
        client.close()
