//! The memory model of PRODUCT.md §2: kinds, statuses, versions, and the records the stores hold.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Declares a closed set of names stored as lowercase text in Postgres, with conversions both ways.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored (database) name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses a stored name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| {
                    serde::de::Error::custom(format!("unknown {} '{s}'", stringify!($name)))
                })
            }
        }
    };
}

text_enum! {
    /// The type of a durable memory.
    MemoryKind {
        /// A statement about the user or the world.
        Fact => "fact",
        /// A like, dislike or preference.
        Preference => "preference",
        /// Something that happened at a time.
        Event => "event",
        /// Something the user wants to achieve.
        Goal => "goal",
        /// A standing instruction.
        Rule => "rule",
        /// A lasting trait.
        Trait => "trait",
        /// A weak or behavioural signal.
        Signal => "signal",
        /// A distilled summary of episodes.
        Summary => "summary",
        /// A longer reference text.
        Document => "document",
    }
}

text_enum! {
    /// Where a memory stands in its lifecycle.
    MemoryStatus {
        /// Current.
        Active => "active",
        /// Replaced by a newer memory with the same slot.
        Superseded => "superseded",
        /// Forgotten in tombstone mode.
        Tombstoned => "tombstoned",
        /// Past its expiry time.
        Expired => "expired",
    }
}

text_enum! {
    /// What one version of a memory did.
    VersionOp {
        /// Created.
        Create => "create",
        /// Updated by the resolver.
        Update => "update",
        /// Corrected by a client.
        Correct => "correct",
        /// Superseded by a newer memory.
        Supersede => "supersede",
        /// Forgotten (tombstone).
        Tombstone => "tombstone",
        /// Expired.
        Expire => "expire",
    }
}

text_enum! {
    /// The source of a write decision.
    Basis {
        /// A direct Teach call.
        Teach => "teach",
        /// A client correction.
        Correction => "correction",
        /// The LLM extractor.
        Llm => "llm",
        /// The rule extractor.
        Rule => "rule",
        /// The resolver (slot match, identical content, similarity).
        Resolver => "resolver",
        /// A Forget call.
        Forget => "forget",
        /// Retention (expiry, policy).
        Retention => "retention",
        /// An import.
        Import => "import",
        /// The decay job (confidence fell below the floor).
        Decay => "decay",
        /// The reflect job (a session summary).
        Reflect => "reflect",
        /// The re-embed job.
        ReEmbed => "re_embed",
    }
}

text_enum! {
    /// Who said a conversation message.
    MessageRole {
        /// The application's user.
        User => "user",
        /// The assistant.
        Assistant => "assistant",
        /// A system prompt.
        System => "system",
        /// A tool's output.
        Tool => "tool",
    }
}

text_enum! {
    /// What an API key may do. Ordered: each role includes the ones before it.
    KeyRole {
        /// Read RPCs only.
        Reader => "reader",
        /// Reads and writes of the memory service.
        Writer => "writer",
        /// Everything of its tenant, including the admin service.
        Admin => "admin",
    }
}

text_enum! {
    /// How PII is scrubbed before anything is stored.
    PiiMode {
        /// Replace findings with typed placeholders.
        Redact => "redact",
        /// Keep a recognisable hint.
        Mask => "mask",
        /// Store as is.
        Off => "off",
    }
}

impl PiiMode {
    /// The policy for Teach content of a tenant with this policy: the same, or `Off` where the
    /// tenant turned `scrub_teach` off.
    pub fn for_teach(self, scrub_teach: bool) -> PiiMode {
        if scrub_teach { self } else { PiiMode::Off }
    }
}

text_enum! {
    /// How Forget removes memories.
    ForgetMode {
        /// Hide, keep history.
        Tombstone => "tombstone",
        /// Erase.
        Purge => "purge",
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A new memory.
    Created,
    /// A correction version of an existing memory.
    Corrected,
    /// A new memory that superseded the current one with the same slot.
    Superseded,
    /// Nothing written: an equivalent memory exists.
    Duplicate,
    /// An existing memory updated in place.
    Updated,
}

/// Where a user's memories live: the tenant (from the API key), the user and one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// The tenant that owns everything below.
    pub tenant_id: Uuid,
    /// The application's user.
    pub user_id: String,
    /// The namespace.
    pub namespace: String,
}

/// A memory as stored (its current version).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    /// Id.
    pub id: Uuid,
    /// Owning tenant.
    pub tenant_id: Uuid,
    /// The user.
    pub user_id: String,
    /// The namespace.
    pub namespace: String,
    /// Kind.
    pub kind: MemoryKind,
    /// The statement.
    pub content: String,
    /// Normalized `subject.attribute` key.
    pub slot: Option<String>,
    /// Who or what it is about.
    pub subject: Option<String>,
    /// Lowercase, sorted, unique tags.
    pub tags: Vec<String>,
    /// 0..1.
    pub importance: f32,
    /// 0..1.
    pub confidence: f32,
    /// Never decays or expires by policy.
    pub pinned: bool,
    /// In the conscious tier.
    pub essential: bool,
    /// Expiry time.
    pub expires_at: Option<DateTime<Utc>>,
    /// Lifecycle status.
    pub status: MemoryStatus,
    /// The memory that superseded this one.
    pub superseded_by: Option<Uuid>,
    /// Current version number.
    pub version: i32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Time of the latest version.
    pub updated_at: DateTime<Utc>,
    /// Last time recall returned it.
    pub last_accessed_at: Option<DateTime<Utc>>,
    /// How often recall returned it.
    pub access_count: i64,
    /// The model its vector was made with.
    pub embedding_model: Option<String>,
    /// Episodes it was extracted from.
    pub source_episode_ids: Vec<Uuid>,
}

impl Memory {
    /// A current, version-1 memory of the nil tenant, user "u", namespace "default", with
    /// defaults for every other field: for tests and examples.
    pub fn sample(id: Uuid, kind: MemoryKind, content: &str, at: DateTime<Utc>) -> Memory {
        Memory {
            id,
            tenant_id: Uuid::nil(),
            user_id: "u".into(),
            namespace: "default".into(),
            kind,
            content: content.into(),
            slot: None,
            subject: None,
            tags: vec![],
            importance: 0.5,
            confidence: 1.0,
            pinned: false,
            essential: false,
            expires_at: None,
            status: MemoryStatus::Active,
            superseded_by: None,
            version: 1,
            created_at: at,
            updated_at: at,
            last_accessed_at: None,
            access_count: 0,
            embedding_model: None,
            source_episode_ids: vec![],
        }
    }
}

/// One entry of a memory's append-only history: the memory as this version left it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryVersion {
    /// The memory.
    pub memory_id: Uuid,
    /// From 1, without gaps.
    pub version: i32,
    /// What it did.
    pub op: VersionOp,
    /// Why.
    pub basis: Basis,
    /// The score behind the decision.
    pub score: Option<f32>,
    /// Human-readable explanation.
    pub reason: String,
    /// Who wrote it.
    pub actor: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Kind as of this version.
    pub kind: MemoryKind,
    /// Content as of this version.
    pub content: String,
    /// Slot as of this version.
    pub slot: Option<String>,
    /// Subject as of this version.
    pub subject: Option<String>,
    /// Tags as of this version.
    pub tags: Vec<String>,
    /// Importance as of this version.
    pub importance: f32,
    /// Confidence as of this version.
    pub confidence: f32,
    /// Pinned as of this version.
    pub pinned: bool,
    /// Expiry as of this version.
    pub expires_at: Option<DateTime<Utc>>,
    /// Status as of this version.
    pub status: MemoryStatus,
    /// Superseding memory, for a supersede version.
    pub superseded_by: Option<Uuid>,
}

/// A tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// Id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// PII policy.
    pub pii_mode: PiiMode,
    /// Extraction kill switch.
    pub extraction_create_only: bool,
    /// Requests per second for the whole tenant (0: unlimited).
    pub rate_limit_rps: i32,
    /// Requests admitted at once after a quiet spell (0: one second's worth).
    pub rate_limit_burst: i32,
    /// Ingested messages per second (0: unlimited).
    pub ingest_rate_limit_mps: i32,
    /// Memory quota (0: unlimited).
    pub max_memories: i64,
    /// Episode quota (0: unlimited).
    pub max_episodes: i64,
    /// Content quota in bytes: messages and memory versions (0: unlimited).
    pub max_content_bytes: i64,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Episodes older than this many days are deleted by retention (0: kept).
    pub episode_retention_days: u32,
    /// Unpinned memories untouched this many days expire (0: kept).
    pub memory_retention_days: u32,
    /// Whether the PII policy applies to Teach content too.
    pub scrub_teach: bool,
}

/// An API key record (never the secret).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    /// Id.
    pub id: Uuid,
    /// Tenant it acts for.
    pub tenant_id: Uuid,
    /// Label.
    pub name: String,
    /// What it may do.
    pub role: KeyRole,
    /// First characters of the secret.
    pub prefix: String,
    /// Requests per second for this key (0: only the tenant's limit applies).
    pub rate_limit_rps: i32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Counts of what a tenant stores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Distinct users.
    pub users: i64,
    /// Active memories.
    pub active_memories: i64,
    /// Superseded memories.
    pub superseded_memories: i64,
    /// Tombstoned or expired memories.
    pub forgotten_memories: i64,
    /// Version rows.
    pub versions: i64,
    /// Episodes.
    pub episodes: i64,
    /// Bytes of stored content: messages and memory versions.
    pub content_bytes: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_enums_round_trip() {
        for k in MemoryKind::ALL {
            assert_eq!(MemoryKind::parse(k.as_str()), Some(*k));
        }
        for s in MemoryStatus::ALL {
            assert_eq!(MemoryStatus::parse(s.as_str()), Some(*s));
        }
        assert_eq!(MemoryKind::parse("Fact"), None);
    }

    #[test]
    fn key_roles_are_ordered_by_power() {
        assert!(KeyRole::Reader < KeyRole::Writer);
        assert!(KeyRole::Writer < KeyRole::Admin);
    }
}

/// A job set aside after too many failures (PRODUCT.md §3), kept for inspection and replay.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// The job: `extract` or `embed`.
    pub job: String,
    /// The episode it was about.
    pub episode_id: Uuid,
    /// The job's arguments, as JSON text.
    pub payload_json: String,
    /// The last error.
    pub error: String,
    /// How many times it was tried.
    pub attempts: u32,
    /// The model's raw reply that could not be used, when there was one.
    pub raw_reply: Option<String>,
    /// When it was set aside.
    pub created_at: DateTime<Utc>,
}
