//! Redis as a cache (fred). Losing it loses nothing: every read that misses — because the key is
//! cold, Redis is down, or it answers slowly — falls back to the source, and writes are best
//! effort. A client that is not connected is skipped at once, so a Redis outage costs no latency.

use std::time::Duration;

use fred::prelude::*;

/// A Redis-backed cache.
#[derive(Clone)]
pub struct RedisCache {
    client: Client,
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
