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

/// Counts a Redis command that failed, timed out, or was not sent because the client is not
/// connected (`memoire_redis_errors_total{command}`): every one is a cache miss, a lost write or
/// a decision taken without Redis.
fn failed(command: &'static str) {
    metrics::counter!("memoire_redis_errors_total", "command" => command).increment(1);
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
            failed("get");
            return None;
        }
        match tokio::time::timeout(self.timeout, self.client.get::<Option<Vec<u8>>, _>(key)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis get failed");
                failed("get");
                None
            }
            Err(_) => {
                failed("get");
                None
            }
        }
    }

    /// Sets `key` to `value` for `ttl` (best effort).
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) {
        if !self.client.is_connected() {
            failed("set");
            return;
        }
        let ex = Some(Expiration::EX(ttl.as_secs().max(1) as i64));
        let set = self.client.set::<(), _, _>(key, value, ex, None, false);
        match tokio::time::timeout(self.timeout, set).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "redis set failed");
                failed("set");
            }
            Err(_) => failed("set"),
        }
    }
}

impl RedisCache {
    /// Runs `op` with the command timeout; `None` when disconnected, slow or failing.
    pub(crate) async fn attempt<T>(
        &self,
        what: &'static str,
        op: impl std::future::Future<Output = Result<T, fred::error::Error>>,
    ) -> Option<T> {
        if !self.client.is_connected() {
            failed(what);
            return None;
        }
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, command = what, "redis command failed");
                failed(what);
                None
            }
            Err(_) => {
                tracing::debug!(command = what, "redis command timed out");
                failed(what);
                None
            }
        }
    }

    /// The values at `keys`, asked side by side (one round trip to one server; on a cluster,
    /// keys of different hash slots cannot share an `MGET`); `None` when Redis did not answer.
    pub async fn get_all(&self, keys: &[String]) -> Option<Vec<Option<String>>> {
        let gets = keys
            .iter()
            .map(|k| self.client.get::<Option<String>, _>(k.as_str()));
        self.attempt("get", futures::future::try_join_all(gets))
            .await
    }

    /// Increments the counter at `key`; `None` when Redis did not answer.
    pub async fn incr(&self, key: &str) -> Option<i64> {
        self.attempt("incr", self.client.incr::<i64, _>(key)).await
    }

    /// Deletes every key matching `pattern` (SCAN — on every primary of a cluster — then DEL in
    /// batches). Returns how many, or `None` when Redis did not answer.
    pub async fn delete_matching(&self, pattern: &str) -> Option<u64> {
        use futures::TryStreamExt as _;
        if !self.client.is_connected() {
            failed("delete_matching");
            return None;
        }
        let clustered = self.client.is_clustered();
        let scan = async {
            let keys: Vec<Key> = if clustered {
                self.client
                    .scan_cluster_buffered(pattern, Some(500), None)
                    .try_collect()
                    .await?
            } else {
                self.client
                    .scan_buffered(pattern, Some(500), None)
                    .try_collect()
                    .await?
            };
            let mut deleted = 0u64;
            for chunk in keys.chunks(500) {
                deleted += if clustered {
                    // One DEL per key: keys of different hash slots cannot share one.
                    let dels = chunk.iter().map(|k| self.client.del::<u64, _>(k.clone()));
                    futures::future::try_join_all(dels).await?.iter().sum()
                } else {
                    self.client.del::<u64, _>(chunk.to_vec()).await?
                };
            }
            Ok::<u64, fred::error::Error>(deleted)
        };
        match tokio::time::timeout(Duration::from_secs(5), scan).await {
            Ok(Ok(n)) => Some(n),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis scan/delete failed");
                failed("delete_matching");
                None
            }
            Err(_) => {
                failed("delete_matching");
                None
            }
        }
    }
}
