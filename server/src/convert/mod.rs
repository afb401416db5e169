//! Proto ⇄ domain conversions. Request conversions validate and name the offending field; the
//! domain never sees a proto type.

pub mod admin;
pub mod memory;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use memoire_core::command::ListCursor;
use memoire_core::model::{
    ApiKey, Basis, ForgetMode, KeyRole, Memory, MemoryKind, MemoryStatus, MemoryVersion, PiiMode,
    Tenant, VersionOp, WriteOutcome,
};
use memoire_core::{Error, Result};
use memoire_proto::v1 as pb;
use prost_types::Timestamp;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A timestamp for the wire.
pub fn ts(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A timestamp from the wire, checked.
/// google.protobuf.Timestamp's range, 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z: every
/// instant in it can be stored, none outside it is a date a client means.
const MIN_SECONDS: i64 = -62_135_596_800;
const MAX_SECONDS: i64 = 253_402_300_799;

/// An instant in microseconds (from a page token), when it lies in the storable range.
pub fn from_micros(micros: i64) -> Option<DateTime<Utc>> {
    (MIN_SECONDS..=MAX_SECONDS)
        .contains(&micros.div_euclid(1_000_000))
        .then(|| DateTime::from_timestamp_micros(micros))
        .flatten()
}

pub fn time(field: &str, t: &Timestamp) -> Result<DateTime<Utc>> {
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) {
        return Err(Error::invalid(
            field,
            "is outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z (google.protobuf.Timestamp's range)",
        ));
    }
    u32::try_from(t.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .and_then(|n| DateTime::from_timestamp(t.seconds, n))
        .map(memoire_core::clock::to_micros)
        .ok_or_else(|| Error::invalid(field, "is not a valid timestamp"))
}

/// An optional timestamp from the wire.
pub fn opt_time(field: &str, t: Option<&Timestamp>) -> Result<Option<DateTime<Utc>>> {
    t.map(|t| time(field, t)).transpose()
}

/// A memory kind from the wire: `None` when unspecified.
pub fn kind(field: &str, v: i32) -> Result<Option<MemoryKind>> {
    let k = pb::MemoryKind::try_from(v)
        .map_err(|_| Error::invalid(field, format!("{v} is not a known memory kind")))?;
    Ok(match k {
        pb::MemoryKind::Unspecified => None,
        pb::MemoryKind::Fact => Some(MemoryKind::Fact),
        pb::MemoryKind::Preference => Some(MemoryKind::Preference),
        pb::MemoryKind::Event => Some(MemoryKind::Event),
        pb::MemoryKind::Goal => Some(MemoryKind::Goal),
        pb::MemoryKind::Rule => Some(MemoryKind::Rule),
        pb::MemoryKind::Trait => Some(MemoryKind::Trait),
        pb::MemoryKind::Signal => Some(MemoryKind::Signal),
        pb::MemoryKind::Summary => Some(MemoryKind::Summary),
        pb::MemoryKind::Document => Some(MemoryKind::Document),
    })
}

/// A list of kinds from the wire; unspecified entries are an error.
pub fn kinds(field: &str, values: &[i32]) -> Result<Vec<MemoryKind>> {
    let mut out = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let f = format!("{field}[{i}]");
            kind(&f, *v)?.ok_or_else(|| Error::invalid(f, "is MEMORY_KIND_UNSPECIFIED"))
        })
        .collect::<Result<Vec<_>>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

fn kind_pb(k: MemoryKind) -> pb::MemoryKind {
    match k {
        MemoryKind::Fact => pb::MemoryKind::Fact,
        MemoryKind::Preference => pb::MemoryKind::Preference,
        MemoryKind::Event => pb::MemoryKind::Event,
        MemoryKind::Goal => pb::MemoryKind::Goal,
        MemoryKind::Rule => pb::MemoryKind::Rule,
        MemoryKind::Trait => pb::MemoryKind::Trait,
        MemoryKind::Signal => pb::MemoryKind::Signal,
        MemoryKind::Summary => pb::MemoryKind::Summary,
        MemoryKind::Document => pb::MemoryKind::Document,
    }
}

fn status_pb(s: MemoryStatus) -> pb::MemoryStatus {
    match s {
        MemoryStatus::Active => pb::MemoryStatus::Active,
        MemoryStatus::Superseded => pb::MemoryStatus::Superseded,
        MemoryStatus::Tombstoned => pb::MemoryStatus::Tombstoned,
        MemoryStatus::Expired => pb::MemoryStatus::Expired,
    }
}

fn op_pb(o: VersionOp) -> pb::VersionOp {
    match o {
        VersionOp::Create => pb::VersionOp::Create,
        VersionOp::Update => pb::VersionOp::Update,
        VersionOp::Correct => pb::VersionOp::Correct,
        VersionOp::Supersede => pb::VersionOp::Supersede,
        VersionOp::Tombstone => pb::VersionOp::Tombstone,
        VersionOp::Expire => pb::VersionOp::Expire,
    }
}

/// A basis for the wire.
pub fn basis_pb(b: Basis) -> pb::Basis {
    match b {
        Basis::Teach => pb::Basis::Teach,
        Basis::Correction => pb::Basis::Correction,
        Basis::Llm => pb::Basis::Llm,
        Basis::Rule => pb::Basis::Rule,
        Basis::Resolver => pb::Basis::Resolver,
        Basis::Forget => pb::Basis::Forget,
        Basis::Retention => pb::Basis::Retention,
        Basis::Import => pb::Basis::Import,
        Basis::Decay => pb::Basis::Decay,
        Basis::Reflect => pb::Basis::Reflect,
        Basis::ReEmbed => pb::Basis::ReEmbed,
    }
}

/// A write outcome for the wire.
pub fn outcome_pb(o: WriteOutcome) -> pb::WriteOutcome {
    match o {
        WriteOutcome::Created => pb::WriteOutcome::Created,
        WriteOutcome::Corrected => pb::WriteOutcome::Corrected,
        WriteOutcome::Superseded => pb::WriteOutcome::Superseded,
        WriteOutcome::Duplicate => pb::WriteOutcome::Duplicate,
        WriteOutcome::Updated => pb::WriteOutcome::Updated,
    }
}

/// A forget mode from the wire (unspecified means tombstone).
pub fn forget_mode(field: &str, v: i32) -> Result<ForgetMode> {
    match pb::ForgetMode::try_from(v) {
        Ok(pb::ForgetMode::Unspecified | pb::ForgetMode::Tombstone) => Ok(ForgetMode::Tombstone),
        Ok(pb::ForgetMode::Purge) => Ok(ForgetMode::Purge),
        Err(_) => Err(Error::invalid(
            field,
            format!("{v} is not a known forget mode"),
        )),
    }
}

/// A forget mode for the wire.
pub fn forget_mode_pb(m: ForgetMode) -> pb::ForgetMode {
    match m {
        ForgetMode::Tombstone => pb::ForgetMode::Tombstone,
        ForgetMode::Purge => pb::ForgetMode::Purge,
    }
}

/// A key role from the wire (required).
pub fn key_role(field: &str, v: i32) -> Result<KeyRole> {
    match pb::KeyRole::try_from(v) {
        Ok(pb::KeyRole::Reader) => Ok(KeyRole::Reader),
        Ok(pb::KeyRole::Writer) => Ok(KeyRole::Writer),
        Ok(pb::KeyRole::Admin) => Ok(KeyRole::Admin),
        Ok(pb::KeyRole::Unspecified) => Err(Error::invalid(
            field,
            "is required (KEY_ROLE_READER, KEY_ROLE_WRITER or KEY_ROLE_ADMIN)",
        )),
        Err(_) => Err(Error::invalid(
            field,
            format!("{v} is not a known key role"),
        )),
    }
}

pub fn key_role_pb(r: KeyRole) -> pb::KeyRole {
    match r {
        KeyRole::Reader => pb::KeyRole::Reader,
        KeyRole::Writer => pb::KeyRole::Writer,
        KeyRole::Admin => pb::KeyRole::Admin,
    }
}

/// A PII mode from the wire; unspecified means "unchanged".
pub fn pii_mode(field: &str, v: i32) -> Result<Option<PiiMode>> {
    match pb::PiiMode::try_from(v) {
        Ok(pb::PiiMode::Unspecified) => Ok(None),
        Ok(pb::PiiMode::Redact) => Ok(Some(PiiMode::Redact)),
        Ok(pb::PiiMode::Mask) => Ok(Some(PiiMode::Mask)),
        Ok(pb::PiiMode::Off) => Ok(Some(PiiMode::Off)),
        Err(_) => Err(Error::invalid(
            field,
            format!("{v} is not a known PII mode"),
        )),
    }
}

fn pii_pb(p: PiiMode) -> pb::PiiMode {
    match p {
        PiiMode::Redact => pb::PiiMode::Redact,
        PiiMode::Mask => pb::PiiMode::Mask,
        PiiMode::Off => pb::PiiMode::Off,
    }
}

/// A memory for the wire.
pub fn memory_pb(m: Memory) -> pb::Memory {
    pb::Memory {
        id: m.id.to_string(),
        user_id: m.user_id,
        namespace: m.namespace,
        kind: kind_pb(m.kind) as i32,
        content: m.content,
        slot: m.slot.unwrap_or_default(),
        subject: m.subject.unwrap_or_default(),
        tags: m.tags,
        importance: m.importance,
        confidence: m.confidence,
        pinned: m.pinned,
        essential: m.essential,
        expires_at: m.expires_at.map(ts),
        status: status_pb(m.status) as i32,
        superseded_by: m.superseded_by.map(|u| u.to_string()).unwrap_or_default(),
        version: m.version.max(0) as u32,
        created_at: Some(ts(m.created_at)),
        updated_at: Some(ts(m.updated_at)),
        last_accessed_at: m.last_accessed_at.map(ts),
        access_count: m.access_count.max(0) as u64,
        embedding_model: m.embedding_model.unwrap_or_default(),
        source_episode_ids: m.source_episode_ids.iter().map(Uuid::to_string).collect(),
    }
}

/// A message role from the wire (required).
pub fn role(field: &str, v: i32) -> Result<memoire_core::model::MessageRole> {
    use memoire_core::model::MessageRole as R;
    match pb::MessageRole::try_from(v) {
        Ok(pb::MessageRole::User) => Ok(R::User),
        Ok(pb::MessageRole::Assistant) => Ok(R::Assistant),
        Ok(pb::MessageRole::System) => Ok(R::System),
        Ok(pb::MessageRole::Tool) => Ok(R::Tool),
        Ok(pb::MessageRole::Unspecified) => Err(Error::invalid(
            field,
            "is required (MESSAGE_ROLE_USER, _ASSISTANT, _SYSTEM or _TOOL)",
        )),
        Err(_) => Err(Error::invalid(field, format!("{v} is not a known role"))),
    }
}

/// A dead letter for the wire.
pub fn dead_letter_pb(d: memoire_core::model::DeadLetter) -> pb::DeadLetter {
    pb::DeadLetter {
        id: d.id.to_string(),
        job: d.job,
        payload_json: d.payload_json,
        error: d.error,
        attempts: d.attempts,
        raw_reply: d.raw_reply.unwrap_or_default(),
        created_at: Some(ts(d.created_at)),
    }
}

pub fn role_pb(r: memoire_core::model::MessageRole) -> pb::MessageRole {
    use memoire_core::model::MessageRole as R;
    match r {
        R::User => pb::MessageRole::User,
        R::Assistant => pb::MessageRole::Assistant,
        R::System => pb::MessageRole::System,
        R::Tool => pb::MessageRole::Tool,
    }
}

/// An episode for the wire.
pub fn episode_pb(e: memoire_core::recall::EpisodeHit) -> pb::Episode {
    pb::Episode {
        id: e.id.to_string(),
        user_id: e.user_id,
        namespace: e.namespace,
        session_id: e.session_id,
        role: role_pb(e.role) as i32,
        name: e.name.unwrap_or_default(),
        content: e.content,
        message_id: e.message_id.unwrap_or_default(),
        occurred_at: Some(ts(e.occurred_at)),
        created_at: Some(ts(e.created_at)),
    }
}

/// A version for the wire.
pub fn version_pb(v: MemoryVersion) -> pb::MemoryVersion {
    pb::MemoryVersion {
        memory_id: v.memory_id.to_string(),
        version: v.version.max(0) as u32,
        op: op_pb(v.op) as i32,
        basis: basis_pb(v.basis) as i32,
        score: v.score,
        reason: v.reason,
        actor: v.actor,
        created_at: Some(ts(v.created_at)),
        kind: kind_pb(v.kind) as i32,
        content: v.content,
        slot: v.slot.unwrap_or_default(),
        subject: v.subject.unwrap_or_default(),
        tags: v.tags,
        importance: v.importance,
        confidence: v.confidence,
        pinned: v.pinned,
        expires_at: v.expires_at.map(ts),
        status: status_pb(v.status) as i32,
        superseded_by: v.superseded_by.map(|u| u.to_string()).unwrap_or_default(),
    }
}

/// A tenant for the wire.
pub fn tenant_pb(t: Tenant) -> pb::Tenant {
    pb::Tenant {
        id: t.id.to_string(),
        name: t.name,
        created_at: Some(ts(t.created_at)),
        pii_mode: pii_pb(t.pii_mode) as i32,
        extraction_create_only: t.extraction_create_only,
        rate_limit_rps: t.rate_limit_rps.max(0) as u32,
        rate_limit_burst: t.rate_limit_burst.max(0) as u32,
        ingest_rate_limit_mps: t.ingest_rate_limit_mps.max(0) as u32,
        max_memories: t.max_memories.max(0) as u64,
        max_episodes: t.max_episodes.max(0) as u64,
        max_content_bytes: t.max_content_bytes.max(0) as u64,
        episode_retention_days: t.episode_retention_days,
        memory_retention_days: t.memory_retention_days,
        scrub_teach: t.scrub_teach,
    }
}

/// An API key for the wire.
pub fn key_pb(k: ApiKey) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id.to_string(),
        tenant_id: k.tenant_id.to_string(),
        name: k.name,
        role: key_role_pb(k.role) as i32,
        prefix: k.prefix,
        rate_limit_rps: k.rate_limit_rps.max(0) as u32,
        created_at: Some(ts(k.created_at)),
        revoked_at: k.revoked_at.map(ts),
    }
}

/// Opaque page tokens: the cursor plus a fingerprint of the filters it was issued for, so that a
/// token reused with other filters is rejected instead of silently skipping rows.
/// The server's key for page tokens: a token is its payload and a MAC, so a changed token is
/// refused instead of being read.
#[derive(Clone)]
pub struct PageKey(std::sync::Arc<[u8]>);

impl std::fmt::Debug for PageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageKey(..)")
    }
}

impl PageKey {
    /// The key from the configured secret, or a random one (tokens then hold for this process).
    pub fn new(secret: Option<&str>) -> Self {
        match secret {
            Some(s) => PageKey(s.as_bytes().into()),
            None => {
                let mut key = [0u8; 32];
                rand::Rng::fill(&mut rand::rng(), &mut key);
                PageKey(key.as_slice().into())
            }
        }
    }

    fn mac(&self, payload: &str) -> hmac::Hmac<Sha256> {
        use hmac::Mac as _;
        let mut mac = <hmac::Hmac<Sha256>>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(payload.as_bytes());
        mac
    }

    /// `payload` and its MAC (16 bytes), as URL-safe base64.
    pub fn seal(&self, payload: &str) -> String {
        use hmac::Mac as _;
        let tag = self.mac(payload).finalize().into_bytes();
        let raw = format!("{payload}|{}", hex::encode(&tag[..16]));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// The payload of a token this key sealed; anything else, changed by one bit, is refused.
    pub fn open(&self, field: &str, token: &str) -> Result<String> {
        use hmac::Mac as _;
        let bad = || Error::invalid(field, "is not a page token issued by this server");
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (payload, tag) = raw.rsplit_once('|').ok_or_else(bad)?;
        let tag = hex::decode(tag).map_err(|_| bad())?;
        self.mac(payload)
            .verify_truncated_left(&tag)
            .ok()
            .filter(|_| tag.len() == 16)
            .ok_or_else(bad)?;
        Ok(payload.to_owned())
    }
}

pub mod page_token {
    use super::*;

    /// The fingerprint of a listing's filters.
    pub fn fingerprint(filters: &str) -> String {
        hex::encode(&Sha256::digest(filters.as_bytes())[..8])
    }

    /// Encodes a cursor.
    pub fn encode(key: &PageKey, cursor: ListCursor, fingerprint: &str) -> String {
        key.seal(&format!(
            "v2|{}|{}|{fingerprint}",
            cursor.created_at.timestamp_micros(),
            cursor.id
        ))
    }

    /// The cursor of a request's `page_token` (none when it is empty), issued for the same
    /// filters.
    pub fn after(key: &PageKey, token: &str, fingerprint: &str) -> Result<Option<ListCursor>> {
        if token.is_empty() {
            return Ok(None);
        }
        decode(key, "page_token", token, fingerprint).map(Some)
    }

    /// Decodes a cursor issued for the same filters.
    pub fn decode(
        key: &PageKey,
        field: &str,
        token: &str,
        fingerprint: &str,
    ) -> Result<ListCursor> {
        let bad = || Error::invalid(field, "is not a page token issued by this server");
        let raw = key.open(field, token)?;
        let parts: Vec<&str> = raw.split('|').collect();
        let [version, micros, id, fp] = parts.as_slice() else {
            return Err(bad());
        };
        if *version != "v2" {
            return Err(bad());
        }
        if *fp != fingerprint {
            return Err(Error::invalid(
                field,
                "was issued for different filters; start again without a page token",
            ));
        }
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        Ok(ListCursor {
            created_at: super::from_micros(micros).ok_or_else(bad)?,
            id: Uuid::parse_str(id).map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_postgres_cannot_store_are_the_clients_error() {
        let at = |seconds, nanos| time("filter.as_of", &Timestamp { seconds, nanos });
        assert!(at(MIN_SECONDS, 0).is_ok() && at(MAX_SECONDS, 999_999_999).is_ok());
        for (seconds, nanos) in [
            (MIN_SECONDS - 1, 0),
            (-210_000_000_000, 0), // before 4713 BC
            (MAX_SECONDS + 1, 0),
            (0, 1_000_000_000),
            (0, -1),
        ] {
            match at(seconds, nanos) {
                Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "filter.as_of"),
                other => panic!("{seconds}.{nanos}: {other:?}"),
            }
        }
        // A token (even one sealed with the server's key) holding an instant out of range.
        let key = PageKey::new(None);
        let fp = page_token::fingerprint("a");
        let token = key.seal(&format!("v2|{}|{}|{fp}", i64::MIN + 1, Uuid::nil()));
        assert!(matches!(
            page_token::decode(&key, "page_token", &token, &fp),
            Err(Error::InvalidArgument { .. })
        ));
        let token = key.seal(&format!("-9000000000000000000_{}", Uuid::nil()));
        assert!(admin::dead_letter_cursor::decode(&key, &token).is_err());
    }

    #[test]
    fn retention_is_bounded() {
        assert_eq!(admin::retention_days("f", Some(0)).unwrap(), Some(0));
        assert_eq!(
            admin::retention_days("f", Some(36_500)).unwrap(),
            Some(36_500)
        );
        assert_eq!(admin::retention_days("f", None).unwrap(), None);
        match admin::retention_days("memory_retention_days", Some(u32::MAX)) {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "memory_retention_days"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn page_tokens_round_trip_and_bind_to_filters() {
        let c = ListCursor {
            created_at: memoire_core::clock::to_micros(Utc::now()),
            id: Uuid::now_v7(),
        };
        let key = PageKey::new(Some("a secret of sixteen+"));
        let fp = page_token::fingerprint("a");
        let token = page_token::encode(&key, c, &fp);
        assert_eq!(
            page_token::decode(&key, "page_token", &token, &fp).unwrap(),
            c
        );
        assert!(
            page_token::decode(&key, "page_token", &token, &page_token::fingerprint("b")).is_err()
        );
        assert!(page_token::decode(&key, "page_token", "garbage!", &fp).is_err());
        // Tamper-evident: a token changed in its payload, or sealed with another key, is refused.
        let raw = String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&token)
                .unwrap(),
        )
        .unwrap();
        let forged = raw.replacen(&c.id.to_string(), &Uuid::nil().to_string(), 1);
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
        for bad in [forged, page_token::encode(&PageKey::new(None), c, &fp)] {
            match page_token::decode(&key, "page_token", &bad, &fp) {
                Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "page_token"),
                other => panic!("{other:?}"),
            }
        }
        let cursor = admin::dead_letter_cursor::encode(&key, c.created_at, c.id);
        assert_eq!(
            admin::dead_letter_cursor::decode(&key, &cursor).unwrap(),
            Some((c.created_at, c.id))
        );
        assert!(admin::dead_letter_cursor::decode(&PageKey::new(None), &cursor).is_err());
    }

    #[test]
    fn the_mac_is_hmac_sha256() {
        // RFC 4231, test case 2.
        use hmac::Mac as _;
        let tag = PageKey::new(Some("Jefe"))
            .mac("what do ya want for nothing?")
            .finalize();
        assert_eq!(
            hex::encode(tag.into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn timestamps_round_trip_at_microsecond_precision() {
        let t = memoire_core::clock::to_micros(Utc::now());
        assert_eq!(time("t", &ts(t)).unwrap(), t);
        assert!(
            time(
                "t",
                &Timestamp {
                    seconds: 0,
                    nanos: -1
                }
            )
            .is_err()
        );
    }

    #[test]
    fn unknown_enum_numbers_are_invalid_arguments() {
        assert!(kind("kind", 99).is_err());
        assert_eq!(kind("kind", 0).unwrap(), None);
        assert!(kinds("kinds", &[1, 0]).is_err());
        assert!(key_role("role", 0).is_err());
        assert!(forget_mode("mode", 7).is_err());
    }
}
