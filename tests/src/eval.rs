//! The recall-quality harness (`make eval`): long two-person conversations ingested through the
//! real gRPC API the way an application sends them, every question asked through `Recall`, and
//! turn-level evidence recall reported beside three baselines computed in the same run over the
//! same turns — Okapi BM25, MiniLM dense search, and their reciprocal-rank fusion.
//!
//! Data: the LoCoMo format (`../shared/data/locomo-dev/README.md`): per file `speaker_a`,
//! `speaker_b`, `session_N` (turns `{speaker, dia_id, text, blip_caption?}`),
//! `session_N_date_time`, and `qa` (`{question, evidence, category}`). User-style ingest: one
//! user per conversation, one session per session, each turn one message with the speaker's name
//! in `name`, the session's date (plus one second per turn, to keep the order) in `occurred_at`
//! and the turn id as `message_id`. Shared images are part of what an application would send: the
//! text gains ` [shares image: <caption>]`.
//!
//! Metrics (categories 1–4; 5 is unanswerable by design): recall@k = the share of a question's
//! evidence turns among the first k turns returned; all@10 = 1 when all of them are; nDCG@10 with
//! binary gains. A returned memory counts as its source turns (in order, duplicates dropped).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, NaiveDateTime, Utc};

use crate::{TestServer, proto as pb};

/// One turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// The turn id (`D3:12`).
    pub dia_id: String,
    /// Who said it.
    pub speaker: String,
    /// What was said (with the shared image's caption, if any).
    pub text: String,
}

/// One session.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Its number.
    pub index: u32,
    /// When it happened.
    pub date: DateTime<Utc>,
    /// Its turns, in order.
    pub turns: Vec<Turn>,
}

/// One question with the turns that answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// The text.
    pub text: String,
    /// The evidence turn ids (repaired; never empty).
    pub evidence: Vec<String>,
    /// 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop.
    pub category: u8,
}

/// One conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// Its name (the file stem); also the user id it is ingested under.
    pub id: String,
    /// The sessions, in order.
    pub sessions: Vec<Session>,
    /// Its questions of categories 1–4.
    pub questions: Vec<Question>,
}

impl Conversation {
    /// Every turn with its session's date.
    pub fn turns(&self) -> impl Iterator<Item = (&Session, &Turn)> {
        self.sessions
            .iter()
            .flat_map(|s| s.turns.iter().map(move |t| (s, t)))
    }
}

/// The value after `--name` on the command line.
pub fn option(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

/// The data directory of the evaluation binaries: their first argument that is neither an
/// option nor the value of one of `valued` (options that take a value), else
/// `MEMOIRE_EVAL_DATA`, else `../shared/data/locomo-dev` beside the repository.
pub fn data_dir(valued: &[&str]) -> PathBuf {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with("--") && (*i == 0 || !valued.contains(&args[i - 1].as_str())))
        .map(|(_, a)| a.clone());
    arg.map(PathBuf::from)
        .or_else(|| std::env::var_os("MEMOIRE_EVAL_DATA").map(PathBuf::from))
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/locomo-dev")
        })
}

/// The text a baseline indexes for a turn: `[<session date>] <speaker>: <text>`.
pub fn rendered(session: &Session, turn: &Turn) -> String {
    format!(
        "[{}] {}: {}",
        session.date.format("%-d %B %Y"),
        turn.speaker,
        turn.text
    )
}

/// "1:56 pm on 8 May, 2023".
fn parse_date(s: &str) -> anyhow::Result<DateTime<Utc>> {
    let t = NaiveDateTime::parse_from_str(&s.trim().to_uppercase(), "%I:%M %p ON %d %B, %Y")
        .with_context(|| format!("cannot read the session date {s:?}"))?;
    Ok(t.and_utc())
}

/// Evidence ids as written, repaired: several ids packed in one string, `D:11:26` for `D11:26`,
/// `D30:05` for `D30:5`. Ids that name no turn are dropped.
fn repair_evidence(raw: &[serde_json::Value], known: &HashSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for v in raw {
        let Some(s) = v.as_str() else { continue };
        for part in s.split([';', ',', ' ']).filter(|p| !p.is_empty()) {
            let part = part.trim().replace("D:", "D");
            let fixed = match part.split_once(':') {
                Some((d, n)) => match n.parse::<u32>() {
                    Ok(n) => format!("{d}:{n}"),
                    Err(_) => part.clone(),
                },
                None => part.clone(),
            };
            if known.contains(&fixed) && !out.contains(&fixed) {
                out.push(fixed);
            }
        }
    }
    out
}

/// Reads one conversation file.
pub fn read_conversation(path: &Path) -> anyhow::Result<Conversation> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let obj = v.as_object().context("a conversation is a JSON object")?;
    let mut sessions = Vec::new();
    for i in 1..=200u32 {
        let (Some(turns), Some(date)) = (
            obj.get(&format!("session_{i}")).and_then(|t| t.as_array()),
            obj.get(&format!("session_{i}_date_time"))
                .and_then(|d| d.as_str()),
        ) else {
            continue;
        };
        let turns = turns
            .iter()
            .filter_map(|t| {
                let mut text = t.get("text")?.as_str()?.to_owned();
                if let Some(c) = t.get("blip_caption").and_then(|c| c.as_str()) {
                    text.push_str(&format!(" [shares image: {c}]"));
                }
                Some(Turn {
                    dia_id: t.get("dia_id")?.as_str()?.to_owned(),
                    speaker: t.get("speaker")?.as_str()?.to_owned(),
                    text,
                })
            })
            .collect::<Vec<_>>();
        if turns.is_empty() {
            continue;
        }
        sessions.push(Session {
            index: i,
            date: parse_date(date)?,
            turns,
        });
    }
    let known: HashSet<String> = sessions
        .iter()
        .flat_map(|s| s.turns.iter().map(|t| t.dia_id.clone()))
        .collect();
    let questions = obj
        .get("qa")
        .and_then(|q| q.as_array())
        .map(|qs| {
            qs.iter()
                .filter_map(|q| {
                    let category = q.get("category")?.as_u64()? as u8;
                    let evidence = repair_evidence(q.get("evidence")?.as_array()?, &known);
                    let text = q.get("question")?.as_str()?.to_owned();
                    ((1..=4).contains(&category) && !evidence.is_empty()).then_some(Question {
                        text,
                        evidence,
                        category,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Conversation {
        id: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sessions,
        questions,
    })
}

/// Every `*.json` conversation of a directory, by file name.
pub fn read_dir(dir: &Path) -> anyhow::Result<Vec<Conversation>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| {
            format!(
                "the evaluation data directory {} cannot be read",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "no *.json conversation in {}",
        dir.display()
    );
    files.iter().map(|p| read_conversation(p)).collect()
}

/// English stop words (the usual IR list).
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

/// Lowercase `[a-z0-9]+` tokens, stop words removed, stemmed (Snowball English).
pub fn tokens(text: &str) -> Vec<String> {
    let stemmer = rust_stemmers::Stemmer::create(rust_stemmers::Algorithm::English);
    text.to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty() && !STOP_WORDS.contains(t))
        .map(|t| stemmer.stem(t).into_owned())
        .collect()
}

/// Okapi BM25 (k1 1.2, b 0.75) over a fixed set of documents.
#[derive(Debug)]
pub struct Bm25 {
    docs: Vec<HashMap<String, f32>>,
    lens: Vec<f32>,
    df: HashMap<String, f32>,
    avg: f32,
}

impl Bm25 {
    /// An index of `docs`.
    pub fn new(docs: &[String]) -> Self {
        let mut df: HashMap<String, f32> = HashMap::new();
        let mut lens = Vec::new();
        let docs: Vec<HashMap<String, f32>> = docs
            .iter()
            .map(|d| {
                let toks = tokens(d);
                lens.push(toks.len() as f32);
                let mut tf: HashMap<String, f32> = HashMap::new();
                for t in toks {
                    *tf.entry(t).or_default() += 1.0;
                }
                for t in tf.keys() {
                    *df.entry(t.clone()).or_default() += 1.0;
                }
                tf
            })
            .collect();
        let avg = lens.iter().sum::<f32>() / lens.len().max(1) as f32;
        Bm25 {
            docs,
            lens,
            df,
            avg,
        }
    }

    /// Every document's score for `query`.
    pub fn scores(&self, query: &str) -> Vec<f32> {
        let n = self.docs.len() as f32;
        let q = tokens(query);
        self.docs
            .iter()
            .zip(&self.lens)
            .map(|(tf, len)| {
                q.iter()
                    .filter_map(|t| {
                        let f = *tf.get(t)?;
                        let df = self.df[t];
                        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
                        Some(idf * f * 2.2 / (f + 1.2 * (0.25 + 0.75 * len / self.avg.max(1.0))))
                    })
                    .sum()
            })
            .collect()
    }
}

/// Indexes of `scores` best first (ties by index).
pub fn order(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b)));
    idx
}

/// Reciprocal-rank fusion (k = 60) of rankings.
pub fn rrf(rankings: &[Vec<usize>], n: usize) -> Vec<usize> {
    let mut score = vec![0f32; n];
    for r in rankings {
        for (rank, &i) in r.iter().enumerate() {
            score[i] += 1.0 / (60.0 + rank as f32 + 1.0);
        }
    }
    order(&score)
}

/// The metrics of one system, overall and per category.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    per: BTreeMap<u8, Vec<[f64; 6]>>,
}

/// What the columns of [`Metrics`] are.
pub const COLUMNS: [&str; 6] = ["R@1", "R@5", "R@10", "R@20", "all@10", "nDCG@10"];

impl Metrics {
    /// Scores one question's returned turns (best first; duplicates are ignored after their first
    /// place).
    pub fn add(&mut self, q: &Question, returned: &[String]) {
        let mut seen = HashSet::new();
        let list: Vec<&String> = returned.iter().filter(|t| seen.insert(*t)).collect();
        let evidence: HashSet<&String> = q.evidence.iter().collect();
        let recall = |k: usize| {
            list.iter()
                .take(k)
                .filter(|t| evidence.contains(*t))
                .count() as f64
                / evidence.len() as f64
        };
        let dcg: f64 = list
            .iter()
            .take(10)
            .enumerate()
            .filter(|(_, t)| evidence.contains(*t))
            .map(|(i, _)| 1.0 / ((i + 2) as f64).log2())
            .sum();
        let ideal: f64 = (0..evidence.len().min(10))
            .map(|i| 1.0 / ((i + 2) as f64).log2())
            .sum();
        let r10 = recall(10);
        self.per.entry(q.category).or_default().push([
            recall(1),
            recall(5),
            r10,
            recall(20),
            if r10 >= 1.0 - 1e-9 { 1.0 } else { 0.0 },
            dcg / ideal,
        ]);
    }

    /// The mean of each column over `category` (all when `None`), and the count.
    pub fn mean(&self, category: Option<u8>) -> ([f64; 6], usize) {
        let rows: Vec<&[f64; 6]> = self
            .per
            .iter()
            .filter(|(c, _)| category.is_none_or(|x| x == **c))
            .flat_map(|(_, r)| r)
            .collect();
        let mut m = [0.0; 6];
        for r in &rows {
            for (a, b) in m.iter_mut().zip(r.iter()) {
                *a += b;
            }
        }
        let n = rows.len().max(1) as f64;
        (m.map(|x| x / n), rows.len())
    }

    /// Another system's questions added to these.
    pub fn merge(&mut self, other: &Metrics) {
        for (c, rows) in &other.per {
            self.per.entry(*c).or_default().extend(rows.iter().copied());
        }
    }
}

/// A table of systems: overall columns, then R@10 per category.
pub fn report(systems: &[(&str, &Metrics)]) -> String {
    let mut out = format!("{:<42}", "system");
    for c in COLUMNS {
        out.push_str(&format!(" {c:>7}"));
    }
    for c in ["multi", "temp", "open", "single"] {
        out.push_str(&format!(" {c:>7}"));
    }
    out.push('\n');
    for (name, m) in systems {
        let (all, n) = m.mean(None);
        out.push_str(&format!("{name:<42}"));
        for x in all {
            out.push_str(&format!(" {x:>7.3}"));
        }
        for c in 1..=4 {
            out.push_str(&format!(" {:>7.3}", m.mean(Some(c)).0[2]));
        }
        out.push_str(&format!("   ({n} questions)\n"));
    }
    out
}

/// Turn ids of a Recall reply, in order: an episode by its message id, a memory by its source
/// episodes.
fn turn_ids(reply: &pb::RecallResponse, episodes: &HashMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for item in &reply.items {
        match &item.item {
            Some(pb::recall_item::Item::Episode(e)) => out.push(e.message_id.clone()),
            Some(pb::recall_item::Item::Memory(m)) => out.extend(
                m.source_episode_ids
                    .iter()
                    .filter_map(|id| episodes.get(id).cloned()),
            ),
            None => {}
        }
    }
    out
}

/// Ingests one conversation as an application would; returns episode id → turn id.
async fn ingest(
    m: &mut memoire_sdk::MemoryClient,
    c: &Conversation,
) -> anyhow::Result<HashMap<String, String>> {
    let mut episodes = HashMap::new();
    for s in &c.sessions {
        let messages = s
            .turns
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let at = s.date + chrono::TimeDelta::seconds(i as i64);
                pb::Message {
                    role: pb::MessageRole::User as i32,
                    name: Some(t.speaker.clone()),
                    content: t.text.clone(),
                    message_id: Some(t.dia_id.clone()),
                    occurred_at: Some(prost_types::Timestamp {
                        seconds: at.timestamp(),
                        nanos: 0,
                    }),
                }
            })
            .collect::<Vec<_>>();
        for chunk in messages.chunks(100) {
            let reply = m
                .ingest(pb::IngestRequest {
                    user_id: c.id.clone(),
                    session_id: format!("session_{}", s.index),
                    messages: chunk.to_vec(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            for e in reply.episodes {
                episodes.insert(e.episode_id, e.message_id);
            }
        }
    }
    Ok(episodes)
}

async fn wait_for_worker(server: &TestServer) -> anyhow::Result<()> {
    let started = Instant::now();
    // Progress on stderr every ten seconds: on two cores the wait is a minute or more (the
    // worker embeds every turn with its context), with nothing else printed.
    let mut reported = Instant::now();
    loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM episodes WHERE (extracted_at IS NULL AND extract_dead_at IS NULL) \
             OR (embedding IS NULL AND embed_dead_at IS NULL)",
        )
        .fetch_one(server.pool())
        .await?;
        if pending == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the worker did not finish"
        );
        if reported.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "eval: {pending} turns still wait for extraction or their vector ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What [`evaluate`] measured.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Recall with `include_episodes`, k = 20.
    pub recall: Metrics,
    /// Recall with no flags but k = 20 (episodes unset).
    pub default: Metrics,
    /// What the Python SDK's `wrap()` puts into a prompt: the packed context of a Recall with its
    /// defaults (k = [`WRAP_K`], [`WRAP_TOKEN_BUDGET`] tokens, no flags), in the order packed.
    pub wrap: Metrics,
    /// Okapi BM25 over the rendered turns.
    pub bm25: Metrics,
    /// MiniLM dense search over the rendered turns.
    pub dense: Metrics,
    /// RRF of the two.
    pub rrf: Metrics,
    /// Latency of the first Recall of each question (its query embedding computed).
    pub latencies: Vec<Duration>,
    /// The server's `recall_candidates`: the pool, the same for every k up to it.
    pub pool: u32,
    /// Questions whose first 10 items differ between k = 10 and k = `pool`.
    pub unstable: usize,
    /// Questions whose first 10 items differ between k = 10 and k = 100 (past the pool, which
    /// then grows to k).
    pub unstable_past_pool: usize,
    /// Memories the worker wrote.
    pub memories: i64,
    /// Seconds from the first Ingest to the worker being idle.
    pub ingest_seconds: f64,
}

/// `wrap()`'s default `k` (sdk-python/python/memoire/_wrap.py).
pub const WRAP_K: u32 = 10;
/// `wrap()`'s default `token_budget`.
pub const WRAP_TOKEN_BUDGET: u32 = 1024;

/// The turn ids of the items a packed context holds, in the order packed.
fn packed_turn_ids(reply: &pb::RecallResponse, episodes: &HashMap<String, String>) -> Vec<String> {
    let by_id: HashMap<&str, &pb::RecallItem> = reply
        .items
        .iter()
        .filter_map(|i| match &i.item {
            Some(pb::recall_item::Item::Episode(e)) => Some((e.id.as_str(), i)),
            Some(pb::recall_item::Item::Memory(m)) => Some((m.id.as_str(), i)),
            None => None,
        })
        .collect();
    let mut out = Vec::new();
    for line in reply.context.lines() {
        let Some(id) = line
            .rsplit_once(' ')
            .map(|(_, id)| id.trim_end_matches(']'))
            .filter(|_| line.ends_with(']'))
        else {
            continue;
        };
        if let Some(item) = by_id.get(id) {
            out.extend(turn_ids(
                &pb::RecallResponse {
                    items: vec![(*item).clone()],
                    ..Default::default()
                },
                episodes,
            ));
        }
    }
    out
}

/// Ingests `convs` into `server` (one user each) through gRPC, runs the reflect job when asked
/// (session digests), asks every question through Recall and computes the baselines; with
/// `dump`, writes each question's first 100 items with their score components as a JSON line.
pub async fn evaluate(
    server: &TestServer,
    convs: &[Conversation],
    reflect: bool,
    mut dump: Option<&mut dyn std::io::Write>,
) -> anyhow::Result<Outcome> {
    let (_, client) = server.tenant("eval", pb::KeyRole::Writer).await;
    let mut m = client.memory();
    let started = Instant::now();
    let mut episodes = HashMap::new();
    for c in convs {
        episodes.extend(ingest(&mut m, c).await?);
    }
    wait_for_worker(server).await?;
    if reflect {
        let tenant: String = sqlx::query_scalar("SELECT id::text FROM tenants WHERE name = 'eval'")
            .fetch_one(server.pool())
            .await?;
        let r = server
            .admin()
            .admin()
            .run_maintenance(pb::RunMaintenanceRequest {
                job: pb::MaintenanceJob::Reflect as i32,
                tenant_id: tenant,
                ..Default::default()
            })
            .await?
            .into_inner();
        // In the background (it outlasts a call's deadline on the full data): wait for its run.
        let run: uuid::Uuid = r.job_id.parse()?;
        loop {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM maintenance_runs WHERE id = $1")
                    .bind(run)
                    .fetch_optional(server.pool())
                    .await?;
            match status.as_deref() {
                Some("running") | None => tokio::time::sleep(Duration::from_millis(500)).await,
                Some("done") => break,
                Some(other) => anyhow::bail!("reflect ended {other}"),
            }
        }
    }
    // What autovacuum does within a minute of a bulk load: without statistics the planner
    // estimates one row per table and reads whole scopes; a deployment is measured with them.
    sqlx::query("ANALYZE").execute(server.pool()).await?;
    let memories: i64 = sqlx::query_scalar("SELECT count(*) FROM memories")
        .fetch_one(server.pool())
        .await?;
    let ingest_seconds = started.elapsed().as_secs_f64();

    let model = memoire_providers::LocalEmbedder::load(&crate::model_dir(), "all-MiniLM-L6-v2")
        .context("loading the local model for the dense baseline")?;
    let (mut with_episodes, mut default, mut wrap, mut bm25, mut dense, mut fused) = (
        Metrics::default(),
        Metrics::default(),
        Metrics::default(),
        Metrics::default(),
        Metrics::default(),
        Metrics::default(),
    );
    let mut latencies = Vec::new();
    let (mut unstable, mut unstable_past_pool) = (0, 0);
    let pool = server.config.recall_candidates as u32;
    for c in convs {
        let docs: Vec<(String, String)> = c
            .turns()
            .map(|(s, t)| (t.dia_id.clone(), rendered(s, t)))
            .collect();
        let texts: Vec<String> = docs.iter().map(|d| d.1.clone()).collect();
        let index = Bm25::new(&texts);
        let doc_vectors = model.embed_blocking(&texts)?;
        let query_texts: Vec<String> = c.questions.iter().map(|q| q.text.clone()).collect();
        let query_vectors = model.embed_blocking(&query_texts)?;
        for (q, qv) in c.questions.iter().zip(&query_vectors) {
            let ids = |order: &[usize]| -> Vec<String> {
                order.iter().take(20).map(|&i| docs[i].0.clone()).collect()
            };
            let text_order = order(&index.scores(&q.text));
            let cos: Vec<f32> = doc_vectors
                .iter()
                .map(|d| d.iter().zip(qv).map(|(a, b)| a * b).sum())
                .collect();
            let dense_order = order(&cos);
            bm25.add(q, &ids(&text_order));
            dense.add(q, &ids(&dense_order));
            fused.add(q, &ids(&rrf(&[text_order, dense_order], docs.len())));

            let ask = |k: u32, include_episodes: Option<bool>| pb::RecallRequest {
                user_id: c.id.clone(),
                query: q.text.clone(),
                k,
                include_episodes,
                token_budget: 4000,
                ..Default::default()
            };
            let t = Instant::now();
            let reply = m.recall(ask(20, Some(true))).await?.into_inner();
            latencies.push(t.elapsed());
            let returned = turn_ids(&reply, &episodes);
            with_episodes.add(q, &returned);
            let plain = m.recall(ask(20, None)).await?.into_inner();
            default.add(q, &turn_ids(&plain, &episodes));
            let wrapped = m
                .recall(pb::RecallRequest {
                    user_id: c.id.clone(),
                    query: q.text.clone(),
                    k: WRAP_K,
                    token_budget: WRAP_TOKEN_BUDGET,
                    ..Default::default()
                })
                .await?
                .into_inner();
            wrap.add(q, &packed_turn_ids(&wrapped, &episodes));
            // Asking for more never reorders the first ones, up to the pool.
            let ten = m.recall(ask(10, Some(true))).await?.into_inner();
            let pooled = m.recall(ask(pool, Some(true))).await?.into_inner();
            let hundred = m.recall(ask(100, Some(true))).await?.into_inner();
            let first = |r: &pb::RecallResponse, n: usize| -> Vec<String> {
                r.items
                    .iter()
                    .take(n)
                    .map(|i| match &i.item {
                        Some(pb::recall_item::Item::Episode(e)) => e.id.clone(),
                        Some(pb::recall_item::Item::Memory(m)) => m.id.clone(),
                        None => String::new(),
                    })
                    .collect()
            };
            if first(&ten, 10) != first(&pooled, 10) {
                unstable += 1;
            }
            if first(&ten, 10) != first(&hundred, 10) {
                unstable_past_pool += 1;
            }
            if let Some(out) = dump.as_deref_mut() {
                let explained = m
                    .recall(pb::RecallRequest {
                        explain: true,
                        ..ask(100, Some(true))
                    })
                    .await?
                    .into_inner();
                let items: Vec<serde_json::Value> = explained
                    .items
                    .iter()
                    .map(|i| {
                        let e = i.explain.unwrap_or_default();
                        let (kind, session, turns) = match &i.item {
                            Some(pb::recall_item::Item::Episode(ep)) => (
                                "episode",
                                format!("{}|{}", ep.session_id, ep.name),
                                vec![ep.message_id.clone()],
                            ),
                            Some(pb::recall_item::Item::Memory(mem)) => (
                                "memory",
                                String::new(),
                                mem.source_episode_ids
                                    .iter()
                                    .filter_map(|id| episodes.get(id).cloned())
                                    .collect(),
                            ),
                            None => ("", String::new(), vec![]),
                        };
                        serde_json::json!({
                            "kind": kind, "session": session, "turns": turns,
                            "text": e.text_score, "text_rank": e.text_rank,
                            "vector": e.vector_score, "vector_rank": e.vector_rank,
                            "recency": e.recency, "final": e.r#final, "context": e.context,
                        })
                    })
                    .collect();
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({
                        "conversation": c.id, "question": q.text, "category": q.category,
                        "evidence": q.evidence, "items": items,
                    })
                )?;
            }
        }
    }
    if let Some(out) = dump {
        out.flush()?;
    }
    latencies.sort();
    Ok(Outcome {
        recall: with_episodes,
        default,
        wrap,
        bm25,
        dense,
        rrf: fused,
        latencies,
        pool,
        unstable,
        unstable_past_pool,
        memories,
        ingest_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_is_repaired_and_unknown_ids_dropped() {
        let known: HashSet<String> = ["D8:6", "D9:17", "D11:26", "D30:5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let raw: Vec<serde_json::Value> = ["D8:6; D9:17", "D:11:26", "D30:05", "D99:1"]
            .iter()
            .map(|s| serde_json::Value::String(s.to_string()))
            .collect();
        assert_eq!(
            repair_evidence(&raw, &known),
            vec!["D8:6", "D9:17", "D11:26", "D30:5"]
        );
    }

    #[test]
    fn metrics_of_a_perfect_and_an_empty_answer() {
        let q = Question {
            text: "q".into(),
            evidence: vec!["a".into(), "b".into()],
            category: 1,
        };
        let mut m = Metrics::default();
        m.add(&q, &["a".into(), "b".into()]);
        m.add(&q, &["x".into(), "a".into()]);
        let (mean, n) = m.mean(None);
        assert_eq!(n, 2);
        assert!((mean[2] - 0.75).abs() < 1e-9, "R@10 {mean:?}");
        assert!((mean[4] - 0.5).abs() < 1e-9, "all@10 {mean:?}");
        assert!((mean[0] - 0.25).abs() < 1e-9, "R@1 {mean:?}");
    }

    #[test]
    fn bm25_prefers_the_document_with_the_rare_term() {
        let docs = vec![
            "Caroline went to the support group".to_owned(),
            "Melanie painted a sunrise".to_owned(),
            "Caroline and Melanie talked".to_owned(),
        ];
        let s = Bm25::new(&docs).scores("Who painted the sunrise?");
        assert_eq!(order(&s)[0], 1);
        assert_eq!(
            parse_date("1:56 pm on 8 May, 2023").unwrap().to_string(),
            "2023-05-08 13:56:00 UTC"
        );
    }
}
