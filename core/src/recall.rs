//! Recall's pure half: fusing full-text and vector candidates with importance, confidence and
//! recency into one explainable score; deterministic ordering; and packing the winners into a
//! context block under a token budget. The store finds candidates; this module decides.
//!
//! Score (every component is returned by `explain`):
//!
//! ```text
//! relevance = weighted: (w_text × bm25/best_bm25 + w_vec × max(cosine, 0)) / (w_text + w_vec)
//!             rrf:      (w_text / (k + text_rank) + w_vec / (k + vector_rank)) / ((w_text + w_vec) / (k + 1))
//!             (bm25 and cosine are every candidate's real scores, not only the best few's)
//! fused     = (relevance + w_ctx × context) / (1 + w_ctx)
//! context   = for an episode, the best relevance of its neighbouring turns and of the session
//!             digests that quote it (0 for memories; with turns searched, digests are not items)
//! final     = fused × (1 + w_imp × (importance − 0.5)) × confidence^w_conf × subject × speaker
//!             + w_rec × recency
//! speaker   = 1 + w_spk for an episode whose speaker, or a memory whose subject, the query names; else 1
//!             (the searches themselves look for the query without its speakers' names)
//! subject   = 1 − w_subj when the memory is about someone else (its subject is set and is not
//!             "user") and the query does not name them; else 1
//! recency   = 0.5 ^ (age_days / half_life_days)
//! ```
//!
//! On the golden set (`tests/golden/recall.yaml`) RRF with importance 0.4 and no subject signal
//! reached R-precision 0.59; a gentler importance (0.2) and the subject signal lifted it to 0.81,
//! with RRF and the weighted sum tied and the text/vector split (0.4–0.6) making no difference.
//! On long conversations (`make eval`, the LoCoMo development split, user-style ingest) the
//! text/vector split, the context weight and the speaker boost were chosen by leave-one-
//! conversation-out cross-validation (`eval-cv --fusion`), with episodes embedded with the turns
//! before them (`embed::episode_vector_text`) and the speakers' names out of the searched text
//! ([`without_names`]): over a grid (text 0.15–0.45, context 0.1–0.6, speaker 0.3–2.0; objective
//! R@10 + nDCG@10 averaged over the question categories) four folds of five chose text 0.25,
//! context 0.2 and a speaker boost of 1.0–2.0, and all five together 0.25, 0.2, 1.5, the
//! defaults. With the names left in the searches, a boost above 0.3 had hurt: the name already
//! pulled the searches towards every turn that mentions the speaker.
//! Session diversity (demoting repeats of a session) lowered recall and was left out. The
//! weighted sum is the default because it keeps score magnitudes — a distant nearest
//! neighbour does not score like a close one — which makes `min_score` meaningful. Recency is
//! additive and small: on long histories evidence is spread over time, so it only breaks
//! near-ties.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::{Memory, MemoryKind, MessageRole};

/// How full-text and vector results are fused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fusion {
    /// Normalized weighted sum of the scores (BM25 / best BM25, cosine).
    Weighted,
    /// Reciprocal rank fusion of the ranks.
    Rrf,
}

/// Fusion settings (from configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// The fusion method.
    pub fusion: Fusion,
    /// Weight of the full-text rank.
    pub text: f32,
    /// Weight of the vector rank.
    pub vector: f32,
    /// RRF's k.
    pub rrf_k: f32,
    /// How much importance scales relevance.
    pub importance: f32,
    /// Exponent of confidence.
    pub confidence: f32,
    /// Additive weight of recency.
    pub recency: f32,
    /// Recency half-life, days.
    pub half_life_days: f32,
    /// Penalty for memories about someone the query does not name.
    pub subject: f32,
    /// Weight of an episode's neighbouring turns' relevance (its context) in its fused score.
    pub context: f32,
    /// Boost of an episode whose speaker the query names: × (1 + w).
    pub speaker: f32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            fusion: Fusion::Weighted,
            text: 0.5,
            vector: 0.5,
            rrf_k: 60.0,
            importance: 0.2,
            confidence: 1.0,
            recency: 0.01,
            half_life_days: 30.0,
            subject: 0.3,
            context: 0.0,
            speaker: 0.0,
        }
    }
}

/// Whether `name` appears in the query as a word of its own (case-insensitive).
fn names(query_words: &[String], name: Option<&str>) -> bool {
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return false;
    };
    let name: Vec<String> = words(name);
    !name.is_empty()
        && query_words
            .windows(name.len())
            .any(|w| w == name.as_slice())
}

/// Lowercase alphanumeric words.
fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The longest speaker name (in words) that [`without_names`] takes out of a query.
pub const MAX_NAME_WORDS: usize = 3;

/// A query's words, and each as names are compared: lowercase, without surrounding punctuation
/// or a possessive `'s` ("Caroline's?" → "caroline"); empty when the word cannot be part of a
/// name here. Where the query uses capitals, a name is written with one ("Did I pay the bill?"
/// keeps its bill when someone called Bill speaks); a query in lower case throughout may name
/// anyone.
fn name_keys(query: &str) -> (Vec<&str>, Vec<String>) {
    let tokens: Vec<&str> = query.split_whitespace().collect();
    let cased = query.chars().any(char::is_uppercase);
    let keys = tokens
        .iter()
        .map(|token| {
            let t = token.trim_matches(|c: char| !c.is_alphanumeric());
            let t = t
                .strip_suffix("'s")
                .or_else(|| t.strip_suffix("\u{2019}s"))
                .unwrap_or(t);
            if cased && !t.starts_with(char::is_uppercase) {
                String::new()
            } else {
                t.to_lowercase()
            }
        })
        .collect();
    (tokens, keys)
}

/// The runs of up to [`MAX_NAME_WORDS`] consecutive words of `query` that could be a speaker's
/// name, as [`without_names`] compares them (lowercase, one space between words): what the store
/// looks up among the scope's speakers.
pub fn name_candidates(query: &str) -> Vec<String> {
    let (_, keys) = name_keys(query);
    let mut out = std::collections::BTreeSet::new();
    for n in 1..=MAX_NAME_WORDS {
        for run in keys.windows(n) {
            if run.iter().all(|k| !k.is_empty()) {
                out.insert(run.join(" "));
            }
        }
    }
    out.into_iter().collect()
}

/// `query` without the names of the conversation's speakers (`names`: lowercase, as
/// [`name_candidates`] spells them) — what the searches look for. Who is asked about is not
/// what is asked: the name matches every turn its speaker said (their name is part of each
/// turn's text and vector) and every turn addressed to them, so it pulls the query towards
/// greetings ("Thanks, Melanie!") and away from its content; the speaker boost, which reads
/// the query as asked, prefers that speaker's turns instead. A query that is nothing but names
/// is kept as it is.
pub fn without_names(query: &str, names: &[String]) -> String {
    if names.is_empty() {
        return query.to_owned();
    }
    let (tokens, keys) = name_keys(query);
    let mut kept = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let named = (1..=MAX_NAME_WORDS.min(tokens.len() - i)).rev().find(|n| {
            let run = &keys[i..i + n];
            run.iter().all(|k| !k.is_empty()) && names.contains(&run.join(" "))
        });
        match named {
            Some(n) => i += n,
            None => {
                kept.push(tokens[i]);
                i += 1;
            }
        }
    }
    if kept.iter().any(|t| t.chars().any(char::is_alphanumeric)) {
        kept.join(" ")
    } else {
        query.to_owned()
    }
}

/// Whether a memory about `subject` is about someone the query does not name.
fn about_someone_else(subject: Option<&str>, query_lower: &str) -> bool {
    match subject.map(str::trim).filter(|s| !s.is_empty()) {
        None => false,
        Some(s) if s.eq_ignore_ascii_case("user") => false,
        Some(s) => !query_lower.contains(&s.to_lowercase()),
    }
}

/// A raw conversation turn as recall sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpisodeHit {
    /// Id.
    pub id: Uuid,
    /// User.
    pub user_id: String,
    /// Namespace.
    pub namespace: String,
    /// Session.
    pub session_id: String,
    /// Who said it.
    pub role: MessageRole,
    /// Speaker name.
    pub name: Option<String>,
    /// Text.
    pub content: String,
    /// Client's message id.
    pub message_id: Option<String>,
    /// When it was said.
    pub occurred_at: DateTime<Utc>,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

/// What a candidate is.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A memory (as of the requested time).
    Memory(Box<Memory>),
    /// An episode.
    Episode(Box<EpisodeHit>),
}

impl Item {
    /// The item's id.
    pub fn id(&self) -> Uuid {
        match self {
            Item::Memory(m) => m.id,
            Item::Episode(e) => e.id,
        }
    }
}

/// A candidate found by full-text search, vector search, or both.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The item.
    pub item: Item,
    /// 1-based rank among full-text candidates (`None`: not among the best; the score is still
    /// its real one).
    pub text_rank: Option<u32>,
    /// BM25 score (raw; 0 when no query term matches).
    pub text_score: f32,
    /// 1-based rank among vector candidates (`None`: not among the nearest; the score is still
    /// its real one).
    pub vector_rank: Option<u32>,
    /// Cosine similarity (0 without a vector of the model).
    pub vector_score: f32,
    /// For an episode: the turns said just before and after it in its session (those that are
    /// candidates too lend it their relevance as context).
    pub neighbours: Vec<Uuid>,
}

/// The components of a final score.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Explain {
    /// BM25 normalized by the best BM25 among the candidates.
    pub text_score: f32,
    /// Full-text rank (0: absent).
    pub text_rank: u32,
    /// Cosine similarity (0: absent).
    pub vector_score: f32,
    /// Vector rank (0: absent).
    pub vector_rank: u32,
    /// Fused relevance: text and vector, with the neighbouring turns' context (0..1).
    pub fused: f32,
    /// For an episode: the best relevance among its neighbouring turns.
    pub context: f32,
    /// Importance used.
    pub importance: f32,
    /// Recency (0..1).
    pub recency: f32,
    /// Confidence used.
    pub confidence: f32,
    /// The final score.
    pub final_score: f32,
}

/// A scored item.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The item.
    pub item: Item,
    /// Score components.
    pub explain: Explain,
}

fn rrf(k: f32, rank: Option<u32>) -> f32 {
    rank.map(|r| 1.0 / (k + r as f32)).unwrap_or(0.0)
}

/// Scores, filters by `min_score`, orders (score desc, then id asc — deterministic) and keeps `k`.
pub fn rank(
    candidates: Vec<Candidate>,
    query: &str,
    w: &Weights,
    now: DateTime<Utc>,
    min_score: Option<f32>,
    k: usize,
) -> Vec<Scored> {
    let best_text = candidates.iter().map(|c| c.text_score).fold(0f32, f32::max);
    let query_lower = query.to_lowercase();
    let query_words = words(query);
    let norm = match w.fusion {
        Fusion::Rrf => (w.text + w.vector) * rrf(w.rrf_k, Some(1)),
        Fusion::Weighted => w.text + w.vector,
    };
    // Relevance from the candidate's own text and vector scores.
    let relevance: Vec<f32> = candidates
        .iter()
        .map(|c| {
            let text_norm = if best_text > 0.0 {
                c.text_score.max(0.0) / best_text
            } else {
                0.0
            };
            let raw = match w.fusion {
                Fusion::Rrf => {
                    w.text * rrf(w.rrf_k, c.text_rank) + w.vector * rrf(w.rrf_k, c.vector_rank)
                }
                // Real scores, whether or not the candidate ranked among a side's best: the store
                // scores every candidate on both sides.
                Fusion::Weighted => w.text * text_norm + w.vector * c.vector_score.max(0.0),
            };
            if norm > 0.0 { raw / norm } else { 0.0 }
        })
        .collect();
    let by_id: std::collections::HashMap<Uuid, f32> = candidates
        .iter()
        .zip(&relevance)
        .map(|(c, r)| (c.item.id(), *r))
        .collect();
    // When conversation turns are searched, a session digest is a route to its turns rather than
    // an item of its own (its quotes are those turns): its relevance is context for the turns it
    // links to, and it leaves the list. Without turns it is ranked like any memory.
    let turns_searched = candidates
        .iter()
        .any(|c| matches!(c.item, Item::Episode(_)));
    let mut via_digest: std::collections::HashMap<Uuid, f32> = std::collections::HashMap::new();
    if turns_searched {
        for (c, r) in candidates.iter().zip(&relevance) {
            if let Item::Memory(m) = &c.item
                && m.kind == MemoryKind::Summary
            {
                for id in &m.source_episode_ids {
                    let best = via_digest.entry(*id).or_insert(0.0);
                    *best = best.max(*r);
                }
            }
        }
    }
    let (candidates, relevance): (Vec<Candidate>, Vec<f32>) = candidates
        .into_iter()
        .zip(relevance)
        .filter(|(c, _)| {
            !(turns_searched && matches!(&c.item, Item::Memory(m) if m.kind == MemoryKind::Summary))
        })
        .unzip();
    let mut scored: Vec<Scored> = candidates
        .into_iter()
        .zip(relevance)
        .map(|(c, relevance)| {
            let (importance, confidence, at, subject) = match &c.item {
                Item::Memory(m) => (
                    m.importance,
                    m.confidence,
                    m.updated_at,
                    m.subject.as_deref(),
                ),
                Item::Episode(e) => (0.5, 1.0, e.occurred_at, None),
            };
            let text_norm = if best_text > 0.0 {
                c.text_score.max(0.0) / best_text
            } else {
                0.0
            };
            let context = c
                .neighbours
                .iter()
                .filter_map(|n| by_id.get(n))
                .chain(via_digest.get(&c.item.id()))
                .fold(0f32, |a, b| a.max(*b));
            let fused = (relevance + w.context * context) / (1.0 + w.context.max(0.0));
            // Said by, or about, a person the query names.
            let person = match &c.item {
                Item::Episode(e) => e.name.as_deref(),
                Item::Memory(m) => m.subject.as_deref(),
            };
            let speaker_factor = if names(&query_words, person) {
                1.0 + w.speaker
            } else {
                1.0
            };
            let subject_factor = if about_someone_else(subject, &query_lower) {
                1.0 - w.subject
            } else {
                1.0
            };
            let age_days = ((now - at).num_seconds().max(0) as f32) / 86_400.0;
            let recency = 0.5f32.powf(age_days / w.half_life_days.max(1e-3));
            let final_score = fused
                * (1.0 + w.importance * (importance - 0.5))
                * confidence.max(0.0).powf(w.confidence)
                * subject_factor
                * speaker_factor
                + w.recency * recency;
            Scored {
                explain: Explain {
                    text_score: text_norm,
                    text_rank: c.text_rank.unwrap_or(0),
                    vector_score: c.vector_score,
                    vector_rank: c.vector_rank.unwrap_or(0),
                    fused,
                    context,
                    importance,
                    recency,
                    confidence,
                    final_score,
                },
                item: c.item,
            }
        })
        .collect();
    stand_in(&mut scored);
    scored.retain(|s| min_score.is_none_or(|m| s.explain.final_score >= m));
    scored.sort_by(|a, b| {
        b.explain
            .final_score
            .total_cmp(&a.explain.final_score)
            .then_with(|| a.item.id().cmp(&b.item.id()))
    });
    scored.truncate(k);
    scored
}

/// A memory stands in for the conversation turns it was extracted from: when both are candidates,
/// the memory takes the best of their scores and the turns are left out (one fact, once).
fn stand_in(scored: &mut Vec<Scored>) {
    let turns: std::collections::HashMap<Uuid, f32> = scored
        .iter()
        .filter_map(|s| match &s.item {
            Item::Episode(e) => Some((e.id, s.explain.final_score)),
            Item::Memory(_) => None,
        })
        .collect();
    if turns.is_empty() {
        return;
    }
    let mut covered = std::collections::HashSet::new();
    for s in scored.iter_mut() {
        if let Item::Memory(m) = &s.item {
            for id in &m.source_episode_ids {
                if let Some(score) = turns.get(id) {
                    covered.insert(*id);
                    s.explain.final_score = s.explain.final_score.max(*score);
                }
            }
        }
    }
    scored.retain(|s| !covered.contains(&s.item.id()));
}

/// Counts tokens the way the target model family does.
pub trait TokenCounter: Send + Sync {
    /// Tokens in `text`.
    fn count(&self, text: &str) -> usize;
}

/// The packed context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// The text.
    pub text: String,
    /// Its tokens, counted exactly.
    pub tokens: usize,
    /// Whether items were left out to respect the budget.
    pub truncated: bool,
}

fn group_title(item: &Item) -> &'static str {
    match item {
        Item::Memory(m) => match m.kind {
            MemoryKind::Fact => "Facts",
            MemoryKind::Preference => "Preferences",
            MemoryKind::Event => "Events",
            MemoryKind::Goal => "Goals",
            MemoryKind::Rule => "Rules",
            MemoryKind::Trait => "Traits",
            MemoryKind::Signal => "Signals",
            MemoryKind::Summary => "Summaries",
            MemoryKind::Document => "Documents",
        },
        Item::Episode(_) => "Conversation",
    }
}

/// `s` on one line: runs of white space (newlines too) become one space.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn line(item: &Item) -> String {
    match item {
        Item::Memory(m) => memory_line(m),
        Item::Episode(e) => format!(
            "- {} ({}, {}): {} [episode {}]\n",
            e.name.as_deref().unwrap_or(e.role.as_str()),
            e.session_id,
            e.occurred_at.format("%Y-%m-%d"),
            one_line(&e.content),
            e.id
        ),
    }
}

/// A memory as a line of packed context: its content, who it is about when that is not the user,
/// and its id.
pub(crate) fn memory_line(m: &Memory) -> String {
    match m
        .subject
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(subject) if !subject.eq_ignore_ascii_case("user") => format!(
            "- {} (about {}) [memory {}]\n",
            one_line(&m.content),
            one_line(subject),
            m.id
        ),
        _ => format!("- {} [memory {}]\n", one_line(&m.content), m.id),
    }
}

fn header(title: &str) -> String {
    format!("## {title}\n")
}

fn render(items: &[&Scored], chosen: &[bool]) -> String {
    // Groups appear in the order of their best item; items within a group by score.
    let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (s, _) in items.iter().zip(chosen).filter(|(_, c)| **c) {
        let title = group_title(&s.item);
        let i = *index.entry(title).or_insert_with(|| {
            groups.push((title, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(line(&s.item));
    }
    let mut out = String::new();
    for (title, lines) in groups {
        out.push_str(&header(title));
        for l in lines {
            out.push_str(&l);
        }
    }
    out
}

/// Packs `items` (already in score order) under `budget` tokens: grouped by kind, highest value
/// first, each line ending with its id. Greedy by score — an item that does not fit is skipped
/// and smaller later ones may still fit — then the exact count of the rendered text is checked
/// and the lowest-scored items are dropped until it fits.
pub fn pack(items: &[Scored], budget: usize, counter: &dyn TokenCounter) -> Packed {
    let refs: Vec<&Scored> = items.iter().collect();
    let mut chosen = vec![false; refs.len()];
    let mut seen_groups: Vec<&str> = Vec::new();
    let mut used = 0usize;
    let mut truncated = false;
    for (i, s) in refs.iter().enumerate() {
        let title = group_title(&s.item);
        let mut cost = counter.count(&line(&s.item));
        let new_group = !seen_groups.contains(&title);
        if new_group {
            cost += counter.count(&header(title));
        }
        if used + cost <= budget {
            used += cost;
            chosen[i] = true;
            if new_group {
                seen_groups.push(title);
            }
        } else {
            truncated = true;
        }
    }
    loop {
        let text = render(&refs, &chosen);
        let tokens = counter.count(&text);
        if tokens <= budget {
            return Packed {
                text,
                tokens,
                truncated,
            };
        }
        // Token counts are not always additive across line boundaries: drop the lowest-scored.
        match chosen.iter().rposition(|c| *c) {
            Some(last) => {
                chosen[last] = false;
                truncated = true;
            }
            None => {
                return Packed {
                    text: String::new(),
                    tokens: 0,
                    truncated: true,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts whitespace-separated words plus one per line: stands in for a BPE in unit tests.
    struct Words;
    impl TokenCounter for Words {
        fn count(&self, text: &str) -> usize {
            text.split_whitespace().count() + text.matches('\n').count()
        }
    }

    fn memory(id: u128, kind: MemoryKind, content: &str, importance: f32) -> Memory {
        let t = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        Memory {
            importance,
            ..Memory::sample(Uuid::from_u128(id), kind, content, t)
        }
    }

    /// A candidate found by the searches whose ranks are given (and not matching the others).
    fn cand(m: Memory, text_rank: Option<u32>, vector_rank: Option<u32>) -> Candidate {
        Candidate {
            item: Item::Memory(Box::new(m)),
            text_rank,
            text_score: if text_rank.is_some() { 1.0 } else { 0.0 },
            vector_rank,
            vector_score: if vector_rank.is_some() { 0.5 } else { 0.0 },
            neighbours: Vec::new(),
        }
    }

    fn episode(id: u128, name: &str, text: f32, vector: f32, neighbours: &[u128]) -> Candidate {
        let at = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        Candidate {
            item: Item::Episode(Box::new(EpisodeHit {
                id: Uuid::from_u128(id),
                user_id: "u".into(),
                namespace: "default".into(),
                session_id: "s".into(),
                role: MessageRole::User,
                name: Some(name.into()),
                content: format!("turn {id}"),
                message_id: None,
                occurred_at: at,
                created_at: at,
            })),
            text_rank: None,
            text_score: text,
            vector_rank: None,
            vector_score: vector,
            neighbours: neighbours.iter().map(|n| Uuid::from_u128(*n)).collect(),
        }
    }

    fn ids(items: &[Scored]) -> Vec<u128> {
        items.iter().map(|s| s.item.id().as_u128()).collect()
    }

    #[test]
    fn a_turn_after_a_relevant_one_gains_its_context() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        // 1 is the question that matches; 2 answers it; 3 matches a little on its own.
        let cands = vec![
            episode(1, "A", 1.0, 0.6, &[2]),
            episode(2, "B", 0.0, 0.2, &[1, 4]),
            episode(3, "B", 0.2, 0.3, &[]),
            episode(4, "A", 0.0, 0.1, &[2]),
        ];
        let without = rank(cands.clone(), "q", &Weights::default(), now, None, 4);
        assert_eq!(ids(&without)[1], 3);
        let w = Weights {
            context: 0.5,
            ..Weights::default()
        };
        let with = rank(cands, "q", &w, now, None, 4);
        assert_eq!(ids(&with)[..2], [1, 2]);
        assert!(with[1].explain.context > 0.0);
    }

    #[test]
    fn a_turn_whose_speaker_the_query_names_is_preferred() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let cands = vec![
            episode(1, "Ana", 0.5, 0.5, &[]),
            episode(2, "Bo", 0.5, 0.5, &[]),
        ];
        let w = Weights {
            speaker: 0.2,
            ..Weights::default()
        };
        assert_eq!(
            ids(&rank(cands.clone(), "what did bo say?", &w, now, None, 2)),
            [2, 1]
        );
        // A name inside another word does not count.
        assert_eq!(
            ids(&rank(cands, "what about bonsai?", &w, now, None, 2)),
            [1, 2]
        );
    }

    #[test]
    fn a_session_digest_routes_to_the_turns_it_quotes() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let mut m = memory(
            9,
            MemoryKind::Summary,
            "Session s, Ana: turn 2 | turn 3",
            0.6,
        );
        m.source_episode_ids = vec![Uuid::from_u128(2)];
        let digest = Candidate {
            item: Item::Memory(Box::new(m)),
            text_rank: None,
            text_score: 1.0,
            vector_rank: None,
            vector_score: 0.9,
            neighbours: Vec::new(),
        };
        let w = Weights {
            context: 0.4,
            ..Weights::default()
        };
        let cands = vec![
            digest.clone(),
            episode(2, "Ana", 0.3, 0.3, &[]),
            episode(3, "Ana", 0.3, 0.3, &[]),
        ];
        let ranked = rank(cands, "q", &w, now, None, 3);
        assert_eq!(
            ids(&ranked),
            [2, 3],
            "the digest lifts turn 2 and leaves the list"
        );
        assert!(ranked[0].explain.context > 0.0);
        // Memories only: the digest is an item like any other.
        assert_eq!(ids(&rank(vec![digest], "q", &w, now, None, 3)), [9]);
    }

    #[test]
    fn a_memory_stands_in_for_the_turn_it_came_from() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let turn = episode(1, "A", 1.0, 0.8, &[]);
        let other = episode(2, "A", 0.5, 0.5, &[]);
        let mut m = memory(3, MemoryKind::Fact, "Lives in Porto", 0.5);
        m.source_episode_ids = vec![Uuid::from_u128(1)];
        let fact = Candidate {
            item: Item::Memory(Box::new(m)),
            text_rank: None,
            text_score: 0.1,
            vector_rank: None,
            vector_score: 0.1,
            neighbours: Vec::new(),
        };
        let ranked = rank(
            vec![turn, other, fact],
            "q",
            &Weights::default(),
            now,
            None,
            3,
        );
        assert_eq!(
            ids(&ranked),
            [3, 2],
            "the memory takes its turn's place; the turn is left out"
        );
    }

    #[test]
    fn asking_for_more_never_reorders_the_first_items() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let cands: Vec<Candidate> = (0..40u128)
            .map(|i| {
                episode(
                    i,
                    "A",
                    (i % 7) as f32 / 7.0,
                    (i % 5) as f32 / 5.0,
                    &[(i + 1) % 40],
                )
            })
            .collect();
        let w = Weights {
            context: 0.4,
            speaker: 0.2,
            ..Weights::default()
        };
        let ten = rank(cands.clone(), "a", &w, now, None, 10);
        let all = rank(cands, "a", &w, now, None, 40);
        assert_eq!(ids(&ten), ids(&all)[..10]);
    }

    #[test]
    fn found_by_both_beats_found_by_one_and_ties_break_by_id() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let both = cand(memory(3, MemoryKind::Fact, "a", 0.5), Some(2), Some(2));
        let text_only = cand(memory(1, MemoryKind::Fact, "b", 0.5), Some(1), None);
        let tie_a = cand(memory(5, MemoryKind::Fact, "c", 0.5), None, Some(1));
        let tie_b = cand(memory(4, MemoryKind::Fact, "d", 0.5), None, Some(1));
        let w = Weights {
            fusion: Fusion::Rrf,
            text: 0.5,
            vector: 0.5,
            importance: 0.4,
            ..Weights::default()
        };
        let ranked = rank(vec![tie_a, text_only, both, tie_b], "q", &w, now, None, 10);
        let ids: Vec<u128> = ranked.iter().map(|s| s.item.id().as_u128()).collect();
        assert_eq!(ids, vec![3, 1, 4, 5]);
        assert!(ranked[0].explain.fused > ranked[1].explain.fused);
        assert!((ranked[0].explain.fused - 61.0 / 62.0).abs() < 1e-5);
    }

    #[test]
    fn weighted_fusion_uses_score_magnitudes_and_the_subject() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let mut close = cand(memory(1, MemoryKind::Fact, "a", 0.5), None, Some(1));
        close.vector_score = 0.8;
        let mut far = cand(memory(2, MemoryKind::Fact, "b", 0.9), None, Some(2));
        far.vector_score = 0.3;
        let ranked = rank(
            vec![far.clone(), close.clone()],
            "q",
            &Weights::default(),
            now,
            None,
            10,
        );
        assert_eq!(
            ranked[0].item.id().as_u128(),
            1,
            "a much closer vector beats higher importance"
        );
        assert!((ranked[0].explain.fused - 0.4).abs() < 1e-6);

        let mut sister = memory(3, MemoryKind::Fact, "Sister lives in Lisbon", 0.5);
        sister.subject = Some("Lucia".into());
        let mut own = cand(
            memory(4, MemoryKind::Fact, "Lives in Dallas", 0.5),
            None,
            Some(2),
        );
        own.vector_score = 0.5;
        let mut other = cand(sister, None, Some(1));
        other.vector_score = 0.55;
        let ranked = rank(
            vec![other.clone(), own.clone()],
            "where does she live?",
            &Weights::default(),
            now,
            None,
            10,
        );
        assert_eq!(
            ranked[0].item.id().as_u128(),
            4,
            "the user's own fact first"
        );
        let ranked = rank(
            vec![other, own],
            "where does Lucia live?",
            &Weights::default(),
            now,
            None,
            10,
        );
        assert_eq!(
            ranked[0].item.id().as_u128(),
            3,
            "unless the query names the subject"
        );
    }

    #[test]
    fn importance_and_min_score_and_k() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let low = cand(memory(1, MemoryKind::Fact, "a", 0.0), Some(1), Some(1));
        let high = cand(memory(2, MemoryKind::Fact, "b", 1.0), Some(1), Some(1));
        let ranked = rank(
            vec![low.clone(), high.clone()],
            "q",
            &Weights::default(),
            now,
            None,
            10,
        );
        assert_eq!(ranked[0].item.id().as_u128(), 2);
        let only = rank(vec![low, high], "q", &Weights::default(), now, Some(0.8), 5);
        assert_eq!(only.len(), 1, "only the important one reaches 0.8");
        assert!(only[0].explain.final_score >= 0.8);
    }

    #[test]
    fn packing_groups_by_kind_in_score_order_and_respects_the_budget() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("time");
        let items = rank(
            vec![
                cand(
                    memory(1, MemoryKind::Preference, "likes tea", 0.5),
                    Some(1),
                    Some(1),
                ),
                cand(
                    memory(2, MemoryKind::Fact, "lives in Dallas", 0.5),
                    Some(2),
                    Some(2),
                ),
                cand(
                    memory(3, MemoryKind::Preference, "hates coffee", 0.5),
                    Some(3),
                    Some(3),
                ),
            ],
            "q",
            &Weights::default(),
            now,
            None,
            10,
        );
        let all = pack(&items, 1000, &Words);
        assert!(!all.truncated);
        let expected = format!(
            "## Preferences\n- likes tea [memory {}]\n- hates coffee [memory {}]\n## Facts\n- lives in Dallas [memory {}]\n",
            Uuid::from_u128(1),
            Uuid::from_u128(3),
            Uuid::from_u128(2)
        );
        assert_eq!(all.text, expected);
        assert_eq!(all.tokens, Words.count(&all.text));
        let small = pack(&items, 10, &Words);
        assert!(small.truncated && small.tokens <= 10);
        assert!(small.text.contains("likes tea"));
        assert_eq!(pack(&items, 0, &Words).text, "");
    }

    #[test]
    fn a_speakers_name_leaves_the_query_the_searches_see() {
        let names = vec!["melanie".to_owned(), "mary ann".to_owned()];
        assert_eq!(
            without_names("What activities does Melanie partake in?", &names),
            "What activities does partake in?"
        );
        assert_eq!(
            without_names("What do Melanie's kids like?", &names),
            "What do kids like?"
        );
        assert_eq!(
            without_names("Where did Mary Ann go, and MELANIE?", &names),
            "Where did go, and"
        );
        // Not a speaker of this conversation: kept.
        assert_eq!(
            without_names("Where does Anna live?", &names),
            "Where does Anna live?"
        );
        // Where the query uses capitals, a name has one: a word that only sounds like a speaker
        // stays.
        let bill = vec!["bill".to_owned()];
        assert_eq!(
            without_names("Did I pay the bill Bill sent?", &bill),
            "Did I pay the bill sent?"
        );
        assert_eq!(without_names("what did bill say", &bill), "what did say");
        // Nothing but names: kept whole.
        assert_eq!(without_names("Melanie?", &names), "Melanie?");
        assert_eq!(without_names("Melanie", &[]), "Melanie");
    }

    #[test]
    fn name_candidates_are_the_querys_capitalized_runs_of_up_to_three_words() {
        let c = name_candidates("Did Mary Ann's dog bark?");
        for want in ["did", "mary", "ann", "mary ann", "did mary ann"] {
            assert!(c.contains(&want.to_owned()), "{want} in {c:?}");
        }
        // Lower-case words cannot be a name where the query uses capitals.
        assert!(!c.iter().any(|x| x.contains("dog")), "{c:?}");
        assert!(name_candidates("did mary's dog bark").contains(&"dog bark".to_owned()));
        assert!(!c.iter().any(|x| x.split(' ').count() > MAX_NAME_WORDS));
        assert!(name_candidates("  ?! ").is_empty());
    }
}
