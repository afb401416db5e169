#!/usr/bin/env bash
# The whole test suite (what `make test` and CI run): set-up, the Inspector's bundle, formatting
# and lints, the Rust tests (unit and end-to-end against real Postgres), then the Python tests
# against the built server binary (with the Inspector's browser walk-through in Chromium), then
# the point-in-time recovery drill.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# sqlx's macros must never try a database at build time.
export SQLX_OFFLINE=true
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

scripts/setup.sh
echo "== the Inspector's bundle (ui/, embedded in memoire-server)"
scripts/ui.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings
echo "== unused dependencies"
python3 scripts/unused-deps.py
echo "== cargo test"
cargo test --workspace --locked
echo "== the end-to-end tests that touch Redis, again against a three-primary Redis Cluster"
cluster="$PWD/target/redis-cluster"
scripts/redis-cluster.sh stop "$cluster" # what an interrupted run left
cluster_url=$(scripts/redis-cluster.sh start "$cluster")
trap 'scripts/redis-cluster.sh stop "$cluster"' EXIT
MEMOIRE_TEST_REDIS_URL="$cluster_url" cargo test --locked --quiet -p memoire-tests --test e2e -- \
  conscious:: limits:: recall:: ingest::
scripts/redis-cluster.sh stop "$cluster"
trap - EXIT
echo "== python SDK (maturin wheel into .venv)"
cargo fmt --manifest-path sdk-python/Cargo.toml -- --check
CARGO_TARGET_DIR="$PWD/target" cargo clippy --manifest-path sdk-python/Cargo.toml --locked --quiet -- -D warnings
# One build: the wheel a user would install (dist/), installed into .venv for the tests.
scripts/wheel.sh
.venv/bin/pip install --quiet --force-reinstall --no-deps dist/memoire-*.whl
echo "== python tests"
cargo build --locked --quiet -p memoire-app
set +e
.venv/bin/python -m pytest tests/python -q -p no:cacheprovider
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"
echo "== point-in-time recovery drill (docs/RUNBOOK.md)"
scripts/restore-drill.sh
