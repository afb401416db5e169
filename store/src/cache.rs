//! Redis as a cache (fred). Losing it loses nothing: every read that misses — because the key is
//! cold, Redis is down, or it answers slowly — falls back to the source, and writes are best
//! effort. A client that is not connected is skipped at once, so a Redis outage costs no latency.

use std::time::Duration;

use fred::prelude::*;

/// A Redis-backed cache.
#[derive(Clone)]
pub struct RedisCache {
    pub(crate) client: Client,
    timeout: Duration,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("connected", &self.client.is_connected())
            .finish()
    }
}

impl RedisCache {
    /// Starts connecting to `url` in the background and waits up to `wait` for the first
    /// connection. Never fails because Redis is down (only for a malformed URL): the client keeps
    /// reconnecting, and the cache works once Redis is back.
    pub async fn connect(url: &str, wait: Duration) -> memoire_core::Result<Self> {
        let config = Config::from_url(url).map_err(|e| {
            memoire_core::Error::invalid("redis_url", format!("cannot be parsed: {e}"))
        })?;
        let client = Builder::from_config(config)
            .with_config(|c| c.fail_fast = false)
            .with_connection_config(|c| {
                c.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..TcpConfig::default()
                };
                c.connection_timeout = Duration::from_millis(500);
                c.internal_command_timeout = Duration::from_millis(500);
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = Duration::from_millis(250))
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()
            .map_err(|e| memoire_core::Error::invalid("redis_url", e.to_string()))?;
        client.connect();
        if tokio::time::timeout(wait, client.wait_for_connect())
            .await
            .is_err()
        {
            tracing::warn!("redis is not reachable yet; caching is off until it is");
        }
        Ok(RedisCache {
            client,
            timeout: Duration::from_millis(50),
        })
    }

    /// Whether the client is connected now.
    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    /// The value at `key`; `None` on a miss, when disconnected, slow or failing.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        if !self.client.is_connected() {
            return None;
        }
        match tokio::time::timeout(self.timeout, self.client.get::<Option<Vec<u8>>, _>(key)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis get failed");
                None
            }
            Err(_) => None,
        }
    }

    /// Sets `key` to `value` for `ttl` (best effort).
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) {
        if !self.client.is_connected() {
            return;
        }
        let ex = Some(Expiration::EX(ttl.as_secs().max(1) as i64));
        let set = self.client.set::<(), _, _>(key, value, ex, None, false);
        if let Ok(Err(e)) = tokio::time::timeout(self.timeout, set).await {
            tracing::debug!(error = %e, "redis set failed");
        }
    }
}

impl RedisCache {
    /// Runs `op` with the command timeout; `None` when disconnected, slow or failing.
    pub(crate) async fn attempt<T>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<T, fred::error::Error>>,
    ) -> Option<T> {
        if !self.client.is_connected() {
            return None;
        }
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, command = what, "redis command failed");
                None
            }
            Err(_) => {
                tracing::debug!(command = what, "redis command timed out");
                None
            }
        }
    }

    /// The values at `keys` (one round trip); `None` when Redis did not answer.
    pub async fn mget(&self, keys: Vec<String>) -> Option<Vec<Option<String>>> {
        self.attempt("mget", self.client.mget::<Vec<Option<String>>, _>(keys))
            .await
    }

    /// Increments the counter at `key`; `None` when Redis did not answer.
    pub async fn incr(&self, key: &str) -> Option<i64> {
        self.attempt("incr", self.client.incr::<i64, _>(key)).await
    }

    /// Deletes every key matching `pattern` (SCAN, then DEL in batches). Returns how many, or
    /// `None` when Redis did not answer.
    pub async fn delete_matching(&self, pattern: &str) -> Option<u64> {
        use futures::TryStreamExt as _;
        if !self.client.is_connected() {
            return None;
        }
        let scan = async {
            let keys: Vec<Key> = self
                .client
                .scan_buffered(pattern, Some(500), None)
                .try_collect()
                .await?;
            let mut deleted = 0u64;
            for chunk in keys.chunks(500) {
                deleted += self.client.del::<u64, _>(chunk.to_vec()).await?;
            }
            Ok::<u64, fred::error::Error>(deleted)
        };
        match tokio::time::timeout(Duration::from_secs(5), scan).await {
            Ok(Ok(n)) => Some(n),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis scan/delete failed");
                None
            }
            Err(_) => None,
        }
    }
}
