//! How the episode vectors' text and Recall's fusion weights were chosen: an offline simulation of
//! Recall's weighted fusion (`core::recall`: BM25 normalized by the best, cosine, the neighbouring
//! turns' relevance as context, the speaker boost) over every turn of a long-conversation data
//! set, for several texts an episode's vector can be computed from, each over a grid of weights,
//! scored by leave-one-conversation-out cross-validation: for each conversation, the setting that
//! does best (R@10 + nDCG@10) on the others is scored on it; the held-out results are pooled.
//!
//! Usage: `eval-cv [DATA_DIR]` (`cargo run --release -p memoire-tests --bin eval-cv`); the data
//! directory is as for `eval`. Vectors are cached under `target/bench-cache/eval-cv/`. On the
//! development data it reproduces the served `make eval` within a point (R@10 0.770 against
//! 0.761 with the turn alone); its table is in `docs/benchmarks.md`.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use memoire_core::embed::{
    EPISODE_CONTEXT_CHARS, EPISODE_CONTEXT_TURNS, episode_text, episode_vector_text,
};
use memoire_tests::eval::{Bm25, Conversation, Metrics, Session, Turn, order, read_dir, report};

/// One way to render a turn for its vector, given the turns of its session before it.
type Render = fn(&Session, &[Turn], usize) -> String;

fn line(t: &Turn, cut: Option<usize>) -> String {
    let text = match cut {
        Some(n) => {
            let skip = t.text.chars().count().saturating_sub(n);
            t.text.chars().skip(skip).collect()
        }
        None => t.text.clone(),
    };
    format!("{}: {}", t.speaker, text)
}

fn before(turns: &[Turn], i: usize, n: usize, cut: Option<usize>) -> String {
    turns[i.saturating_sub(n)..i]
        .iter()
        .map(|t| line(t, cut))
        .collect::<Vec<_>>()
        .join("\n")
}

fn alone(s: &Session, turns: &[Turn], i: usize) -> String {
    episode_text(Some(&turns[i].speaker), s.date, &turns[i].text)
}

/// `core::embed::episode_vector_text` with the `n` turns before, each cut to its last `cut`
/// characters.
fn context_first(s: &Session, turns: &[Turn], i: usize, n: usize, cut: Option<usize>) -> String {
    let t = &turns[i];
    episode_vector_text(
        Some(&t.speaker),
        s.date,
        &t.text,
        Some(&before(turns, i, n, cut)),
    )
}

fn one_before(s: &Session, turns: &[Turn], i: usize) -> String {
    context_first(s, turns, i, 1, None)
}

fn two_before(s: &Session, turns: &[Turn], i: usize) -> String {
    context_first(s, turns, i, 2, None)
}

/// What the store embeds (`EPISODE_CONTEXT_TURNS`, `EPISODE_CONTEXT_CHARS`).
fn two_before_cut(s: &Session, turns: &[Turn], i: usize) -> String {
    let n = usize::try_from(EPISODE_CONTEXT_TURNS).unwrap_or(2);
    context_first(s, turns, i, n, usize::try_from(EPISODE_CONTEXT_CHARS).ok())
}

fn turn_then_two_before(s: &Session, turns: &[Turn], i: usize) -> String {
    let context = before(turns, i, 2, None);
    let turn = alone(s, turns, i);
    if context.is_empty() {
        turn
    } else {
        format!("{turn}\n{context}")
    }
}

const RENDERS: [(&str, Render); 5] = [
    ("the turn alone", alone),
    ("one turn before, then the turn", one_before),
    ("two turns before, then the turn", two_before),
    (
        "the same, each cut to its last 300 characters",
        two_before_cut,
    ),
    ("the turn, then the two turns before", turn_then_two_before),
];

/// Fusion weights: text weight (vector = 1 − text), context weight, speaker boost.
#[derive(Debug, Clone, Copy)]
struct Setting {
    text: f32,
    context: f32,
    speaker: f32,
}

fn grid() -> Vec<Setting> {
    let mut out = Vec::new();
    for text in [0.25, 0.35, 0.45] {
        for context in [0.4, 0.6, 0.8, 1.0] {
            for speaker in [0.2, 0.3, 0.4, 0.5, 0.7, 1.0] {
                out.push(Setting {
                    text,
                    context,
                    speaker,
                });
            }
        }
    }
    out
}

fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// The vectors of `texts`, cached by their content.
fn vectors(
    model: &memoire_providers::LocalEmbedder,
    cache: &Path,
    texts: &[String],
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    texts.hash(&mut h);
    let file = cache.join(format!("{:016x}.json", h.finish()));
    if let Ok(bytes) = std::fs::read(&file) {
        return Ok(serde_json::from_slice(&bytes)?);
    }
    let v = model.embed_blocking(texts)?;
    std::fs::create_dir_all(cache)?;
    std::fs::write(&file, serde_json::to_vec(&v)?)?;
    Ok(v)
}

/// Metrics of every setting of `grid` on one conversation, with the vectors of one rendering.
fn score(
    c: &Conversation,
    docs: &[Vec<f32>],
    queries: &[Vec<f32>],
    grid: &[Setting],
) -> Vec<Metrics> {
    let turns: Vec<(&Session, &Turn)> = c.turns().collect();
    let texts: Vec<String> = turns
        .iter()
        .map(|(s, t)| memoire_tests::eval::rendered(s, t))
        .collect();
    let bm25 = Bm25::new(&texts);
    let session: Vec<u32> = turns.iter().map(|(s, _)| s.index).collect();
    let mut out = vec![Metrics::default(); grid.len()];
    for (q, qv) in c.questions.iter().zip(queries) {
        let text = bm25.scores(&q.text);
        let best = text.iter().copied().fold(0f32, f32::max);
        let query_words = words(&q.text);
        for (m, w) in out.iter_mut().zip(grid) {
            let relevance: Vec<f32> = (0..turns.len())
                .map(|i| {
                    let t = if best > 0.0 { text[i] / best } else { 0.0 };
                    let v: f32 = docs[i].iter().zip(qv).map(|(a, b)| a * b).sum();
                    w.text * t + (1.0 - w.text) * v.max(0.0)
                })
                .collect();
            let last = turns.len() - 1;
            let fused: Vec<f32> = (0..turns.len())
                .map(|i| {
                    let prev = (i > 0 && session[i - 1] == session[i]).then(|| relevance[i - 1]);
                    let next = (i < last && session[i + 1] == session[i]).then(|| relevance[i + 1]);
                    let context = prev.into_iter().chain(next).fold(0f32, f32::max);
                    let f = (relevance[i] + w.context * context) / (1.0 + w.context);
                    let named = query_words.contains(&turns[i].1.speaker.to_lowercase());
                    if named { f * (1.0 + w.speaker) } else { f }
                })
                .collect();
            let ids: Vec<String> = order(&fused)
                .into_iter()
                .take(20)
                .map(|i| turns[i].1.dia_id.clone())
                .collect();
            m.add(q, &ids);
        }
    }
    out
}

fn main() -> anyhow::Result<()> {
    let dir: PathBuf = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("EVAL_DATA").ok())
        .unwrap_or_else(|| "../shared/data/locomo-dev".into())
        .into();
    let convs = read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
    let model =
        memoire_providers::LocalEmbedder::load(&memoire_tests::model_dir(), "all-MiniLM-L6-v2")?;
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-cache/eval-cv");
    let grid = grid();
    let objective = |m: &Metrics| {
        let (mean, _) = m.mean(None);
        mean[2] + mean[5]
    };
    for (name, render) in RENDERS {
        // per[conversation][setting]
        let mut per: Vec<Vec<Metrics>> = Vec::new();
        for c in &convs {
            let mut texts = Vec::new();
            for s in &c.sessions {
                texts.extend((0..s.turns.len()).map(|i| render(s, &s.turns, i)));
            }
            let queries: Vec<String> = c.questions.iter().map(|q| q.text.clone()).collect();
            let docs = vectors(&model, &cache, &texts)?;
            let queries = vectors(&model, &cache, &queries)?;
            per.push(score(c, &docs, &queries, &grid));
        }
        let pooled = |setting: usize, skip: Option<usize>| {
            let mut m = Metrics::default();
            for (ci, row) in per.iter().enumerate() {
                if Some(ci) != skip {
                    m.merge(&row[setting]);
                }
            }
            m
        };
        let mut held_out = Metrics::default();
        let mut chosen = Vec::new();
        for (ci, row) in per.iter().enumerate() {
            let best = (0..grid.len())
                .max_by(|&a, &b| {
                    objective(&pooled(a, Some(ci))).total_cmp(&objective(&pooled(b, Some(ci))))
                })
                .unwrap_or(0);
            let w = grid[best];
            chosen.push(format!("({}, {}, {})", w.text, w.context, w.speaker));
            held_out.merge(&row[best]);
        }
        println!("{name}\n{}", report(&[("held out", &held_out)]));
        println!(
            "folds chose (text, context, speaker): {}\n",
            chosen.join(" ")
        );
    }
    Ok(())
}
