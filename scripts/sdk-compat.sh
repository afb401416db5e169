#!/usr/bin/env bash
# Runs the Python SDK's wrapper tests against each openai major (1.x, 2.x, 3.x), each in its own
# virtual environment under target/sdk-compat. Not part of `make test` (it installs three openai
# versions); run it when the wrapper or the supported openai range changes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" CARGO_TARGET_DIR="$PWD/target"
wheels=target/sdk-compat/wheels
rm -rf "$wheels"
(cd sdk-python && maturin build --release --quiet -o "../$wheels")
cargo build --locked --quiet -p memoire-app
grep -v '^openai==' tests/python/requirements.txt | grep -v '^#' > target/sdk-compat/base.txt
for major in 1 2 3; do
  venv=target/sdk-compat/openai$major
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r target/sdk-compat/base.txt \
    "openai>=$major,<$((major + 1))" "$wheels"/memoire-*.whl --force-reinstall
  echo "== openai $("$venv/bin/python" -c 'import openai; print(openai.__version__)')"
  "$venv/bin/python" -m pytest tests/python/test_sdk.py -q -p no:cacheprovider -k "not fifty"
done
