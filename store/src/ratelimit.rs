//! Rate limits in Redis: one Lua script decides and counts a request against all of its limits
//! atomically, with Redis's clock, so that every replica shares one budget. The arithmetic is
//! `memoire_core::ratelimit::decide_all`'s, line for line. Each limit is one key holding its TAT
//! (microseconds), expiring once the limit is fully rested again.

use std::sync::LazyLock;

use fred::types::scripts::Script;
use memoire_core::ratelimit::{Admission, Limit};

use crate::RedisCache;

/// KEYS: one per limit. ARGV: the cost, then each limit's interval (µs) and burst.
/// Returns {allowed (0/1), remaining, retry_after_us, refused_by (0-based)}.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local tats, remaining, retry, refused_by = {}, -1, 0, 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = interval * tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local new_tat = tat + interval * cost
  local allow_at = new_tat - tolerance
  tats[i] = new_tat
  if allow_at <= now or tat == now then
    local r = math.floor((now + tolerance - new_tat) / interval)
    if r < 0 then r = 0 end
    if remaining < 0 or r < remaining then remaining = r end
  else
    local wait = math.min(allow_at, tat) - now
    if wait > retry then retry = wait; refused_by = i - 1 end
  end
end
if retry > 0 then return {0, 0, retry, refused_by} end
for i = 1, #KEYS do
  local ttl = math.ceil((tats[i] - now) / 1000) + 1000
  redis.call('SET', KEYS[i], string.format('%d', tats[i]), 'PX', ttl)
end
return {1, remaining, 0, 0}
"#;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::from_lua(GCRA));

impl RedisCache {
    /// Counts a request of `cost` units against `limits` (each with its key; keys of one call
    /// must share a hash slot for Redis Cluster, e.g. a `{tenant}` tag). `None` when Redis did not
    /// answer: the caller decides without it.
    pub async fn rate_limit(&self, limits: &[(String, Limit)], cost: u32) -> Option<Admission> {
        let keys: Vec<&str> = limits.iter().map(|(k, _)| k.as_str()).collect();
        let mut args: Vec<i64> = Vec::with_capacity(1 + 2 * limits.len());
        args.push(i64::from(cost.max(1)));
        for (_, l) in limits {
            args.push(l.interval_us());
            args.push(i64::from(l.burst));
        }
        let reply: Vec<i64> = self
            .attempt(
                "rate_limit",
                SCRIPT.evalsha_with_reload(&self.client, keys, args),
            )
            .await?;
        let [allowed, remaining, retry, refused_by] = reply[..] else {
            tracing::warn!(?reply, "unexpected rate-limit script reply");
            return None;
        };
        Some(Admission {
            allowed: allowed == 1,
            remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
            retry_after_us: retry,
            refused_by: refused_by.max(0) as usize,
        })
    }
}
