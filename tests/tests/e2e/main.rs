//! The end-to-end tests, one binary (linking the server, the worker and the embedding model once
//! instead of once per file): each module is a suite against the real server, Postgres and Redis.
//! The two suites that disturb every other test — `faults` (flushes Redis) and `fault_postgres`
//! (restarts Postgres) — stay binaries of their own, which cargo runs one after another.

mod chat;
mod conscious;
mod eval;
mod foundation;
mod ingest;
mod limits;
mod maintenance;
mod openai_embeddings;
mod recall;
mod sdk;
mod store;
mod tls;
mod transfer;
