#!/usr/bin/env python3
"""Fails when a workspace crate declares a dependency its sources never name.

`cargo machete`-style and offline: for every member of the workspace (and sdk-python), each
dependency in [dependencies] / [dev-dependencies] / [build-dependencies] must appear in that
crate's Rust sources (`name::`, `use name`, `name!`, `extern crate name`: src/, tests/, benches/,
examples/, build.rs). A dependency used only by generated code or
a macro can be listed in IGNORED with the reason.
"""
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# crate -> dependency: why the sources do not name it.
IGNORED = {
    ("memoire-proto", "tonic-prost"): "named by the code tonic-prost-build generates into OUT_DIR",
    ("memoire-proto", "prost"): "named by the generated code",
    ("memoire-proto", "prost-types"): "named by the generated code (google.protobuf types)",
}


def members():
    ws = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]
    for m in ws["members"] + ws.get("exclude", []):
        yield ROOT / m


def sources(dir: Path):
    for p in dir.rglob("*.rs"):
        if "target" not in p.relative_to(dir).parts:
            yield p.read_text()


def main() -> int:
    unused = []
    for dir in members():
        manifest = tomllib.loads((dir / "Cargo.toml").read_text())
        name = manifest["package"]["name"]
        for table in ("dependencies", "dev-dependencies", "build-dependencies"):
            deps = manifest.get(table, {})
            if not deps:
                continue
            text = "\n".join(sources(dir))
            for dep, spec in deps.items():
                if (name, dep) in IGNORED:
                    continue
                ident = dep.replace("-", "_")
                if not re.search(rf"(?<![\w:]){ident}(::|!|\s*;|\s+as\b)|\buse\s+{ident}\b|extern crate {ident}\b", text):
                    unused.append(f"{name}: [{table}] {dep}")
    if unused:
        print("unused dependencies (remove them, or list them in scripts/unused-deps.py with the reason):")
        print("\n".join(f"  {u}" for u in unused))
        return 1
    print("no unused dependencies")
    return 0


if __name__ == "__main__":
    sys.exit(main())
