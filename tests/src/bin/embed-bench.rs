//! The local embedding model on its own (release build: `make bench-embed`), no server:
//! - one query at a time (what a computed Recall waits for): p50 / p95 / p99 and queries/s;
//! - queries from 4 concurrent callers (they share the passes and are batched while they wait);
//! - documents in batches of 64 (what the worker's embedding passes do): texts/s.
//!
//! `--quick` for a smoke run.

use std::time::{Duration, Instant};

use memoire_core::embed::Embedder;
use memoire_providers::LocalEmbedder;
use memoire_tests::percentile_ms;

/// Short questions of the kind Recall gets (5–15 words).
const QUERIES: &[&str] = &[
    "What did Caroline research last week?",
    "Where does the user live now?",
    "When is the dentist appointment?",
    "What kind of music do they like to listen to while running?",
    "Which restaurant did we book for the anniversary dinner?",
    "How many kids does she have and how old are they?",
    "What allergies should I keep in mind when cooking for him?",
    "Did I already pay the electricity bill this month?",
    "What was the name of the book my sister recommended?",
    "What are the user's plans for the summer holidays in Portugal?",
    "Which programming languages does the user prefer at work?",
    "Who is coming to the birthday party on Saturday?",
    "What did the doctor say about my knee after the last visit?",
    "How long has she been learning to play the violin?",
    "What is my manager's name?",
    "Why did they move out of the old apartment?",
];

fn documents() -> Vec<String> {
    // Conversation turns: two to four sentences each (20–60 tokens).
    (0..QUERIES.len() * 4)
        .map(|i| {
            let n = 2 + i % 3;
            (0..n)
                .map(|j| QUERIES[(i * 7 + j * 5) % QUERIES.len()].replace('?', "."))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn row(label: &str, mut lat: Vec<Duration>, count: usize, wall: Duration) {
    lat.sort();
    println!(
        "| {label} | {:.2} | {:.2} | {:.2} | {:.1} |",
        percentile_ms(&lat, 0.5),
        percentile_ms(&lat, 0.95),
        percentile_ms(&lat, 0.99),
        count as f64 / wall.as_secs_f64()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = std::env::var_os("MEMOIRE_EMBEDDING_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| ".models/all-MiniLM-L6-v2".into());
    let started = Instant::now();
    let model = LocalEmbedder::load(&dir, "all-MiniLM-L6-v2")?;
    println!(
        "model loaded in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    let rounds = if quick { 20 } else { 400 };

    // Warm-up: page the weights in and size the allocator.
    for q in QUERIES {
        model.embed(&[q.to_string()]).await?;
    }
    println!("| run | p50 ms | p95 ms | p99 ms | texts/s |");
    println!("|---|---|---|---|---|");

    let mut lat = Vec::with_capacity(rounds);
    let wall = Instant::now();
    for i in 0..rounds {
        let q = [QUERIES[i % QUERIES.len()].to_string()];
        let t = Instant::now();
        model.embed(&q).await?;
        lat.push(t.elapsed());
    }
    row("one query, c=1", lat, rounds, wall.elapsed());

    let wall = Instant::now();
    let callers = (0..4).map(|c| {
        let model = model.clone();
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(rounds);
            for i in 0..rounds {
                let q = [QUERIES[(i + c * 5) % QUERIES.len()].to_string()];
                let t = Instant::now();
                model.embed(&q).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        })
    });
    let mut lat = Vec::new();
    for c in callers.collect::<Vec<_>>() {
        lat.extend(c.await??);
    }
    row("one query, c=4", lat, 4 * rounds, wall.elapsed());

    let docs = documents();
    let batches = if quick { 2 } else { 20 };
    let mut lat = Vec::with_capacity(batches);
    let wall = Instant::now();
    for b in 0..batches {
        let batch: Vec<String> = (0..64)
            .map(|i| docs[(b * 64 + i) % docs.len()].clone())
            .collect();
        let t = Instant::now();
        model.embed(&batch).await?;
        lat.push(t.elapsed());
    }
    row("64 documents per call", lat, 64 * batches, wall.elapsed());
    Ok(())
}
