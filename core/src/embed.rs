//! The embedding boundary: what turns text into vectors. Implementations live in
//! `memoire-providers` (a local model, OpenAI-compatible endpoints); the server wraps one in a
//! cache. Vectors are L2-normalized, so cosine similarity is a dot product.

use std::future::Future;
use std::pin::Pin;

use crate::Result;

/// A boxed, sendable future (for a dyn-compatible async trait).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns texts into vectors.
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// The model id stored with every vector; vectors of different ids are never compared.
    fn model_id(&self) -> &str;

    /// The vectors' dimension.
    fn dims(&self) -> usize;

    /// One vector per text, in order. Implementations batch and keep blocking work off the
    /// async runtime.
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>>>;
}

/// A text's vector and the id of the model that made it (what the store writes beside a row).
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The vector (L2-normalized).
    pub vector: Vec<f32>,
    /// The model id.
    pub model: String,
}

/// The text a memory is embedded from: its content, its subject, and the words of its slot
/// (`user.home_city` → "home city"), so that "where does the user live?" meets a memory whose
/// content only says "Dallas".
pub fn memory_text(content: &str, subject: Option<&str>, slot: Option<&str>) -> String {
    let mut text = content.trim().to_owned();
    if let Some(subject) = subject.filter(|s| !s.is_empty()) {
        text.push_str(". ");
        text.push_str(subject);
    }
    if let Some(slot) = slot {
        let words: Vec<&str> = slot
            .split(['.', '_'])
            .filter(|w| !w.is_empty() && *w != "user")
            .collect();
        if !words.is_empty() {
            text.push_str(". ");
            text.push_str(&words.join(" "));
        }
    }
    text
}

/// The text an episode is searched by, in full text and by vector: who said it and when are part
/// of it, so that "what did Caroline say in May?" meets Caroline's turns of that month —
/// `[8 May 2023] Caroline: …` (the date in UTC; without a name, the date alone). Full-text search
/// renders it in SQL (`memoire_episode_text`, migration 0006); a store test keeps the two equal.
pub fn episode_text(
    name: Option<&str>,
    occurred_at: chrono::DateTime<chrono::Utc>,
    content: &str,
) -> String {
    let date = occurred_at.format("%-d %B %Y");
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(name) => format!("[{date}] {name}: {content}"),
        None => format!("[{date}] {content}"),
    }
}

/// How many turns said just before an episode, in its session, are embedded with it.
pub const EPISODE_CONTEXT_TURNS: i64 = 2;

/// How much of each of those turns is embedded with it: its last characters (what the episode
/// answers is usually at the end of the turn before it).
pub const EPISODE_CONTEXT_CHARS: i64 = 300;

/// The text an episode's *vector* is computed from: the turns said just before it in its
/// session ([`EPISODE_CONTEXT_TURNS`] of them, oldest first, one `speaker: text` line each, each
/// cut to its last [`EPISODE_CONTEXT_CHARS`] characters; `before` is those lines joined, as the
/// store renders them), then [`episode_text`].
///
/// A reply such as "Pottery! It's like therapy for me." is about what it answers ("What do you
/// do to relax?"): with the question in its vector, a query in the question's words finds the
/// reply. Full-text search indexes the turn alone ([`episode_text`]); Recall's fusion adds the
/// neighbouring turns' relevance separately. The cut keeps the turn itself within the model's
/// input limit (256 tokens: two cut lines are at most ~150). Chosen on the long-conversation
/// development data by leave-one-conversation-out cross-validation (`docs/benchmarks.md`): the
/// turn after its context did better than before it (R@10 0.805 against 0.779), two turns of
/// context better than one (0.805 against 0.785).
pub fn episode_vector_text(
    name: Option<&str>,
    occurred_at: chrono::DateTime<chrono::Utc>,
    content: &str,
    before: Option<&str>,
) -> String {
    let turn = episode_text(name, occurred_at, content);
    match before.map(str::trim).filter(|b| !b.is_empty()) {
        Some(before) => format!("{before}\n{turn}"),
        None => turn,
    }
}

/// Cosine similarity of two vectors (0 when either is zero or lengths differ).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_text_adds_subject_and_slot_words() {
        assert_eq!(
            memory_text("Dallas", None, Some("user.home_city")),
            "Dallas. home city"
        );
        assert_eq!(
            memory_text(" Likes tea ", Some("Dana"), None),
            "Likes tea. Dana"
        );
        assert_eq!(memory_text("x", None, None), "x");
    }

    #[test]
    fn episode_text_names_the_speaker_and_the_day() {
        let at = chrono::DateTime::parse_from_rfc3339("2023-05-08T13:56:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            episode_text(Some("Caroline"), at, "Hi Mel!"),
            "[8 May 2023] Caroline: Hi Mel!"
        );
        assert_eq!(episode_text(Some(" "), at, "Hi"), "[8 May 2023] Hi");
        assert_eq!(episode_text(None, at, "Hi"), "[8 May 2023] Hi");
    }

    #[test]
    fn episode_vector_text_puts_the_context_before_the_turn() {
        let at = chrono::DateTime::parse_from_rfc3339("2023-05-08T13:56:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            episode_vector_text(
                Some("Mel"),
                at,
                "Pottery!",
                Some("Caroline: What relaxes you?")
            ),
            "Caroline: What relaxes you?\n[8 May 2023] Mel: Pottery!"
        );
        assert_eq!(
            episode_vector_text(Some("Mel"), at, "Hi", Some(" ")),
            "[8 May 2023] Mel: Hi"
        );
        assert_eq!(episode_vector_text(None, at, "Hi", None), "[8 May 2023] Hi");
    }

    #[test]
    fn cosine_of_parallel_and_orthogonal_vectors() {
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-6);
        assert_eq!(cosine(&[1.0], &[1.0, 2.0]), 0.0);
    }
}
