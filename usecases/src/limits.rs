//! Rate limits: every call of a tenant's key counts against the tenant's request rate and the
//! key's own; every ingested message against the tenant's message rate. Redis decides for all
//! replicas at once (one script call; see the store). When Redis does not answer, each replica
//! goes on with an in-process limiter of the same arithmetic — so a fleet of N replicas then
//! admits up to N times the limit, never more, and never stops protecting itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memoire_core::command::{CallerLimits, Principal};
use memoire_core::ratelimit::{Admission, Limit, decide_all};
use memoire_core::{Error, Result};
use memoire_store::RedisCache;
use uuid::Uuid;

/// In-process TATs past this many are pruned of the rested ones.
const LOCAL_KEYS: usize = 100_000;

/// Decides whether a call may proceed.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    redis: Option<RedisCache>,
    local: Arc<Mutex<HashMap<String, i64>>>,
}

/// Which of a caller's limits a check counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Requests,
    Messages,
}

impl RateLimiter {
    /// A limiter over `redis` (`None`: in-process only, for one replica).
    pub fn new(redis: Option<RedisCache>) -> Self {
        RateLimiter {
            redis,
            local: Arc::default(),
        }
    }

    /// Counts one call of `who`. `Ok(None)` when no limit applies; `Ok(Some(remaining))` with the
    /// calls still admissible at once; `RESOURCE_EXHAUSTED` with the wait when over a limit.
    pub async fn admit_call(&self, who: &Principal) -> Result<Option<u32>> {
        self.admit(who, Kind::Requests, 1).await
    }

    /// Counts `messages` ingested messages of `who`, like [`Self::admit_call`].
    pub async fn admit_messages(&self, who: &Principal, messages: usize) -> Result<Option<u32>> {
        let cost = u32::try_from(messages).unwrap_or(u32::MAX);
        self.admit(who, Kind::Messages, cost).await
    }

    async fn admit(&self, who: &Principal, kind: Kind, cost: u32) -> Result<Option<u32>> {
        let Some(tenant) = who.tenant_id else {
            return Ok(None);
        };
        if who.limits == CallerLimits::default() {
            return Ok(None);
        }
        let (keyed, names) = limits_of(who, tenant, kind);
        if keyed.is_empty() {
            return Ok(None);
        }
        let admission = match &self.redis {
            Some(r) => match r.rate_limit(&keyed, cost).await {
                Some(a) => a,
                None => {
                    metrics::counter!("memoire_rate_limit_fallback_total").increment(1);
                    self.local(&keyed, cost)
                }
            },
            None => self.local(&keyed, cost),
        };
        if admission.allowed {
            return Ok(Some(admission.remaining));
        }
        let refused = admission.refused_by.min(keyed.len() - 1);
        let (limit, (label, setting)) = (keyed[refused].1, names[refused]);
        metrics::counter!("memoire_rate_limited_total", "tenant" => tenant.to_string(), "limit" => label)
            .increment(1);
        let retry = Duration::from_micros(admission.retry_after_us.max(1) as u64);
        let unit = if kind == Kind::Messages {
            "messages"
        } else {
            "requests"
        };
        Err(Error::ResourceExhausted {
            message: format!(
                "rate limit exceeded: {setting} allows {} {unit}/s (burst {}); retry in {} ms",
                limit.rate,
                limit.burst,
                retry.as_millis().max(1)
            ),
            retry_after: Some(retry),
        })
    }

    /// The in-process decision (Redis unreachable, or not configured).
    fn local(&self, limits: &[(String, Limit)], cost: u32) -> Admission {
        let now = chrono::Utc::now().timestamp_micros();
        let mut tats = self.local.lock().unwrap_or_else(|e| e.into_inner());
        if tats.len() > LOCAL_KEYS {
            tats.retain(|_, tat| *tat > now);
        }
        let stored: Vec<(Limit, Option<i64>)> = limits
            .iter()
            .map(|(k, l)| (*l, tats.get(k).copied()))
            .collect();
        let (admission, new) = decide_all(&stored, now, cost);
        if admission.allowed {
            for ((k, _), tat) in limits.iter().zip(new) {
                tats.insert(k.clone(), tat);
            }
        }
        admission
    }
}

/// A limit's metric label and the setting that sets it (for the refusal's message).
type Names = (&'static str, &'static str);

/// The limits of `who` a check of `kind` counts against: each with its Redis key (one `{tenant}`
/// hash slot), and beside them each one's metric label and the setting that sets it.
fn limits_of(who: &Principal, tenant: Uuid, kind: Kind) -> (Vec<(String, Limit)>, Vec<Names>) {
    let l = &who.limits;
    let (mut keyed, mut names) = (Vec::new(), Vec::new());
    match kind {
        Kind::Requests => {
            if let Some(limit) = l.tenant {
                keyed.push((format!("memoire:rl:{{{tenant}}}:calls"), limit));
                names.push(("tenant_rps", "the tenant's rate_limit_rps"));
            }
            if let (Some(limit), Some(key)) = (l.key, who.key_id) {
                keyed.push((format!("memoire:rl:{{{tenant}}}:key:{key}"), limit));
                names.push(("key_rps", "the API key's rate_limit_rps"));
            }
        }
        Kind::Messages => {
            if let Some(limit) = l.ingest {
                keyed.push((format!("memoire:rl:{{{tenant}}}:messages"), limit));
                names.push(("ingest_mps", "the tenant's ingest_rate_limit_mps"));
            }
        }
    }
    (keyed, names)
}
