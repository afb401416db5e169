# syntax=docker/dockerfile:1
# Mémoire server and worker. Build: `docker build -t memoire .`; run with docker-compose.yml.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# apalis-postgres and sqlx macros must not reach a database at build time.
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never
COPY Cargo.toml Cargo.lock clippy.toml ./
COPY proto proto
COPY core core
COPY config config
COPY store store
COPY server server
COPY worker worker
COPY sdk-rust sdk-rust
COPY tests tests
COPY migrations migrations
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p memoire-server -p memoire-worker \
 && mkdir -p /out && cp target/release/memoire-server target/release/memoire-worker /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin memoire
COPY --from=build /out/memoire-server /out/memoire-worker /usr/local/bin/
USER 10001
# In a container the server must listen beyond loopback; the defaults elsewhere stay loopback.
ENV MEMOIRE_GRPC_ADDR=0.0.0.0:50051 \
    MEMOIRE_HTTP_ADDR=0.0.0.0:9464 \
    MEMOIRE_LOG_FORMAT=json
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 CMD ["memoire-server", "probe"]
ENTRYPOINT ["memoire-server"]
CMD ["serve"]
