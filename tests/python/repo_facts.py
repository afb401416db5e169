"""What the code says, read from its source, for the tests that check deploy files against it
(test_deploy_files.py, test_k8s_manifests.py): the settings, their default addresses, the
binaries, the server's subcommands and the HTTP routes every process serves."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def settings() -> set[str]:
    """Every setting's environment variable (`MEMOIRE_<KEY>`), from config/src/lib.rs's SETTINGS."""
    src = (ROOT / "config" / "src" / "lib.rs").read_text()
    table = src[src.index("pub const SETTINGS"):src.index("];", src.index("pub const SETTINGS"))]
    return {"MEMOIRE_" + k.upper() for k in re.findall(r'\(\s*"([a-z_]+)"', table)}


def default_addr(key: str) -> tuple[str, int]:
    """The default (host, port) of a `SocketAddr` setting, from `Config::default()`."""
    src = (ROOT / "config" / "src" / "lib.rs").read_text()
    defaults = src[src.index("impl Default for Config"):]
    m = re.search(rf"\b{key}: SocketAddr::from\(\(\[(\d+), (\d+), (\d+), (\d+)\], (\d+)\)\)", defaults)
    assert m, f"no default for {key} in config/src/lib.rs"
    return ".".join(m.groups()[:4]), int(m.group(5))


def binaries() -> set[str]:
    """The binaries the app crate builds (the image's `memoire-server` and `memoire-worker`)."""
    cargo = tomllib.loads((ROOT / "app" / "Cargo.toml").read_text())
    return {b["name"] for b in cargo["bin"]}


def server_subcommands() -> set[str]:
    """`memoire-server`'s subcommands: the variants of its clap `Command` enum, in the kebab case
    clap derives (`CheckConfig` -> `check-config`)."""
    src = (ROOT / "app" / "src" / "bin" / "memoire-server.rs").read_text()
    body = re.search(r"enum Command \{(.*?)\n\}", src, re.S)
    assert body, "no `enum Command` in app/src/bin/memoire-server.rs"
    variants = re.findall(r"^\s+([A-Z]\w*),?\s*$", body.group(1), re.M)
    return {re.sub(r"(?<!^)([A-Z])", r"-\1", v).lower() for v in variants}


def http_routes() -> set[str]:
    """The paths of the HTTP endpoint every process serves (app/src/ops.rs)."""
    src = (ROOT / "app" / "src" / "ops.rs").read_text()
    return set(re.findall(r'\.route\(\s*"(/[^"]*)"', src))
