//! The resolver's decision for a new memory, as a pure function: the store reads what exists
//! (inside the write transaction) and applies what this module decides.
//!
//! Order of checks (PRODUCT.md §3): identity first — a current memory with the same slot is
//! either said again (duplicate) or replaced (supersede); then identical content in the same
//! namespace (duplicate); else create. Similarity-based matching joins here once embeddings exist.

use uuid::Uuid;

use crate::model::Basis;

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
}
