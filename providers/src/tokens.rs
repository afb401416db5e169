//! Token counting for context packing, with the BPE of the target model family
//! (tiktoken-compatible; the vocabularies ship inside the crate, nothing is downloaded).

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use memoire_core::recall::TokenCounter;
use memoire_core::{Error, Result};
use tiktoken_rs::CoreBPE;

/// The tokenizers Recall and Conscious accept.
pub const TOKENIZERS: &[&str] = &["cl100k_base", "o200k_base"];

/// A tiktoken-compatible counter.
pub struct Tiktoken(&'static CoreBPE, &'static Memo);

/// Counts of short texts already counted, per vocabulary. Packing counts every candidate's line
/// on every Recall (and the BPE's pre-tokenizing regex costs ~1.5 µs a token here), while the
/// same memories and turns come back call after call; a line names its item's id, so it is the
/// same text each time. Keyed by the text itself: a count is never another text's.
struct Memo(Mutex<HashMap<Box<str>, u32>>);

/// Texts longer than this (a whole packed context) are counted every time.
const MEMO_TEXT_BYTES: usize = 2048;
/// Entries kept; when full, the memo starts over (a few MB at most).
const MEMO_ENTRIES: usize = 32_768;

static CL100K: LazyLock<Memo> = LazyLock::new(|| Memo(Mutex::default()));
static O200K: LazyLock<Memo> = LazyLock::new(|| Memo(Mutex::default()));

impl Memo {
    fn count(&self, bpe: &CoreBPE, text: &str) -> usize {
        if text.len() > MEMO_TEXT_BYTES {
            return bpe.encode_ordinary(text).len();
        }
        // A panic while holding the lock leaves a valid map: keep going.
        let lock = || self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&n) = lock().get(text) {
            return n as usize;
        }
        let n = bpe.encode_ordinary(text).len();
        let mut memo = lock();
        if memo.len() >= MEMO_ENTRIES {
            memo.clear();
        }
        memo.insert(text.into(), n as u32);
        n
    }
}

impl Tiktoken {
    /// The counter named `name` ("" means cl100k_base); `field` names the request field in errors.
    pub fn named(field: &str, name: &str) -> Result<Self> {
        match name {
            "" | "cl100k_base" => Ok(Tiktoken(tiktoken_rs::cl100k_base_singleton(), &CL100K)),
            "o200k_base" => Ok(Tiktoken(tiktoken_rs::o200k_base_singleton(), &O200K)),
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
        self.1.count(self.0, text)
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

    #[test]
    fn a_remembered_count_is_the_count_of_that_text_in_that_vocabulary() {
        let (cl, o) = (
            Tiktoken::named("t", "").expect("cl100k"),
            Tiktoken::named("t", "o200k_base").expect("o200k"),
        );
        // Counts that differ between the vocabularies, asked twice each (the second from the
        // memo), and a long text past the memo's limit.
        let text = "- Geburtstagsfeier am Samstag 🎉 [memory 0c6f]\n";
        let long = text.repeat(60);
        for (counter, bpe) in [
            (&cl, tiktoken_rs::cl100k_base_singleton()),
            (&o, tiktoken_rs::o200k_base_singleton()),
        ] {
            for t in [text, text, long.as_str(), long.as_str()] {
                assert_eq!(counter.count(t), bpe.encode_ordinary(t).len());
            }
        }
        assert_ne!(
            cl.count(text),
            o.count(text),
            "pick a text the vocabularies split differently"
        );
    }
}
