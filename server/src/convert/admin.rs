//! `memoire.v1.AdminService` request values into domain values: the tenant a call acts on,
//! tenant names, dead-letter page tokens.

use memoire_core::command::Principal;
use memoire_core::validate as v;
use memoire_core::{Error, Result};
use uuid::Uuid;

/// The tenant an admin call acts on: the one named (which a tenant admin may only name if it is
/// its own), or the caller's own when none is named.
pub fn target_tenant(who: &Principal, requested: &str) -> Result<Uuid> {
    let requested = if requested.is_empty() {
        None
    } else {
        Some(v::uuid("tenant_id", requested)?)
    };
    match (who.tenant_id, requested) {
        (Some(own), Some(t)) if own != t => Err(Error::PermissionDenied(
            "a tenant's admin key can only manage its own tenant".into(),
        )),
        (Some(own), _) => Ok(own),
        (None, Some(t)) => Ok(t),
        (None, None) => Err(Error::invalid(
            "tenant_id",
            "is required with the bootstrap admin key",
        )),
    }
}

pub fn tenant_name(name: &str) -> Result<String> {
    if name.is_empty() || name.len() > 64 {
        return Err(Error::invalid("name", "must be 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Error::invalid(
            "name",
            "may contain only ASCII letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(name.to_owned())
}

/// Longest retention a tenant may set: 100 years (0 keeps forever).
pub const MAX_RETENTION_DAYS: u32 = 36_500;

/// A setting of `field` that must not exceed `max`; `refusal` words the error for a value past it.
fn at_most<T: PartialOrd + Copy>(
    field: &str,
    value: Option<T>,
    max: T,
    refusal: impl FnOnce(T) -> String,
) -> Result<Option<T>> {
    match value {
        Some(v) if v > max => Err(Error::invalid(field, refusal(v))),
        other => Ok(other),
    }
}

/// A retention setting, bounded.
pub fn retention_days(field: &str, days: Option<u32>) -> Result<Option<u32>> {
    at_most(field, days, MAX_RETENTION_DAYS, |d| {
        format!("is {d} days; at most {MAX_RETENTION_DAYS} (100 years), or 0 to keep forever")
    })
}

/// The most a count quota (max_memories, max_episodes) may be set to.
pub const MAX_COUNT_QUOTA: u64 = 1_000_000_000_000;

/// The most the content quota (max_content_bytes) may be set to: a petabyte.
pub const MAX_BYTES_QUOTA: u64 = 1_000_000_000_000_000;

/// A quota setting within `max` (0: none).
pub fn quota(field: &str, value: Option<u64>, max: u64) -> Result<Option<u64>> {
    at_most(field, value, max, |q| {
        format!("is {q}; at most {max}, or 0 for no quota")
    })
}

/// The most any rate limit (requests or messages per second, or a burst) may be set to.
pub const MAX_RATE: u32 = 1_000_000;

/// A rate-limit setting within bounds (0: unlimited).
pub fn rate(field: &str, value: Option<u32>) -> Result<Option<u32>> {
    at_most(field, value, MAX_RATE, |r| {
        format!("is {r}; at most {MAX_RATE} per second, or 0 for no limit")
    })
}

/// Dead-letter pages: the last item's creation time and id (the list is ordered by both),
/// sealed with the server's page key.
pub mod dead_letter_cursor {
    use chrono::{DateTime, Utc};
    use memoire_core::{Error, Result};
    use uuid::Uuid;

    use crate::convert::PageKey;

    pub fn encode(key: &PageKey, t: DateTime<Utc>, id: Uuid) -> String {
        key.seal(&format!("{}_{id}", t.timestamp_micros()))
    }

    pub fn decode(key: &PageKey, token: &str) -> Result<Option<(DateTime<Utc>, Uuid)>> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || Error::invalid("page_token", "is not a token this list returned");
        let raw = key.open("page_token", token)?;
        let (micros, id) = raw.split_once('_').ok_or_else(bad)?;
        let t = micros
            .parse::<i64>()
            .ok()
            .and_then(crate::convert::from_micros)
            .ok_or_else(bad)?;
        Ok(Some((t, Uuid::parse_str(id).map_err(|_| bad())?)))
    }
}
