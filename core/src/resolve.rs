//! The resolver's decision for a new memory, as a pure function: the store reads what exists
//! (inside the write transaction) and applies what this module decides.
//!
//! Order of checks (PRODUCT.md §3): identity first — a current memory with the same slot is
//! either said again (duplicate) or replaced (supersede); then identical content in the same
//! namespace (duplicate); else create. Similarity-based matching joins here once embeddings exist.

use uuid::Uuid;

use crate::extract::{CandidateMemory, Intent};
use crate::model::{Basis, MemoryKind};

/// An existing current memory the resolver may match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its id.
    pub id: Uuid,
    /// Its content key (see [`crate::validate::content_key`]).
    pub content_key: String,
}

/// What to do with a new memory.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write a new memory.
    Create {
        /// Why.
        reason: String,
    },
    /// Write a new memory and mark `old` as superseded by it.
    Supersede {
        /// The current memory with the same slot.
        old: Uuid,
        /// Why.
        reason: String,
    },
    /// Write nothing: `of` already says this.
    Duplicate {
        /// The existing memory.
        of: Uuid,
        /// The decision's basis.
        basis: Basis,
        /// The match score (1.0 for identical content).
        score: f32,
        /// Why.
        reason: String,
    },
}

/// Decides what a new memory with `content_key` and `slot` does, given the current memory holding
/// the same slot (if any) and a current memory with identical content and the same slot (if any).
pub fn decide(
    content_key: &str,
    slot: Option<&str>,
    slot_holder: Option<&Candidate>,
    identical: Option<&Candidate>,
    force_create: bool,
) -> Decision {
    if let (Some(holder), Some(slot)) = (slot_holder, slot) {
        if holder.content_key == content_key && !force_create {
            return Decision::Duplicate {
                of: holder.id,
                basis: Basis::Resolver,
                score: 1.0,
                reason: format!("slot {slot} already holds this content"),
            };
        }
        return Decision::Supersede {
            old: holder.id,
            reason: format!("slot {slot} had another current memory"),
        };
    }
    if let (false, Some(same)) = (force_create, identical) {
        return Decision::Duplicate {
            of: same.id,
            basis: Basis::Resolver,
            score: 1.0,
            reason: "identical content to a current memory".to_owned(),
        };
    }
    Decision::Create {
        reason: if force_create {
            "force_create: duplicate detection skipped".to_owned()
        } else {
            "no current memory with this slot or content".to_owned()
        },
    }
}

/// The similarity thresholds of extraction (PRODUCT.md §3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// At or above: the candidate updates the similar memory.
    pub update: f32,
    /// At or above (and below `update`): it updates the similar memory only when their identities
    /// partly overlap (same kind and subject, a shared content word); else a new memory.
    pub merge: f32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            update: 0.80,
            merge: 0.55,
        }
    }
}

/// A current memory as the extraction resolver sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Existing {
    /// Its id.
    pub id: Uuid,
    /// Kind.
    pub kind: MemoryKind,
    /// Slot.
    pub slot: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// Content.
    pub content: String,
    /// Content key (see [`crate::validate::content_key`]).
    pub content_key: String,
}

/// A current memory and its hybrid similarity to the candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Similar {
    /// The memory.
    pub memory: Existing,
    /// The hybrid score (see [`hybrid_score`]).
    pub score: f32,
    /// The cosine part, for the explanation.
    pub cosine: f32,
}

/// What an extracted candidate does.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// A new memory. `drop_slot` when create-only mode stores a candidate whose slot is taken.
    Create {
        /// Store it without its slot.
        drop_slot: bool,
        /// Why.
        reason: String,
    },
    /// A new memory that supersedes the slot's current one.
    Supersede {
        /// The slot's current memory.
        old: Uuid,
        /// Why.
        reason: String,
    },
    /// A new version of `target` with the candidate's content.
    Update {
        /// The memory updated.
        target: Uuid,
        /// The hybrid score.
        score: f32,
        /// Why.
        reason: String,
    },
    /// Nothing to write: `of` already says it.
    Duplicate {
        /// The memory.
        of: Uuid,
        /// The score (1.0 for identical content).
        score: f32,
        /// Why.
        reason: String,
    },
    /// Tombstone `target`: the candidate says it is no longer true.
    Tombstone {
        /// The memory.
        target: Uuid,
        /// The score.
        score: f32,
        /// Why.
        reason: String,
    },
    /// Nothing to do (a deletion that matches nothing, or one create-only mode does not apply).
    Ignore {
        /// Why.
        reason: String,
    },
}

impl Resolution {
    /// The name used in metrics and audit rows.
    pub fn action(&self) -> &'static str {
        match self {
            Resolution::Create { .. } => "create",
            Resolution::Supersede { .. } => "supersede",
            Resolution::Update { .. } => "update",
            Resolution::Duplicate { .. } => "duplicate",
            Resolution::Tombstone { .. } => "tombstone",
            Resolution::Ignore { .. } => "ignore",
        }
    }
}

/// Words that carry no identity ("lives in the …").
const FILLER: &[&str] = &[
    "a", "an", "the", "in", "at", "of", "to", "for", "and", "or", "on", "with", "is", "are", "was",
    "be", "user", "user's", "their", "they", "has", "have", "does", "not", "very", "really",
];

/// The identity-bearing words of a statement: lowercase, without filler.
pub fn significant_words(s: &str) -> Vec<String> {
    let mut words: Vec<String> = s
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(str::to_lowercase)
        .filter(|w| !w.is_empty() && !FILLER.contains(&w.as_str()))
        .collect();
    words.sort();
    words.dedup();
    words
}

/// Jaccard overlap of two statements' significant words.
pub fn word_overlap(a: &str, b: &str) -> f32 {
    let (a, b) = (significant_words(a), significant_words(b));
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let shared = a.iter().filter(|w| b.contains(w)).count();
    shared as f32 / (a.len() + b.len() - shared) as f32
}

/// The resolver's hybrid similarity: mostly the embeddings' cosine, with word overlap so that
/// two statements about different objects ("Likes tea" / "Likes coffee"), which embeddings place
/// close together, score lower than a paraphrase of the same one.
pub fn hybrid_score(cosine: f32, a: &str, b: &str) -> f32 {
    (0.8 * cosine + 0.2 * word_overlap(a, b)).clamp(0.0, 1.0)
}

/// Every significant word of `candidate` appears in `existing`: "Lives in Boston" is about
/// "Lives in Boston, MA", not about "Lives in Dallas".
fn names_the_same(candidate: &str, existing: &str) -> bool {
    let theirs = significant_words(existing);
    let ours = significant_words(candidate);
    !ours.is_empty() && ours.iter().all(|w| theirs.contains(w))
}

/// Same kind, same subject, and at least one shared significant word.
fn identity_overlap(c: &CandidateMemory, e: &Existing) -> Option<String> {
    let same_subject =
        c.subject.as_deref().map(str::to_lowercase) == e.subject.as_deref().map(str::to_lowercase);
    if c.kind != e.kind || !same_subject {
        return None;
    }
    let theirs = significant_words(&e.content);
    let shared: Vec<String> = significant_words(&c.content)
        .into_iter()
        .filter(|w| theirs.contains(w))
        .collect();
    (!shared.is_empty()).then(|| shared.join(", "))
}

/// Decides what an extracted candidate does (PRODUCT.md §3): identity first (the slot's current
/// memory, identical content, a target the extractor named), then similarity with `thresholds`.
/// `similar` is ordered best first. `create_only` (a tenant's kill switch) never modifies or
/// tombstones an existing memory.
pub fn resolve_candidate(
    c: &CandidateMemory,
    key: &str,
    slot_holder: Option<&Existing>,
    identical: Option<&Existing>,
    similar: &[Similar],
    thresholds: Thresholds,
    create_only: bool,
) -> Resolution {
    if c.intent == Intent::Delete {
        if create_only {
            return Resolution::Ignore {
                reason: "create-only mode: deletions are not applied".into(),
            };
        }
        if let Some(h) = slot_holder
            && (h.content_key == key || names_the_same(&c.content, &h.content))
        {
            return Resolution::Tombstone {
                target: h.id,
                score: 1.0,
                reason: format!(
                    "slot {} holds what the message says is no longer true",
                    h.slot.as_deref().unwrap_or_default()
                ),
            };
        }
        if let Some(e) = identical {
            return Resolution::Tombstone {
                target: e.id,
                score: 1.0,
                reason: "identical content is no longer true".into(),
            };
        }
        if c.slot.is_none()
            && let Some(s) = similar.iter().find(|s| {
                (s.score >= thresholds.update || Some(s.memory.id) == c.target)
                    && names_the_same(&c.content, &s.memory.content)
            })
        {
            return Resolution::Tombstone {
                target: s.memory.id,
                score: s.score,
                reason: format!(
                    "similar ({:.2}, cosine {:.2}) and names the same thing",
                    s.score, s.cosine
                ),
            };
        }
        return Resolution::Ignore {
            reason: "no current memory has the identity this deletion names".into(),
        };
    }

    if let (Some(h), Some(slot)) = (slot_holder, c.slot.as_deref()) {
        if h.content_key == key {
            return Resolution::Duplicate {
                of: h.id,
                score: 1.0,
                reason: format!("slot {slot} already holds this content"),
            };
        }
        if create_only {
            return Resolution::Create {
                drop_slot: true,
                reason: format!("create-only mode: slot {slot} is taken, stored without the slot"),
            };
        }
        return Resolution::Supersede {
            old: h.id,
            reason: format!("slot {slot} had another current memory"),
        };
    }
    if let Some(e) = identical {
        return Resolution::Duplicate {
            of: e.id,
            score: 1.0,
            reason: "identical content to a current memory".into(),
        };
    }
    if create_only {
        return Resolution::Create {
            drop_slot: false,
            reason: "create-only mode".into(),
        };
    }
    // A slotted candidate with a free slot is a new identity; similarity would only blur it.
    if c.slot.is_some() {
        return Resolution::Create {
            drop_slot: false,
            reason: "its slot has no current memory".into(),
        };
    }
    let Some(best) = similar.iter().find(|s| s.memory.slot.is_none()) else {
        return Resolution::Create {
            drop_slot: false,
            reason: "no similar current memory".into(),
        };
    };
    let explain = format!("score {:.2} (cosine {:.2})", best.score, best.cosine);
    if best.score >= thresholds.update {
        return Resolution::Update {
            target: best.memory.id,
            score: best.score,
            reason: format!("{explain} ≥ update threshold {:.2}", thresholds.update),
        };
    }
    if best.score >= thresholds.merge {
        if let Some(shared) = identity_overlap(c, &best.memory) {
            return Resolution::Update {
                target: best.memory.id,
                score: best.score,
                reason: format!(
                    "merged: {explain} ≥ merge threshold {:.2}, same kind and subject, shared: {shared}",
                    thresholds.merge
                ),
            };
        }
        if c.intent == Intent::Update && c.target == Some(best.memory.id) {
            return Resolution::Update {
                target: best.memory.id,
                score: best.score,
                reason: format!("the extractor named it as updated; {explain}"),
            };
        }
        return Resolution::Create {
            drop_slot: false,
            reason: format!("{explain} but no identity overlap"),
        };
    }
    Resolution::Create {
        drop_slot: false,
        reason: format!("{explain} < merge threshold {:.2}", thresholds.merge),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(key: &str) -> Candidate {
        Candidate {
            id: Uuid::from_u128(7),
            content_key: key.to_owned(),
        }
    }

    #[test]
    fn same_slot_new_content_supersedes() {
        let d = decide(
            "lives in dallas",
            Some("user.home_city"),
            Some(&cand("lives in sf")),
            None,
            false,
        );
        assert!(matches!(d, Decision::Supersede { old, .. } if old == Uuid::from_u128(7)));
    }

    #[test]
    fn same_slot_same_content_is_a_duplicate_unless_forced() {
        let holder = cand("lives in dallas");
        let d = decide(
            "lives in dallas",
            Some("user.home_city"),
            Some(&holder),
            None,
            false,
        );
        assert!(matches!(d, Decision::Duplicate { score, .. } if score == 1.0));
        let d = decide(
            "lives in dallas",
            Some("user.home_city"),
            Some(&holder),
            None,
            true,
        );
        assert!(matches!(d, Decision::Supersede { .. }));
    }

    #[test]
    fn identical_content_without_slot_is_a_duplicate_unless_forced() {
        let same = cand("likes tea");
        assert!(matches!(
            decide("likes tea", None, None, Some(&same), false),
            Decision::Duplicate { .. }
        ));
        assert!(matches!(
            decide("likes tea", None, None, Some(&same), true),
            Decision::Create { .. }
        ));
    }

    #[test]
    fn nothing_matching_creates() {
        assert!(matches!(
            decide("likes tea", None, None, None, false),
            Decision::Create { .. }
        ));
    }

    fn existing(id: u128, kind: MemoryKind, slot: Option<&str>, content: &str) -> Existing {
        Existing {
            id: Uuid::from_u128(id),
            kind,
            slot: slot.map(str::to_owned),
            subject: None,
            content: content.to_owned(),
            content_key: crate::validate::content_key(content),
        }
    }

    fn candidate(content: &str, slot: Option<&str>, intent: Intent) -> CandidateMemory {
        CandidateMemory {
            kind: MemoryKind::Fact,
            content: content.to_owned(),
            slot: slot.map(str::to_owned),
            subject: None,
            importance: 0.5,
            confidence: 0.9,
            intent,
            target: None,
        }
    }

    fn similar(e: Existing, score: f32) -> Similar {
        Similar {
            memory: e,
            score,
            cosine: score,
        }
    }

    fn run(
        c: &CandidateMemory,
        holder: Option<&Existing>,
        similar: &[Similar],
        create_only: bool,
    ) -> Resolution {
        let key = crate::validate::content_key(&c.content);
        resolve_candidate(
            c,
            &key,
            holder,
            None,
            similar,
            Thresholds::default(),
            create_only,
        )
    }

    #[test]
    fn a_new_value_in_a_held_slot_supersedes_and_the_same_value_is_a_duplicate() {
        let sf = existing(
            1,
            MemoryKind::Fact,
            Some("user.home_city"),
            "Lives in San Francisco",
        );
        let moved = candidate("Lives in Dallas", Some("user.home_city"), Intent::Add);
        assert!(
            matches!(run(&moved, Some(&sf), &[], false), Resolution::Supersede { old, .. } if old == sf.id)
        );
        let again = candidate(
            "lives in  san francisco",
            Some("user.home_city"),
            Intent::Add,
        );
        assert!(matches!(
            run(&again, Some(&sf), &[], false),
            Resolution::Duplicate { .. }
        ));
    }

    #[test]
    fn similarity_thresholds_update_merge_or_create() {
        let tea = existing(
            2,
            MemoryKind::Preference,
            None,
            "Likes green tea in the morning",
        );
        let mut c = candidate("Likes green tea every morning", None, Intent::Add);
        c.kind = MemoryKind::Preference;
        // ≥ 0.80: update.
        let r = run(&c, None, &[similar(tea.clone(), 0.86)], false);
        assert!(
            matches!(r, Resolution::Update { target, .. } if target == tea.id),
            "{r:?}"
        );
        // 0.55–0.80 with identity overlap (same kind, subject, shared words): merge (update).
        let r = run(&c, None, &[similar(tea.clone(), 0.7)], false);
        assert!(
            matches!(&r, Resolution::Update { reason, .. } if reason.starts_with("merged")),
            "{r:?}"
        );
        // 0.55–0.80 without identity overlap (another kind): create.
        let mut other = c.clone();
        other.kind = MemoryKind::Fact;
        assert!(matches!(
            run(&other, None, &[similar(tea.clone(), 0.7)], false),
            Resolution::Create { .. }
        ));
        // < 0.55: create.
        assert!(matches!(
            run(&c, None, &[similar(tea, 0.5)], false),
            Resolution::Create { .. }
        ));
    }

    #[test]
    fn a_slotted_candidate_with_a_free_slot_is_created_even_when_similar() {
        let c = candidate(
            "Allergic to peanuts",
            Some("user.allergy.peanuts"),
            Intent::Add,
        );
        let e = existing(3, MemoryKind::Fact, None, "Allergic to tree nuts");
        assert!(matches!(
            run(&c, None, &[similar(e, 0.9)], false),
            Resolution::Create {
                drop_slot: false,
                ..
            }
        ));
    }

    #[test]
    fn a_deletion_only_tombstones_the_identity_it_names() {
        let dallas = existing(
            4,
            MemoryKind::Fact,
            Some("user.home_city"),
            "Lives in Dallas",
        );
        let boston = candidate("Lives in Boston", Some("user.home_city"), Intent::Delete);
        assert!(matches!(
            run(&boston, Some(&dallas), &[], false),
            Resolution::Ignore { .. }
        ));
        let gone = candidate("Lives in Dallas", Some("user.home_city"), Intent::Delete);
        assert!(
            matches!(run(&gone, Some(&dallas), &[], false), Resolution::Tombstone { target, .. } if target == dallas.id)
        );
        let job = existing(
            5,
            MemoryKind::Fact,
            None,
            "Works at Acme Corp as an engineer",
        );
        let quit = candidate("Works at Acme", None, Intent::Delete);
        assert!(matches!(
            run(&quit, None, &[similar(job.clone(), 0.82)], false),
            Resolution::Tombstone { .. }
        ));
        // Similar but naming something else: nothing happens.
        let other = candidate("Works at Globex", None, Intent::Delete);
        assert!(matches!(
            run(&other, None, &[similar(job, 0.82)], false),
            Resolution::Ignore { .. }
        ));
        assert!(matches!(
            run(&gone, Some(&dallas), &[], true),
            Resolution::Ignore { .. }
        ));
    }

    #[test]
    fn create_only_never_touches_existing_memories() {
        let sf = existing(
            6,
            MemoryKind::Fact,
            Some("user.home_city"),
            "Lives in San Francisco",
        );
        let moved = candidate("Lives in Dallas", Some("user.home_city"), Intent::Add);
        assert!(matches!(
            run(&moved, Some(&sf), &[], true),
            Resolution::Create {
                drop_slot: true,
                ..
            }
        ));
        let c = candidate("Likes green tea", None, Intent::Add);
        let tea = existing(7, MemoryKind::Fact, None, "Likes green tea a lot");
        assert!(matches!(
            run(&c, None, &[similar(tea, 0.95)], true),
            Resolution::Create { .. }
        ));
    }

    #[test]
    fn hybrid_score_separates_different_objects() {
        let same = hybrid_score(0.85, "Likes green tea", "Likes green tea a lot");
        let other = hybrid_score(0.85, "Likes green tea", "Likes black coffee");
        assert!(same > other, "{same} vs {other}");
        assert!((0.0..=1.0).contains(&hybrid_score(1.2, "a", "a")));
    }
}
