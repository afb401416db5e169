"""The SDK as a wheel (`make wheel`): installed into a fresh virtualenv whose PATH has no Rust
toolchain, it runs the README's quick start against the real server and a local fake OpenAI
server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI

memoire = pytest.importorskip("memoire", reason="pip install ./sdk-python (make test does)")

ROOT = Path(__file__).resolve().parents[2]

QUICK_START = """
import sys, time
import memoire, openai

endpoint, key, base_url = sys.argv[1:4]
client = memoire.wrap(openai.OpenAI(base_url=base_url, api_key="sk"), user="dana",
                      endpoint=endpoint, api_key=key, session_id="monday")
client.chat.completions.create(model="gpt-4o-mini",
                               messages=[{"role": "user", "content": "I'm allergic to shellfish."}])
memoire.memory_of(client).flush(10)
m = memoire.Memoire(endpoint, key, user="dana")
for _ in range(200):  # the worker extracts in the background
    if any(x["slot"] == "user.allergy.shellfish" for x in m.list_memories()["memories"]):
        break
    time.sleep(0.05)
else:
    sys.exit("the fact was never extracted")
client = memoire.wrap(openai.OpenAI(base_url=base_url, api_key="sk"), user="dana",
                      endpoint=endpoint, api_key=key, session_id="tuesday", conscious=True)
client.chat.completions.create(model="gpt-4o-mini",
                               messages=[{"role": "user", "content": "What should I order tonight?"}])
print(memoire.__file__)
"""


def newest_wheel() -> Path:
    wheels = sorted((ROOT / "dist").glob("memoire-*.whl"), key=lambda p: p.stat().st_mtime)
    assert wheels, "no wheel in dist/: run `make wheel` (make test does)"
    return wheels[-1]


def without_rust(path: str) -> str:
    """PATH minus every directory that holds cargo or rustc."""
    keep = [p for p in path.split(os.pathsep) if p and not any((Path(p) / t).exists() for t in ("cargo", "rustc"))]
    return os.pathsep.join(keep)


def test_the_wheel_installs_without_rust_and_runs_the_quick_start(server, tmp_path):
    wheel = newest_wheel()
    assert "abi3" in wheel.name and "manylinux" in wheel.name, wheel.name
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    path = f"{venv / 'bin'}{os.pathsep}{without_rust(os.environ['PATH'])}"
    assert shutil.which("cargo", path=path) is None and shutil.which("rustc", path=path) is None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO", "RUSTUP", "PYTHON"))}
    env["PATH"] = path
    python = str(venv / "bin" / "python")
    # The wheel and the openai release the test suite pins; nothing is compiled.
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--only-binary", ":all:",
                    str(wheel), f"openai=={openai_version()}"], env=env, check=True, timeout=600)

    admin = memoire.Memoire(f"http://{server.target}", server.admin_key)
    tenant = admin.create_tenant(f"wheel-{uuid.uuid4().hex[:8]}")["tenant"]["id"]
    key = admin.create_api_key(tenant, role="writer")["secret"]
    script = tmp_path / "quick_start.py"
    script.write_text(QUICK_START)
    fake = FakeOpenAI()
    try:
        run = subprocess.run([python, str(script), f"http://{server.target}", key, fake.url], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip().startswith(str(venv)), f"memoire imported from {run.stdout}"
        assert "allergic to shellfish" in fake.system_text()
    finally:
        fake.close()


def openai_version() -> str:
    for line in (ROOT / "tests" / "python" / "requirements.txt").read_text().splitlines():
        if line.startswith("openai=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError("tests/python/requirements.txt pins no openai")
