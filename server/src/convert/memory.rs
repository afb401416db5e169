//! `memoire.v1.MemoryService` requests into domain commands (validated, each error naming its
//! field) and domain results back into replies.

use std::time::Duration;

use chrono::{DateTime, Utc};
use memoire_core::command::{
    Forget, ForgetSelector, ForgetTarget, Ingest, ListEpisodes, ListMemories, ListUsers,
    MemoryPatch, NewEpisode, NewMemory, RecallQuery, Teach, TeachResult,
};
use memoire_core::model::{Basis, MessageRole, Scope};
use memoire_core::recall::{self as recall, Item};
use memoire_core::validate::{self as v, Limits, MAX_ID_BYTES, MAX_REASON_BYTES};
use memoire_core::{Error, Result};
use memoire_proto::v1 as pb;
use uuid::Uuid;

use memoire_usecases::ChatTurn;

use crate::RecallDefaults;
use crate::convert::{self, page_token};

/// An optional string field where the empty string (what JSON clients often send) means unset.
pub fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

pub fn teach_command(
    r: pb::TeachRequest,
    tenant_id: Uuid,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Teach> {
    let scope = Scope {
        tenant_id,
        user_id: v::required_id("user_id", &r.user_id)?,
        namespace: v::namespace("namespace", &r.namespace)?,
    };
    let kind = convert::kind("kind", r.kind)?;
    let slot = non_empty(r.slot).map(|s| v::slot("slot", &s)).transpose()?;
    let subject = v::optional_text("subject", r.subject.as_deref(), MAX_ID_BYTES)?;
    let tags = v::tags("tags", &r.tags)?;
    let importance = r
        .importance
        .map(|x| v::unit_interval("importance", x))
        .transpose()?;
    let confidence = r
        .confidence
        .map(|x| v::unit_interval("confidence", x))
        .transpose()?;
    let expires_at = convert::opt_time("expires_at", r.expires_at.as_ref())?
        .map(|t| v::future_time("expires_at", t, now))
        .transpose()?;
    let reason = v::optional_text("reason", r.reason.as_deref(), MAX_REASON_BYTES)?;
    match non_empty(r.memory_id) {
        Some(id) => {
            let memory_id = v::uuid("memory_id", &id)?;
            if r.force_create {
                return Err(Error::invalid(
                    "force_create",
                    "does not apply to a correction",
                ));
            }
            let content = if r.content.is_empty() {
                None
            } else {
                Some(v::content("content", &r.content, limits.max_content_bytes)?)
            };
            let patch = MemoryPatch {
                kind,
                content,
                slot,
                subject,
                tags: (!tags.is_empty()).then_some(tags),
                importance,
                confidence,
                pinned: r.pinned,
                expires_at,
            };
            if patch.is_empty() {
                return Err(Error::invalid(
                    "memory_id",
                    "a correction must set at least one field to change",
                ));
            }
            Ok(Teach::Correct {
                scope,
                memory_id,
                patch,
                reason,
            })
        }
        None => {
            let kind =
                kind.ok_or_else(|| Error::invalid("kind", "is required for a new memory"))?;
            let content = v::content("content", &r.content, limits.max_content_bytes)?;
            Ok(Teach::Create {
                scope,
                memory: NewMemory {
                    kind,
                    content,
                    slot,
                    subject,
                    tags,
                    importance: importance.unwrap_or(0.5),
                    confidence: confidence.unwrap_or(1.0),
                    pinned: r.pinned.unwrap_or(false),
                    expires_at,
                    source_episode_ids: Vec::new(),
                },
                force_create: r.force_create,
                reason,
                basis: Basis::Teach,
            })
        }
    }
}

pub fn teach_response(r: TeachResult) -> pb::TeachResponse {
    pb::TeachResponse {
        outcome: convert::outcome_pb(r.outcome) as i32,
        memory: Some(convert::memory_pb(r.memory)),
        superseded_memory_id: r.superseded.map(|u| u.to_string()).unwrap_or_default(),
        duplicate_of: r.duplicate_of.map(|u| u.to_string()).unwrap_or_default(),
        decision: Some(pb::Decision {
            basis: convert::basis_pb(r.basis) as i32,
            score: r.score,
            reason: r.reason,
        }),
    }
}

pub fn forget_command(r: pb::ForgetRequest, tenant_id: Uuid, limits: &Limits) -> Result<Forget> {
    let mode = convert::forget_mode("mode", r.mode)?;
    let reason = v::optional_text("reason", r.reason.as_deref(), MAX_REASON_BYTES)?;
    let target = match (r.memory_ids.is_empty(), r.selector) {
        (false, Some(_)) => {
            return Err(Error::invalid(
                "selector",
                "give either memory_ids or selector, not both",
            ));
        }
        (true, None) => {
            return Err(Error::invalid(
                "memory_ids",
                "give memory_ids or a selector",
            ));
        }
        (false, None) => {
            if r.memory_ids.len() > limits.max_batch_ids {
                return Err(Error::invalid(
                    "memory_ids",
                    format!(
                        "has {} ids; the limit is {}",
                        r.memory_ids.len(),
                        limits.max_batch_ids
                    ),
                ));
            }
            let mut ids = r
                .memory_ids
                .iter()
                .enumerate()
                .map(|(i, id)| v::uuid(&format!("memory_ids[{i}]"), id))
                .collect::<Result<Vec<_>>>()?;
            ids.sort();
            ids.dedup();
            ForgetTarget::Ids(ids)
        }
        (true, Some(s)) => ForgetTarget::Selector(ForgetSelector {
            user_id: v::required_id("selector.user_id", &s.user_id)?,
            namespace: non_empty(s.namespace)
                .map(|n| v::namespace("selector.namespace", &n))
                .transpose()?,
            slot: non_empty(s.slot)
                .map(|n| v::slot("selector.slot", &n))
                .transpose()?,
            kind: convert::kind("selector.kind", s.kind)?,
            session_id: non_empty(s.session_id)
                .map(|n| v::required_id("selector.session_id", &n))
                .transpose()?,
            before: convert::opt_time("selector.before", s.before.as_ref())?,
        }),
    };
    Ok(Forget {
        tenant_id,
        target,
        mode,
        dry_run: r.dry_run,
        reason,
    })
}

pub fn list_query(
    r: pb::ListMemoriesRequest,
    tenant_id: Uuid,
    limits: &Limits,
    page_key: &convert::PageKey,
) -> Result<ListMemories> {
    let mut q = ListMemories {
        tenant_id,
        user_id: v::required_id("user_id", &r.user_id)?,
        namespaces: v::namespaces("namespaces", &r.namespaces)?,
        kinds: convert::kinds("kinds", &r.kinds)?,
        tags: v::tags("tags", &r.tags)?,
        slot: non_empty(r.slot).map(|s| v::slot("slot", &s)).transpose()?,
        include_superseded: r.include_superseded,
        created_after: convert::opt_time("created_after", r.created_after.as_ref())?,
        created_before: convert::opt_time("created_before", r.created_before.as_ref())?,
        page_size: v::page_size("page_size", r.page_size, limits.max_page_size)?,
        after: None,
    };
    q.after = page_token::after(page_key, &r.page_token, &list_fingerprint(&q))?;
    Ok(q)
}

/// Chat's default token budget for each part of the memory block (the Python SDK's `wrap()`
/// default).
pub const CHAT_DEFAULT_BUDGET: usize = 1024;

/// A Chat request as a turn: the message as an Ingest of one, and Recall for it.
pub fn chat_turn(
    r: pb::ChatRequest,
    tenant_id: Uuid,
    limits: &Limits,
    settings: &RecallDefaults,
) -> Result<ChatTurn> {
    let content = v::content("content", &r.content, limits.max_content_bytes)?;
    let k = v::count_or_default("k", r.k as usize, settings.default_k, limits.max_k)?;
    let budget = v::count_or_default(
        "token_budget",
        r.token_budget as usize,
        CHAT_DEFAULT_BUDGET,
        limits.max_token_budget,
    )?;
    let wait = wait_timeout(r.wait_timeout.as_ref())?;
    // The user's own message, as Ingest stores one (no speaker name: it is the user's).
    let message = Ingest {
        scope: Scope {
            tenant_id,
            user_id: v::required_id("user_id", &r.user_id)?,
            namespace: v::namespace("namespace", &r.namespace)?,
        },
        session_id: v::required_id("session_id", &r.session_id)?,
        messages: vec![NewEpisode {
            role: MessageRole::User,
            name: None,
            speaker_is_user: true,
            content: content.clone(),
            message_id: non_empty(r.message_id)
                .map(|id| v::required_id("message_id", &id))
                .transpose()?,
            occurred_at: None,
        }],
    };
    if content.len() > limits.max_query_bytes {
        return Err(Error::invalid(
            "content",
            format!(
                "is {} bytes; Recall searches with it, and a query is at most {} (max_query_bytes)",
                content.len(),
                limits.max_query_bytes
            ),
        ));
    }
    let recall = RecallQuery::new(
        tenant_id,
        message.scope.user_id.clone(),
        message.scope.namespace.clone(),
        content,
    );
    Ok(ChatTurn {
        message,
        recall,
        k,
        budget,
        wait,
        dry_run: r.dry_run,
    })
}

/// A ListUsers request as a query; its page token holds the last user id of the previous page.
pub fn list_users_query(
    r: pb::ListUsersRequest,
    tenant_id: Uuid,
    limits: &Limits,
    page_key: &convert::PageKey,
) -> Result<ListUsers> {
    let namespace = non_empty(r.namespace)
        .map(|n| v::namespace("namespace", &n))
        .transpose()?;
    let mut q = ListUsers {
        tenant_id,
        namespace,
        page_size: v::page_size("page_size", r.page_size, limits.max_page_size)?,
        after: None,
    };
    if !r.page_token.is_empty() {
        let payload = page_key.open("page_token", &r.page_token)?;
        let mut parts = payload.splitn(3, '|');
        let (Some("u1"), Some(fp), Some(user)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::invalid(
                "page_token",
                "is not a page token issued by this server",
            ));
        };
        if fp != users_fingerprint(&q) {
            return Err(Error::invalid(
                "page_token",
                "was issued for different filters; start again without a page token",
            ));
        }
        q.after = Some(user.to_owned());
    }
    Ok(q)
}

/// The page token after `last_user` for the query `q`.
pub fn users_page_token(page_key: &convert::PageKey, q: &ListUsers, last_user: &str) -> String {
    page_key.seal(&format!("u1|{}|{last_user}", users_fingerprint(q)))
}

fn users_fingerprint(q: &ListUsers) -> String {
    page_token::fingerprint(&format!("users|{}|{:?}", q.tenant_id, q.namespace))
}

/// A ListEpisodes request as a query.
pub fn list_episodes_query(
    r: pb::ListEpisodesRequest,
    tenant_id: Uuid,
    limits: &Limits,
    page_key: &convert::PageKey,
) -> Result<ListEpisodes> {
    let mut q = ListEpisodes {
        scope: Scope {
            tenant_id,
            user_id: v::required_id("user_id", &r.user_id)?,
            namespace: v::namespace("namespace", &r.namespace)?,
        },
        session_id: v::required_id("session_id", &r.session_id)?,
        page_size: v::page_size("page_size", r.page_size, limits.max_page_size)?,
        after: None,
    };
    q.after = page_token::after(page_key, &r.page_token, &episodes_fingerprint(&q))?;
    Ok(q)
}

/// What an episodes page token is bound to: the session.
pub fn episodes_fingerprint(q: &ListEpisodes) -> String {
    page_token::fingerprint(&format!(
        "episodes|{}|{}|{}|{}",
        q.scope.tenant_id, q.scope.user_id, q.scope.namespace, q.session_id
    ))
}

/// What a page token is bound to: the filters, not the page size or position.
pub fn list_fingerprint(q: &ListMemories) -> String {
    page_token::fingerprint(&format!(
        "{}|{}|{:?}|{:?}|{:?}|{:?}|{}|{:?}|{:?}",
        q.tenant_id,
        q.user_id,
        q.namespaces,
        q.kinds,
        q.tags,
        q.slot,
        q.include_superseded,
        q.created_after,
        q.created_before
    ))
}

/// A validated Recall request.
pub struct RecallRequest {
    /// What to search.
    pub query: RecallQuery,
    /// Items.
    pub k: usize,
    /// Token budget of the packed context.
    pub budget: usize,
    /// The tokenizer the budget is counted in.
    pub tokenizer: String,
    /// Items scoring below this are left out.
    pub min_score: Option<f32>,
    /// Whether items carry their score components.
    pub explain: bool,
}

pub fn recall_request(
    r: pb::RecallRequest,
    tenant_id: Uuid,
    limits: &Limits,
    settings: &RecallDefaults,
) -> Result<RecallRequest> {
    let f = r.filter.unwrap_or_default();
    let k = v::count_or_default("k", r.k as usize, settings.default_k, limits.max_k)?;
    let budget = v::count_or_default(
        "token_budget",
        r.token_budget as usize,
        settings.default_token_budget,
        limits.max_token_budget,
    )?;
    let min_score = match f.min_score {
        Some(m) if !m.is_finite() => {
            return Err(Error::invalid("filter.min_score", "must be a number"));
        }
        other => other,
    };
    Ok(RecallRequest {
        query: RecallQuery {
            tenant_id,
            user_id: v::required_id("user_id", &r.user_id)?,
            namespaces: v::namespaces("namespaces", &r.namespaces)?,
            text: v::content("query", &r.query, limits.max_query_bytes)?,
            kinds: convert::kinds("filter.kinds", &f.kinds)?,
            tags: v::tags("filter.tags", &f.tags)?,
            slot: non_empty(f.slot)
                .map(|s| v::slot("filter.slot", &s))
                .transpose()?,
            created_after: convert::opt_time("filter.created_after", f.created_after.as_ref())?,
            created_before: convert::opt_time("filter.created_before", f.created_before.as_ref())?,
            as_of: convert::opt_time("filter.as_of", f.as_of.as_ref())?,
            include_superseded: f.include_superseded,
            include_episodes: r.include_episodes.unwrap_or(true),
            // Set by the use-case from its settings.
            candidates: 0,
            min_confidence: 0.0,
        },
        k,
        budget,
        tokenizer: r.tokenizer,
        min_score,
        explain: r.explain,
    })
}

pub fn recall_item(s: recall::Scored, explain: bool) -> pb::RecallItem {
    let e = s.explain;
    let item = match s.item {
        Item::Memory(m) => pb::recall_item::Item::Memory(convert::memory_pb(*m)),
        Item::Episode(e) => pb::recall_item::Item::Episode(convert::episode_pb(*e)),
    };
    pb::RecallItem {
        item: Some(item),
        score: e.final_score,
        explain: explain.then_some(pb::ScoreExplain {
            text_score: e.text_score,
            text_rank: e.text_rank,
            vector_score: e.vector_score,
            vector_rank: e.vector_rank,
            fused: e.fused,
            importance: e.importance,
            recency: e.recency,
            confidence: e.confidence,
            r#final: e.final_score,
            context: e.context,
        }),
    }
}

/// Conscious's token budget when the request does not say.
pub const CONSCIOUS_DEFAULT_BUDGET: usize = 512;

/// How long Ingest waits for extraction when asked and the request does not say; the most.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);
const MAX_WAIT: Duration = Duration::from_secs(60);

pub fn wait_timeout(d: Option<&prost_types::Duration>) -> Result<Duration> {
    let Some(d) = d else {
        return Ok(DEFAULT_WAIT);
    };
    if d.seconds < 0 || d.nanos < 0 {
        return Err(Error::invalid("wait_timeout", "must not be negative"));
    }
    let wait = Duration::new(d.seconds as u64, d.nanos as u32);
    if wait > MAX_WAIT {
        return Err(Error::invalid(
            "wait_timeout",
            format!(
                "is {} s; the limit is {} s",
                wait.as_secs(),
                MAX_WAIT.as_secs()
            ),
        ));
    }
    Ok(if wait.is_zero() { DEFAULT_WAIT } else { wait })
}

pub fn ingest_command(
    r: pb::IngestRequest,
    tenant_id: Uuid,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Ingest> {
    let scope = Scope {
        tenant_id,
        user_id: v::required_id("user_id", &r.user_id)?,
        namespace: v::namespace("namespace", &r.namespace)?,
    };
    let session_id = v::required_id("session_id", &r.session_id)?;
    if r.messages.is_empty() {
        return Err(Error::invalid("messages", "must hold at least one message"));
    }
    if r.messages.len() > limits.max_batch_messages {
        return Err(Error::invalid(
            "messages",
            format!(
                "holds {} messages; the limit is {} (max_batch_messages)",
                r.messages.len(),
                limits.max_batch_messages
            ),
        ));
    }
    let user_name = v::optional_text("user_name", r.user_name.as_deref(), MAX_ID_BYTES)?;
    let messages = r
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |f: &str| format!("messages[{i}].{f}");
            let role = convert::role(&field("role"), m.role)?;
            let name = v::optional_text(&field("name"), m.name.as_deref(), MAX_ID_BYTES)?;
            let occurred_at = convert::opt_time(&field("occurred_at"), m.occurred_at.as_ref())?;
            if let Some(t) = occurred_at
                && t > now + chrono::Duration::minutes(5)
            {
                return Err(Error::invalid(field("occurred_at"), "is in the future"));
            }
            Ok(NewEpisode {
                speaker_is_user: role == MessageRole::User
                    && speaker_is_user(name.as_deref(), user_name.as_deref()),
                role,
                name,
                content: v::content(&field("content"), &m.content, limits.max_content_bytes)?,
                message_id: non_empty(m.message_id)
                    .map(|id| v::required_id(&field("message_id"), &id))
                    .transpose()?,
                occurred_at,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Ingest {
        scope,
        session_id,
        messages,
    })
}

/// A user message is the user's own when it has no speaker name or the name the user goes by.
fn speaker_is_user(name: Option<&str>, user_name: Option<&str>) -> bool {
    match (name, user_name) {
        (None, _) => true,
        (Some(n), Some(u)) => n.trim().to_lowercase() == u.trim().to_lowercase(),
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn field(e: Error) -> String {
        match e {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn teach(r: pb::TeachRequest) -> Result<Teach> {
        teach_command(r, Uuid::nil(), &Limits::default(), Utc::now())
    }

    fn valid() -> pb::TeachRequest {
        pb::TeachRequest {
            user_id: "u".into(),
            kind: pb::MemoryKind::Fact as i32,
            content: "likes tea".into(),
            ..Default::default()
        }
    }

    #[test]
    fn teach_validation_names_the_field() {
        assert!(teach(valid()).is_ok());
        assert_eq!(
            field(
                teach(pb::TeachRequest {
                    user_id: "".into(),
                    ..valid()
                })
                .unwrap_err()
            ),
            "user_id"
        );
        assert_eq!(
            field(
                teach(pb::TeachRequest {
                    content: " ".into(),
                    ..valid()
                })
                .unwrap_err()
            ),
            "content"
        );
        assert_eq!(
            field(
                teach(pb::TeachRequest {
                    content: "x".repeat(16 * 1024 + 1),
                    ..valid()
                })
                .unwrap_err()
            ),
            "content"
        );
        assert_eq!(
            field(teach(pb::TeachRequest { kind: 0, ..valid() }).unwrap_err()),
            "kind"
        );
        assert_eq!(
            field(
                teach(pb::TeachRequest {
                    kind: 42,
                    ..valid()
                })
                .unwrap_err()
            ),
            "kind"
        );
        assert_eq!(
            field(
                teach(pb::TeachRequest {
                    memory_id: Some("x".into()),
                    ..valid()
                })
                .unwrap_err()
            ),
            "memory_id"
        );
        assert_eq!(
            field(
                teach(pb::TeachRequest {
                    importance: Some(2.0),
                    ..valid()
                })
                .unwrap_err()
            ),
            "importance"
        );
        assert_eq!(
            field(
                teach(pb::TeachRequest {
                    slot: Some("home".into()),
                    ..valid()
                })
                .unwrap_err()
            ),
            "slot"
        );
        let past = Some(convert::ts(Utc::now() - chrono::TimeDelta::hours(1)));
        assert_eq!(
            field(
                teach(pb::TeachRequest {
                    expires_at: past,
                    ..valid()
                })
                .unwrap_err()
            ),
            "expires_at"
        );
    }

    #[test]
    fn forget_needs_exactly_one_target() {
        let limits = Limits::default();
        let both = pb::ForgetRequest {
            memory_ids: vec![Uuid::nil().to_string()],
            selector: Some(pb::ForgetSelector {
                user_id: "u".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            field(forget_command(both, Uuid::nil(), &limits).unwrap_err()),
            "selector"
        );
        assert_eq!(
            field(forget_command(pb::ForgetRequest::default(), Uuid::nil(), &limits).unwrap_err()),
            "memory_ids"
        );
        let bad_id = pb::ForgetRequest {
            memory_ids: vec![Uuid::nil().to_string(), "x".into()],
            ..Default::default()
        };
        assert_eq!(
            field(forget_command(bad_id, Uuid::nil(), &limits).unwrap_err()),
            "memory_ids[1]"
        );
        let no_user = pb::ForgetRequest {
            selector: Some(pb::ForgetSelector::default()),
            ..Default::default()
        };
        assert_eq!(
            field(forget_command(no_user, Uuid::nil(), &limits).unwrap_err()),
            "selector.user_id"
        );
    }

    #[test]
    fn list_rejects_negative_page_size() {
        let r = pb::ListMemoriesRequest {
            user_id: "u".into(),
            page_size: -1,
            ..Default::default()
        };
        assert_eq!(
            field(
                list_query(
                    r,
                    Uuid::nil(),
                    &Limits::default(),
                    &convert::PageKey::new(None)
                )
                .unwrap_err()
            ),
            "page_size"
        );
    }
}

/// Arbitrary request messages through conversion and validation: whatever a client sends, the
/// answer is a value or a client error naming a field — never a panic, never `INTERNAL`.
#[cfg(test)]
mod arbitrary_requests {
    use super::*;
    use proptest::prelude::*;

    /// Text a client might send: empty, ordinary, padded, control characters, any script, long.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z]{1,12}",
            " ?[A-Za-z_.\\-]{0,20} ?",
            "\\PC{0,40}",
            ".{0,12}",
            "[\\x00-\\x1f]{1,4}",
            "x{200,600}",
        ]
    }

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        prop::option::of(text())
    }

    fn time() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
        prop::option::of(
            (
                prop_oneof![
                    any::<i64>(),
                    -62_135_596_900i64..253_402_300_900i64,
                    // The edges of the storable range, and years Postgres cannot hold.
                    -62_135_596_801i64..-62_135_596_799i64,
                    253_402_300_798i64..253_402_300_801i64,
                    -300_000_000_000i64..-62_135_596_801i64,
                    253_402_300_800i64..9_000_000_000_000i64,
                ],
                prop_oneof![0i32..1_000_000_000, any::<i32>()],
            )
                .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
        )
    }

    fn float() -> impl Strategy<Value = Option<f32>> {
        prop::option::of(prop_oneof![any::<f32>(), -1.0f32..2.0f32])
    }

    /// A client error names what it refused.
    fn client_error<T>(r: Result<T>) -> std::result::Result<(), TestCaseError> {
        match r {
            Ok(_) | Err(Error::InvalidArgument { .. }) | Err(Error::FailedPrecondition(_)) => {
                Ok(())
            }
            Err(other) => Err(TestCaseError::fail(format!(
                "not a client error: {other:?}"
            ))),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// A timestamp accepted at the edge is one Postgres can store (year 1 to 9999).
        #[test]
        fn accepted_timestamps_are_storable(t in time()) {
            use chrono::Datelike;
            if let Some(t) = t
                && let Ok(at) = crate::convert::time("t", &t)
            {
                prop_assert!((1..=9999).contains(&at.year()), "{at}");
            }
        }

        #[test]
        fn teach(user_id in text(), namespace in text(), memory_id in opt_text(), kind in any::<i32>(),
                 content in text(), slot in opt_text(), subject in opt_text(),
                 tags in prop::collection::vec(text(), 0..4), importance in float(),
                 confidence in float(), expires_at in time(), reason in opt_text()) {
            let r = pb::TeachRequest {
                user_id, namespace, memory_id, kind, content, slot, subject, tags, importance,
                confidence, expires_at, reason, ..Default::default()
            };
            client_error(teach_command(r, Uuid::nil(), &Limits::default(), chrono::Utc::now()))?;
        }

        #[test]
        fn recall(user_id in text(), namespaces in prop::collection::vec(text(), 0..3), query in text(),
                  k in any::<u32>(), token_budget in any::<u32>(), tokenizer in text(),
                  kinds in prop::collection::vec(any::<i32>(), 0..3), slot in opt_text(),
                  created_after in time(), created_before in time(), as_of in time(),
                  min_score in float()) {
            let r = pb::RecallRequest {
                user_id, namespaces, query, k, token_budget, tokenizer,
                filter: Some(pb::RecallFilter {
                    kinds, slot, created_after, created_before, as_of, min_score,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let defaults = RecallDefaults { default_k: 8, default_token_budget: 512 };
            client_error(recall_request(r, Uuid::nil(), &Limits::default(), &defaults))?;
        }

        #[test]
        fn ingest(user_id in text(), session_id in text(), user_name in opt_text(),
                  messages in prop::collection::vec(
                      (any::<i32>(), opt_text(), text(), opt_text(), time()), 0..4)) {
            let r = pb::IngestRequest {
                user_id, session_id, user_name,
                messages: messages.into_iter().map(|(role, name, content, message_id, occurred_at)| {
                    pb::Message { role, name, content, message_id, occurred_at }
                }).collect(),
                ..Default::default()
            };
            client_error(ingest_command(r, Uuid::nil(), &Limits::default(), chrono::Utc::now()))?;
        }

        #[test]
        fn list_and_forget(user_id in text(), kinds in prop::collection::vec(any::<i32>(), 0..3),
                           slot in opt_text(), created_after in time(), created_before in time(),
                           page_size in any::<i32>(), page_token in text(),
                           memory_ids in prop::collection::vec(text(), 0..3), mode in any::<i32>(),
                           before in time(), kind in any::<i32>()) {
            let list = pb::ListMemoriesRequest {
                user_id: user_id.clone(), kinds, slot: slot.clone(), created_after, created_before,
                page_size, page_token, ..Default::default()
            };
            client_error(list_query(list, Uuid::nil(), &Limits::default(), &convert::PageKey::new(None)))?;
            let forget = pb::ForgetRequest {
                memory_ids,
                selector: Some(pb::ForgetSelector { user_id, slot, before, kind, ..Default::default() }),
                mode,
                ..Default::default()
            };
            client_error(forget_command(forget, Uuid::nil(), &Limits::default()))?;
        }
    }
}
