//! Extraction: what a conversation turn says about the user, as candidate memories.
//!
//! [`RuleExtractor`] is the built-in, deterministic extractor used when no LLM is configured: it
//! recognises the common first-person statements — name, where the user lives or moved to, job
//! and employer, likes, dislikes and preferences, allergies and diets, family, pets and other
//! relationships, goals and plans, birthdays — and gives each a normalized slot, so that "I just
//! moved to Dallas" supersedes "I live in San Francisco". It prefers missing a statement to
//! inventing one: every pattern is anchored on first-person wording and a bounded object.

use crate::embed::BoxFuture;
use crate::model::{Basis, MemoryKind, MessageRole};

/// What a candidate asks the resolver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Remember it (create, or update / supersede what has the same identity).
    Add,
    /// It changes a known memory (LLM extraction, with `target`); resolved like `Add`, but a
    /// similar target is updated even without a shared subject.
    Update,
    /// It is no longer true: tombstone what has the same identity, if anything does.
    Delete,
}

/// One candidate memory.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateMemory {
    /// Kind.
    pub kind: MemoryKind,
    /// The statement, third person ("Lives in Dallas").
    pub content: String,
    /// Normalized slot.
    pub slot: Option<String>,
    /// Who it is about when not the user.
    pub subject: Option<String>,
    /// 0..1.
    pub importance: f32,
    /// How sure the extractor is, 0..1.
    pub confidence: f32,
    /// Add or delete.
    pub intent: Intent,
    /// The existing memory the extractor says this is about (LLM extraction only); the resolver
    /// still checks the identity before acting on it.
    pub target: Option<uuid::Uuid>,
}

/// A slot key from free text: lowercase ASCII words joined by `_` ("Green Tea" → "green_tea").
pub fn slot_key(s: &str) -> String {
    let mut out = String::new();
    for word in s
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let w: String = word
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect::<String>()
            .to_ascii_lowercase();
        if w.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('_');
        }
        out.push_str(&w);
    }
    out.chars().take(48).collect()
}

/// Words that follow "I'm" without being a name.
const NOT_NAMES: &[&str] = &[
    "a",
    "an",
    "the",
    "not",
    "so",
    "very",
    "really",
    "just",
    "also",
    "still",
    "here",
    "back",
    "done",
    "fine",
    "good",
    "great",
    "happy",
    "sad",
    "tired",
    "sorry",
    "sure",
    "ok",
    "okay",
    "allergic",
    "vegan",
    "vegetarian",
    "from",
    "in",
    "at",
    "on",
    "going",
    "trying",
    "planning",
    "working",
    "living",
    "moving",
    "looking",
    "thinking",
    "feeling",
    "married",
    "single",
    "pregnant",
    "retired",
    "new",
    "hungry",
    "busy",
    "free",
    "late",
    "ready",
    "excited",
    "worried",
    "interested",
];

const RELATIONS: &[&str] = &[
    "wife",
    "husband",
    "partner",
    "girlfriend",
    "boyfriend",
    "sister",
    "brother",
    "mother",
    "mom",
    "mum",
    "father",
    "dad",
    "son",
    "daughter",
    "friend",
    "best friend",
    "boss",
    "manager",
    "cousin",
    "aunt",
    "uncle",
    "grandmother",
    "grandfather",
    "roommate",
    "colleague",
    "coworker",
    "fiance",
    "fiancee",
];

const PETS: &[&str] = &[
    "dog",
    "cat",
    "puppy",
    "kitten",
    "parrot",
    "rabbit",
    "hamster",
    "horse",
    "turtle",
    "fish",
    "snake",
    "lizard",
    "bird",
    "retriever",
    "labrador",
    "terrier",
    "poodle",
    "beagle",
    "bulldog",
    "collie",
    "shepherd",
    "spaniel",
    "dachshund",
    "husky",
    "tabby",
    "siamese",
    "goldfish",
    "budgie",
    "guinea pig",
    "ferret",
];

const DIETS: &[&str] = &[
    "vegetarian",
    "vegan",
    "pescatarian",
    "gluten-free",
    "lactose intolerant",
    "keto",
    "halal",
    "kosher",
];

/// The rule extractor.
#[derive(Debug, Clone, Copy, Default)]
pub struct RuleExtractor;

/// Splits text into sentences (., !, ?, ; and newlines), trimmed, without empty ones.
fn sentences(text: &str) -> Vec<&str> {
    text.split(['.', '!', '?', ';', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Splits a sentence into first-person clauses at "and I …", ", and I …" and ", I …", keeping
/// the "I" with the clause it starts.
fn clauses(s: &str) -> Vec<String> {
    let lower = s.to_lowercase();
    let mut cuts = vec![0];
    for sep in [" and i ", " and i'", ", i ", ", i'"] {
        let mut from = 0;
        while let Some(i) = lower[from..].find(sep) {
            let at = from + i;
            // Cut right before the "i".
            cuts.push(at + sep.len() - 2);
            from = at + sep.len();
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts.push(s.len());
    cuts.windows(2)
        .map(|w| {
            s[w[0]..w[1]]
                .trim()
                .trim_end_matches(',')
                .trim_end_matches(" and")
                .trim()
                .to_owned()
        })
        .filter(|c| !c.is_empty())
        .collect()
}

/// The object of a statement: up to the first clause break, trimmed of filler, at most 8 words.
fn object(rest: &str) -> Option<String> {
    let cut = rest
        .split([',', '(', ')'])
        .next()
        .unwrap_or("")
        .split(" but ")
        .next()
        .unwrap_or("")
        .split(" because ")
        .next()
        .unwrap_or("")
        .split(" and i ")
        .next()
        .unwrap_or("")
        .trim();
    let words: Vec<&str> = cut.split_whitespace().collect();
    if words.is_empty() || words.len() > 8 {
        return None;
    }
    let trimmed = words.join(" ");
    let trimmed = trimmed.trim_end_matches(|c: char| !c.is_alphanumeric());
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// A place: capitalized words ("San Francisco", "New York City"), at most 4.
fn place(rest: &str) -> Option<String> {
    let words: Vec<&str> = rest
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '-'))
        .take_while(|w| {
            w.chars().next().is_some_and(char::is_uppercase)
                || ["de", "la", "del", "do", "da"].contains(w)
        })
        .take(4)
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// A person's name: one or two capitalized words, not a common non-name.
fn name(rest: &str) -> Option<String> {
    let words: Vec<&str> = rest
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '-' && c != '\''))
        .take_while(|w| w.chars().next().is_some_and(char::is_uppercase))
        .take(2)
        .collect();
    let first = words.first()?;
    if NOT_NAMES.contains(&first.to_lowercase().as_str()) || first.len() < 2 {
        return None;
    }
    Some(words.join(" "))
}

fn strip_prefix_ci<'a>(s: &'a str, prefixes: &[&str]) -> Option<&'a str> {
    let lower = s.to_lowercase();
    prefixes.iter().find_map(|p| {
        if lower.starts_with(p) && s.is_char_boundary(p.len()) {
            Some(s[p.len()..].trim_start())
        } else {
            None
        }
    })
}

fn fact(content: String, slot: Option<String>, importance: f32) -> CandidateMemory {
    CandidateMemory {
        kind: MemoryKind::Fact,
        content,
        slot,
        subject: None,
        importance,
        confidence: 0.9,
        intent: Intent::Add,
        target: None,
    }
}

fn of_kind(
    kind: MemoryKind,
    content: String,
    slot: Option<String>,
    importance: f32,
) -> CandidateMemory {
    CandidateMemory {
        kind,
        ..fact(content, slot, importance)
    }
}

impl RuleExtractor {
    /// Candidates from one user message.
    pub fn extract(&self, text: &str) -> Vec<CandidateMemory> {
        let mut out = Vec::new();
        for s in sentences(text) {
            // Leading discourse markers do not change the statement.
            let s = strip_prefix_ci(
                s,
                &[
                    "hi, ", "hi ", "hello, ", "hello ", "hey, ", "hey ", "well, ", "so, ",
                    "also, ", "btw, ", "oh, ", "and ",
                ],
            )
            .unwrap_or(s);
            for clause in clauses(s) {
                let lower = clause.to_lowercase();
                // Only first-person statements: "I …", "I'm …", "My …".
                if !(lower.starts_with("i ") || lower.starts_with("i'") || lower.starts_with("my "))
                {
                    continue;
                }
                if let Some(c) = self.clause(&clause) {
                    out.push(c);
                }
            }
        }
        out
    }

    fn clause(&self, c: &str) -> Option<CandidateMemory> {
        let lower = c.to_lowercase();
        // Negated statements first: they are deletions of what the positive form would add.
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i no longer live in ",
                "i don't live in ",
                "i do not live in ",
            ],
        ) {
            let p = place(rest)?;
            return Some(CandidateMemory {
                intent: Intent::Delete,
                ..fact(format!("Lives in {p}"), Some("user.home_city".into()), 0.8)
            });
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i no longer work at ",
                "i no longer work for ",
                "i don't work at ",
                "i don't work for ",
                "i quit my job at ",
                "i left ",
            ],
        ) {
            let e = place(rest)?;
            return Some(CandidateMemory {
                intent: Intent::Delete,
                ..fact(format!("Works at {e}"), Some("user.employer".into()), 0.7)
            });
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &["my name is ", "call me ", "i'm called ", "i am called "],
        )
        .or_else(|| strip_prefix_ci(c, &["i'm ", "i am ", "im "]))
            && let Some(n) = name(rest)
        {
            // "I'm Dana" but not "I'm Allergic" (handled below) nor "I'm from ..." (NOT_NAMES).
            let next_word = rest
                .split_whitespace()
                .nth(n.split_whitespace().count())
                .unwrap_or("");
            if next_word.is_empty()
                || !next_word.chars().next().is_some_and(char::is_lowercase)
                || lower.starts_with("my name")
                || lower.starts_with("call me")
            {
                return Some(fact(format!("Name is {n}"), Some("user.name".into()), 0.9));
            }
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i live in ",
                "i'm living in ",
                "i am living in ",
                "i just moved to ",
                "i moved to ",
                "i've moved to ",
                "i have moved to ",
                "i recently moved to ",
                "i'm moving to ",
                "i am moving to ",
                "i'm based in ",
                "i am based in ",
                "i relocated to ",
            ],
        ) {
            let p = place(rest)?;
            return Some(fact(
                format!("Lives in {p}"),
                Some("user.home_city".into()),
                0.8,
            ));
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &["i'm from ", "i am from ", "i grew up in ", "i was born in "],
        ) {
            let p = place(rest)?;
            return Some(fact(
                format!("Is from {p}"),
                Some("user.hometown".into()),
                0.6,
            ));
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i work at ",
                "i work for ",
                "i'm working at ",
                "i am working at ",
                "i just started at ",
                "i started working at ",
                "i joined ",
            ],
        ) {
            let e = place(rest)?;
            return Some(fact(
                format!("Works at {e}"),
                Some("user.employer".into()),
                0.7,
            ));
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i work as a ",
                "i work as an ",
                "i work as ",
                "my job is ",
                "i'm employed as a ",
                "i am employed as a ",
            ],
        ) {
            let j = object(rest)?;
            return Some(fact(
                format!("Works as {}", with_article(&j)),
                Some("user.occupation".into()),
                0.7,
            ));
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i'm allergic to ",
                "i am allergic to ",
                "i have an allergy to ",
                "i've got an allergy to ",
            ],
        ) {
            let a = object(rest)?;
            return Some(fact(
                format!("Is allergic to {a}"),
                Some(format!("user.allergy.{}", slot_key(&a))),
                0.95,
            ));
        }
        for diet in DIETS {
            for p in ["i'm ", "i am ", "i'm a ", "i am a "] {
                if lower == format!("{p}{diet}") || lower.starts_with(&format!("{p}{diet} ")) {
                    return Some(fact(format!("Is {diet}"), Some("user.diet".into()), 0.85));
                }
            }
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i don't eat ",
                "i do not eat ",
                "i never eat ",
                "i can't eat ",
                "i cannot eat ",
            ],
        ) {
            let f = object(rest)?;
            return Some(of_kind(
                MemoryKind::Preference,
                format!("Does not eat {f}"),
                Some(format!("user.diet.avoid.{}", slot_key(&f))),
                0.8,
            ));
        }
        if let Some((rel, rest)) = relation(c)
            && let Some(n) = name(rest)
        {
            return Some(CandidateMemory {
                subject: Some(n.clone()),
                ..fact(
                    format!("{} is named {n}", capitalize(rel)),
                    Some(format!("user.relation.{}", slot_key(rel))),
                    0.7,
                )
            });
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i have a ",
                "i've got a ",
                "i have an ",
                "we have a ",
                "i own a ",
            ],
        ) {
            let rest_lower = rest.to_lowercase();
            let head: Vec<&str> = rest_lower.split_whitespace().take(3).collect();
            if let Some(pet) = PETS
                .iter()
                .find(|p| head.contains(p) || rest_lower.starts_with(*p))
            {
                let o = object(rest)?;
                let named = rest_lower
                    .find(" named ")
                    .or_else(|| rest_lower.find(" called "));
                let key = named
                    .and_then(|i| name(&rest[i + 7..]))
                    .map(|n| slot_key(&n))
                    .unwrap_or_else(|| slot_key(pet));
                return Some(fact(
                    format!("Has a {o}"),
                    Some(format!("user.pet.{key}")),
                    0.7,
                ));
            }
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &["my birthday is on ", "my birthday is ", "i was born on "],
        ) {
            let d = object(rest)?;
            return Some(fact(
                format!("Birthday is on {d}"),
                Some("user.birthday".into()),
                0.8,
            ));
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i want to ",
                "i'd like to ",
                "i would like to ",
                "i'm planning to ",
                "i am planning to ",
                "i plan to ",
                "my goal is to ",
                "i hope to ",
                "i'm trying to ",
                "i am trying to ",
                "i'm going to ",
                "i am going to ",
            ],
        ) {
            let g = object(rest)?;
            return Some(of_kind(
                MemoryKind::Goal,
                format!("Wants to {g}"),
                Some(format!("user.goal.{}", slot_key(&g))),
                0.6,
            ));
        }
        if let Some(rest) = strip_prefix_ci(c, &["i prefer "]) {
            let p = object(rest)?;
            return Some(of_kind(
                MemoryKind::Preference,
                format!("Prefers {p}"),
                None,
                0.6,
            ));
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i don't like ",
                "i do not like ",
                "i dislike ",
                "i hate ",
                "i can't stand ",
                "i cannot stand ",
                "i'm not a fan of ",
                "i am not a fan of ",
            ],
        ) {
            let x = object(rest)?;
            return Some(of_kind(
                MemoryKind::Preference,
                format!("Dislikes {x}"),
                Some(format!("user.taste.{}", slot_key(&x))),
                0.6,
            ));
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i love ",
                "i really love ",
                "i like ",
                "i really like ",
                "i enjoy ",
                "i really enjoy ",
                "i adore ",
                "i'm a fan of ",
                "i am a fan of ",
                "i'm a big fan of ",
                "i am a big fan of ",
            ],
        ) {
            let x = object(rest)?;
            // "I love you" / "I like that" are reactions, not tastes.
            if ["you", "it", "that", "this", "them", "him", "her"]
                .contains(&x.to_lowercase().as_str())
            {
                return None;
            }
            return Some(of_kind(
                MemoryKind::Preference,
                format!("Likes {x}"),
                Some(format!("user.taste.{}", slot_key(&x))),
                0.6,
            ));
        }
        None
    }
}

fn relation(c: &str) -> Option<(&'static str, &str)> {
    let lower = c.to_lowercase();
    let rest = lower.strip_prefix("my ")?;
    let rel = RELATIONS
        .iter()
        .filter(|r| rest.starts_with(*r))
        .max_by_key(|r| r.len())?;
    let after = &c[3 + rel.len()..];
    let after_lower = after.to_lowercase();
    for link in [" is named ", " is called ", "'s name is ", " is "] {
        if let Some(stripped) = after_lower.strip_prefix(link) {
            let start = c.len() - stripped.len();
            return Some((rel, &c[start..]));
        }
    }
    None
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn with_article(job: &str) -> String {
    let first = job.split_whitespace().next().unwrap_or("").to_lowercase();
    if ["a", "an", "the"].contains(&first.as_str()) {
        job.to_owned()
    } else if job.starts_with(['a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U']) {
        format!("an {job}")
    } else {
        format!("a {job}")
    }
}

/// One turn of a conversation as an extractor sees it (already scrubbed of PII).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Who said it.
    pub role: MessageRole,
    /// The speaker's name, when known.
    pub name: Option<String>,
    /// What was said.
    pub content: String,
}

/// A current memory shown to an extractor, so that it can say "update" or "delete" about it.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownMemory {
    /// Its id.
    pub id: uuid::Uuid,
    /// Kind.
    pub kind: MemoryKind,
    /// Slot.
    pub slot: Option<String>,
    /// Content.
    pub content: String,
}

/// What an extractor reads: the turn to extract from, the turns before it (oldest first), and
/// the user's current memories most related to it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractionInput {
    /// The turn.
    pub turn: Turn,
    /// Earlier turns of the same session, oldest first.
    pub context: Vec<Turn>,
    /// Related current memories.
    pub known: Vec<KnownMemory>,
}

/// What an extractor found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Extraction {
    /// Valid candidates.
    pub candidates: Vec<CandidateMemory>,
    /// Candidates the extractor proposed that failed validation, with the reason.
    pub rejected: Vec<String>,
    /// Prompt and completion tokens, when a model was asked.
    pub tokens: Option<(u64, u64)>,
}

/// Why extraction of a turn failed. Never "no memories": a reply that cannot be read is an error,
/// kept with the raw reply for the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExtractError {
    /// What went wrong.
    pub message: String,
    /// The model's raw reply, when there was one.
    pub raw_reply: Option<String>,
}

impl ExtractError {
    /// An error without a reply (network, timeout, HTTP status).
    pub fn new(message: impl Into<String>) -> Self {
        ExtractError {
            message: message.into(),
            raw_reply: None,
        }
    }
}

/// Turns a conversation turn into candidate memories.
pub trait Extractor: Send + Sync + std::fmt::Debug {
    /// The basis recorded on the versions its candidates write (`rule` or `llm`).
    fn basis(&self) -> Basis;

    /// Candidates from `input.turn`.
    fn extract<'a>(
        &'a self,
        input: &'a ExtractionInput,
    ) -> BoxFuture<'a, Result<Extraction, ExtractError>>;
}

/// Distills a conversation into a short abstractive summary (the reflect job, with an LLM).
pub trait Summarizer: Send + Sync + std::fmt::Debug {
    /// A summary of `turns` (oldest first): what the user said about themselves, decided or
    /// asked to remember. An empty or unusable reply is an error.
    fn summarize<'a>(&'a self, turns: &'a [Turn]) -> BoxFuture<'a, Result<String, ExtractError>>;
}

impl Extractor for RuleExtractor {
    fn basis(&self) -> Basis {
        Basis::Rule
    }

    /// Only the user's own messages: the rules read first-person statements, and an assistant
    /// saying "I live in the cloud" is not about the user.
    fn extract<'a>(
        &'a self,
        input: &'a ExtractionInput,
    ) -> BoxFuture<'a, Result<Extraction, ExtractError>> {
        let candidates = if input.turn.role == MessageRole::User {
            RuleExtractor::extract(self, &input.turn.content)
        } else {
            Vec::new()
        };
        Box::pin(async move {
            Ok(Extraction {
                candidates,
                ..Extraction::default()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> (String, Option<String>) {
        let got = RuleExtractor.extract(text);
        assert_eq!(got.len(), 1, "{text}: {got:?}");
        (got[0].content.clone(), got[0].slot.clone())
    }

    fn slots(text: &str) -> Vec<(String, String)> {
        RuleExtractor
            .extract(text)
            .into_iter()
            .map(|c| (c.content, c.slot.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn the_issue_example() {
        let got = slots("Hi, I'm Dana. I live in San Francisco and I'm allergic to peanuts.");
        assert_eq!(
            got,
            vec![
                ("Name is Dana".into(), "user.name".into()),
                ("Lives in San Francisco".into(), "user.home_city".into()),
                (
                    "Is allergic to peanuts".into(),
                    "user.allergy.peanuts".into()
                ),
            ]
        );
        assert_eq!(
            one("I just moved to Dallas."),
            ("Lives in Dallas".into(), Some("user.home_city".into()))
        );
    }

    #[test]
    fn common_first_person_statements() {
        assert_eq!(
            one("My name is Dana Lee"),
            ("Name is Dana Lee".into(), Some("user.name".into()))
        );
        assert_eq!(
            one("I work at Initech"),
            ("Works at Initech".into(), Some("user.employer".into()))
        );
        assert_eq!(
            one("I work as an engineer"),
            (
                "Works as an engineer".into(),
                Some("user.occupation".into())
            )
        );
        assert_eq!(
            one("I'm vegetarian"),
            ("Is vegetarian".into(), Some("user.diet".into()))
        );
        assert_eq!(
            one("I don't eat pork"),
            (
                "Does not eat pork".into(),
                Some("user.diet.avoid.pork".into())
            )
        );
        assert_eq!(
            one("My sister is named Lucia"),
            (
                "Sister is named Lucia".into(),
                Some("user.relation.sister".into())
            )
        );
        assert_eq!(
            one("I have a golden retriever named Biscuit"),
            (
                "Has a golden retriever named Biscuit".into(),
                Some("user.pet.biscuit".into())
            )
        );
        assert_eq!(
            one("I want to run a marathon next year"),
            (
                "Wants to run a marathon next year".into(),
                Some("user.goal.run_a_marathon_next_year".into())
            )
        );
        assert_eq!(
            one("I love spicy Thai food"),
            (
                "Likes spicy Thai food".into(),
                Some("user.taste.spicy_thai_food".into())
            )
        );
        assert_eq!(
            one("I hate spicy Thai food"),
            (
                "Dislikes spicy Thai food".into(),
                Some("user.taste.spicy_thai_food".into())
            )
        );
        assert_eq!(
            one("My birthday is on March 3"),
            (
                "Birthday is on March 3".into(),
                Some("user.birthday".into())
            )
        );
        assert_eq!(
            one("I'm from Porto"),
            ("Is from Porto".into(), Some("user.hometown".into()))
        );
        assert_eq!(
            one("I prefer window seats"),
            ("Prefers window seats".into(), None)
        );
    }

    #[test]
    fn negations_are_delete_intents() {
        let got = RuleExtractor.extract("I no longer live in Boston");
        assert_eq!(got[0].intent, Intent::Delete);
        assert_eq!(got[0].slot.as_deref(), Some("user.home_city"));
    }

    #[test]
    fn no_invention() {
        for s in [
            "I'm tired today",
            "I'm going home",
            "I love you",
            "What do you think about Paris?",
            "The weather is nice",
            "I live for the weekend",
            "Tell me a joke",
            "I'm not sure",
            "my code does not compile",
        ] {
            assert!(
                RuleExtractor.extract(s).is_empty(),
                "{s}: {:?}",
                RuleExtractor.extract(s)
            );
        }
    }

    #[test]
    fn slot_keys() {
        assert_eq!(slot_key("Green Tea!"), "green_tea");
        assert_eq!(slot_key("crème brûlée"), "crme_brle");
    }
}
