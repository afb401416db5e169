//! The embedder and extractor a process uses, and the worker's settings, built from the
//! configuration (shared by `memoire-server` and `memoire-worker`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use memoire_config::{Config, EmbeddingProvider, ExtractorKind, LlmJsonMode};
use memoire_core::embed::Embedder;
use memoire_core::extract::{Extractor, RuleExtractor};
use memoire_core::resolve::Thresholds;
use memoire_providers::{
    ChatSettings, JsonMode, LlmExtractor, LocalEmbedder, OpenAiEmbedder, OpenAiSettings,
};
use memoire_store::RetryPolicy;

use crate::WorkerSettings;

/// Builds the configured embedder (loading the local model takes a fraction of a second).
pub fn embedder(config: &Config) -> anyhow::Result<Arc<dyn Embedder>> {
    let embedder: Arc<dyn Embedder> = match config.embedding_provider {
        EmbeddingProvider::Local => {
            let e = LocalEmbedder::load(&config.embedding_model_dir, &config.embedding_model).with_context(|| {
                format!(
                    "loading the local embedding model from {} (`embedding_model_dir`, MEMOIRE_EMBEDDING_MODEL_DIR)",
                    config.embedding_model_dir.display()
                )
            })?;
            Arc::new(e)
        }
        EmbeddingProvider::Openai => Arc::new(OpenAiEmbedder::new(OpenAiSettings {
            base_url: config.embedding_base_url.clone(),
            model: config.embedding_model.clone(),
            api_key: config.embedding_api_key.clone(),
            dims: config.embedding_dims as usize,
            send_dimensions: config.embedding_send_dimensions,
            timeout: Duration::from_millis(config.embedding_timeout_ms),
            max_retries: 2,
        })?),
    };
    anyhow::ensure!(
        embedder.dims() == config.embedding_dims as usize,
        "the embedding model has {} dimensions but `embedding_dims` (MEMOIRE_EMBEDDING_DIMS) is {}",
        embedder.dims(),
        config.embedding_dims
    );
    Ok(embedder)
}

/// An embedder that runs at most `permits` model calls at once: the worker's share of the CPU,
/// so that an embedded worker leaves the server's requests a core of their own.
#[derive(Debug)]
pub struct Background {
    inner: Arc<dyn Embedder>,
    permits: tokio::sync::Semaphore,
}

impl Background {
    /// Wraps `inner`.
    pub fn wrap(inner: Arc<dyn Embedder>, permits: usize) -> Arc<dyn Embedder> {
        Arc::new(Background {
            inner,
            permits: tokio::sync::Semaphore::new(permits.max(1)),
        })
    }
}

impl Embedder for Background {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }

    fn dims(&self) -> usize {
        self.inner.dims()
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> memoire_core::embed::BoxFuture<'a, memoire_core::Result<Vec<Vec<f32>>>> {
        Box::pin(async move {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|e| memoire_core::Error::Internal(e.to_string()))?;
            self.inner.embed(texts).await
        })
    }
}

/// Builds the configured extractor.
pub fn extractor(config: &Config) -> anyhow::Result<Arc<dyn Extractor>> {
    Ok(match config.extractor {
        ExtractorKind::Rules => Arc::new(RuleExtractor),
        ExtractorKind::Llm => Arc::new(llm(config)?),
    })
}

/// The configured OpenAI-compatible chat model (extraction and summaries).
fn llm(config: &Config) -> memoire_core::Result<LlmExtractor> {
    LlmExtractor::new(ChatSettings {
        base_url: config.llm_base_url.clone(),
        model: config.llm_model.clone(),
        api_key: config.llm_api_key.clone(),
        json_mode: match config.llm_json_mode {
            LlmJsonMode::Schema => JsonMode::Schema,
            LlmJsonMode::Object => JsonMode::Object,
        },
        timeout: Duration::from_millis(config.llm_timeout_ms),
        max_retries: config.llm_max_retries,
        max_content_bytes: config.max_content_bytes,
    })
}

/// The periodic jobs' settings.
pub fn job_settings(config: &Config) -> crate::jobs::JobSettings {
    use crate::jobs::Job;
    let every = |secs: u64| (secs > 0).then(|| Duration::from_secs(secs));
    crate::jobs::JobSettings {
        // With a model configured for extraction, reflect asks it for abstractive summaries.
        summarizer: match config.extractor {
            ExtractorKind::Rules => None,
            ExtractorKind::Llm => llm(config)
                .ok()
                .map(|m| Arc::new(m) as Arc<dyn memoire_core::extract::Summarizer>),
        },
        max_essential: config.conscious_max_essential,
        half_life: Duration::from_secs_f64(config.decay_half_life_days as f64 * 86_400.0),
        floor: config.decay_floor,
        reflect_min_turns: config.reflect_min_turns as i64,
        reflect_max_turns: config.reflect_max_turns as usize,
        reflect_idle: Duration::from_secs(config.reflect_idle_secs),
        max_content_bytes: config.max_content_bytes,
        every: vec![
            (Job::Optimize, every(config.optimize_interval_secs)),
            (Job::Decay, every(config.decay_interval_secs)),
            (Job::Reflect, every(config.reflect_interval_secs)),
            (Job::Retention, every(config.retention_interval_secs)),
            (Job::ReEmbed, every(config.reembed_interval_secs)),
        ],
    }
}

/// The worker's settings.
pub fn settings(config: &Config) -> WorkerSettings {
    WorkerSettings {
        expiry_sweep_interval: Duration::from_secs(config.expiry_sweep_interval_secs),
        poll_interval: Duration::from_millis(config.worker_poll_interval_ms),
        concurrency: config.worker_concurrency,
        retry: RetryPolicy {
            max_attempts: config.extraction_max_attempts,
            base_delay: Duration::from_millis(config.extraction_retry_base_ms),
            max_delay: Duration::from_millis(config.extraction_retry_max_ms),
        },
        thresholds: Thresholds {
            update: config.resolver_update_threshold,
            merge: config.resolver_merge_threshold,
        },
        context_turns: config.extraction_context_turns,
        // The rules read one message; related memories only matter to a model.
        known_memories: match config.extractor {
            ExtractorKind::Rules => 0,
            ExtractorKind::Llm => config.extraction_known_memories,
        },
        embed_batch: config.embed_batch_size,
        jobs: job_settings(config),
    }
}
