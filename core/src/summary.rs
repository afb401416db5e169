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
    /// The speaker's name, when known.
    pub name: Option<String>,
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
            name: t.name.clone(),
            speaker_is_user: true,
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

/// How much a turn says, given how many statements the rule extractor recognises in it: those
/// weigh most, then names and numbers (capitalised words not at the start, digits), then its
/// content words; a question counts for half.
fn salience(text: &str, statements: usize) -> f32 {
    let statements = statements as f32;
    let words: Vec<&str> = text.split_whitespace().collect();
    let names = words
        .iter()
        .skip(1)
        .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
        .count() as f32;
    let digits = text.chars().any(|c| c.is_ascii_digit()) as u8 as f32;
    let body = (significant_words(text).len().min(12) as f32) / 12.0;
    let score = 3.0 * statements + 0.5 * names.min(4.0) + 0.5 * digits + body;
    if text.trim_end().ends_with('?') {
        score / 2.0
    } else {
        score
    }
}

/// Fewest content words a turn needs to be quoted without a recognised statement.
const MIN_WORDS: usize = 5;

/// Who said a turn, as the digest names them.
fn speaker(t: &SessionTurn) -> &str {
    t.name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or("the user")
}

/// A session's extractive digest: each speaker's most salient turns (at most `max_turns` in all,
/// shared evenly between the speakers), quoted under the speaker's name in the order they were
/// said, after the session's date. Only people's turns (role `user`) are quoted. `None` when no
/// turn says enough.
pub fn extractive(
    session: &str,
    turns: &[SessionTurn],
    max_turns: usize,
    max_bytes: usize,
) -> Option<Summary> {
    let people: Vec<(usize, &SessionTurn)> = turns
        .iter()
        .enumerate()
        .filter(|(_, t)| t.role == MessageRole::User)
        .collect();
    let mut speakers: Vec<&str> = Vec::new();
    for (_, t) in &people {
        if !speakers.contains(&speaker(t)) {
            speakers.push(speaker(t));
        }
    }
    let share = max_turns.div_ceil(speakers.len().max(1));
    let mut chosen: Vec<usize> = Vec::new();
    for who in &speakers {
        let mut scored: Vec<(f32, usize)> = people
            .iter()
            .filter(|(_, t)| speaker(t) == *who)
            .filter_map(|(i, t)| {
                let statements = RuleExtractor.extract(&t.content).len();
                (statements > 0 || significant_words(&t.content).len() >= MIN_WORDS)
                    .then(|| (salience(&t.content, statements), *i))
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        chosen.extend(scored.into_iter().take(share).map(|(_, i)| i));
    }
    chosen.sort();
    chosen.truncate(max_turns);
    let date = turns
        .first()
        .map(|t| t.occurred_at.format("%-d %B %Y").to_string())?;
    let mut content = format!("Session {session}, {date}.");
    let mut sources = Vec::new();
    let mut last_speaker = None;
    for i in chosen {
        let t = &turns[i];
        let said = t.content.split_whitespace().collect::<Vec<_>>().join(" ");
        let who = speaker(t);
        let piece = if last_speaker == Some(who) {
            format!(" | {said}")
        } else {
            format!(" {who}: {said}")
        };
        if content.len() + piece.len() > max_bytes {
            break;
        }
        content.push_str(&piece);
        last_speaker = Some(who);
        sources.push(t.id);
    }
    (!sources.is_empty()).then_some(Summary { content, sources })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(n: u128, name: Option<&str>, content: &str) -> SessionTurn {
        SessionTurn {
            id: Uuid::from_u128(n),
            role: MessageRole::User,
            name: name.map(Into::into),
            content: content.into(),
            occurred_at: DateTime::from_timestamp(1_683_504_000, 0).expect("time"),
        }
    }

    #[test]
    fn a_digest_quotes_each_speakers_most_salient_turns_under_their_name() {
        let turns = vec![
            turn(1, Some("Ana"), "Hey!"),
            turn(2, Some("Bo"), "Hi Ana, how was the weekend?"),
            turn(
                3,
                Some("Ana"),
                "I went to the pottery class in Lisbon with my sister Ines.",
            ),
            turn(
                4,
                Some("Bo"),
                "Nice. I finally finished the marathon in Porto, 4 hours 10.",
            ),
            turn(5, Some("Ana"), "lol ok"),
            turn(
                6,
                Some("Bo"),
                "I love running along the river every morning.",
            ),
        ];
        let d = extractive("s7", &turns, 4, 1000).expect("digest");
        assert_eq!(
            d.content,
            "Session s7, 8 May 2023. Ana: I went to the pottery class in Lisbon with my sister \
             Ines. Bo: Nice. I finally finished the marathon in Porto, 4 hours 10. | I love running \
             along the river every morning."
        );
        assert_eq!(
            d.sources,
            [3, 4, 6].map(Uuid::from_u128).to_vec(),
            "linked to the turns it quotes"
        );
        assert_eq!(
            extractive("s", &turns[..1], 4, 1000),
            None,
            "nothing to say"
        );
        let short = extractive("s7", &turns, 4, 90).expect("digest");
        assert!(short.content.len() <= 90 && short.sources.len() == 1);
    }
}
