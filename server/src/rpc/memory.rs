//! `memoire.v1.MemoryService`: one adapter per RPC — the caller's principal (put there by the
//! auth layer) → the request converted into a command (`convert::memory`) → one use-case call →
//! the result converted back.

use memoire_core::model::{KeyRole, Scope};
use memoire_core::validate as v;
use memoire_proto::v1 as pb;
use memoire_proto::v1::memory_service_server::MemoryService;
use memoire_usecases::ConsciousSource;
use memoire_usecases::ExtractionWait;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{caller, permit, rate_limited};
use crate::convert::memory::{self as c, CONSCIOUS_DEFAULT_BUDGET, non_empty};
use crate::convert::{self, page_token};
use crate::error::status;

/// The memory service.
#[derive(Debug, Clone)]
pub struct MemorySvc {
    state: AppState,
}

impl MemorySvc {
    /// A memory service over `state`.
    pub fn new(state: AppState) -> Self {
        MemorySvc { state }
    }
}

#[tonic::async_trait]
impl MemoryService for MemorySvc {
    async fn ingest(
        &self,
        req: Request<pb::IngestRequest>,
    ) -> Result<Response<pb::IngestResponse>, Status> {
        let s = &self.state;
        let who = caller(&req)?.clone();
        let tenant = who.tenant(KeyRole::Writer).map_err(status)?;
        let r = req.into_inner();
        let wait = r.wait_for_extraction;
        let deadline = s.extraction_wait(c::wait_timeout(r.wait_timeout.as_ref()).map_err(status)?);
        let cmd = c::ingest_command(r, tenant, &s.limits, s.uc.store().now()).map_err(status)?;
        s.uc.limiter()
            .admit_messages(&who, cmd.messages.len())
            .await
            .map_err(rate_limited)?;
        let (ingested, extraction) =
            s.uc.ingest(cmd, wait.then_some(deadline))
                .await
                .map_err(status)?;
        let extraction = extraction_pb(extraction);
        Ok(Response::new(pb::IngestResponse {
            episodes: ingested
                .into_iter()
                .map(|i| pb::IngestedEpisode {
                    episode_id: i.episode_id.to_string(),
                    message_id: i.message_id.unwrap_or_default(),
                    duplicate: i.duplicate,
                })
                .collect(),
            extraction: extraction as i32,
        }))
    }

    async fn recall(
        &self,
        req: Request<pb::RecallRequest>,
    ) -> Result<Response<pb::RecallResponse>, Status> {
        let s = &self.state;
        let tenant = caller(&req)?.tenant(KeyRole::Reader).map_err(status)?;
        let permit = permit(&req)?;
        let r =
            c::recall_request(req.into_inner(), tenant, &s.limits, &s.recall).map_err(status)?;
        let out =
            s.uc.recall(&permit, r.query, r.k, r.budget, &r.tokenizer, r.min_score)
                .await
                .map_err(status)?;
        Ok(Response::new(pb::RecallResponse {
            items: out
                .items
                .into_iter()
                .map(|x| c::recall_item(x, r.explain))
                .collect(),
            context: out.packed.text,
            context_tokens: out.packed.tokens as u32,
            truncated: out.packed.truncated,
            embedding_model: out.embedding_model,
        }))
    }

    async fn conscious(
        &self,
        req: Request<pb::ConsciousRequest>,
    ) -> Result<Response<pb::ConsciousResponse>, Status> {
        let s = &self.state;
        let tenant = caller(&req)?.tenant(KeyRole::Reader).map_err(status)?;
        let r = req.into_inner();
        let scope = Scope {
            tenant_id: tenant,
            user_id: v::required_id("user_id", &r.user_id).map_err(status)?,
            namespace: v::namespace("namespace", &r.namespace).map_err(status)?,
        };
        let session = non_empty(r.session_id)
            .map(|id| v::required_id("session_id", &id))
            .transpose()
            .map_err(status)?;
        let budget = v::count_or_default(
            "token_budget",
            r.token_budget as usize,
            CONSCIOUS_DEFAULT_BUDGET,
            s.limits.max_token_budget,
        )
        .map_err(status)?;
        let (view, packed, source) =
            s.uc.conscious(&scope, session.as_deref(), budget, &r.tokenizer)
                .await
                .map_err(status)?;
        Ok(Response::new(pb::ConsciousResponse {
            essential: view.essential.into_iter().map(convert::memory_pb).collect(),
            recent: view.recent.into_iter().map(convert::episode_pb).collect(),
            context: packed.text,
            context_tokens: packed.tokens as u32,
            truncated: packed.truncated,
            source: match source {
                ConsciousSource::Redis => pb::ConsciousSource::Redis,
                ConsciousSource::Postgres => pb::ConsciousSource::Postgres,
            } as i32,
        }))
    }

    async fn teach(
        &self,
        req: Request<pb::TeachRequest>,
    ) -> Result<Response<pb::TeachResponse>, Status> {
        let s = &self.state;
        let who = caller(&req)?.clone();
        let permit = permit(&req)?;
        let tenant = who.tenant(KeyRole::Writer).map_err(status)?;
        let (cmd, found) =
            c::teach_command(req.into_inner(), tenant, &s.limits, s.uc.store().now())
                .map_err(status)?
                .scrubbed(who.teach_pii_mode);
        for kind in found {
            metrics::counter!("memoire_pii_scrubbed_total", "kind" => kind.as_str()).increment(1);
        }
        let result = s.uc.teach(&permit, cmd, &who.actor).await.map_err(status)?;
        metrics::counter!("memoire_teach_outcomes_total", "outcome" => format!("{:?}", result.outcome).to_lowercase()).increment(1);
        Ok(Response::new(c::teach_response(result)))
    }

    async fn forget(
        &self,
        req: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        let s = &self.state;
        let who = caller(&req)?.clone();
        let tenant = who.tenant(KeyRole::Writer).map_err(status)?;
        let cmd = c::forget_command(req.into_inner(), tenant, &s.limits).map_err(status)?;
        let (mode, dry_run) = (cmd.mode, cmd.dry_run);
        let r = s.uc.forget(cmd, &who.actor).await.map_err(status)?;
        Ok(Response::new(pb::ForgetResponse {
            outcome: pb::WriteOutcome::Forgotten as i32,
            mode: convert::forget_mode_pb(mode) as i32,
            dry_run,
            memory_ids: r.memory_ids.iter().map(Uuid::to_string).collect(),
            memory_ids_truncated: r.memory_ids_truncated,
            not_found_ids: r.not_found_ids.iter().map(Uuid::to_string).collect(),
            memories: r.memories,
            versions: r.versions,
            episodes: r.episodes,
            edges: r.edges,
        }))
    }

    async fn get_memory(
        &self,
        req: Request<pb::GetMemoryRequest>,
    ) -> Result<Response<pb::GetMemoryResponse>, Status> {
        let tenant = caller(&req)?.tenant(KeyRole::Reader).map_err(status)?;
        let id = v::uuid("memory_id", &req.get_ref().memory_id).map_err(status)?;
        let memory = self.state.uc.get_memory(tenant, id).await.map_err(status)?;
        Ok(Response::new(pb::GetMemoryResponse {
            memory: Some(convert::memory_pb(memory)),
        }))
    }

    async fn list_memories(
        &self,
        req: Request<pb::ListMemoriesRequest>,
    ) -> Result<Response<pb::ListMemoriesResponse>, Status> {
        let s = &self.state;
        let tenant = caller(&req)?.tenant(KeyRole::Reader).map_err(status)?;
        let q = c::list_query(req.into_inner(), tenant, &s.limits, &s.page_key).map_err(status)?;
        let (memories, next) = s.uc.list_memories(&q).await.map_err(status)?;
        Ok(Response::new(pb::ListMemoriesResponse {
            memories: memories.into_iter().map(convert::memory_pb).collect(),
            next_page_token: next
                .map(|cur| page_token::encode(&s.page_key, cur, &c::list_fingerprint(&q)))
                .unwrap_or_default(),
        }))
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let tenant = caller(&req)?.tenant(KeyRole::Reader).map_err(status)?;
        let id = v::uuid("memory_id", &req.get_ref().memory_id).map_err(status)?;
        let versions = self.state.uc.history(tenant, id).await.map_err(status)?;
        Ok(Response::new(pb::HistoryResponse {
            versions: versions.into_iter().map(convert::version_pb).collect(),
        }))
    }

    async fn chat(
        &self,
        req: Request<pb::ChatRequest>,
    ) -> Result<Response<pb::ChatResponse>, Status> {
        let s = &self.state;
        let who = caller(&req)?.clone();
        let permit = permit(&req)?;
        let r = req.into_inner();
        // A dry run reads; a turn writes.
        let role = if r.dry_run {
            KeyRole::Reader
        } else {
            KeyRole::Writer
        };
        let tenant = who.tenant(role).map_err(status)?;
        let mut turn = c::chat_turn(r, tenant, &s.limits, &s.recall).map_err(status)?;
        turn.wait = s.extraction_wait(turn.wait);
        if !turn.dry_run {
            s.uc.limiter()
                .admit_messages(&who, 1)
                .await
                .map_err(rate_limited)?;
        }
        let out = s.uc.chat(&permit, turn).await.map_err(status)?;
        let (model, reply) = out.reply.unwrap_or_default();
        Ok(Response::new(pb::ChatResponse {
            prompt: out
                .prompt
                .into_iter()
                .map(|m| pb::PromptMessage {
                    role: convert::role_pb(m.role).into(),
                    content: m.content,
                })
                .collect(),
            reply,
            model,
            extraction: out
                .extraction
                .map_or(pb::ExtractionState::Unspecified, extraction_pb)
                .into(),
            episode_id: out.episode_id.map(|id| id.to_string()).unwrap_or_default(),
            reply_episode_id: out
                .reply_episode_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
        }))
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let s = &self.state;
        let tenant = caller(&req)?.tenant(KeyRole::Reader).map_err(status)?;
        let q = c::list_users_query(req.into_inner(), tenant, &s.limits, &s.page_key)
            .map_err(status)?;
        let (users, next) = s.uc.list_users(&q).await.map_err(status)?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users
                .into_iter()
                .map(|u| pb::UserSummary {
                    user_id: u.user_id,
                    active_memories: u.active_memories.max(0) as u64,
                    episodes: u.episodes.max(0) as u64,
                    last_active_at: u.last_active_at.map(convert::ts),
                })
                .collect(),
            next_page_token: next
                .map(|last| c::users_page_token(&s.page_key, &q, &last))
                .unwrap_or_default(),
        }))
    }

    async fn list_episodes(
        &self,
        req: Request<pb::ListEpisodesRequest>,
    ) -> Result<Response<pb::ListEpisodesResponse>, Status> {
        let s = &self.state;
        let tenant = caller(&req)?.tenant(KeyRole::Reader).map_err(status)?;
        let q = c::list_episodes_query(req.into_inner(), tenant, &s.limits, &s.page_key)
            .map_err(status)?;
        let (episodes, next) = s.uc.list_episodes(&q).await.map_err(status)?;
        Ok(Response::new(pb::ListEpisodesResponse {
            episodes: episodes.into_iter().map(convert::episode_pb).collect(),
            next_page_token: next
                .map(|cur| page_token::encode(&s.page_key, cur, &c::episodes_fingerprint(&q)))
                .unwrap_or_default(),
        }))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let who = caller(&req)?;
        Ok(Response::new(pb::WhoAmIResponse {
            tenant_id: who.tenant_id.map(|t| t.to_string()).unwrap_or_default(),
            role: convert::key_role_pb(who.role).into(),
            key_id: who.key_id.map(|k| k.to_string()).unwrap_or_default(),
            actor: who.actor.clone(),
        }))
    }
}

/// Where extraction stands, on the wire.
fn extraction_pb(e: ExtractionWait) -> pb::ExtractionState {
    match e {
        ExtractionWait::Queued => pb::ExtractionState::Queued,
        ExtractionWait::Completed => pb::ExtractionState::Completed,
        ExtractionWait::Failed => pb::ExtractionState::Failed,
        ExtractionWait::TimedOut => pb::ExtractionState::TimedOut,
    }
}
