//! The rule extractor against its golden sets: every message's candidates are matched to the
//! memories it must give (same slot, same content ignoring case and final punctuation, same
//! intent). Prints precision and recall per category, the false positives and the misses.
//!
//! - `tests/golden/extraction.yaml` is the development set: the rules were written against it,
//!   and precision must be at least 0.95.
//! - `tests/golden/extraction-heldout.yaml` was written afterwards, without reading the rules,
//!   and is not used to change them: its figures are what to expect on new text. Its floor is
//!   lower and only guards against regressions.

use std::collections::BTreeMap;

use memoire_core::extract::{CandidateMemory, Intent, RuleExtractor};

#[derive(serde::Deserialize)]
struct Golden {
    items: Vec<Item>,
}

#[derive(serde::Deserialize)]
struct Item {
    category: String,
    text: String,
    expect: Vec<Expected>,
}

#[derive(serde::Deserialize, Debug)]
struct Expected {
    content: String,
    slot: Option<String>,
    #[serde(default)]
    intent: Option<String>,
}

fn normalized(s: &str) -> String {
    s.trim()
        .trim_end_matches(['.', '!', '?'])
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn matches(c: &CandidateMemory, e: &Expected) -> bool {
    let intent = match e.intent.as_deref() {
        Some("delete") => Intent::Delete,
        _ => Intent::Add,
    };
    normalized(&c.content) == normalized(&e.content) && c.slot == e.slot && c.intent == intent
}

#[derive(Default)]
struct Tally {
    items: usize,
    produced: usize,
    expected: usize,
    correct: usize,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// Precision and recall of the rule extractor over a golden set, printed per category.
fn score(yaml: &str) -> (f64, f64, usize) {
    let golden: Golden = serde_yaml::from_str(yaml).expect("yaml");
    let mut by_category: BTreeMap<String, Tally> = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut missed = Vec::new();
    for item in &golden.items {
        let got = RuleExtractor.extract(&item.text);
        let t = by_category.entry(item.category.clone()).or_default();
        t.items += 1;
        t.produced += got.len();
        t.expected += item.expect.len();
        let mut used = vec![false; item.expect.len()];
        for c in &got {
            match (0..item.expect.len()).find(|&i| !used[i] && matches(c, &item.expect[i])) {
                Some(i) => {
                    used[i] = true;
                    t.correct += 1;
                }
                None => wrong.push(format!("{:?} → {:?} {:?}", item.text, c.content, c.slot)),
            }
        }
        for (e, u) in item.expect.iter().zip(&used) {
            if !u {
                missed.push(format!("{:?} ✗ {:?} {:?}", item.text, e.content, e.slot));
            }
        }
    }
    let mut total = Tally::default();
    println!(
        "{:<15} {:>5} {:>9} {:>9} {:>9} {:>7}",
        "category", "items", "produced", "correct", "precision", "recall"
    );
    for (category, t) in &by_category {
        println!(
            "{category:<15} {:>5} {:>9} {:>9} {:>9.3} {:>7.3}",
            t.items,
            t.produced,
            t.correct,
            ratio(t.correct, t.produced),
            ratio(t.correct, t.expected)
        );
        total.items += t.items;
        total.produced += t.produced;
        total.expected += t.expected;
        total.correct += t.correct;
    }
    let precision = ratio(total.correct, total.produced);
    let recall = ratio(total.correct, total.expected);
    println!(
        "{:<15} {:>5} {:>9} {:>9} {precision:>9.3} {recall:>7.3}",
        "all", total.items, total.produced, total.correct
    );
    println!("\nfalse positives:\n  {}", wrong.join("\n  "));
    println!("\nmissed:\n  {}", missed.join("\n  "));
    (precision, recall, golden.items.len())
}

#[test]
fn rule_extractor_precision_on_the_golden_set() {
    let (precision, recall, items) = score(include_str!("../../tests/golden/extraction.yaml"));
    assert!(items >= 200, "the set has {items} items");
    assert!(precision >= 0.95, "precision {precision:.3} < 0.95");
    // Recall is reported; this floor only keeps precision from being bought with silence.
    assert!(recall >= 0.6, "recall {recall:.3} < 0.6");
}

#[test]
fn rule_extractor_on_the_held_out_set() {
    let (precision, recall, _) = score(include_str!("../../tests/golden/extraction-heldout.yaml"));
    assert!(precision >= 0.9, "precision {precision:.3} < 0.9");
    assert!(recall >= 0.5, "recall {recall:.3} < 0.5");
}
