# The commands the README and CI use. `make run` and `make test` set up what is missing first.
EVAL_DATA ?= ../shared/data/locomo-dev

.PHONY: setup ui run test drill bench-transfer wheel eval bench bench-recall bench-embed bench-ingest bench-conscious bench-tenancy bench-tracing bench-sdk bench-peer python-sdk build release lint fmt migrate check-config

MEMOIRE_ADMIN_KEY ?= memoire-dev-admin-key
export MEMOIRE_ADMIN_KEY
export SQLX_OFFLINE = true

setup:
	@scripts/setup.sh --no-python

run: setup release
	./target/release/memoire-server

# The Memory Inspector (ui/): npm packages, the client generated from proto/, the bundle in
# ui/dist that memoire-server embeds (served at http://127.0.0.1:9464/ui/).
ui:
	@scripts/ui.sh

test:
	@scripts/test.sh

# Point-in-time recovery on throwaway clusters, checked through the API (docs/RUNBOOK.md).
drill: python-sdk
	cargo build --locked --quiet -p memoire-app
	scripts/restore-drill.sh

# Recall quality on long conversations through the gRPC API, beside BM25 / dense / RRF baselines
# computed in the same run (not part of `make test`; needs the LoCoMo-format data in EVAL_DATA).
eval: setup
	cargo run --release --locked -p memoire-tests --bin eval -- $(EVAL_DATA)

# Benchmarks run in release against the set-up services; they print p50/p95/p99 and throughput.
bench: bench-embed bench-ingest bench-conscious bench-recall bench-tenancy bench-tracing

# The local embedding model alone: one query at a time, four callers, batches of documents.
bench-embed: setup
	cargo run --release --locked -p memoire-tests --bin embed-bench

bench-recall: setup
	cargo run --release --locked -p memoire-tests --bin recall-bench

bench-ingest: setup
	cargo run --release --locked -p memoire-tests --bin ingest-bench

bench-conscious: setup
	cargo run --release --locked -p memoire-tests --bin conscious-bench

# Teach and Recall with row-level security and rate limits on, beside both off, in one run.
bench-tenancy: setup
	cargo run --release --locked -p memoire-tests --bin tenancy-bench

# Export and import of 100,000 memories: records/s over gRPC and with the CLI, peak memory.
bench-transfer: setup release
	cargo run --release --locked -p memoire-tests --bin transfer-bench

# What exporting OpenTelemetry traces costs a Recall: two release servers, one exporting, one not.
bench-tracing: setup release
	cargo run --release --locked -p memoire-tests --bin tracing-bench

# What the Python SDK adds to a Recall over plain grpcio (against the release server).
bench-sdk: release python-sdk
	.venv/bin/python tests/python/bench_sdk.py

# Mémoire beside the open-source peer (mem0ai, installed into its own .venv-peer), one process
# alternating calls: insert and search p50/p95 at 1k and 10k memories (ARGS="--scopes 1000,10000,100000").
bench-peer: release wheel
	@scripts/bench-peer.sh $(ARGS)

# The Python SDK as an abi3 manylinux wheel in dist/: installs with pip, no Rust needed.
wheel:
	@scripts/setup.sh
	@scripts/wheel.sh

# Builds the Python SDK (maturin) into .venv.
python-sdk:
	@scripts/setup.sh
	PATH="$(CURDIR)/.venv/bin:$$PATH" CARGO_TARGET_DIR="$(CURDIR)/target" .venv/bin/pip install --quiet --no-build-isolation ./sdk-python

build: ui
	cargo build --workspace --locked

release: ui
	cargo build --release --locked -p memoire-app

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

fmt:
	cargo fmt --all

migrate: setup release
	./target/release/memoire-server migrate

check-config: release
	./target/release/memoire-server check-config
