"""Starts the real `memoire-server` binary against a fresh Postgres database for the Python tests.

The binary is `target/debug/memoire-server` (the test command builds it) unless
MEMOIRE_SERVER_BIN names another; the database server is MEMOIRE_TEST_DATABASE_URL (default: the
one scripts/setup.sh prepares).
"""

from __future__ import annotations

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(sql: str) -> None:
    subprocess.run(["psql", BASE_URL, "-XqAt", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, capture_output=True)


class Server:
    def __init__(self, proc: subprocess.Popen, target: str, http: str, admin_key: str, log: Path):
        self.proc, self.target, self.http, self.admin_key, self.log = proc, target, http, admin_key, log

    def client(self, api_key: str | None = None, v1: bool = False) -> ReflectionClient:
        return ReflectionClient(self.target, api_key, v1=v1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    binary = Path(os.environ.get("MEMOIRE_SERVER_BIN", ROOT / "target" / "debug" / "memoire-server"))
    if not binary.exists():
        pytest.fail(f"{binary} does not exist: build it with `cargo build -p memoire-server` (make test does)")
    db = f"memoire_pytest_{uuid.uuid4().hex}"
    psql(f"CREATE DATABASE {db}")
    grpc_port, http_port = free_port(), free_port()
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
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(binary)], env=env, stdout=out, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{grpc_port}"
    srv = Server(proc, target, f"127.0.0.1:{http_port}", admin_key, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"memoire-server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                c = srv.client()
                if c.call("grpc.health.v1.Health/Check", {}).get("status") == "SERVING":
                    c.close()
                    break
            except (grpc.RpcError, LookupError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"memoire-server did not become SERVING:\n{log.read_text()}")
            time.sleep(0.2)
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    # SIGTERM is a graceful shutdown: the server drains and exits 0.
    if proc.returncode != 0:
        pytest.fail(f"memoire-server exited with {proc.returncode} after SIGTERM:\n{log.read_text()}")
