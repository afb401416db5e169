//! Session summaries for the reflect job: which turns an extractive digest quotes (pure), and how
//! a model's abstractive summary is framed. The job itself (reading sessions, calling the model,
//! writing the summary memory) is a use-case.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::extract::{ExtractError, RuleExtractor, Summarizer, Turn};
use crate::model::MessageRole;
use crate::resolve::significant_words;

/// One turn of a session, as reflect reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionTurn {
    /// The episode.
    pub id: Uuid,
    /// Who spoke.
    pub role: MessageRole,
    /// What was said.
    pub content: String,
    /// When.
    pub occurred_at: DateTime<Utc>,
}

/// A session summary: its text and the turns it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The summary memory's content.
    pub content: String,
    /// Its source episodes.
    pub sources: Vec<Uuid>,
}

/// `text` cut to at most `max_bytes` on a character boundary.
fn truncate(mut text: String, max_bytes: usize) -> String {
    if text.len() > max_bytes {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// A model's summary of the whole session; its sources are the user's turns.
pub async fn abstractive(
    model: &dyn Summarizer,
    session: &str,
    turns: &[SessionTurn],
    max_bytes: usize,
) -> Result<Summary, ExtractError> {
    let said: Vec<Turn> = turns
        .iter()
        .map(|t| Turn {
            role: t.role,
            name: None,
            content: t.content.clone(),
        })
        .collect();
    let text = model.summarize(&said).await?;
    let date = turns
        .first()
        .map(|t| t.occurred_at.format("%Y-%m-%d").to_string())
        .unwrap_or_default();
    let content = truncate(format!("Session {session} ({date}): {text}"), max_bytes);
    let sources = turns
        .iter()
        .filter(|t| t.role == MessageRole::User)
        .map(|t| t.id)
        .take(64)
        .collect();
    Ok(Summary { content, sources })
}

/// How much a user turn says about the user: statements the rule extractor recognises weigh
/// most, then names and numbers (capitalised words not at the start, digits), then length.
fn salience(text: &str) -> f32 {
    let statements = RuleExtractor.extract(text).len() as f32;
    let words: Vec<&str> = text.split_whitespace().collect();
    let names = words
        .iter()
        .skip(1)
        .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
        .count() as f32;
    let digits = text.chars().any(|c| c.is_ascii_digit()) as u8 as f32;
    let body = (significant_words(text).len().min(12) as f32) / 12.0;
    5.0 * statements + 0.5 * names.min(4.0) + 0.5 * digits + body
}

/// A session's extractive digest: its most salient user turns (at most `max_turns`), quoted in
/// the order they were said. `None` when no turn says enough.
pub fn extractive(
    session: &str,
    turns: &[SessionTurn],
    max_turns: usize,
    max_bytes: usize,
) -> Option<Summary> {
    let mut scored: Vec<(f32, usize)> = turns
        .iter()
        .enumerate()
        .filter(|(_, t)| t.role == MessageRole::User)
        .map(|(i, t)| (salience(&t.content), i))
        .filter(|(s, _)| *s >= 5.0)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut chosen: Vec<usize> = scored.into_iter().take(max_turns).map(|(_, i)| i).collect();
    chosen.sort();
    if chosen.is_empty() {
        return None;
    }
    let date = turns
        .first()
        .map(|t| t.occurred_at.format("%Y-%m-%d").to_string())?;
    let mut content = format!("Session {session} ({date}), what the user said:");
    let mut sources = Vec::new();
    for i in chosen {
        let said = turns[i]
            .content
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if content.len() + said.len() + 3 > max_bytes {
            break;
        }
        content.push_str(if sources.is_empty() { " " } else { " | " });
        content.push_str(&said);
        sources.push(turns[i].id);
    }
    (!sources.is_empty()).then_some(Summary { content, sources })
}
