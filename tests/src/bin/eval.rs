//! `make eval`: recall quality on long conversations, through the real gRPC API, beside three
//! baselines computed in the same run (see `memoire_tests::eval`).
//!
//! Usage: `eval [DATA_DIR] [--conversations N] [--dump FILE] [--reflect]`; the directory also comes from
//! `MEMOIRE_EVAL_DATA` and defaults to `../shared/data/locomo-dev` next to the repository.
//! `--dump` writes, per question, the 100 items Recall ranks first with their score components
//! (JSON lines), for choosing fusion settings offline by cross-validation. `--reflect` runs the
//! reflect job (session digests) after extraction, before the questions.

use memoire_tests::eval;
use memoire_tests::{TestServer, percentile_ms};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Measured as the binaries run: one core per forward pass of the model.
    let dir = eval::data_dir(&["--conversations", "--dump"]);
    if !dir.is_dir() {
        eprintln!(
            "eval: no evaluation data at {} — pass a directory of LoCoMo-format conversations \
             (`make eval EVAL_DATA=…`, or MEMOIRE_EVAL_DATA); the development split lives in \
             ../shared/data/locomo-dev",
            dir.display()
        );
        std::process::exit(2);
    }
    let limit = eval::option("--conversations").and_then(|n| n.parse::<usize>().ok());
    let mut convs = eval::read_dir(&dir)?;
    if let Some(n) = limit {
        convs.truncate(n);
    }
    let questions: usize = convs.iter().map(|c| c.questions.len()).sum();
    let turns: usize = convs.iter().map(|c| c.turns().count()).sum();
    println!(
        "eval: {} conversations, {turns} turns, {questions} questions (categories 1-4) from {}",
        convs.len(),
        dir.display()
    );

    let server = TestServer::start_with(|c| c.log = "warn".into(), None).await;
    let mut file = match eval::option("--dump") {
        Some(path) => Some(std::io::BufWriter::new(std::fs::File::create(&path)?)),
        None => None,
    };
    let o = eval::evaluate(
        &server,
        &convs,
        std::env::args().any(|a| a == "--reflect"),
        file.as_mut().map(|f| f as &mut dyn std::io::Write),
    )
    .await?;
    println!(
        "ingested and extracted in {:.1} s ({} memories)",
        o.ingest_seconds, o.memories
    );
    println!();
    print!(
        "{}",
        eval::report(&[
            ("Recall, include_episodes=true (k=20)", &o.recall),
            ("Recall, default flags (k=20)", &o.default),
            (
                &format!(
                    "wrap(): packed context (k={}, {} tokens)",
                    eval::WRAP_K,
                    eval::WRAP_TOKEN_BUDGET
                ),
                &o.wrap,
            ),
            ("baseline: Okapi BM25", &o.bm25),
            ("baseline: MiniLM dense", &o.dense),
            ("baseline: RRF(BM25, dense)", &o.rrf),
        ])
    );
    println!(
        "\nRecall latency (include_episodes, k=20, query embedding computed, c=1): p50 {:.1} ms, p95 {:.1} ms",
        percentile_ms(&o.latencies, 0.5),
        percentile_ms(&o.latencies, 0.95)
    );
    println!(
        "k-stability: {} of {questions} questions had a different top 10 at k={} (recall_candidates) \
         than at k=10; {} at k=100 (past the pool)",
        o.unstable, o.pool, o.unstable_past_pool
    );
    let metrics = memoire_tests::http_get(server.http_addr, "/metrics").await;
    println!(
        "\nRecall's profile (all recalls of the run, cached query embeddings included):\n{}",
        memoire_tests::recall_profile("", &metrics)
    );
    Ok(())
}
