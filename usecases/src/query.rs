//! The query-embedding cache (the embedder itself is built by `memoire_worker::providers`).

use std::sync::Arc;
use std::time::Duration;

use memoire_core::Result;
use memoire_core::embed::Embedder;
use memoire_store::RedisCache;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Embeds recall queries, through a Redis cache keyed by tenant, model and the text's hash.
/// Redis being cold, slow or down only means computing the embedding.
#[derive(Debug, Clone)]
pub struct QueryEmbedder {
    inner: Arc<dyn Embedder>,
    cache: Option<RedisCache>,
    ttl: Duration,
}

impl QueryEmbedder {
    /// A query embedder; `cache: None` (or a zero TTL) disables caching.
    pub fn new(inner: Arc<dyn Embedder>, cache: Option<RedisCache>, ttl: Duration) -> Self {
        let cache = cache.filter(|_| !ttl.is_zero());
        QueryEmbedder { inner, cache, ttl }
    }

    /// The model.
    pub fn model_id(&self) -> &str {
        self.inner.model_id()
    }

    /// The vector of `text`, and whether it came from the cache.
    pub async fn embed(&self, tenant: Uuid, text: &str) -> Result<(Vec<f32>, bool)> {
        let key = format!(
            "memoire:{tenant}:qemb:{}:{}",
            self.inner.model_id(),
            hex::encode(Sha256::digest(text.as_bytes()))
        );
        let dims = self.inner.dims();
        if let Some(cache) = &self.cache {
            match cache.get(&key).await {
                Some(bytes) if bytes.len() == dims * 4 => {
                    metrics::counter!("memoire_cache_requests_total", "cache" => "query_embedding", "result" => "hit").increment(1);
                    let v = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                    return Ok((v, true));
                }
                _ => metrics::counter!("memoire_cache_requests_total", "cache" => "query_embedding", "result" => "miss").increment(1),
            }
        }
        let text = [text.to_owned()];
        let started = std::time::Instant::now();
        let vector = self.inner.embed(&text).await?.pop().ok_or_else(|| {
            memoire_core::Error::Provider("the embedder returned no vector".into())
        })?;
        metrics::histogram!("memoire_embedding_duration_seconds", "kind" => "query")
            .record(started.elapsed().as_secs_f64());
        if let Some(cache) = self.cache.clone() {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            let ttl = self.ttl;
            // After the reply: the cache write never slows a recall.
            tokio::spawn(async move { cache.set(&key, bytes, ttl).await });
        }
        Ok((vector, false))
    }
}
