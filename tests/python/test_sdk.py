"""The Python SDK (`memoire`, PyO3 + maturin) against the real server and a local fake OpenAI
server: the client's RPCs and errors, `wrap()` for every call shape (sync, async, streaming,
Responses), memory across sessions, fail-open when Mémoire is down / slow / answering garbage,
interpreter exit and fork."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

memoire = pytest.importorskip("memoire", reason="pip install ./sdk-python (make test does)")
openai = pytest.importorskip("openai")

from fake_openai import REPLY  # noqa: E402


@pytest.fixture(scope="module")
def key(server):
    admin = memoire.Memoire(f"http://{server.target}", server.admin_key)
    tenant = admin.create_tenant(f"sdk-{uuid.uuid4().hex[:8]}")["tenant"]["id"]
    return admin.create_api_key(tenant, role="admin")["secret"]


@pytest.fixture()
def endpoint(server):
    return f"http://{server.target}"


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def test_the_client_speaks_every_kind_of_rpc_and_raises_typed_errors(endpoint, key):
    user = new_user()
    m = memoire.Memoire(endpoint, key, user=user)
    taught = m.teach("Lives in Lisbon", kind="fact", slot="user.home_city")
    assert taught["outcome"] == "WRITE_OUTCOME_CREATED"
    ingested = m.ingest([{"role": "user", "content": "I'm allergic to peanuts.", "message_id": "m1"}],
                       session_id="s1", wait_for_extraction=True)
    assert ingested["extraction"] == "EXTRACTION_STATE_COMPLETED"
    found = m.recall("where does the user live?", k=1)
    assert found["items"][0]["memory"]["content"] == "Lives in Lisbon"
    assert "Lives in Lisbon" in m.conscious(session_id="s1")["context"]
    memories = m.list_memories()["memories"]
    assert {x["slot"] for x in memories} >= {"user.home_city", "user.allergy.peanuts"}
    mid = taught["memory"]["id"]
    assert m.get_memory(mid)["memory"]["id"] == mid
    assert m.history(mid)["versions"][0]["op"] == "VERSION_OP_CREATE"
    prompt = m.chat("Plan my Saturday", session_id="s1", dry_run=True)["prompt"]
    assert "Lives in Lisbon" in prompt[0]["content"] and prompt[1]["content"] == "Plan my Saturday"
    turns = m.list_episodes(session_id="s1")["episodes"]
    assert [t["content"] for t in turns] == ["I'm allergic to peanuts."]
    assert user in [u["user_id"] for u in m.list_users(page_size=500)["users"]]
    assert m.who_am_i()["role"] == "KEY_ROLE_ADMIN"
    assert m.forget([mid])["memories"] == "1"
    with pytest.raises(memoire.NotFoundError):
        m.get_memory(mid)
    with pytest.raises(memoire.InvalidArgumentError) as e:
        m.teach("", kind="fact")
    assert e.value.field == "content"
    assert m.get_stats()["episodes"] == "1"
    assert m.run_maintenance("optimize", wait=True)["finished"] is True
    with pytest.raises(memoire.UnauthenticatedError):
        memoire.Memoire(endpoint, "mem_wrong").list_memories(user=user)
    with pytest.raises(memoire.TimeoutError):
        m.recall("anything", timeout=0.000001)

    async def go():
        a = memoire.AsyncMemoire(endpoint, key, user=user)
        r = await a.recall("allergies", k=5)
        assert any("peanut" in i["memory"]["content"].lower() for i in r["items"] if "memory" in i)
        with pytest.raises(memoire.NotFoundError):
            await a.get_memory(mid)
        results = await asyncio.gather(*(a.conscious() for _ in range(20)))
        assert all(x["essential"] for x in results)

    asyncio.run(go())


# --- wrap: every call shape -----------------------------------------------------------------

def chat(client, user, text, **kw):
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], user=user, **kw)
    return r.choices[0].message.content


def chat_stream(client, user, text):
    s = client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], user=user, stream=True)
    assert isinstance(s, openai.Stream)
    return "".join(c.choices[0].delta.content or "" for c in s)


def responses(client, user, text):
    return client.responses.create(model="m", input=text, user=user).output_text


def responses_stream(client, user, text):
    s = client.responses.create(model="m", input=text, user=user, stream=True)
    assert isinstance(s, openai.Stream)
    return "".join(e.delta for e in s if e.type == "response.output_text.delta")


async def achat(client, user, text):
    r = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], user=user)
    return r.choices[0].message.content


async def achat_stream(client, user, text):
    s = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}], user=user,
                                             stream=True)
    assert isinstance(s, openai.AsyncStream)
    return "".join([c.choices[0].delta.content or "" async for c in s])


async def aresponses(client, user, text):
    return (await client.responses.create(model="m", input=text, user=user)).output_text


async def aresponses_stream(client, user, text):
    s = await client.responses.create(model="m", input=text, user=user, stream=True)
    return "".join([e.delta async for e in s if e.type == "response.output_text.delta"])


SYNC = [chat, chat_stream, responses, responses_stream]
ASYNC = [achat, achat_stream, aresponses, aresponses_stream]


def call_shape(shape, fake, user, text, wrap=True, calls=1, **wrap_kw):
    """Runs `calls` calls of `shape` through one fresh client (wrapped unless `wrap` is false).
    Returns the answers with the seconds each took, and the client."""
    if shape in SYNC:
        client = openai.OpenAI(base_url=fake.url, api_key="sk-fake")
        if wrap:
            memoire.wrap(client, **wrap_kw)
        out = []
        for _ in range(calls):
            started = time.monotonic()
            out.append((shape(client, user, text), time.monotonic() - started))
        return (out[0][0] if calls == 1 else out), client

    async def go():
        client = openai.AsyncOpenAI(base_url=fake.url, api_key="sk-fake")
        if wrap:
            memoire.wrap(client, **wrap_kw)
        out = []
        for _ in range(calls):
            started = time.monotonic()
            out.append((await shape(client, user, text), time.monotonic() - started))
        return (out[0][0] if calls == 1 else out), client

    return asyncio.run(go())


def test_named_speakers_keep_their_own_facts_and_user_name_marks_the_user(endpoint, key):
    m = memoire.Memoire(endpoint, key, user=new_user())
    said = [{"role": "user", "name": "Caroline", "content": "I live in Boston."},
            {"role": "user", "name": "Melanie", "content": "I live in Denver."}]
    got = m.ingest(said, session_id="s1", user_name="Caroline", wait_for_extraction=True)
    assert got["extraction"] == "EXTRACTION_STATE_COMPLETED"
    memories = {x["slot"]: (x["content"], x.get("subject", "")) for x in m.list_memories()["memories"]}
    assert memories == {"user.home_city": ("Lives in Boston", ""),
                        "melanie.home_city": ("Lives in Denver", "Melanie")}


@pytest.mark.parametrize("shape", SYNC + ASYNC, ids=lambda f: f.__name__)
def test_wrap_injects_memory_and_ingests_the_exchange(shape, fake, endpoint, key):
    user = new_user()
    m = memoire.Memoire(endpoint, key, user=user)
    m.teach("Is vegetarian and loves Thai food", kind="preference", importance=0.8)
    said = f"Any dinner ideas for tonight? ({shape.__name__})"
    answer, client = call_shape(shape, fake, user, said, endpoint=endpoint, api_key=key)
    assert answer == REPLY
    assert "Is vegetarian and loves Thai food" in fake.system_text(), fake.requests[-1]
    mem = memoire.memory_of(client)
    assert mem.flush(10)
    assert mem.stats["ingested"] == 1, mem.stats
    recent = m.conscious(session_id=mem.session_id)["recent"]
    assert [(t["role"], t["content"]) for t in recent] == [
        ("MESSAGE_ROLE_USER", said), ("MESSAGE_ROLE_ASSISTANT", REPLY)]


def test_a_fact_said_in_one_session_is_in_the_prompt_of_the_next(fake, endpoint, key):
    user = new_user()
    first = memoire.wrap(openai.OpenAI(base_url=fake.url, api_key="sk"), endpoint=endpoint, api_key=key,
                         session_id="monday")
    chat(first, user, "By the way, I'm allergic to shellfish.")
    memoire.memory_of(first).flush(10)
    m = memoire.Memoire(endpoint, key, user=user)
    for _ in range(100):  # the worker extracts in the background
        if any(x["slot"] == "user.allergy.shellfish" for x in m.list_memories()["memories"]):
            break
        time.sleep(0.05)
    second = memoire.wrap(openai.OpenAI(base_url=fake.url, api_key="sk"), endpoint=endpoint, api_key=key,
                          session_id="tuesday", conscious=True)
    chat(second, user, "What should I order at the seafood place?")
    assert "allergic to shellfish" in fake.system_text()


def test_the_callers_messages_copies_raw_responses_and_model_errors_are_untouched(fake, endpoint, key):
    user = new_user()
    memoire.Memoire(endpoint, key, user=user).teach("Name is Ola", kind="fact", slot="user.name")
    client = memoire.wrap(openai.OpenAI(base_url=fake.url, api_key="sk"), endpoint=endpoint, api_key=key)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What's my name?"}]
    before = [dict(x) for x in messages]
    client.chat.completions.create(model="m", messages=messages, user=user)
    assert messages == before, "the caller's list is never mutated"
    sent = fake.requests[-1]["body"]["messages"]
    assert sent[0]["content"] == "Be brief." and "Name is Ola" in sent[1]["content"], "after the app's system prompt"
    # Copies made with with_options() stay wrapped; with_raw_response keeps working.
    client.with_options(timeout=30).chat.completions.create(model="m", messages=messages, user=user)
    assert "Name is Ola" in fake.system_text()
    raw = client.chat.completions.with_raw_response.create(model="m", messages=messages, user=user)
    assert raw.parse().choices[0].message.content == REPLY
    # The model's own errors are the caller's, unchanged.
    with pytest.raises(openai.BadRequestError):
        chat(client, user, "FAIL400 please")
    # Azure clients (their own copy()) are wrapped the same way.
    azure = memoire.wrap(openai.AzureOpenAI(azure_endpoint=fake.url.removesuffix("/v1"), api_key="sk",
                                            api_version="2024-06-01"), endpoint=endpoint, api_key=key)
    azure.with_options(timeout=30).chat.completions.create(model="m", messages=messages, user=user)
    assert "/openai/deployments/m/chat/completions" in fake.requests[-1]["path"]
    assert "Name is Ola" in fake.system_text()
    # No user, no memory: the call goes through as it is.
    n = len(fake.requests)
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert fake.requests[n]["body"]["messages"] == [{"role": "user", "content": "hi"}]


# --- fail-open --------------------------------------------------------------------------------

def _listener(behaviour: str) -> str:
    """A TCP endpoint that never answers ("slow") or answers garbage."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            if behaviour == "garbage":
                try:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\ngarbage" * 3)
                finally:
                    conn.close()
            # "slow": keep the connection open, say nothing.

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _closed_port() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


BUDGET_MS = 150


@pytest.mark.parametrize("failure", ["down", "slow", "garbage"])
@pytest.mark.parametrize("shape", SYNC + ASYNC, ids=lambda f: f.__name__)
def test_fail_open_when_memoire_is_down_slow_or_answers_garbage(shape, failure, fake):
    target = {"down": _closed_port, "slow": lambda: _listener("slow"),
              "garbage": lambda: _listener("garbage")}[failure]()
    user = new_user()
    # The same call without the wrapper: the baseline.
    started = time.monotonic()
    assert call_shape(shape, fake, user, "hello", wrap=False)[0] == REPLY
    baseline = time.monotonic() - started
    errors = []
    # Four calls with the breaker's threshold at 3: each returns the model's answer within the
    # budget (plus a margin for this busy machine), nothing is raised, and the breaker opens.
    results, client = call_shape(shape, fake, user, "hello", calls=4, endpoint=target,
                                 recall_budget_ms=BUDGET_MS, on_error=errors.append, breaker_threshold=3)
    for answer, took in results:
        assert answer == REPLY
        assert took <= baseline + BUDGET_MS / 1000 + 0.5, f"{took:.3f}s vs baseline {baseline:.3f}s"
    assert "Mémoire" not in fake.system_text(), "no memory block without memory"
    assert errors and all(isinstance(e, memoire.MemoireError) for e in errors), errors
    mem = memoire.memory_of(client)
    assert mem.breaker.is_open and mem.stats["skipped"] >= 1, mem.stats


@pytest.mark.parametrize("up", [True, False], ids=["memoire-up", "memoire-down"])
def test_messages_given_as_a_generator_reach_the_model_whole(up, fake, endpoint, key):
    target = endpoint if up else _closed_port()
    client = memoire.wrap(openai.OpenAI(base_url=fake.url, api_key="sk"), endpoint=target, api_key=key,
                          recall_budget_ms=BUDGET_MS)
    said = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello from a generator"}]
    r = client.chat.completions.create(model="m", messages=(m for m in said), user=new_user())
    assert r.choices[0].message.content == REPLY
    got = [(m["role"], m["content"]) for m in fake.requests[-1]["body"]["messages"]]
    assert got[0] == ("system", "Be brief.") and got[-1] == ("user", "hello from a generator"), got
    client.chat.completions.create(model="m", messages=tuple(said), user=new_user())
    assert fake.requests[-1]["body"]["messages"][-1]["content"] == "hello from a generator"
    client.responses.create(model="m", input=(m for m in said[1:]), user=new_user())
    got = fake.requests[-1]["body"]["input"]
    assert [x["content"] for x in got] == ["hello from a generator"], got


def test_settings_that_cannot_work_leave_the_client_without_memory_instead_of_raising(fake, endpoint, key):
    errors = []
    client = memoire.wrap(openai.OpenAI(base_url=fake.url, api_key="sk"), endpoint="not a url",
                          on_error=errors.append)
    assert chat(client, new_user(), "hello") == REPLY
    assert memoire.memory_of(client) is None
    assert len(errors) == 1 and isinstance(errors[0], memoire.MemoireError), errors
    # A key read from a file, newline and all, works.
    client = memoire.wrap(openai.OpenAI(base_url=fake.url, api_key="sk"), endpoint=endpoint, api_key=key + "\n")
    assert chat(client, new_user(), "hello") == REPLY
    assert memoire.memory_of(client).stats["recalled"] == 1


def test_one_warning_per_incident(fake, endpoint, server, caplog):
    admin = memoire.Memoire(endpoint, server.admin_key)
    tenant = admin.create_tenant(f"sdk-{uuid.uuid4().hex[:8]}")["tenant"]["id"]
    reader = admin.create_api_key(tenant, role="reader")["secret"]
    caplog.set_level("INFO", logger="memoire")
    # A reader key: recall works, every ingest is refused — one warning, not one per call.
    client = memoire.wrap(openai.OpenAI(base_url=fake.url, api_key="sk"), endpoint=endpoint, api_key=reader)
    for _ in range(4):
        assert chat(client, "u", "hello") == REPLY
        assert memoire.memory_of(client).flush(10)
    # The first refusal pauses ingestion for the cool-down: the other three are not attempted.
    stats = memoire.memory_of(client).stats
    assert (stats["ingest_failures"], stats["skipped"]) == (1, 3), stats
    # (Earlier tests' clients may still be logging from their own threads: count this one's.)
    warnings = [r.getMessage() for r in caplog.records
                if r.levelname == "WARNING" and "PermissionDenied" in r.getMessage()]
    assert len(warnings) == 1 and "ingest failed" in warnings[0], warnings
    # Down: one warning though the breaker opens on the way.
    caplog.clear()
    client = memoire.wrap(openai.OpenAI(base_url=fake.url, api_key="sk"), endpoint=_closed_port(),
                          recall_budget_ms=BUDGET_MS, breaker_threshold=2)
    for _ in range(4):
        assert chat(client, "u", "hello") == REPLY
    assert len([r for r in caplog.records
                if r.levelname == "WARNING" and "recall failed" in r.getMessage()]) == 1, caplog.records


def test_a_call_without_a_user_is_said_once(fake, caplog):
    caplog.set_level("INFO", logger="memoire")
    client = memoire.wrap(openai.OpenAI(base_url=fake.url, api_key="sk"), endpoint=_closed_port())
    for _ in range(3):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    said = [r for r in caplog.records if "without `user=`" in r.getMessage()]
    assert len(said) == 1, caplog.records


def test_after_the_cooldown_one_call_probes(fake):
    client = memoire.wrap(openai.OpenAI(base_url=fake.url, api_key="sk"), endpoint=_closed_port(),
                          recall_budget_ms=BUDGET_MS, breaker_threshold=2, breaker_cooldown=0.2)
    mem = memoire.memory_of(client)
    for _ in range(2):
        chat(client, "u", "hello")
    assert mem.flush(10)  # background ingests fail too; let them finish first
    time.sleep(0.3)
    failures, skipped = mem.stats["recall_failures"], mem.stats["skipped"]
    chat(client, "u", "hello")  # the probe fails: open again at once
    chat(client, "u", "hello")  # skipped: no second budget paid
    assert mem.breaker.is_open, mem.stats
    assert (mem.stats["recall_failures"], mem.stats["skipped"]) == (failures + 1, skipped + 1), mem.stats


def test_the_breaker_opens_and_skips_memory_for_the_cooldown(fake):
    client = memoire.wrap(openai.OpenAI(base_url=fake.url, api_key="sk"), endpoint=_closed_port(),
                          recall_budget_ms=BUDGET_MS, breaker_threshold=2, breaker_cooldown=60)
    mem = memoire.memory_of(client)
    for _ in range(4):
        assert chat(client, "u", "hello") == REPLY
    assert mem.breaker.is_open
    assert mem.stats["recall_failures"] == 2 and mem.stats["skipped"] == 2, mem.stats


# --- the runtime: interpreter exit, fork -------------------------------------------------------

SCRIPT = textwrap.dedent("""
    import asyncio, sys, memoire
    async def main():
        m = memoire.AsyncMemoire(sys.argv[1], sys.argv[2], user="exit-test", timeout=5)
        await asyncio.gather(*(m.recall("anything") for _ in range(5)))
        m.recall("left in flight")  # not awaited: the interpreter exits with a call in flight
    asyncio.run(main())
""")


def test_fifty_interpreter_exits_with_the_async_client_all_succeed(endpoint, key, tmp_path):
    script = tmp_path / "exit.py"
    script.write_text(SCRIPT)
    codes = [subprocess.run([sys.executable, str(script), endpoint, key], capture_output=True, timeout=60)
             for _ in range(50)]
    bad = [(c.returncode, c.stderr.decode()[-500:]) for c in codes if c.returncode != 0]
    assert not bad, bad[:3]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_gets_its_own_runtime_and_channel(endpoint, key):
    user = new_user()
    m = memoire.Memoire(endpoint, key, user=user, timeout=5)
    m.teach("Plays the oboe", kind="fact")
    assert m.recall("oboe")["items"]
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            code = 0 if m.recall("oboe")["items"] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert m.recall("oboe")["items"], "the parent still works"


def test_the_hand_written_stubs_match_the_runtime():
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", "memoire.client", "memoire._native",
                        "--ignore-missing-stub"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_wrap_keeps_the_clients_type(tmp_path):
    """`wrap()` returns the client typed as given: a misspelt method fails type checking."""
    code = tmp_path / "typed.py"
    code.write_text(textwrap.dedent("""
        import memoire
        import openai

        client = memoire.wrap(openai.OpenAI(api_key="sk"), user="u")
        reveal_type(client)
        client.chat.completions.craete(model="m", messages=[])
    """))
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(code)],
                       capture_output=True, text=True, timeout=600)
    assert 'Revealed type is "openai._client.OpenAI"' in r.stdout, r.stdout + r.stderr
    assert 'has no attribute "craete"' in r.stdout, r.stdout + r.stderr


def test_an_https_endpoint_never_sends_the_key_in_the_clear(fake, key):
    """`https://` is TLS: to a listener that does not speak it the client sends a handshake and
    nothing else — never the key — and the call fails; the wrapper fails open."""
    received = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.5)
    done = threading.Event()

    def serve():
        while not done.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            conn.settimeout(2)
            try:
                received.append(conn.recv(4096))
            except OSError:
                pass
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    url = f"https://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(memoire.MemoireError):
        memoire.Memoire(url, key, max_retries=0).recall("x", user="u")
    client = memoire.wrap(openai.OpenAI(base_url=fake.url, api_key="sk"), endpoint=url, api_key=key)
    assert chat(client, new_user(), "hello") == REPLY
    done.set()
    t.join(2)
    sock.close()
    assert received, "the client connected"
    assert all(r[:1] == b"\x16" for r in received if r), "each connection began with a TLS handshake"
    assert not any(key.encode() in r for r in received), "the key was sent in the clear"


def test_tls_end_to_end_with_a_private_ca(tmp_path_factory, fake):
    """A server serving TLS with a certificate of a private CA: the client and wrap() reach it
    with `tls_ca_file`; without it (system roots only) the call fails and the wrapper fails open."""
    from conftest import private_pki, running_server

    d = tmp_path_factory.mktemp("pki")
    ca_pem, cert, key_file = private_pki(d)
    with running_server(tmp_path_factory, MEMOIRE_TLS_CERT_PATH=str(cert),
                        MEMOIRE_TLS_KEY_PATH=str(key_file)) as srv:
        url = f"https://localhost:{srv.target.rsplit(':', 1)[1]}"
        ca = str(ca_pem)
        admin = memoire.Memoire(url, srv.admin_key, tls_ca_file=ca)
        tenant = admin.create_tenant("tls")["tenant"]["id"]
        key = admin.create_api_key(tenant, role="writer")["secret"]
        m = memoire.Memoire(url, key, user="dana", tls_ca_file=ca)
        m.teach("Lives in Porto", kind="fact", slot="user.home_city")
        assert any("Porto" in x["content"] for x in m.list_memories()["memories"])
        client = memoire.wrap(openai.OpenAI(base_url=fake.url, api_key="sk"), endpoint=url, api_key=key,
                              user="dana", tls_ca_file=ca)
        chat(client, "dana", "Where should I eat tonight?")
        assert "Porto" in fake.system_text(), "memory came over TLS"

        with pytest.raises(memoire.UnavailableError):
            memoire.Memoire(url, key, user="dana", max_retries=0).list_memories()
        plain = memoire.wrap(openai.OpenAI(base_url=fake.url, api_key="sk"), endpoint=url, api_key=key,
                             user="dana")
        assert chat(plain, "dana", "hello") == REPLY
        with pytest.raises(memoire.ConfigurationError):
            memoire.Memoire(url, key, tls_ca_file=str(d / "missing.pem"))
