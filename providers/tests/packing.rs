//! Context packing with the real BPE: never over budget, exact count, deterministic.

use chrono::DateTime;
use memoire_core::model::{Memory, MemoryKind};
use memoire_core::recall::{Candidate, Item, TokenCounter, Weights, pack, rank};
use memoire_providers::Tiktoken;
use proptest::prelude::*;
use uuid::Uuid;

fn memory(i: u128, kind: MemoryKind, content: String) -> Memory {
    let t = DateTime::from_timestamp(1_700_000_000 + i as i64, 0).expect("time");
    Memory::sample(Uuid::from_u128(i), kind, &content, t)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn packed_context_never_exceeds_the_budget(
        contents in prop::collection::vec("[a-zA-Z0-9 ,.!?é漢字\n-]{1,120}", 0..25),
        kinds in prop::collection::vec(0usize..9, 25),
        budget in 0usize..400,
        tokenizer in prop::sample::select(vec!["cl100k_base", "o200k_base"]),
    ) {
        let counter = Tiktoken::named("tokenizer", tokenizer).expect("tokenizer");
        let all = [MemoryKind::Fact, MemoryKind::Preference, MemoryKind::Event, MemoryKind::Goal, MemoryKind::Rule,
                   MemoryKind::Trait, MemoryKind::Signal, MemoryKind::Summary, MemoryKind::Document];
        let candidates: Vec<Candidate> = contents.into_iter().enumerate().map(|(i, c)| Candidate {
            item: Item::Memory(Box::new(memory(i as u128 + 1, all[kinds[i]], c))),
            text_rank: Some(i as u32 + 1),
            text_score: 1.0,
            vector_rank: Some((25 - i) as u32),
            vector_score: 0.5,
            neighbours: Vec::new(),
        }).collect();
        let now = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let items = rank(candidates, "q", &Weights::default(), now, None, 100);
        let packed = pack(&items, budget, &counter);
        prop_assert!(packed.tokens <= budget, "{} > {budget}", packed.tokens);
        prop_assert_eq!(packed.tokens, counter.count(&packed.text));
        let again = pack(&items, budget, &counter);
        prop_assert_eq!(&again.text, &packed.text, "deterministic");
        if !packed.truncated {
            prop_assert_eq!(packed.text.matches("[memory ").count(), items.len());
        }
    }
}
