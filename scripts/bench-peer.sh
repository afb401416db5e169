#!/usr/bin/env bash
# `make bench-peer`: the open-source peer (mem0ai) in its own venv, .venv-peer, with the Python SDK
# wheel beside it, then tests/python/bench_peer.py. Quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-peer
reqs=tests/python/peer-requirements.txt
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$reqs" "$venv/.requirements"; then
  echo "bench-peer: installing the peer into $venv (torch and mem0ai: a few GB, a few minutes)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet -r "$reqs"
  cp "$reqs" "$venv/.requirements"
fi
"$venv/bin/pip" install --quiet --force-reinstall --no-deps dist/memoire-*.whl
MEMOIRE_SERVER_BIN="${MEMOIRE_SERVER_BIN:-$PWD/target/release/memoire-server}" \
  exec "$venv/bin/python" tests/python/bench_peer.py "$@"
