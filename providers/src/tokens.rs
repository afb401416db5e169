//! Token counting for context packing, with the BPE of the target model family
//! (tiktoken-compatible; the vocabularies ship inside the crate, nothing is downloaded).

use memoire_core::recall::TokenCounter;
use memoire_core::{Error, Result};
use tiktoken_rs::CoreBPE;

/// The tokenizers Recall and Conscious accept.
pub const TOKENIZERS: &[&str] = &["cl100k_base", "o200k_base"];

/// A tiktoken-compatible counter.
pub struct Tiktoken(&'static CoreBPE);

impl Tiktoken {
    /// The counter named `name` ("" means cl100k_base); `field` names the request field in errors.
    pub fn named(field: &str, name: &str) -> Result<Self> {
        match name {
            "" | "cl100k_base" => Ok(Tiktoken(tiktoken_rs::cl100k_base_singleton())),
            "o200k_base" => Ok(Tiktoken(tiktoken_rs::o200k_base_singleton())),
            other => Err(Error::invalid(
                field,
                format!(
                    "unknown tokenizer '{other}'; use one of {}",
                    TOKENIZERS.join(", ")
                ),
            )),
        }
    }

    /// Loads both vocabularies now, so that the first request does not pay for it.
    pub fn warm_up() {
        let _ = tiktoken_rs::cl100k_base_singleton();
        let _ = tiktoken_rs::o200k_base_singleton();
    }
}

impl TokenCounter for Tiktoken {
    fn count(&self, text: &str) -> usize {
        self.0.encode_ordinary(text).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_like_tiktoken() {
        // "hello world" is two tokens in both vocabularies.
        assert_eq!(
            Tiktoken::named("t", "")
                .expect("cl100k")
                .count("hello world"),
            2
        );
        assert_eq!(
            Tiktoken::named("t", "o200k_base")
                .expect("o200k")
                .count("hello world"),
            2
        );
        assert!(Tiktoken::named("tokenizer", "gpt2").is_err());
    }
}
