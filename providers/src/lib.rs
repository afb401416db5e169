//! Providers behind `memoire-core`'s traits: the heavy dependencies (the embedding model, tokenizers,
//! an HTTP client) live here so that edits elsewhere do not rebuild them.
//!
//! - [`local::LocalEmbedder`]: all-MiniLM-L6-v2 in-process on CPU (the default; no API key).
//! - [`openai::OpenAiEmbedder`]: any OpenAI-compatible embeddings endpoint.
//! - [`chat::LlmExtractor`]: extraction with any OpenAI-compatible chat model.
//! - [`tokens::Tiktoken`]: tiktoken-compatible token counting for context packing.

mod bert;
pub mod chat;
mod http;
pub mod local;
pub mod openai;
pub mod tokens;

pub use chat::{ChatSettings, JsonMode, LlmExtractor};
pub use local::LocalEmbedder;
pub use openai::{OpenAiEmbedder, OpenAiSettings};
pub use tokens::Tiktoken;
