//! Mémoire's domain: the memory model, input validation, errors, and the pure decisions that
//! deserve the most tests (the resolver). No database, network or gRPC types live here.
//!
//! - [`model`]: kinds, statuses, versions, tenants, keys — the records the stores hold.
//! - [`command`]: validated domain commands the services execute.
//! - [`validate`]: edge validation that names the offending field.
//! - [`resolve`]: what a new memory does to the existing ones (create, supersede, duplicate).
//! - [`embed`]: the embedding boundary (trait) and what a memory is embedded from.
//! - [`extract`]: candidate memories from conversation turns (the built-in rule extractor).
//! - [`pii`]: PII scrubbing (redact / mask) before anything is stored or sent to an LLM.
//! - [`ratelimit`]: rate limits (GCRA), the arithmetic Redis and the in-process fallback share.
//! - [`recall`]: fusion, deterministic ordering and token-budget packing.
//! - [`conscious`]: which memories are essential, and packing the working memory.
//! - [`llm`]: the LLM extractor's prompt, JSON schema and reply parser.
//! - [`chat`]: the prompt a wrapped client sends (memory block, then the message) and the chat
//!   model trait ([`chat::Responder`]).
//! - [`clock`]: the time source, so that time-dependent logic can be tested without sleeping.

pub mod chat;
pub mod clock;
pub mod command;
pub mod conscious;
pub mod embed;
pub mod error;
pub mod extract;
pub mod llm;
pub mod model;
pub mod pii;
pub mod ratelimit;
pub mod recall;
pub mod resolve;
pub mod summary;
pub mod validate;

pub use error::{Error, Result};
