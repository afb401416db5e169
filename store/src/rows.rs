//! Database rows and their conversion into domain records.

use chrono::{DateTime, Utc};
use memoire_core::Error;
use memoire_core::command::{CallerLimits, Principal};
use memoire_core::model::{
    ApiKey, Basis, KeyRole, Memory, MemoryKind, MemoryStatus, MemoryVersion, MessageRole, PiiMode,
    Tenant, VersionOp,
};
use memoire_core::recall::EpisodeHit;
use uuid::Uuid;

/// The columns of `episodes` that [`EpisodeRow`] reads, in order.
pub(crate) const EPISODE_COLUMNS: &str = "id, user_id, namespace, session_id, role, name, content, \
    message_id, occurred_at, created_at";

/// An episode as recall and Conscious show it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EpisodeRow {
    pub id: Uuid,
    pub user_id: String,
    pub namespace: String,
    pub session_id: String,
    pub role: String,
    pub name: Option<String>,
    pub content: String,
    pub message_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl TryFrom<EpisodeRow> for EpisodeHit {
    type Error = Error;

    fn try_from(r: EpisodeRow) -> Result<Self, Error> {
        Ok(EpisodeHit {
            id: r.id,
            user_id: r.user_id,
            namespace: r.namespace,
            session_id: r.session_id,
            role: parse("role", &r.role, MessageRole::parse)?,
            name: r.name,
            content: r.content,
            message_id: r.message_id,
            occurred_at: r.occurred_at,
            created_at: r.created_at,
        })
    }
}

/// A memory's last access time, for the `memories` row aliased `$t`: what its own column
/// recorded and its row in `memory_access` (migration 0008), the later of the two.
macro_rules! last_accessed {
    ($t:literal) => {
        concat!(
            "GREATEST(",
            $t,
            ".last_accessed_at, (SELECT a.last_accessed_at FROM memory_access a \
             WHERE a.memory_id = ",
            $t,
            ".id))"
        )
    };
}
pub(crate) use last_accessed;

/// A memory's access count, for the `memories` row aliased `$t`: its own column plus its row in
/// `memory_access`.
macro_rules! access_count {
    ($t:literal) => {
        concat!(
            "(",
            $t,
            ".access_count + COALESCE((SELECT a.hits FROM memory_access a \
             WHERE a.memory_id = ",
            $t,
            ".id), 0))"
        )
    };
}
pub(crate) use access_count;

/// The columns of `memories` that [`MemoryRow`] reads, in order (the table unaliased).
pub(crate) const MEMORY_COLUMNS: &str = concat!(
    "id, tenant_id, user_id, namespace, kind, content, content_key, slot, subject, tags, \
     importance, confidence, pinned, essential, expires_at, status, superseded_by, version, \
     created_at, updated_at, ",
    last_accessed!("memories"),
    " AS last_accessed_at, ",
    access_count!("memories"),
    " AS access_count, embedding_model, source_episode_ids"
);

fn parse<T>(what: &str, s: &str, f: impl Fn(&str) -> Option<T>) -> Result<T, Error> {
    f(s).ok_or_else(|| Error::Internal(format!("unknown {what} '{s}' in the database")))
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct MemoryRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub user_id: String,
    pub namespace: String,
    pub kind: String,
    pub content: String,
    pub content_key: String,
    pub slot: Option<String>,
    pub subject: Option<String>,
    pub tags: Vec<String>,
    pub importance: f32,
    pub confidence: f32,
    pub pinned: bool,
    pub essential: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub status: String,
    pub superseded_by: Option<Uuid>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_accessed_at: Option<DateTime<Utc>>,
    pub access_count: i64,
    pub embedding_model: Option<String>,
    pub source_episode_ids: Vec<Uuid>,
}

impl TryFrom<MemoryRow> for Memory {
    type Error = Error;

    fn try_from(r: MemoryRow) -> Result<Self, Error> {
        Ok(Memory {
            id: r.id,
            tenant_id: r.tenant_id,
            user_id: r.user_id,
            namespace: r.namespace,
            kind: parse("kind", &r.kind, MemoryKind::parse)?,
            content: r.content,
            slot: r.slot,
            subject: r.subject,
            tags: r.tags,
            importance: r.importance,
            confidence: r.confidence,
            pinned: r.pinned,
            essential: r.essential,
            expires_at: r.expires_at,
            status: parse("status", &r.status, MemoryStatus::parse)?,
            superseded_by: r.superseded_by,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
            last_accessed_at: r.last_accessed_at,
            access_count: r.access_count,
            embedding_model: r.embedding_model,
            source_episode_ids: r.source_episode_ids,
        })
    }
}

/// The columns of `memory_versions` that [`VersionRow`] reads, in order.
pub(crate) const VERSION_COLUMNS: &str = "memory_id, version, op, basis, score, reason, actor, \
    created_at, kind, content, slot, subject, tags, importance, confidence, pinned, expires_at, \
    status, superseded_by";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct VersionRow {
    pub memory_id: Uuid,
    pub version: i32,
    pub op: String,
    pub basis: String,
    pub score: Option<f32>,
    pub reason: String,
    pub actor: String,
    pub created_at: DateTime<Utc>,
    pub kind: String,
    pub content: String,
    pub slot: Option<String>,
    pub subject: Option<String>,
    pub tags: Vec<String>,
    pub importance: f32,
    pub confidence: f32,
    pub pinned: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub status: String,
    pub superseded_by: Option<Uuid>,
}

impl TryFrom<VersionRow> for MemoryVersion {
    type Error = Error;

    fn try_from(r: VersionRow) -> Result<Self, Error> {
        Ok(MemoryVersion {
            memory_id: r.memory_id,
            version: r.version,
            op: parse("op", &r.op, VersionOp::parse)?,
            basis: parse("basis", &r.basis, Basis::parse)?,
            score: r.score,
            reason: r.reason,
            actor: r.actor,
            created_at: r.created_at,
            kind: parse("kind", &r.kind, MemoryKind::parse)?,
            content: r.content,
            slot: r.slot,
            subject: r.subject,
            tags: r.tags,
            importance: r.importance,
            confidence: r.confidence,
            pinned: r.pinned,
            expires_at: r.expires_at,
            status: parse("status", &r.status, MemoryStatus::parse)?,
            superseded_by: r.superseded_by,
        })
    }
}

pub(crate) const TENANT_COLUMNS: &str = "id, name, pii_mode, extraction_create_only, rate_limit_rps, rate_limit_burst, \
     ingest_rate_limit_mps, max_memories, max_episodes, max_content_bytes, created_at, \
     episode_retention_days, memory_retention_days, scrub_teach";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct TenantRow {
    pub id: Uuid,
    pub name: String,
    pub pii_mode: String,
    pub extraction_create_only: bool,
    pub rate_limit_rps: i32,
    pub rate_limit_burst: i32,
    pub ingest_rate_limit_mps: i32,
    pub max_memories: i64,
    pub max_episodes: i64,
    pub max_content_bytes: i64,
    pub created_at: DateTime<Utc>,
    pub episode_retention_days: i32,
    pub memory_retention_days: i32,
    pub scrub_teach: bool,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = Error;

    fn try_from(r: TenantRow) -> Result<Self, Error> {
        Ok(Tenant {
            id: r.id,
            name: r.name,
            pii_mode: parse("pii_mode", &r.pii_mode, PiiMode::parse)?,
            extraction_create_only: r.extraction_create_only,
            rate_limit_rps: r.rate_limit_rps,
            rate_limit_burst: r.rate_limit_burst,
            ingest_rate_limit_mps: r.ingest_rate_limit_mps,
            max_memories: r.max_memories,
            max_episodes: r.max_episodes,
            max_content_bytes: r.max_content_bytes,
            created_at: r.created_at,
            episode_retention_days: r.episode_retention_days.max(0) as u32,
            memory_retention_days: r.memory_retention_days.max(0) as u32,
            scrub_teach: r.scrub_teach,
        })
    }
}

pub(crate) const KEY_COLUMNS: &str =
    "id, tenant_id, name, role, prefix, rate_limit_rps, created_at, revoked_at";

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct KeyRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub role: String,
    pub prefix: String,
    pub rate_limit_rps: i32,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<KeyRow> for ApiKey {
    type Error = Error;

    fn try_from(r: KeyRow) -> Result<Self, Error> {
        Ok(ApiKey {
            id: r.id,
            tenant_id: r.tenant_id,
            name: r.name,
            role: parse("role", &r.role, KeyRole::parse)?,
            prefix: r.prefix,
            rate_limit_rps: r.rate_limit_rps,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        })
    }
}

/// Converts every row, failing on the first that does not convert.
pub(crate) fn convert_all<R, T>(rows: Vec<R>) -> Result<Vec<T>, Error>
where
    T: TryFrom<R, Error = Error>,
{
    rows.into_iter().map(T::try_from).collect()
}

/// An API key with what its principal needs of its tenant.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PrincipalRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub role: String,
    pub pii_mode: String,
    pub scrub_teach: bool,
    pub rate_limit_rps: i32,
    pub rate_limit_burst: i32,
    pub ingest_rate_limit_mps: i32,
    pub key_rate_limit_rps: i32,
}

impl TryFrom<PrincipalRow> for Principal {
    type Error = Error;

    fn try_from(r: PrincipalRow) -> Result<Self, Error> {
        Ok(Principal {
            tenant_id: Some(r.tenant_id),
            role: parse("role", &r.role, KeyRole::parse)?,
            actor: format!("key:{}", r.id),
            teach_pii_mode: parse("pii_mode", &r.pii_mode, PiiMode::parse)?
                .for_teach(r.scrub_teach),
            key_id: Some(r.id),
            limits: CallerLimits::new(
                r.rate_limit_rps,
                r.rate_limit_burst,
                r.ingest_rate_limit_mps,
                r.key_rate_limit_rps,
            ),
        })
    }
}
