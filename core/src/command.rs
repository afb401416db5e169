//! Validated domain commands: what the server builds from a request after validation, and what the
//! store executes. A command that exists is well-formed.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::{Basis, ForgetMode, KeyRole, Memory, MemoryKind, Scope, WriteOutcome};

/// Who is acting: resolved from the API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant acted for; `None` for the bootstrap admin key, which acts across tenants.
    pub tenant_id: Option<Uuid>,
    /// What it may do.
    pub role: KeyRole,
    /// Recorded as the actor of every version it writes.
    pub actor: String,
    /// The policy applied to Teach content: the tenant's PII policy, or `Off` where the tenant
    /// turned `scrub_teach` off (and for the bootstrap key, which writes no memories). Ingest
    /// reads the tenant's policy in the transaction that stores the messages.
    pub teach_pii_mode: crate::model::PiiMode,
    /// The API key used (`None` for the bootstrap key and dev mode).
    pub key_id: Option<Uuid>,
    /// The rate limits its calls count against.
    pub limits: CallerLimits,
}

/// The rate limits a caller's calls count against (`None`: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallerLimits {
    /// Requests per second of the whole tenant, with its burst.
    pub tenant: Option<crate::ratelimit::Limit>,
    /// Requests per second of the key (burst: one second's worth).
    pub key: Option<crate::ratelimit::Limit>,
    /// Ingested messages per second of the tenant (burst: one second's worth).
    pub ingest: Option<crate::ratelimit::Limit>,
}

impl CallerLimits {
    /// The limits of a tenant's settings and a key's rate (all 0: none).
    pub fn new(tenant_rps: i32, tenant_burst: i32, ingest_mps: i32, key_rps: i32) -> Self {
        use crate::ratelimit::Limit;
        let n = |v: i32| v.max(0) as u32;
        CallerLimits {
            tenant: Limit::per_second(n(tenant_rps), n(tenant_burst)),
            key: Limit::per_second(n(key_rps), 0),
            ingest: Limit::per_second(n(ingest_mps), 0),
        }
    }

    /// The limits of `tenant`'s settings, for a caller without a key of its own.
    pub fn of_tenant(t: &crate::model::Tenant) -> Self {
        CallerLimits::new(
            t.rate_limit_rps,
            t.rate_limit_burst,
            t.ingest_rate_limit_mps,
            0,
        )
    }
}

impl Principal {
    /// The principal, when it may make a call that needs `role`.
    pub fn require(&self, role: KeyRole) -> crate::Result<&Principal> {
        if self.role < role {
            return Err(crate::Error::PermissionDenied(format!(
                "this call needs a {role} key; the key used is a {} key",
                self.role
            )));
        }
        Ok(self)
    }

    /// The tenant a memory-service call that needs `role` acts for.
    pub fn tenant(&self, role: KeyRole) -> crate::Result<Uuid> {
        match self.require(role)?.tenant_id {
            Some(t) => Ok(t),
            None => Err(crate::Error::PermissionDenied(
                "the bootstrap admin key manages tenants and keys; call the memory service with a \
                 tenant's API key (AdminService/CreateApiKey)"
                    .into(),
            )),
        }
    }
}

/// A new memory's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMemory {
    /// Kind.
    pub kind: MemoryKind,
    /// Content.
    pub content: String,
    /// Normalized slot.
    pub slot: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// Normalized tags.
    pub tags: Vec<String>,
    /// 0..1.
    pub importance: f32,
    /// 0..1.
    pub confidence: f32,
    /// Pinned.
    pub pinned: bool,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Episodes it came from.
    pub source_episode_ids: Vec<Uuid>,
}

/// A correction: fields left `None` keep their value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryPatch {
    /// New kind.
    pub kind: Option<MemoryKind>,
    /// New content.
    pub content: Option<String>,
    /// New slot.
    pub slot: Option<String>,
    /// New subject.
    pub subject: Option<String>,
    /// New tags (replace).
    pub tags: Option<Vec<String>>,
    /// New importance.
    pub importance: Option<f32>,
    /// New confidence.
    pub confidence: Option<f32>,
    /// New pinned flag.
    pub pinned: Option<bool>,
    /// New expiry.
    pub expires_at: Option<DateTime<Utc>>,
}

impl MemoryPatch {
    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == MemoryPatch::default()
    }
}

/// Teach: create (through the resolver) or correct.
#[derive(Debug, Clone, PartialEq)]
pub enum Teach {
    /// A new memory in `scope`.
    Create {
        /// Where.
        scope: Scope,
        /// What.
        memory: NewMemory,
        /// Skip duplicate detection.
        force_create: bool,
        /// History note.
        reason: Option<String>,
        /// Recorded basis (teach, import, rule, llm).
        basis: Basis,
    },
    /// A correction of `memory_id`, which must belong to `scope`'s tenant and user.
    Correct {
        /// Whose memory.
        scope: Scope,
        /// Which memory.
        memory_id: Uuid,
        /// What changes.
        patch: MemoryPatch,
        /// History note.
        reason: Option<String>,
    },
}

impl Teach {
    /// The command with its content scrubbed of PII under `mode` (what a client teaches is
    /// scrubbed like what it ingests), and what was found.
    pub fn scrubbed(mut self, mode: crate::model::PiiMode) -> (Self, Vec<crate::pii::PiiKind>) {
        let content = match &mut self {
            Teach::Create { memory, .. } => Some(&mut memory.content),
            Teach::Correct { patch, .. } => patch.content.as_mut(),
        };
        let mut found = Vec::new();
        if let Some(content) = content {
            let s = crate::pii::scrub(content, mode);
            *content = s.text;
            found = s.found;
        }
        (self, found)
    }
}

/// The result of a Teach.
#[derive(Debug, Clone, PartialEq)]
pub struct TeachResult {
    /// What happened.
    pub outcome: WriteOutcome,
    /// The memory now (for a duplicate: the existing one).
    pub memory: Memory,
    /// For a supersession: the superseded memory.
    pub superseded: Option<Uuid>,
    /// For a duplicate: the existing memory.
    pub duplicate_of: Option<Uuid>,
    /// The basis of the decision.
    pub basis: Basis,
    /// Its score.
    pub score: Option<f32>,
    /// Why.
    pub reason: String,
}

/// Which memories a selector-based Forget removes.
#[derive(Debug, Clone, PartialEq)]
pub struct ForgetSelector {
    /// The user.
    pub user_id: String,
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this slot.
    pub slot: Option<String>,
    /// Only this kind.
    pub kind: Option<MemoryKind>,
    /// Only what came from this session.
    pub session_id: Option<String>,
    /// Only what was created before this time.
    pub before: Option<DateTime<Utc>>,
}

/// What Forget targets.
#[derive(Debug, Clone, PartialEq)]
pub enum ForgetTarget {
    /// These memories.
    Ids(Vec<Uuid>),
    /// The memories (and, in purge mode, episodes) a selector matches.
    Selector(ForgetSelector),
}

/// A Forget.
#[derive(Debug, Clone, PartialEq)]
pub struct Forget {
    /// The caller's tenant.
    pub tenant_id: Uuid,
    /// What.
    pub target: ForgetTarget,
    /// Tombstone or purge.
    pub mode: ForgetMode,
    /// Report only.
    pub dry_run: bool,
    /// History note.
    pub reason: Option<String>,
}

/// What a Forget did (or would do).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForgetResult {
    /// Memories forgotten, at most [`ForgetResult::MAX_IDS`].
    pub memory_ids: Vec<Uuid>,
    /// More were forgotten than listed.
    pub memory_ids_truncated: bool,
    /// Requested ids that matched nothing.
    pub not_found_ids: Vec<Uuid>,
    /// Memories forgotten.
    pub memories: u64,
    /// Versions erased.
    pub versions: u64,
    /// Episodes erased.
    pub episodes: u64,
    /// Edges erased.
    pub edges: u64,
}

impl ForgetResult {
    /// The most ids a result lists.
    pub const MAX_IDS: usize = 1000;
}

/// A cursor into a ListMemories listing: the last row of the previous page, and a fingerprint of
/// the filters it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    /// The last row's creation time.
    pub created_at: DateTime<Utc>,
    /// The last row's id.
    pub id: Uuid,
}

/// ListMemories.
#[derive(Debug, Clone, PartialEq)]
pub struct ListMemories {
    /// Tenant.
    pub tenant_id: Uuid,
    /// User.
    pub user_id: String,
    /// Namespaces (at least one).
    pub namespaces: Vec<String>,
    /// Only these kinds.
    pub kinds: Vec<MemoryKind>,
    /// Only memories with all these tags.
    pub tags: Vec<String>,
    /// Only this slot.
    pub slot: Option<String>,
    /// Also superseded memories.
    pub include_superseded: bool,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
    /// Page size.
    pub page_size: usize,
    /// Where the previous page ended.
    pub after: Option<ListCursor>,
}

/// ListUsers.
#[derive(Debug, Clone, PartialEq)]
pub struct ListUsers {
    /// Tenant.
    pub tenant_id: Uuid,
    /// Only users with something in this namespace.
    pub namespace: Option<String>,
    /// Page size.
    pub page_size: usize,
    /// The last user id of the previous page.
    pub after: Option<String>,
}

/// One user of a tenant, as ListUsers reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct UserSummary {
    /// The user's id.
    pub user_id: String,
    /// Active memories.
    pub active_memories: i64,
    /// Episodes stored.
    pub episodes: i64,
    /// The latest memory change or stored turn.
    pub last_active_at: Option<DateTime<Utc>>,
}

/// ListEpisodes: one session's turns, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct ListEpisodes {
    /// The session's scope.
    pub scope: Scope,
    /// The session.
    pub session_id: String,
    /// Page size.
    pub page_size: usize,
    /// Where the previous page ended (`created_at` holds the turn's `occurred_at`).
    pub after: Option<ListCursor>,
}

/// One message to store as an episode (validated; not yet scrubbed of PII — the store applies
/// the tenant's policy in the same step that writes it).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEpisode {
    /// Who said it.
    pub role: crate::model::MessageRole,
    /// The speaker's name.
    pub name: Option<String>,
    /// Whether the speaker is the user (the owner of the scope's user id) rather than someone
    /// else in the conversation: what they say about themself is about the user.
    pub speaker_is_user: bool,
    /// What was said.
    pub content: String,
    /// The client's id, for idempotency.
    pub message_id: Option<String>,
    /// When it was said; `None` means now.
    pub occurred_at: Option<DateTime<Utc>>,
}

/// Ingest: messages of one session, in the order they were said.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingest {
    /// The user and namespace.
    pub scope: Scope,
    /// The session.
    pub session_id: String,
    /// At least one message.
    pub messages: Vec<NewEpisode>,
}

/// What Ingest did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// The episode (the existing one, for a duplicate).
    pub episode_id: Uuid,
    /// The client's message id.
    pub message_id: Option<String>,
    /// A message with this id was already stored; nothing was written.
    pub duplicate: bool,
}

/// What Recall searches: the scope, the query text and the filters.
#[derive(Debug, Clone, PartialEq)]
pub struct RecallQuery {
    /// Tenant.
    pub tenant_id: Uuid,
    /// User.
    pub user_id: String,
    /// Namespaces (at least one).
    pub namespaces: Vec<String>,
    /// Query text.
    pub text: String,
    /// Only these kinds.
    pub kinds: Vec<MemoryKind>,
    /// Only memories with all these tags.
    pub tags: Vec<String>,
    /// Only this slot.
    pub slot: Option<String>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    /// Created before.
    pub created_before: Option<DateTime<Utc>>,
    /// Time travel.
    pub as_of: Option<DateTime<Utc>>,
    /// Also superseded memories.
    pub include_superseded: bool,
    /// Also episodes.
    pub include_episodes: bool,
    /// Candidates per search side.
    pub candidates: usize,
    /// Memories whose confidence decayed below this are left out (the decay floor).
    pub min_confidence: f32,
}

impl RecallQuery {
    /// A query of `text` over one namespace of a user's memories and turns, without filters;
    /// the use-case sets `candidates` and `min_confidence` from its settings.
    pub fn new(tenant_id: Uuid, user_id: String, namespace: String, text: String) -> Self {
        RecallQuery {
            tenant_id,
            user_id,
            namespaces: vec![namespace],
            text,
            kinds: Vec::new(),
            tags: Vec::new(),
            slot: None,
            created_after: None,
            created_before: None,
            as_of: None,
            include_superseded: false,
            include_episodes: true,
            candidates: 0,
            min_confidence: 0.0,
        }
    }
}
