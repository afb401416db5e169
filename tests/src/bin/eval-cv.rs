//! How the episode vectors' text and Recall's fusion were chosen: an offline simulation of
//! Recall's weighted fusion (`core::recall`: BM25 normalized by the best, cosine, the neighbouring
//! turns' relevance as context, the speaker boost, the speakers' names out of the searched text)
//! over every turn of a long-conversation data set, scored by leave-one-conversation-out
//! cross-validation: for each conversation, the setting that does best on the others is scored
//! on it; the held-out results are pooled. The setting that does best on all of them is printed
//! too (it is what a default would be).
//!
//! Usage: `eval-cv [--fusion] [--objective macro|micro] [DATA_DIR]`
//! (`cargo run --release -p memoire-tests --bin eval-cv -- …`); the data directory is as for
//! `eval` (`MEMOIRE_EVAL_DATA`). Without `--fusion` it compares the texts an episode's vector can be computed from,
//! each over a grid of weights; with it, ways of fusing (the query's names, diversity, context)
//! with the served vector text. The objective is R@10 + nDCG@10, averaged over the four
//! question categories (`macro`, the default: each kind of question counts the same whatever
//! the data set's mix) or over all questions (`micro`). Vectors are cached under
//! `target/bench-cache/eval-cv/`. On the development data it reproduces the served `make eval`
//! within a point; its tables are in `docs/benchmarks.md`.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::Path;

use anyhow::Context as _;
use memoire_core::embed::{
    EPISODE_CONTEXT_CHARS, EPISODE_CONTEXT_TURNS, episode_text, episode_vector_text,
};
use memoire_core::recall::without_names;
use memoire_tests::eval::{
    Bm25, Conversation, Metrics, Session, Turn, data_dir, option, order, read_dir, report,
};

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
struct Weights {
    text: f32,
    context: f32,
    speaker: f32,
}

/// The fusion as it was before the speakers' names left the searched text.
const BEFORE: Weights = Weights {
    text: 0.35,
    context: 0.6,
    speaker: 0.3,
};

/// The defaults (`recall_text_weight`, `recall_context_weight`, `recall_speaker_weight`).
const SERVED: Weights = Weights {
    text: 0.25,
    context: 0.2,
    speaker: 1.5,
};

/// What the searches are given of the query.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Searched {
    /// The query as asked.
    AsAsked,
    /// The speakers' names out of the vector's query only.
    NamesOutOfVector,
    /// The speakers' names out of both searches' query (`core::recall::without_names`).
    NamesOut,
    /// Names out, and full text over the vector's text (the turns before included).
    NamesOutTextWithContext,
}

/// One way of fusing.
#[derive(Debug, Clone, Copy)]
struct Setting {
    searched: Searched,
    w: Weights,
    /// Maximal marginal relevance over the first 50: each next item loses λ × its best cosine to
    /// the items already placed.
    mmr: f32,
    /// A turn's context counts at most this × its own relevance.
    gate: Option<f32>,
}

impl Setting {
    /// "(text, context, speaker)", and the diversity or gate when set.
    fn label(&self) -> String {
        let w = self.w;
        let mut out = format!("({}, {}, {})", w.text, w.context, w.speaker);
        if self.mmr > 0.0 {
            out.push_str(&format!(" mmr {}", self.mmr));
        }
        if let Some(g) = self.gate {
            out.push_str(&format!(" gate {g}"));
        }
        out
    }

    fn new(searched: Searched, w: Weights) -> Self {
        Setting {
            searched,
            w,
            mmr: 0.0,
            gate: None,
        }
    }
}

fn grid(texts: &[f32], contexts: &[f32], speakers: &[f32]) -> Vec<Weights> {
    let mut out = Vec::new();
    for &text in texts {
        for &context in contexts {
            for &speaker in speakers {
                out.push(Weights {
                    text,
                    context,
                    speaker,
                });
            }
        }
    }
    out
}

/// The grid the vector texts were compared over.
fn render_grid() -> Vec<Weights> {
    grid(
        &[0.25, 0.35, 0.45],
        &[0.4, 0.6, 0.8, 1.0],
        &[0.2, 0.3, 0.4, 0.5, 0.7, 1.0],
    )
}

/// The grid the fusion's weights were chosen over with the names out of the searched text.
fn fusion_grid() -> Vec<Weights> {
    grid(
        &[0.15, 0.25, 0.35, 0.45],
        &[0.1, 0.2, 0.3, 0.4, 0.6],
        &[0.3, 0.5, 0.7, 1.0, 1.5, 2.0],
    )
}

fn words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
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

/// One conversation, embedded with one rendering.
struct Embedded<'a> {
    c: &'a Conversation,
    /// Every turn's vector text.
    texts: Vec<String>,
    docs: Vec<Vec<f32>>,
    /// The questions' vectors, as asked and without the speakers' names.
    asked: Vec<Vec<f32>>,
    named_out: Vec<Vec<f32>>,
    /// The questions without the speakers' names (`core::recall::without_names`, with the
    /// conversation's speakers as the names the store would find).
    named_out_texts: Vec<String>,
}

impl<'a> Embedded<'a> {
    fn new(
        c: &'a Conversation,
        render: Render,
        model: &memoire_providers::LocalEmbedder,
        cache: &Path,
    ) -> anyhow::Result<Self> {
        let mut texts = Vec::new();
        for s in &c.sessions {
            texts.extend((0..s.turns.len()).map(|i| render(s, &s.turns, i)));
        }
        let names: Vec<String> = c
            .turns()
            .map(|(_, t)| t.speaker.to_lowercase())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let asked: Vec<String> = c.questions.iter().map(|q| q.text.clone()).collect();
        let named_out: Vec<String> = asked.iter().map(|q| without_names(q, &names)).collect();
        Ok(Embedded {
            docs: vectors(model, cache, &texts)?,
            asked: vectors(model, cache, &asked)?,
            named_out: vectors(model, cache, &named_out)?,
            named_out_texts: named_out,
            texts,
            c,
        })
    }

    /// The metrics of every setting.
    fn score(&self, settings: &[Setting]) -> Vec<Metrics> {
        let turns: Vec<(&Session, &Turn)> = self.c.turns().collect();
        let rendered: Vec<String> = turns
            .iter()
            .map(|(s, t)| memoire_tests::eval::rendered(s, t))
            .collect();
        let bm25 = Bm25::new(&rendered);
        let bm25_context = settings
            .iter()
            .any(|s| s.searched == Searched::NamesOutTextWithContext)
            .then(|| Bm25::new(&self.texts));
        let session: Vec<u32> = turns.iter().map(|(s, _)| s.index).collect();
        let last = turns.len() - 1;
        let normalized = |scores: Vec<f32>| {
            let best = scores.iter().copied().fold(0f32, f32::max);
            scores
                .into_iter()
                .map(|x| if best > 0.0 { x / best } else { 0.0 })
                .collect::<Vec<f32>>()
        };
        let mut out = vec![Metrics::default(); settings.len()];
        for (qi, q) in self.c.questions.iter().enumerate() {
            let stripped = &self.named_out_texts[qi];
            let text_asked = normalized(bm25.scores(&q.text));
            let text_out = normalized(bm25.scores(stripped));
            let text_context = bm25_context
                .as_ref()
                .map(|b| normalized(b.scores(stripped)));
            let query_words = words(&q.text);
            for (m, s) in out.iter_mut().zip(settings) {
                let (text, qv) = match s.searched {
                    Searched::AsAsked => (&text_asked, &self.asked[qi]),
                    Searched::NamesOutOfVector => (&text_asked, &self.named_out[qi]),
                    Searched::NamesOut => (&text_out, &self.named_out[qi]),
                    Searched::NamesOutTextWithContext => (
                        text_context.as_ref().unwrap_or(&text_out),
                        &self.named_out[qi],
                    ),
                };
                let w = s.w;
                let relevance: Vec<f32> = (0..turns.len())
                    .map(|i| w.text * text[i] + (1.0 - w.text) * dot(&self.docs[i], qv).max(0.0))
                    .collect();
                let fused: Vec<f32> = (0..turns.len())
                    .map(|i| {
                        let prev =
                            (i > 0 && session[i - 1] == session[i]).then(|| relevance[i - 1]);
                        let next =
                            (i < last && session[i + 1] == session[i]).then(|| relevance[i + 1]);
                        let mut context = prev.into_iter().chain(next).fold(0f32, f32::max);
                        if let Some(g) = s.gate {
                            context = context.min(g * relevance[i]);
                        }
                        let f = (relevance[i] + w.context * context) / (1.0 + w.context);
                        let named = query_words.contains(&turns[i].1.speaker.to_lowercase());
                        if named { f * (1.0 + w.speaker) } else { f }
                    })
                    .collect();
                let mut ranked = order(&fused);
                if s.mmr > 0.0 {
                    let mut pool: Vec<usize> = ranked.iter().copied().take(50).collect();
                    let mut placed: Vec<usize> = Vec::new();
                    while !pool.is_empty() && placed.len() < 20 {
                        let mut best = (0, f32::MIN);
                        for (at, &i) in pool.iter().enumerate() {
                            let redundancy = placed
                                .iter()
                                .map(|&j| dot(&self.docs[i], &self.docs[j]))
                                .fold(0f32, f32::max);
                            let v = fused[i] - s.mmr * redundancy;
                            if v > best.1 {
                                best = (at, v);
                            }
                        }
                        placed.push(pool.remove(best.0));
                    }
                    ranked = placed;
                }
                let ids: Vec<String> = ranked
                    .into_iter()
                    .take(20)
                    .map(|i| turns[i].1.dia_id.clone())
                    .collect();
                m.add(q, &ids);
            }
        }
        out
    }
}

/// How a setting is judged: R@10 + nDCG@10, per question or per category.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Objective {
    Macro,
    Micro,
}

impl Objective {
    fn of(self, m: &Metrics) -> f64 {
        match self {
            Objective::Micro => {
                let (mean, _) = m.mean(None);
                mean[2] + mean[5]
            }
            Objective::Macro => {
                let present: Vec<[f64; 6]> = (1..=4u8)
                    .map(|c| m.mean(Some(c)))
                    .filter(|(_, n)| *n > 0)
                    .map(|(mean, _)| mean)
                    .collect();
                present.iter().map(|m| m[2] + m[5]).sum::<f64>() / present.len().max(1) as f64
            }
        }
    }
}

/// Leave-one-conversation-out over `settings` (`per[conversation][setting]`): prints the pooled
/// held-out metrics, the setting best on all conversations, and what each fold chose.
fn cross_validate(title: &str, settings: &[Setting], per: &[Vec<Metrics>], objective: Objective) {
    let pooled = |setting: usize, skip: Option<usize>| {
        let mut m = Metrics::default();
        for (ci, row) in per.iter().enumerate() {
            if Some(ci) != skip {
                m.merge(&row[setting]);
            }
        }
        m
    };
    let best_without = |skip: Option<usize>| {
        (0..settings.len())
            .max_by(|&a, &b| {
                objective
                    .of(&pooled(a, skip))
                    .total_cmp(&objective.of(&pooled(b, skip)))
            })
            .unwrap_or(0)
    };
    let mut held_out = Metrics::default();
    let mut chosen = Vec::new();
    for (ci, row) in per.iter().enumerate() {
        let best = best_without(Some(ci));
        chosen.push(settings[best].label());
        held_out.merge(&row[best]);
    }
    let best = best_without(None);
    let all = pooled(best, None);
    let best_name = format!("best on all: {}", settings[best].label());
    println!(
        "{title}\n{}",
        report(&[("held out", &held_out), (&best_name, &all)])
    );
    println!(
        "folds chose (text, context, speaker): {}\n",
        chosen.join(", ")
    );
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fusion = args.iter().any(|a| a == "--fusion");
    let objective = match option("--objective").as_deref() {
        None | Some("macro") => Objective::Macro,
        Some("micro") => Objective::Micro,
        Some(other) => anyhow::bail!("--objective must be macro or micro, not {other:?}"),
    };
    let dir = data_dir(&["--objective"]);
    let convs = read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
    let model =
        memoire_providers::LocalEmbedder::load(&memoire_tests::model_dir(), "all-MiniLM-L6-v2")?;
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-cache/eval-cv");
    let studies: Vec<(String, Render, Vec<Setting>)> = if fusion {
        let names_out = |grid: Vec<Weights>, searched| {
            grid.into_iter()
                .map(|w| Setting::new(searched, w))
                .collect::<Vec<_>>()
        };
        vec![
            (
                "before: the query as asked, text 0.35, context 0.6, speaker 0.3".into(),
                two_before_cut,
                vec![Setting::new(Searched::AsAsked, BEFORE)],
            ),
            (
                "the query as asked, weights by cross-validation".into(),
                two_before_cut,
                names_out(fusion_grid(), Searched::AsAsked),
            ),
            (
                "the speakers' names out of the vector's query, weights by cross-validation".into(),
                two_before_cut,
                names_out(fusion_grid(), Searched::NamesOutOfVector),
            ),
            (
                "the speakers' names out of both searches (served), weights by cross-validation"
                    .into(),
                two_before_cut,
                names_out(fusion_grid(), Searched::NamesOut),
            ),
            (
                "names out, full text over the vector's text, weights by cross-validation".into(),
                two_before_cut,
                names_out(fusion_grid(), Searched::NamesOutTextWithContext),
            ),
            (
                "served, with MMR over the first 50 (lambda 0.02-0.3)".into(),
                two_before_cut,
                [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3]
                    .map(|mmr| Setting {
                        mmr,
                        ..Setting::new(Searched::NamesOut, SERVED)
                    })
                    .to_vec(),
            ),
            (
                "served, with context at most g x own relevance (g 0.5-3)".into(),
                two_before_cut,
                [None, Some(0.5), Some(1.0), Some(1.5), Some(2.0), Some(3.0)]
                    .map(|gate| Setting {
                        gate,
                        ..Setting::new(Searched::NamesOut, SERVED)
                    })
                    .to_vec(),
            ),
        ]
    } else {
        RENDERS
            .iter()
            .map(|(name, render)| {
                let settings = render_grid()
                    .into_iter()
                    .map(|w| Setting::new(Searched::AsAsked, w))
                    .collect();
                ((*name).to_owned(), *render, settings)
            })
            .collect()
    };
    for (title, render, settings) in studies {
        let mut per: Vec<Vec<Metrics>> = Vec::new();
        for c in &convs {
            per.push(Embedded::new(c, render, &model, &cache)?.score(&settings));
        }
        cross_validate(&title, &settings, &per, objective);
    }
    Ok(())
}
