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
use tokio::sync::watch;
use uuid::Uuid;

/// In-process TATs (and refusals) past this many are pruned of the rested ones.
const LOCAL_KEYS: usize = 100_000;

/// Decides whether a call may proceed.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    redis: Option<RedisCache>,
    local: Arc<Mutex<HashMap<String, i64>>>,
    /// Until when (µs) each request limit is known to refuse: what Redis last answered when it
    /// refused a call. A limit refuses every call until then (one call's wait is the shortest
    /// there is), so calls in that window are refused here, without a round trip, and never
    /// start work they could not finish.
    refused: Arc<Mutex<HashMap<String, i64>>>,
}

/// A call's decision by the rate limits, taken while the call starts: work without side effects
/// may run before it is known (its result is dropped if the call is refused); anything that
/// writes waits for [`Permit::granted`] first.
#[derive(Debug, Clone)]
pub struct Permit(watch::Receiver<Option<Verdict>>);

#[derive(Debug, Clone)]
enum Verdict {
    Admitted(Option<u32>),
    Refused {
        message: String,
        retry_after: Option<Duration>,
    },
}

impl Verdict {
    fn of(decided: Result<Option<u32>>) -> Self {
        match decided {
            Ok(remaining) => Verdict::Admitted(remaining),
            Err(Error::ResourceExhausted {
                message,
                retry_after,
            }) => Verdict::Refused {
                message,
                retry_after,
            },
            // `admit` refuses with nothing else; were it to, the call would be refused with it.
            Err(e) => Verdict::Refused {
                message: e.to_string(),
                retry_after: None,
            },
        }
    }

    fn result(&self) -> Result<Option<u32>> {
        match self {
            Verdict::Admitted(remaining) => Ok(*remaining),
            Verdict::Refused {
                message,
                retry_after,
            } => Err(Error::ResourceExhausted {
                message: message.clone(),
                retry_after: *retry_after,
            }),
        }
    }
}

/// Decides a [`Permit`] made by [`Permit::pending`].
#[derive(Debug)]
pub struct PermitDecider(watch::Sender<Option<Verdict>>);

impl PermitDecider {
    /// Admits the call, with the calls still admissible at once (`None`: no limit applies).
    pub fn admit(self, remaining: Option<u32>) {
        self.decide(Verdict::Admitted(remaining));
    }

    /// Refuses the call with `RESOURCE_EXHAUSTED` (any other error is refused with its text).
    pub fn refuse(self, e: Error) {
        self.decide(Verdict::of(Err(e)));
    }

    fn decide(self, verdict: Verdict) {
        // Nobody waiting any more (the call ended) is fine.
        let _ = self.0.send(Some(verdict));
    }
}

impl Permit {
    /// A decision already taken.
    fn decided(verdict: Verdict) -> Self {
        Permit(watch::channel(Some(verdict)).1)
    }

    /// A decision still to be taken, by the returned decider.
    pub fn pending() -> (PermitDecider, Self) {
        let (tx, rx) = watch::channel(None);
        (PermitDecider(tx), Permit(rx))
    }

    /// Work no limit counts: the periodic jobs, which act for no caller.
    pub fn unlimited() -> Self {
        Self::decided(Verdict::Admitted(None))
    }

    /// The decision when it is already known, without waiting.
    pub fn now(&self) -> Option<Result<Option<u32>>> {
        self.0.borrow().as_ref().map(Verdict::result)
    }

    /// Waits for the decision: the calls still admissible at once (`None`: no limit applies),
    /// or `RESOURCE_EXHAUSTED` with the wait.
    pub async fn granted(&self) -> Result<Option<u32>> {
        let mut rx = self.0.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.as_ref().map_or(Ok(None), Verdict::result),
            // The deciding task ended without a decision: only a panic in it does that.
            Err(_) => Err(Error::Internal("the rate-limit decision was lost".into())),
        }
    }
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
            refused: Arc::default(),
        }
    }

    /// Starts deciding on one call of `who`, on a task of its own so that the call can start
    /// meanwhile: decided at once when no limit applies or a limit is known to refuse.
    pub fn start_call(&self, who: &Principal) -> Permit {
        let Some(counted) = Counted::of(who, Kind::Requests) else {
            return Permit::unlimited();
        };
        if let Some(refused) = self.known_refusal(&counted) {
            return Permit::decided(Verdict::of(Err(refused)));
        }
        let (decider, permit) = Permit::pending();
        let limiter = self.clone();
        tokio::spawn(async move {
            match limiter.decide(&counted, 1).await {
                Ok(remaining) => decider.admit(remaining),
                Err(e) => decider.refuse(e),
            }
        });
        permit
    }

    /// Counts `messages` ingested messages of `who`. `Ok(None)` when no limit applies;
    /// `Ok(Some(remaining))` with the messages still admissible at once; `RESOURCE_EXHAUSTED`
    /// with the wait when over the limit.
    pub async fn admit_messages(&self, who: &Principal, messages: usize) -> Result<Option<u32>> {
        let Some(counted) = Counted::of(who, Kind::Messages) else {
            return Ok(None);
        };
        let cost = u32::try_from(messages).unwrap_or(u32::MAX);
        self.decide(&counted, cost).await
    }

    /// Counts `cost` against `counted`'s limits: in Redis, or in-process when Redis does not
    /// answer. A refusal of a call is remembered (see `refused`).
    async fn decide(&self, counted: &Counted, cost: u32) -> Result<Option<u32>> {
        let keyed = &counted.keyed;
        let admission = match &self.redis {
            Some(r) => match r.rate_limit(keyed, cost).await {
                Some(a) => a,
                None => {
                    metrics::counter!("memoire_rate_limit_fallback_total").increment(1);
                    self.local(keyed, cost)
                }
            },
            None => self.local(keyed, cost),
        };
        if admission.allowed {
            return Ok(Some(admission.remaining));
        }
        let refused = admission.refused_by.min(keyed.len() - 1);
        let retry_us = admission.retry_after_us.max(1);
        if counted.kind == Kind::Requests {
            // A call costs one: nothing is admitted before the wait for one call has passed.
            let until = chrono::Utc::now().timestamp_micros() + retry_us;
            let mut memo = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            if memo.len() > LOCAL_KEYS {
                let now = chrono::Utc::now().timestamp_micros();
                memo.retain(|_, until| *until > now);
            }
            memo.insert(keyed[refused].0.clone(), until);
        }
        Err(counted.refusal(refused, retry_us))
    }

    /// The refusal of a call by a request limit that is known to refuse until later.
    fn known_refusal(&self, counted: &Counted) -> Option<Error> {
        let now = chrono::Utc::now().timestamp_micros();
        let memo = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        counted.keyed.iter().enumerate().find_map(|(i, (key, _))| {
            let until = *memo.get(key)?;
            (until > now).then(|| counted.refusal(i, until - now))
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

/// The limits one check counts against.
struct Counted {
    tenant: Uuid,
    kind: Kind,
    /// Each limit with its Redis key.
    keyed: Vec<(String, Limit)>,
    names: Vec<Names>,
}

impl Counted {
    /// The limits a check of `kind` by `who` counts against; `None` when none applies.
    fn of(who: &Principal, kind: Kind) -> Option<Self> {
        let tenant = who.tenant_id?;
        if who.limits == CallerLimits::default() {
            return None;
        }
        let (keyed, names) = limits_of(who, tenant, kind);
        (!keyed.is_empty()).then_some(Counted {
            tenant,
            kind,
            keyed,
            names,
        })
    }

    /// The refusal by limit `i`, to be retried in `retry_us` µs (counted in the metrics).
    fn refusal(&self, i: usize, retry_us: i64) -> Error {
        let (limit, (label, setting)) = (self.keyed[i].1, self.names[i]);
        metrics::counter!("memoire_rate_limited_total", "tenant" => self.tenant.to_string(), "limit" => label)
            .increment(1);
        let retry = Duration::from_micros(retry_us.max(1) as u64);
        let unit = if self.kind == Kind::Messages {
            "messages"
        } else {
            "requests"
        };
        Error::ResourceExhausted {
            message: format!(
                "rate limit exceeded: {setting} allows {} {unit}/s (burst {}); retry in {} ms",
                limit.rate,
                limit.burst,
                retry.as_millis().max(1)
            ),
            retry_after: Some(retry),
        }
    }
}

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
