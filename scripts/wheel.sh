#!/usr/bin/env bash
# The Python SDK as an abi3 manylinux wheel in dist/ (what `pip install memoire-*.whl` needs: no
# Rust toolchain), built in target/ like the rest (`make test` installs it into .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f dist/memoire-*.whl
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! PATH="$PWD/.venv/bin:$PATH" CARGO_TARGET_DIR="$PWD/target" \
  .venv/bin/maturin build --release --locked --manifest-path sdk-python/Cargo.toml --out dist >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
echo "wheel: $(ls dist/memoire-*.whl)"
