//! Mémoire's use-cases: one function per operation, each holding its pipeline. This is the only
//! layer that calls both the providers (embedding model, LLM, token counting) and the store
//! (Postgres and Redis); the gRPC adapters (`memoire-server`) and the worker loops
//! (`memoire-worker`) call these functions and nothing below them.
//!
//! - [`UseCases`]: the handle both share — the store, the embedder, the Redis-backed caches and
//!   the settings. `memory`: Recall, Teach, Forget, Ingest, Conscious and the reads.
//! - `extract`: the worker's steps — extract and resolve one episode, embed pending episodes,
//!   sweep expired memories.
//! - [`jobs`]: the periodic jobs (optimize, decay, reflect, retention, re-embed).
//! - `admin`: tenants, keys, stats, dead letters.
//! - [`auth`]: who is calling; `limits`: rate limits; [`query`]: the query-embedding cache.

mod admin;
pub mod auth;
mod chat;
mod extract;
pub mod jobs;
mod limits;
mod memory;
pub mod query;

use std::sync::Arc;

use memoire_core::embed::{Embedder, Embedding, memory_text};
use memoire_core::model::Scope;
use memoire_core::recall::Weights;
use memoire_store::{ConsciousCache, ConsciousSettings, PgStore, SearchSettings};

pub use auth::Authenticator;
pub use chat::{ChatTurn, Chatted};
pub use extract::{ExtractSettings, Step, job_outcome};
pub use limits::{Permit, PermitDecider, RateLimiter};
pub use memory::{ExtractionWait, Recalled};
pub use query::QueryEmbedder;

// The store's plain types that adapters and the worker see in use-case signatures.
pub use memoire_store::{
    Applied, ConsciousSource, ConsciousView, EPISODES_CHANNEL, EmbedClaim, ExportScope,
    ImportCounts, Importer, JobScope, NewApiKey, PendingEpisode, RetryPolicy, ScopeClaim,
    TenantUpdate,
};

/// What Recall needs besides the store.
#[derive(Debug, Clone)]
pub struct RecallSettings {
    /// Fusion weights.
    pub weights: Weights,
    /// How the searches run (exact or approximate, by scope size).
    pub search: SearchSettings,
    /// Candidates per search side for every k up to this (a larger k takes k).
    pub candidates: usize,
    /// The decay floor: memories below it are left out.
    pub min_confidence: f32,
}

/// The use-cases' settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Recall.
    pub recall: RecallSettings,
    /// Conscious.
    pub conscious: ConsciousSettings,
    /// The periodic jobs.
    pub jobs: jobs::JobSettings,
    /// Extraction (the worker's steps).
    pub extract: ExtractSettings,
    /// The chat model that answers Chat (`None`: Chat returns the prompt and no reply).
    pub chat: Option<Arc<dyn memoire_core::chat::Responder>>,
}

/// The use-cases, over one store and one embedding model. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UseCases {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: PgStore,
    /// Embeds what is written (memories, episodes).
    embedder: Arc<dyn Embedder>,
    /// Embeds queries, through the cache.
    queries: QueryEmbedder,
    /// Conscious entries in Redis (`None`: always rebuilt from Postgres).
    conscious: Option<ConsciousCache>,
    /// Rate limits.
    limiter: RateLimiter,
    settings: Settings,
}

impl UseCases {
    /// The use-cases over `store`, writing vectors with `embedder`, embedding queries with
    /// `queries`, keeping Conscious in `conscious` when given and rate-limiting with `limiter`.
    pub fn new(
        store: PgStore,
        embedder: Arc<dyn Embedder>,
        queries: QueryEmbedder,
        conscious: Option<ConsciousCache>,
        limiter: RateLimiter,
        settings: Settings,
    ) -> Self {
        UseCases {
            inner: Arc::new(Inner {
                store,
                embedder,
                queries,
                conscious,
                limiter,
                settings,
            }),
        }
    }

    /// The same use-cases writing vectors with another embedder (the embedded worker's, which
    /// runs one model call at a time).
    pub fn with_embedder(&self, embedder: Arc<dyn Embedder>) -> Self {
        UseCases {
            inner: Arc::new(Inner {
                store: self.inner.store.clone(),
                embedder,
                queries: self.inner.queries.clone(),
                conscious: self.inner.conscious.clone(),
                limiter: self.inner.limiter.clone(),
                settings: self.inner.settings.clone(),
            }),
        }
    }

    /// The store (health checks, the worker's queue, tests).
    pub fn store(&self) -> &PgStore {
        &self.inner.store
    }

    /// The rate limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The embedder that writes vectors.
    pub fn embedder(&self) -> Arc<dyn Embedder> {
        self.inner.embedder.clone()
    }

    /// The id of the embedding model.
    pub fn embedding_model(&self) -> &str {
        self.inner.embedder.model_id()
    }

    /// One vector per text, with the write embedder.
    async fn embed(&self, texts: &[String]) -> memoire_core::Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let vectors = self.inner.embedder.embed(texts).await?;
        if vectors.len() != texts.len() {
            return Err(memoire_core::Error::Provider(format!(
                "the embedder returned {} vectors for {} texts",
                vectors.len(),
                texts.len()
            )));
        }
        Ok(vectors)
    }

    /// The vectors of `texts` with the model's id.
    async fn embeddings(&self, texts: &[String]) -> memoire_core::Result<Vec<Embedding>> {
        let model = self.embedding_model().to_owned();
        Ok(self
            .embed(texts)
            .await?
            .into_iter()
            .map(|vector| Embedding {
                vector,
                model: model.clone(),
            })
            .collect())
    }

    /// The vector of a memory's text.
    async fn embed_memory(
        &self,
        content: &str,
        subject: Option<&str>,
        slot: Option<&str>,
    ) -> memoire_core::Result<Option<Embedding>> {
        Ok(self
            .embeddings(&[memory_text(content, subject, slot)])
            .await?
            .pop())
    }

    /// Marks a user+namespace's data changed (after the write committed): the tenant's reads
    /// stay on the primary until a read replica has the change, and the next Conscious rebuilds.
    async fn changed(&self, scope: &Scope) {
        self.store().wrote(scope.tenant_id);
        if let Some(c) = &self.inner.conscious {
            c.invalidate(scope.tenant_id, &scope.user_id, &scope.namespace)
                .await;
        }
    }

    /// [`Self::changed`] for each scope.
    async fn changed_all(&self, scopes: &[Scope]) {
        for scope in scopes {
            self.changed(scope).await;
        }
    }

    /// Removes a user+namespace's working memory from Redis (purge).
    async fn purged(&self, scope: &Scope) {
        self.store().wrote(scope.tenant_id);
        if let Some(c) = &self.inner.conscious {
            c.purge(scope.tenant_id, &scope.user_id, &scope.namespace)
                .await;
        }
    }
}
