//! all-MiniLM-L6-v2 (or any BERT sentence-embedding model in the same layout) in-process, on CPU,
//! in pure Rust: BertModel → mean pooling over the attention mask → L2 normalization, exactly as
//! sentence-transformers does it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use memoire_core::embed::{BoxFuture, Embedder};
use memoire_core::{Error, Result};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use tokio::sync::Semaphore;

/// sentence-transformers' `max_seq_length` for this model family: longer inputs are truncated.
pub const MAX_SEQ_LEN: usize = 256;
/// Texts per forward pass; larger batches only add padding waste on two cores.
const BATCH: usize = 32;

struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
    device: Device,
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
        let config: Config =
            serde_json::from_slice(&std::fs::read(file(dir, "config.json")?).map_err(model_err)?)
                .map_err(|e| Error::invalid("embedding_model_dir", format!("config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_file(file(dir, "tokenizer.json")?)
            .map_err(|e| Error::invalid("embedding_model_dir", format!("tokenizer.json: {e}")))?;
        // The shipped tokenizer.json pads every input to 128 tokens, which makes one short
        // sentence 3x slower; pad to the longest of the batch and truncate as
        // sentence-transformers does.
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_SEQ_LEN,
                ..TruncationParams::default()
            }))
            .map_err(model_err)?;
        let device = Device::Cpu;
        let weights = std::fs::read(file(dir, "model.safetensors")?).map_err(model_err)?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(model_err)?;
        let dims = config.hidden_size;
        let bert = BertModel::load(vb, &config).map_err(model_err)?;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Ok(LocalEmbedder {
            model: Arc::new(Model {
                bert,
                tokenizer,
                device,
            }),
            model_id: model_id.to_owned(),
            dims,
            permits: Arc::new(Semaphore::new(threads.max(1))),
            passes: threads.max(1),
        })
    }

    /// Embeds synchronously (call from a blocking thread).
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        // Sort by length so that each batch pads little; restore the order at the end.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let chunks: Vec<&[usize]> = order.chunks(BATCH).collect();
        let forward = |chunk: &[usize]| {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
            self.model.forward(&batch)
        };
        // Chunks are spread over the cores, one single-threaded forward pass per core: with
        // RAYON_NUM_THREADS=1 (see `memoire_app::one_core_per_model_pass`) a pass never waits for a second
        // thread that another process descheduled.
        let lanes = self.passes.min(chunks.len()).max(1);
        let mut results: Vec<Option<Result<Vec<Vec<f32>>>>> = chunks.iter().map(|_| None).collect();
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
        let mut out = vec![Vec::new(); texts.len()];
        for (chunk, vectors) in chunks.iter().zip(results) {
            let vectors = vectors.unwrap_or_else(|| Err(model_err("a forward pass panicked")))?;
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

impl Model {
    fn forward(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(model_err)?;
        let rows = encodings.len();
        let cols = encodings.first().map(|e| e.get_ids().len()).unwrap_or(0);
        let (mut ids, mut mask) = (
            Vec::with_capacity(rows * cols),
            Vec::with_capacity(rows * cols),
        );
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (rows, cols), &self.device).map_err(model_err)?;
        let mask = Tensor::from_vec(mask, (rows, cols), &self.device).map_err(model_err)?;
        let type_ids = ids.zeros_like().map_err(model_err)?;
        let hidden = self
            .bert
            .forward(&ids, &type_ids, Some(&mask))
            .map_err(model_err)?;
        // Mean over real tokens only, then unit length.
        let mask = mask
            .to_dtype(DType::F32)
            .and_then(|m| m.unsqueeze(2))
            .map_err(model_err)?;
        let summed = hidden
            .broadcast_mul(&mask)
            .and_then(|t| t.sum(1))
            .map_err(model_err)?;
        let counts = mask
            .sum(1)
            .and_then(|c| c.clamp(1e-9, f64::MAX))
            .map_err(model_err)?;
        let pooled = summed.broadcast_div(&counts).map_err(model_err)?;
        let norms = pooled
            .sqr()
            .and_then(|t| t.sum_keepdim(1))
            .and_then(|t| t.sqrt())
            .and_then(|t| t.clamp(1e-12, f64::MAX))
            .map_err(model_err)?;
        pooled
            .broadcast_div(&norms)
            .and_then(|t| t.to_vec2::<f32>())
            .map_err(model_err)
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
            let _permit = self.permits.acquire().await.map_err(model_err)?;
            let this = self.clone();
            let texts = texts.to_vec();
            let started = std::time::Instant::now();
            let out = tokio::task::spawn_blocking(move || this.embed_blocking(&texts))
                .await
                .map_err(model_err)??;
            tracing::trace!(
                count = out.len(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "embedded"
            );
            Ok(out)
        })
    }
}
