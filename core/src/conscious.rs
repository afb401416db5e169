//! Conscious working memory (PRODUCT.md §1): which memories are *essential* — what an assistant
//! should know about the user at the start of every session — and how the essential set and the
//! session's recent turns are packed for a system prompt.
//!
//! A memory is essential when it is written if it is pinned, a standing rule, an identity fact
//! (name, home, work, birthday, allergies, diets, family, pets), or a strong preference or trait
//! (importance ≥ [`PREFERENCE_IMPORTANCE`]). The optimize job revisits the set later: it promotes
//! memories that are recalled often or matter a lot, demotes stale ones, and keeps at most
//! `conscious_max_essential` per user and namespace ([`optimize_order`]).

use chrono::{DateTime, Duration, Utc};

use crate::model::{Memory, MemoryKind};
use crate::recall::{EpisodeHit, Packed, TokenCounter, memory_line, one_line};

/// Slot prefixes that identify the user: always essential.
pub const IDENTITY_SLOTS: &[&str] = &[
    "user.name",
    "user.home_city",
    "user.hometown",
    "user.employer",
    "user.occupation",
    "user.birthday",
    "user.allergy.",
    "user.diet",
    "user.avoid.",
    "user.relation.",
    "user.pet.",
    "user.language",
];

/// A preference or trait at least this important is essential when written.
pub const PREFERENCE_IMPORTANCE: f32 = 0.6;
/// Recalled at least this often: the optimizer promotes it.
pub const OFTEN_RECALLED: i64 = 3;
/// At least this important: the optimizer promotes it.
pub const HIGH_IMPORTANCE: f32 = 0.85;
/// Untouched (not updated, not recalled) this long: the optimizer demotes it, unless it is
/// pinned, a rule or an identity fact.
pub const STALE_AFTER_DAYS: i64 = 90;

/// Whether `slot` is an identity slot.
pub fn is_identity_slot(slot: &str) -> bool {
    IDENTITY_SLOTS.iter().any(|p| {
        slot == *p
            || (p.ends_with('.') && slot.starts_with(p))
            || slot.starts_with(&format!("{p}."))
    })
}

/// Whether a memory written with these fields is essential from the start.
pub fn essential_when_written(
    kind: MemoryKind,
    slot: Option<&str>,
    importance: f32,
    pinned: bool,
) -> bool {
    pinned
        || kind == MemoryKind::Rule
        || slot.is_some_and(is_identity_slot)
        || (matches!(kind, MemoryKind::Preference | MemoryKind::Trait)
            && importance >= PREFERENCE_IMPORTANCE)
}

/// Always essential, whatever the optimizer finds: pinned, rules, identity.
fn anchored(m: &Memory) -> bool {
    m.pinned || m.kind == MemoryKind::Rule || m.slot.as_deref().is_some_and(is_identity_slot)
}

/// The optimizer's view of one current memory: `Some(priority)` when it should be essential
/// (higher first), `None` when not. Anchored memories rank above everything else.
pub fn essential_priority(m: &Memory, now: DateTime<Utc>) -> Option<f32> {
    if anchored(m) {
        return Some(10.0 + m.importance);
    }
    let last_touch = [Some(m.updated_at), m.last_accessed_at]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(m.created_at);
    if now - last_touch > Duration::days(STALE_AFTER_DAYS) {
        return None;
    }
    let strong_preference = matches!(m.kind, MemoryKind::Preference | MemoryKind::Trait)
        && m.importance >= PREFERENCE_IMPORTANCE;
    let often = m.access_count >= OFTEN_RECALLED;
    if !(strong_preference || often || m.importance >= HIGH_IMPORTANCE) {
        return None;
    }
    let recall_bonus = (m.access_count.min(20) as f32) / 20.0;
    Some(m.importance * m.confidence + recall_bonus)
}

/// The ids the optimizer keeps essential among `memories` (current ones of one user and
/// namespace): eligible ones by priority, then id, at most `max`.
pub fn optimize_order(memories: &[Memory], now: DateTime<Utc>, max: usize) -> Vec<uuid::Uuid> {
    let mut eligible: Vec<(f32, uuid::Uuid)> = memories
        .iter()
        .filter_map(|m| essential_priority(m, now).map(|p| (p, m.id)))
        .collect();
    eligible.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    eligible.into_iter().take(max).map(|(_, id)| id).collect()
}

fn turn_line(e: &EpisodeHit) -> String {
    format!(
        "- {}: {}\n",
        e.name.as_deref().unwrap_or(e.role.as_str()),
        one_line(&e.content)
    )
}

const ABOUT: &str = "## About the user\n";
const SESSION: &str = "## This session so far\n";

fn render(essential: &[&Memory], recent: &[&EpisodeHit]) -> String {
    let mut out = String::new();
    if !essential.is_empty() {
        out.push_str(ABOUT);
        essential.iter().for_each(|m| out.push_str(&memory_line(m)));
    }
    if !recent.is_empty() {
        out.push_str(SESSION);
        recent.iter().for_each(|e| out.push_str(&turn_line(e)));
    }
    out
}

/// Packs the working memory under `budget` tokens: the essential memories (in the order given,
/// most important first) and then the session's recent turns (oldest first), keeping the newest
/// turns when not all fit. Deterministic; the count is exact.
pub fn pack(
    essential: &[Memory],
    recent: &[EpisodeHit],
    budget: usize,
    counter: &dyn TokenCounter,
) -> Packed {
    let mut used = 0;
    let mut truncated = false;
    let mut mems: Vec<&Memory> = Vec::new();
    for m in essential {
        let cost = counter.count(&memory_line(m))
            + if mems.is_empty() {
                counter.count(ABOUT)
            } else {
                0
            };
        if used + cost <= budget {
            used += cost;
            mems.push(m);
        } else {
            truncated = true;
        }
    }
    let mut turns: Vec<&EpisodeHit> = Vec::new();
    for e in recent.iter().rev() {
        let cost = counter.count(&turn_line(e))
            + if turns.is_empty() {
                counter.count(SESSION)
            } else {
                0
            };
        if used + cost <= budget {
            used += cost;
            turns.push(e);
        } else {
            truncated = true;
            break; // a gap in the conversation would mislead: keep a contiguous tail
        }
    }
    turns.reverse();
    loop {
        let text = render(&mems, &turns);
        let tokens = counter.count(&text);
        if tokens <= budget {
            return Packed {
                text,
                tokens,
                truncated,
            };
        }
        // Counts are not always additive across lines: drop the oldest turn, then the least
        // important memory.
        truncated = true;
        if !turns.is_empty() {
            turns.remove(0);
        } else if mems.pop().is_none() {
            return Packed {
                text: String::new(),
                tokens: 0,
                truncated: true,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MessageRole;
    use uuid::Uuid;

    struct Words;
    impl TokenCounter for Words {
        fn count(&self, text: &str) -> usize {
            text.split_whitespace().count() + text.matches('\n').count()
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).expect("time")
    }

    fn mem(id: u128, kind: MemoryKind, slot: Option<&str>, importance: f32) -> Memory {
        Memory {
            slot: slot.map(str::to_owned),
            importance,
            ..Memory::sample(Uuid::from_u128(id), kind, &format!("memory {id}"), t0())
        }
    }

    fn turn(i: i64, text: &str) -> EpisodeHit {
        EpisodeHit {
            id: Uuid::from_u128(1000 + i as u128),
            user_id: "u".into(),
            namespace: "default".into(),
            session_id: "s".into(),
            role: if i % 2 == 0 {
                MessageRole::User
            } else {
                MessageRole::Assistant
            },
            name: None,
            content: text.into(),
            message_id: None,
            occurred_at: t0() + Duration::seconds(i),
            created_at: t0() + Duration::seconds(i),
        }
    }

    #[test]
    fn identity_rules_pins_and_strong_preferences_are_essential_when_written() {
        assert!(essential_when_written(
            MemoryKind::Fact,
            Some("user.name"),
            0.1,
            false
        ));
        assert!(essential_when_written(
            MemoryKind::Fact,
            Some("user.allergy.peanuts"),
            0.1,
            false
        ));
        assert!(essential_when_written(MemoryKind::Rule, None, 0.1, false));
        assert!(essential_when_written(MemoryKind::Event, None, 0.1, true));
        assert!(essential_when_written(
            MemoryKind::Preference,
            None,
            0.7,
            false
        ));
        assert!(!essential_when_written(
            MemoryKind::Preference,
            None,
            0.4,
            false
        ));
        assert!(!essential_when_written(
            MemoryKind::Fact,
            Some("user.taste.tea"),
            0.5,
            false
        ));
        assert!(!essential_when_written(
            MemoryKind::Fact,
            Some("user.names_of_things"),
            0.5,
            false
        ));
    }

    #[test]
    fn the_optimizer_promotes_often_recalled_demotes_stale_and_bounds_the_set() {
        let now = t0() + Duration::days(10);
        let mut often = mem(1, MemoryKind::Fact, None, 0.5);
        often.access_count = 5;
        let plain = mem(2, MemoryKind::Fact, None, 0.5);
        let mut stale = mem(3, MemoryKind::Preference, None, 0.9);
        stale.updated_at = now - Duration::days(STALE_AFTER_DAYS + 1);
        stale.created_at = stale.updated_at;
        let mut stale_identity = mem(4, MemoryKind::Fact, Some("user.home_city"), 0.3);
        stale_identity.updated_at = stale.updated_at;
        let all = vec![often.clone(), plain, stale, stale_identity.clone()];
        let keep = optimize_order(&all, now, 10);
        assert_eq!(keep, vec![stale_identity.id, often.id]);
        assert_eq!(
            optimize_order(&all, now, 1),
            vec![stale_identity.id],
            "bounded, anchored first"
        );
    }

    #[test]
    fn packing_keeps_essentials_first_and_the_newest_contiguous_turns() {
        let essential = vec![mem(1, MemoryKind::Fact, Some("user.name"), 0.9)];
        let recent: Vec<EpisodeHit> = (0..6)
            .map(|i| turn(i, &format!("turn number {i}")))
            .collect();
        let all = pack(&essential, &recent, 1000, &Words);
        assert!(!all.truncated);
        assert!(all.text.starts_with(ABOUT));
        assert!(all.text.find("turn number 0").unwrap() < all.text.find("turn number 5").unwrap());
        let tight = pack(&essential, &recent, 25, &Words);
        assert!(tight.truncated && tight.tokens <= 25, "{tight:?}");
        assert!(tight.text.contains("memory 1") && tight.text.contains("turn number 5"));
        assert!(!tight.text.contains("turn number 0"));
        assert_eq!(tight.tokens, Words.count(&tight.text));
        assert_eq!(pack(&essential, &recent, 2, &Words).text, "");
    }
}
