//! Rate limits as a generic cell rate algorithm (GCRA): one number per limited thing — the
//! theoretical arrival time (TAT) of the next request — instead of a window of timestamps.
//!
//! A limit of `rate` per second with a `burst` admits `burst` units at once after a quiet spell and
//! `rate` units per second on average. A request of `cost` units pushes the TAT `cost / rate`
//! seconds further; it is admitted when the new TAT is at most `burst / rate` seconds ahead of now.
//! A request dearer than the whole burst (an Ingest of more messages than the limit allows per
//! second) is admitted only when the limit is fully rested, and then puts it into debt: the average
//! rate still holds, and a client that can only send big calls is slowed, never starved.
//!
//! The same arithmetic runs in Redis (one Lua script shared by every replica; see the store) and
//! in-process (the fallback when Redis is unreachable): [`decide`] is both's reference.

/// One limit: `rate` units per second, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Units per second (> 0).
    pub rate: u32,
    /// Units admitted at once after a quiet spell (≥ 1).
    pub burst: u32,
}

impl Limit {
    /// A limit of `rate` per second with `burst` (0: one second's worth, `rate`); `None` when
    /// `rate` is 0 (unlimited).
    pub fn per_second(rate: u32, burst: u32) -> Option<Limit> {
        (rate > 0).then_some(Limit {
            rate,
            burst: if burst == 0 { rate } else { burst },
        })
    }

    /// Microseconds one unit adds to the TAT.
    pub fn interval_us(&self) -> i64 {
        (1_000_000 / i64::from(self.rate)).max(1)
    }
}

/// What a limit says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// The TAT to store when admitted (microseconds since the epoch).
    pub new_tat: i64,
    /// Units that could still be admitted at once after this request (0 when refused).
    pub remaining: u32,
    /// When refused, how long until the same request would be admitted (microseconds).
    pub retry_after_us: i64,
}

/// The decision for a request of `cost` units at `now_us` against a limit whose stored TAT is
/// `tat_us` (`None`: never used, or expired).
pub fn decide(limit: Limit, tat_us: Option<i64>, now_us: i64, cost: u32) -> Decision {
    let interval = limit.interval_us();
    let tolerance = interval * i64::from(limit.burst);
    let tat = tat_us.unwrap_or(now_us).max(now_us);
    let new_tat = tat + interval * i64::from(cost.max(1));
    let allow_at = new_tat - tolerance;
    if allow_at <= now_us || tat == now_us {
        let remaining = ((now_us + tolerance - new_tat) / interval).max(0);
        Decision {
            allowed: true,
            new_tat,
            remaining: remaining.min(i64::from(u32::MAX)) as u32,
            retry_after_us: 0,
        }
    } else {
        Decision {
            allowed: false,
            new_tat: tat,
            remaining: 0,
            retry_after_us: allow_at.min(tat) - now_us,
        }
    }
}

/// What several limits say together about one request: admitted only when every one admits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Whether the request is admitted (and counted against every limit).
    pub allowed: bool,
    /// The fewest units any limit could still admit at once (0 when refused).
    pub remaining: u32,
    /// When refused, the longest wait any refusing limit asks for (microseconds).
    pub retry_after_us: i64,
    /// When refused, the index of the limit that asked for that wait.
    pub refused_by: usize,
}

/// [`decide`] over several limits with their stored TATs: the admission, and the TATs to store
/// when admitted (one per limit; nothing is counted when any limit refuses).
pub fn decide_all(
    limits: &[(Limit, Option<i64>)],
    now_us: i64,
    cost: u32,
) -> (Admission, Vec<i64>) {
    let mut admission = Admission {
        allowed: true,
        remaining: u32::MAX,
        retry_after_us: 0,
        refused_by: 0,
    };
    let mut tats = Vec::with_capacity(limits.len());
    for (i, (limit, tat)) in limits.iter().enumerate() {
        let d = decide(*limit, *tat, now_us, cost);
        tats.push(d.new_tat);
        if d.allowed {
            admission.remaining = admission.remaining.min(d.remaining);
        } else {
            admission.allowed = false;
            if d.retry_after_us > admission.retry_after_us {
                admission.retry_after_us = d.retry_after_us;
                admission.refused_by = i;
            }
        }
    }
    if !admission.allowed {
        admission.remaining = 0;
    }
    (admission, tats)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    /// Requests at `times` (µs) of `cost` each; which were admitted.
    fn run(limit: Limit, times: &[i64], cost: u32) -> Vec<bool> {
        let mut tat = None;
        times
            .iter()
            .map(|&t| {
                let d = decide(limit, tat, t, cost);
                if d.allowed {
                    tat = Some(d.new_tat);
                }
                d.allowed
            })
            .collect()
    }

    #[test]
    fn a_rested_limit_admits_the_burst_then_the_rate() {
        let limit = Limit::per_second(10, 5).unwrap();
        // 20 requests at the same instant: the burst of 5.
        let admitted = run(limit, &[S; 20], 1).iter().filter(|a| **a).count();
        assert_eq!(admitted, 5);
        // One request every 10 ms for 2 s: 10 per second after the burst.
        let times: Vec<i64> = (0..200).map(|i| S + i * 10_000).collect();
        let admitted = run(limit, &times, 1).iter().filter(|a| **a).count();
        assert!((24..=26).contains(&admitted), "{admitted}");
    }

    #[test]
    fn several_limits_admit_only_together_and_report_the_longest_wait() {
        let tenant = Limit::per_second(100, 100).unwrap();
        let key = Limit::per_second(1, 1).unwrap();
        let (a, tats) = decide_all(&[(tenant, None), (key, None)], S, 1);
        assert_eq!((a.allowed, a.remaining), (true, 0));
        let stored: Vec<_> = [tenant, key]
            .into_iter()
            .zip(tats.iter().map(|t| Some(*t)))
            .collect();
        let (b, _) = decide_all(&stored, S, 1);
        assert!(!b.allowed);
        assert_eq!((b.refused_by, b.retry_after_us), (1, S));
    }

    #[test]
    fn zero_rate_is_unlimited_and_zero_burst_is_one_seconds_worth() {
        assert_eq!(Limit::per_second(0, 5), None);
        assert_eq!(Limit::per_second(7, 0), Some(Limit { rate: 7, burst: 7 }));
    }

    #[test]
    fn remaining_counts_down_and_a_refusal_says_when_to_retry() {
        let limit = Limit::per_second(2, 3).unwrap();
        let a = decide(limit, None, S, 1);
        assert_eq!((a.allowed, a.remaining), (true, 2));
        let b = decide(limit, Some(a.new_tat), S, 1);
        let c = decide(limit, Some(b.new_tat), S, 1);
        assert_eq!((c.allowed, c.remaining), (true, 0));
        let d = decide(limit, Some(c.new_tat), S, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_us, S / 2);
        assert!(decide(limit, Some(c.new_tat), S + S / 2, 1).allowed);
    }

    #[test]
    fn a_request_dearer_than_the_burst_waits_for_a_rested_limit_then_pays_its_debt() {
        let limit = Limit::per_second(10, 10).unwrap();
        let big = decide(limit, None, S, 50);
        assert!(big.allowed);
        // 5 s of debt: the next unit waits until the debt is paid down to the burst.
        let next = decide(limit, Some(big.new_tat), S, 1);
        assert!(!next.allowed);
        assert_eq!(next.retry_after_us, 4 * S + S / 10);
        // A second big call waits for the limit to be fully rested.
        let again = decide(limit, Some(big.new_tat), 5 * S, 50);
        assert!(!again.allowed);
        assert_eq!(again.retry_after_us, S);
        assert!(decide(limit, Some(big.new_tat), 6 * S, 50).allowed);
    }
}
