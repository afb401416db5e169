//! all-MiniLM-L6-v2 (or any BERT sentence-embedding model in the same layout) in-process, on CPU,
//! in pure Rust: the BERT encoder ([`crate::bert`]) → mean pooling over the tokens → L2
//! normalization, exactly as sentence-transformers does it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memoire_core::embed::{BoxFuture, Embedder};
use memoire_core::{Error, Result};
use tokenizers::{Tokenizer, TruncationParams};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::bert::{Bert, Config, has_bfloat_pairs};

/// sentence-transformers' `max_seq_length` for this model family: longer inputs are truncated.
pub const MAX_SEQ_LEN: usize = 256;
/// Texts per forward pass: enough token rows to fill the encoder's row blocks, few enough that
/// a batch spreads over the cores.
const BATCH: usize = 32;
/// Queries embedded together at most (see [`LocalEmbedder`]'s `waiting`).
const QUERY_BATCH: usize = 8;

/// A single text waiting for a forward pass, and where its vector goes.
type Waiting = (String, oneshot::Sender<Result<Vec<f32>>>);

struct Model {
    bert: Bert,
    tokenizer: Tokenizer,
}

/// The local embedder. Cheap to clone.
#[derive(Clone)]
pub struct LocalEmbedder {
    model: Arc<Model>,
    model_id: String,
    dims: usize,
    // One forward pass per core: a short query barely parallelizes inside the model, so two
    // concurrent passes on two cores raised computed-recall throughput at concurrency 8 from
    // 52 to 60 QPS (recall-bench, 10k scope); more than that only adds contention.
    permits: Arc<Semaphore>,
    // Forward passes run at once over a batch's chunks: one per core.
    passes: usize,
    // Single texts (queries) waiting while every pass is busy. The next pass to finish embeds
    // them together: one pass over several short texts reads the weights once for all of them,
    // and a query that finds a pass free does not wait for company.
    waiting: Arc<std::sync::Mutex<Vec<Waiting>>>,
}

impl std::fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEmbedder")
            .field("model_id", &self.model_id)
            .field("dims", &self.dims)
            .finish()
    }
}

fn file(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::invalid(
            "embedding_model_dir",
            format!(
                "{} has no {name}; run scripts/setup.sh to install the model files",
                dir.display()
            ),
        ))
    }
}

fn model_err(e: impl std::fmt::Display) -> Error {
    Error::Provider(format!("local embedding model: {e}"))
}

impl LocalEmbedder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path, model_id: &str) -> Result<Self> {
        let model = Model::load(dir, has_bfloat_pairs())?;
        let dims = model.bert.dims();
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Ok(LocalEmbedder {
            model: Arc::new(model),
            model_id: model_id.to_owned(),
            dims,
            permits: Arc::new(Semaphore::new(threads.max(1))),
            passes: threads.max(1),
            waiting: Arc::default(),
        })
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        // A panic while holding the lock leaves a valid Vec: keep going.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Embeds one text: waits with the others for a free pass (see `waiting`).
    async fn embed_one(&self, text: String) -> Result<Vec<f32>> {
        let (tx, rx) = oneshot::channel();
        self.waiting().push((text, tx));
        self.serve_any_waiting();
        rx.await
            .map_err(|_| model_err("the embedding pass was dropped"))?
    }

    /// Starts a pass over the waiting texts when there are some and a pass is free. Called after
    /// a text is queued and after a pass is given back: then no text waits while a pass is free.
    fn serve_any_waiting(&self) {
        if self.waiting().is_empty() {
            return;
        }
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            tokio::spawn(self.clone().serve_waiting(permit));
        }
    }

    /// The next pass's texts: up to [`QUERY_BATCH`] of those waiting, first come first served.
    /// A query nobody waits for any more (a Recall that embeds another text instead) leaves the
    /// queue unembedded.
    fn next_batch(&self) -> Vec<Waiting> {
        let mut waiting = self.waiting();
        waiting.retain(|(_, tx)| !tx.is_closed());
        let n = waiting.len().min(QUERY_BATCH);
        waiting.drain(..n).collect()
    }

    /// Embeds waiting texts, up to [`QUERY_BATCH`] per pass, while any wait; then gives the
    /// pass back.
    async fn serve_waiting(self, permit: OwnedSemaphorePermit) {
        loop {
            let batch = self.next_batch();
            if batch.is_empty() {
                drop(permit);
                // A text queued while this pass was still held found no pass free: serve it.
                self.serve_any_waiting();
                return;
            }
            let (texts, senders): (Vec<String>, Vec<_>) = batch.into_iter().unzip();
            let this = self.clone();
            let count = texts.len();
            let out = tokio::task::spawn_blocking(move || this.embed_blocking(&texts))
                .await
                .map_err(model_err)
                .and_then(|r| r);
            metrics::histogram!("memoire_embedding_query_batch").record(count as f64);
            match out {
                Ok(vectors) => {
                    for (tx, v) in senders.into_iter().zip(vectors) {
                        let _ = tx.send(Ok(v));
                    }
                }
                Err(e) => {
                    for tx in senders {
                        let _ = tx.send(Err(Error::Provider(e.to_string())));
                    }
                }
            }
        }
    }

    /// Embeds synchronously (call from a blocking thread).
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        // Passes do not pad, and a text's vector does not depend on the others in its pass, so
        // chunks are simply consecutive texts.
        let chunks: Vec<&[String]> = texts.chunks(BATCH).collect();
        let forward = |chunk: &[String]| self.model.forward(chunk);
        // Chunks are spread over the cores, one single-threaded forward pass per core.
        let lanes = self.passes.min(chunks.len()).max(1);
        let mut results: Vec<Option<Result<Vec<Vec<f32>>>>> = chunks.iter().map(|_| None).collect();
        if lanes == 1 {
            // One chunk (every query, every short batch): this thread runs it, no thread spawned.
            // A panicking pass is reported as below, as when it ran on a thread of its own.
            for (slot, chunk) in results.iter_mut().zip(&chunks) {
                *slot =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| forward(chunk))).ok();
            }
        } else {
            std::thread::scope(|scope| {
                let (chunks, forward) = (&chunks, &forward);
                let handles: Vec<_> = (0..lanes)
                    .map(|lane| {
                        scope.spawn(move || {
                            chunks
                                .iter()
                                .enumerate()
                                .skip(lane)
                                .step_by(lanes)
                                .map(|(i, c)| (i, forward(c)))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                for h in handles {
                    for (i, r) in h.join().unwrap_or_default() {
                        results[i] = Some(r);
                    }
                }
            });
        }
        let mut out = Vec::with_capacity(texts.len());
        for vectors in results {
            out.extend(vectors.unwrap_or_else(|| Err(model_err("a forward pass panicked")))?);
        }
        Ok(out)
    }
}

impl Model {
    /// Reads the model files from `dir`, the dense layers packed as bfloat16 `pairs` or halves.
    fn load(dir: &Path, pairs: bool) -> Result<Model> {
        let config: Config =
            serde_json::from_slice(&std::fs::read(file(dir, "config.json")?).map_err(model_err)?)
                .map_err(|e| Error::invalid("embedding_model_dir", format!("config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_file(file(dir, "tokenizer.json")?)
            .map_err(|e| Error::invalid("embedding_model_dir", format!("tokenizer.json: {e}")))?;
        // The shipped tokenizer.json pads every input to 128 tokens; the encoder takes each
        // text at its own length. Truncate as sentence-transformers does.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_SEQ_LEN,
                ..TruncationParams::default()
            }))
            .map_err(model_err)?;
        let weights = std::fs::read(file(dir, "model.safetensors")?).map_err(model_err)?;
        let bert = Bert::load(&config, &weights, pairs).map_err(|e| {
            Error::invalid("embedding_model_dir", format!("model.safetensors: {e}"))
        })?;
        Ok(Model { bert, tokenizer })
    }

    fn forward(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        // One text at a time: `encode_batch` would hand the texts to a thread pool, and a pass
        // keeps to one core (see `LocalEmbedder::passes`).
        let encodings = texts
            .iter()
            .map(|t| self.tokenizer.encode(t.as_str(), true))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(model_err)?;
        let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        self.bert.embed(&ids).map_err(model_err)
    }
}

impl Embedder for LocalEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>>> {
        Box::pin(async move {
            if texts.is_empty() {
                return Ok(Vec::new());
            }
            if let [text] = texts {
                return Ok(vec![self.embed_one(text.clone()).await?]);
            }
            let permit = self.permits.acquire().await.map_err(model_err)?;
            let this = self.clone();
            let texts = texts.to_vec();
            let started = std::time::Instant::now();
            let out = tokio::task::spawn_blocking(move || this.embed_blocking(&texts)).await;
            drop(permit);
            // Texts that waited while every pass was busy, this one included, have no pass
            // serving them yet.
            self.serve_any_waiting();
            let out = out.map_err(model_err)??;
            tracing::trace!(
                count = out.len(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "embedded"
            );
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bert::{Isa, bits};

    fn model_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.models/all-MiniLM-L6-v2")
    }

    /// A query whose caller stopped waiting before a pass took it is not embedded; the others
    /// are, in order.
    #[tokio::test]
    async fn a_query_nobody_waits_for_leaves_the_queue() {
        let embedder = LocalEmbedder::load(&model_dir(), "all-MiniLM-L6-v2")
            .expect("the model files (scripts/setup.sh installs them)");
        let mut kept = Vec::new();
        for (i, text) in ["first", "dropped", "third"].into_iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            embedder.waiting().push((text.to_owned(), tx));
            if i == 1 {
                drop(rx);
            } else {
                kept.push(rx);
            }
        }
        let batch: Vec<String> = embedder.next_batch().into_iter().map(|(t, _)| t).collect();
        assert_eq!(batch, ["first", "third"]);
        assert!(embedder.waiting().is_empty());
    }

    /// The encoder's element-wise steps compiled for each instruction set this CPU has compute
    /// the same bits as the baseline build: vectors stored before a change of machine (or of
    /// this code) rank exactly as those written after.
    #[test]
    fn every_instruction_set_computes_the_same_bits() {
        let model = Model::load(&model_dir(), has_bfloat_pairs())
            .expect("the model files (scripts/setup.sh installs them)");
        let texts = [
            "Where does the user live now?",
            "I just moved to Lisbon. The weather is lovely, and I love the pastries — especially on Fridays!",
            "ok",
        ];
        let encodings: Vec<_> = texts
            .iter()
            .map(|t| model.tokenizer.encode(*t, true).expect("tokenize"))
            .collect();
        let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        let baseline = model.bert.encode_on(Isa::Baseline, &ids);
        for isa in Isa::available() {
            let got = model.bert.encode_on(isa, &ids);
            for (a, b) in got.iter().zip(&baseline) {
                assert_eq!(bits(a), bits(b), "{isa:?}");
            }
        }
    }

    /// Both packings of the dense layers, whichever kernel this CPU runs, against
    /// sentence-transformers' vectors (`tests/local_model.rs` checks the embedder the server
    /// loads, through its public API).
    #[test]
    fn both_packings_match_sentence_transformers() {
        let dir = model_dir();
        let raw = include_str!("../tests/data/minilm_reference.json");
        let doc: serde_json::Value = serde_json::from_str(raw).expect("reference json");
        let sentences = doc["sentences"].as_array().expect("sentences");
        let texts: Vec<String> = sentences
            .iter()
            .map(|s| s["text"].as_str().expect("text").to_owned())
            .collect();
        for pairs in [false, true] {
            let model =
                Model::load(&dir, pairs).expect("the model files (scripts/setup.sh installs them)");
            let got = model.forward(&texts).expect("embed");
            for (s, v) in sentences.iter().zip(&got) {
                let want: Vec<f32> = s["embedding"]
                    .as_array()
                    .expect("embedding")
                    .iter()
                    .map(|x| x.as_f64().expect("f64") as f32)
                    .collect();
                let c = memoire_core::embed::cosine(&want, v);
                assert!(c >= 0.9999, "bfloat16 pairs {pairs}: cosine {c} for {s}");
            }
        }
    }
}
