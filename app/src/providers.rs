//! The providers a process uses (embedder, extractor, summarizer), built from the configuration.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use memoire_config::{Config, EmbeddingProvider, ExtractorKind, LlmJsonMode};
use memoire_core::chat::Responder;
use memoire_core::embed::Embedder;
use memoire_core::extract::{Extractor, RuleExtractor, Summarizer};
use memoire_providers::{
    ChatSettings, JsonMode, LlmExtractor, LocalEmbedder, OpenAiEmbedder, OpenAiSettings,
};

/// Retries of one embeddings request to a remote provider (after the first attempt).
pub(crate) const EMBEDDING_MAX_RETRIES: u32 = 2;

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
            max_retries: EMBEDDING_MAX_RETRIES,
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

/// The model that writes abstractive session summaries: the extraction model when one is
/// configured (`None`: extractive summaries).
pub fn summarizer(config: &Config) -> Option<Arc<dyn Summarizer>> {
    match config.extractor {
        ExtractorKind::Rules => None,
        ExtractorKind::Llm => llm(config).ok().map(|m| Arc::new(m) as Arc<dyn Summarizer>),
    }
}

/// The model that answers the Chat RPC (`chat_model`, at the same endpoint as extraction's).
pub fn chat_model(config: &Config) -> anyhow::Result<Option<Arc<dyn Responder>>> {
    let Some(model) = config
        .chat_model
        .as_deref()
        .filter(|m| !m.trim().is_empty())
    else {
        return Ok(None);
    };
    let chat = chat_client(config, model).context("the chat model (chat_model)")?;
    Ok(Some(Arc::new(chat)))
}

/// The configured OpenAI-compatible chat model (extraction and summaries).
fn llm(config: &Config) -> memoire_core::Result<LlmExtractor> {
    chat_client(config, &config.llm_model)
}

/// A client of the OpenAI-compatible chat endpoint for `model`.
fn chat_client(config: &Config, model: &str) -> memoire_core::Result<LlmExtractor> {
    LlmExtractor::new(ChatSettings {
        base_url: config.llm_base_url.clone(),
        model: model.to_owned(),
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
