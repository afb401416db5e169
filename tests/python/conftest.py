"""Starts the real `memoire-server` binary against a fresh Postgres database for the Python tests.

The binary is `target/debug/memoire-server` (the test command builds it) unless
MEMOIRE_SERVER_BIN names another; the database server is MEMOIRE_TEST_DATABASE_URL (default: the
one scripts/setup.sh prepares).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from grpcurl_like import ReflectionClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BASE_URL = os.environ.get("MEMOIRE_TEST_DATABASE_URL", "postgres://memoire:memoire@127.0.0.1:5432/memoire")


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports: the sockets are held together, so that the kernel cannot hand out
    one port twice (two `free_port()` calls in a row sometimes got the same one)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    return free_ports(1)[0]


def psql(sql: str) -> None:
    subprocess.run(["psql", BASE_URL, "-XqAt", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, capture_output=True)


class Server:
    def __init__(self, proc: subprocess.Popen, target: str, http: str, admin_key: str, log: Path):
        self.proc, self.target, self.http, self.admin_key, self.log = proc, target, http, admin_key, log

    def client(self, api_key: str | None = None, v1: bool = False) -> ReflectionClient:
        return ReflectionClient(self.target, api_key, v1=v1)


def wait_until(proc: subprocess.Popen, log: Path, what: str, ready, timeout: float = 60) -> None:
    """Polls `ready()` until it is true; fails if `proc` exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if ready():
                return
        except (grpc.RpcError, LookupError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not become ready:\n{log.read_text()}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen, log: Path, what: str) -> None:
    """SIGTERM is a graceful shutdown: the process drains and exits 0."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        pytest.fail(f"{what} exited with {proc.returncode} after SIGTERM:\n{log.read_text()}")


def binary(name: str) -> Path:
    path = Path(os.environ.get(f"MEMOIRE_{name.split('-')[1].upper()}_BIN", ROOT / "target" / "debug" / name))
    if not path.exists():
        pytest.fail(f"{path} does not exist: build it with `cargo build -p {name}` (make test does)")
    return path


def private_pki(d: Path) -> "tuple[Path, Path, Path]":
    """A throwaway CA and a server certificate it issued for localhost and 127.0.0.1, made with the
    openssl command in `d`: (CA certificate, server certificate, server key)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Memoire test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
            "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return d / "ca.pem", d / "server.pem", d / "server.key"


@contextlib.contextmanager
def running_server(tmp_path_factory, database: str | None = None, **extra_env: str):
    """A `memoire-server` on a fresh database (or on `database`, another server's, which it
    leaves in place: a second replica); `extra_env` adds MEMOIRE_* settings."""
    exe = binary("memoire-server")
    db = database or f"memoire_pytest_{uuid.uuid4().hex}"
    if database is None:
        psql(f"CREATE DATABASE {db}")
    grpc_port, http_port = free_ports(2)
    admin_key = secrets.token_hex(24)
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {
        **os.environ,
        "MEMOIRE_DATABASE_URL": BASE_URL.rsplit("/", 1)[0] + "/" + db,
        "MEMOIRE_ADMIN_KEY": admin_key,
        "MEMOIRE_GRPC_ADDR": f"127.0.0.1:{grpc_port}",
        "MEMOIRE_HTTP_ADDR": f"127.0.0.1:{http_port}",
        "MEMOIRE_LOG_FORMAT": "json",
        "MEMOIRE_EMBEDDING_MODEL_DIR": os.environ.get(
            "MEMOIRE_EMBEDDING_MODEL_DIR", str(ROOT / ".models" / "all-MiniLM-L6-v2")),
        # The periodic jobs run when a test asks (RunMaintenance), not on the clock.
        **{f"MEMOIRE_{job}_SCHEDULE": "" for job in ("OPTIMIZE", "DECAY", "REFLECT", "RETENTION", "REEMBED")},
        **extra_env,
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe)], env=env, stdout=out, stderr=subprocess.STDOUT)
    srv = Server(proc, f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}", admin_key, log)
    srv.env = env
    srv.database = db

    def serving() -> bool:
        if "MEMOIRE_TLS_CERT_PATH" in extra_env:  # the plaintext probe cannot speak TLS: ask /readyz
            import urllib.request
            with urllib.request.urlopen(f"http://{srv.http}/readyz", timeout=1) as r:
                return r.status == 200
        c = srv.client()
        try:
            return c.call("grpc.health.v1.Health/Check", {}).get("status") == "SERVING"
        finally:
            c.close()

    try:
        wait_until(proc, log, "memoire-server", serving)
        yield srv
    finally:
        try:
            stop(proc, log, "memoire-server")
        finally:
            if database is None:
                psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory) as srv:
        yield srv


@pytest.fixture(scope="module")
def fake():
    """A local fake OpenAI-compatible server (`fake_openai.py`)."""
    from fake_openai import FakeOpenAI

    f = FakeOpenAI()
    yield f
    f.close()
