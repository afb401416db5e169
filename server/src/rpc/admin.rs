//! `memoire.v1.AdminService`: tenants, API keys, stats. Admin keys only; a tenant's admin key
//! acts on its own tenant, the bootstrap key on any.

use std::pin::Pin;

use futures::Stream;
use memoire_core::command::Principal;
use memoire_core::model::KeyRole;
use memoire_core::validate as v;
use memoire_core::{Error, Result};
use memoire_proto::v1 as pb;
use memoire_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status, Streaming};

use crate::AppState;
use crate::auth::caller;
use crate::convert;
use crate::convert::admin::{
    MAX_BYTES_QUOTA, MAX_COUNT_QUOTA, dead_letter_cursor, quota, rate, retention_days,
    target_tenant, tenant_name,
};
use crate::error::status;

/// The admin service.
#[derive(Debug, Clone)]
pub struct AdminSvc {
    state: AppState,
}

impl AdminSvc {
    /// An admin service over `state`.
    pub fn new(state: AppState) -> Self {
        AdminSvc { state }
    }
}

/// The caller, who must hold an admin key (of a tenant, or the bootstrap key).
fn admin<T>(req: &Request<T>) -> Result<Principal, Status> {
    Ok(caller(req)?
        .require(KeyRole::Admin)
        .map_err(status)?
        .clone())
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportRecords, Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for AdminSvc {
    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        let s = &self.state;
        let who = admin(&req)?;
        if who.tenant_id.is_some() {
            return Err(status(Error::PermissionDenied(
                "only the bootstrap admin key may create tenants".into(),
            )));
        }
        let name = tenant_name(&req.get_ref().name).map_err(status)?;
        let tenant = s.uc.create_tenant(&name).await.map_err(status)?;
        tracing::info!(tenant_id = %tenant.id, name = %tenant.name, actor = %who.actor, "tenant created");
        Ok(Response::new(pb::CreateTenantResponse {
            tenant: Some(convert::tenant_pb(tenant)),
        }))
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let s = &self.state;
        let who = admin(&req)?;
        let tenants = s.uc.list_tenants(who.tenant_id).await.map_err(status)?;
        Ok(Response::new(pb::ListTenantsResponse {
            tenants: tenants.into_iter().map(convert::tenant_pb).collect(),
        }))
    }

    async fn update_tenant(
        &self,
        req: Request<pb::UpdateTenantRequest>,
    ) -> Result<Response<pb::UpdateTenantResponse>, Status> {
        let s = &self.state;
        let who = admin(&req)?;
        let r = req.into_inner();
        let tenant = target_tenant(&who, &r.tenant_id).map_err(status)?;
        let update = memoire_usecases::TenantUpdate {
            pii_mode: convert::pii_mode("pii_mode", r.pii_mode).map_err(status)?,
            extraction_create_only: r.extraction_create_only,
            episode_retention_days: retention_days(
                "episode_retention_days",
                r.episode_retention_days,
            )
            .map_err(status)?,
            memory_retention_days: retention_days("memory_retention_days", r.memory_retention_days)
                .map_err(status)?,
            scrub_teach: r.scrub_teach,
            max_memories: quota("max_memories", r.max_memories, MAX_COUNT_QUOTA).map_err(status)?,
            max_episodes: quota("max_episodes", r.max_episodes, MAX_COUNT_QUOTA).map_err(status)?,
            max_content_bytes: quota("max_content_bytes", r.max_content_bytes, MAX_BYTES_QUOTA)
                .map_err(status)?,
            rate_limit_rps: rate("rate_limit_rps", r.rate_limit_rps).map_err(status)?,
            rate_limit_burst: rate("rate_limit_burst", r.rate_limit_burst).map_err(status)?,
            ingest_rate_limit_mps: rate("ingest_rate_limit_mps", r.ingest_rate_limit_mps)
                .map_err(status)?,
        };
        let tenant = s.uc.update_tenant(tenant, &update).await.map_err(status)?;
        tracing::info!(tenant_id = %tenant.id, pii_mode = %tenant.pii_mode.as_str(), extraction_create_only = tenant.extraction_create_only, actor = %who.actor, "tenant updated");
        Ok(Response::new(pb::UpdateTenantResponse {
            tenant: Some(convert::tenant_pb(tenant)),
        }))
    }

    async fn create_api_key(
        &self,
        req: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let s = &self.state;
        let who = admin(&req)?;
        let r = req.into_inner();
        let (tenant, name, role, rps) = (|| {
            if r.tenant_id.is_empty() {
                return Err(Error::invalid("tenant_id", "is required"));
            }
            let tenant = target_tenant(&who, &r.tenant_id)?;
            let name = v::optional_text("name", Some(&r.name), 128)?.unwrap_or_default();
            let rps = rate("rate_limit_rps", Some(r.rate_limit_rps))?.unwrap_or(0);
            Ok((tenant, name, convert::key_role("role", r.role)?, rps))
        })()
        .map_err(status)?;
        let created =
            s.uc.create_api_key(tenant, &name, role, rps)
                .await
                .map_err(status)?;
        tracing::info!(key_id = %created.key.id, tenant_id = %tenant, role = %role, actor = %who.actor, "api key created");
        Ok(Response::new(pb::CreateApiKeyResponse {
            key: Some(convert::key_pb(created.key)),
            secret: created.secret,
        }))
    }

    async fn list_api_keys(
        &self,
        req: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let s = &self.state;
        let who = admin(&req)?;
        let tenant = target_tenant(&who, &req.get_ref().tenant_id).map_err(status)?;
        let keys = s.uc.list_api_keys(tenant).await.map_err(status)?;
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: keys.into_iter().map(convert::key_pb).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let s = &self.state;
        let who = admin(&req)?;
        let key_id = v::uuid("key_id", &req.get_ref().key_id).map_err(status)?;
        let key =
            s.uc.revoke_api_key(key_id, who.tenant_id)
                .await
                .map_err(status)?;
        tracing::info!(key_id = %key.id, actor = %who.actor, "api key revoked");
        Ok(Response::new(pb::RevokeApiKeyResponse {
            key: Some(convert::key_pb(key)),
        }))
    }

    async fn get_stats(
        &self,
        req: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let s = &self.state;
        let who = admin(&req)?;
        let tenant = target_tenant(&who, &req.get_ref().tenant_id).map_err(status)?;
        let t = s.uc.tenant(tenant).await.map_err(status)?;
        let st = s.uc.stats(tenant).await.map_err(status)?;
        let n = |x: i64| x.max(0) as u64;
        let usage = |name: &str, used: i64, limit: i64| pb::QuotaUsage {
            name: name.into(),
            used: n(used),
            limit: n(limit),
        };
        Ok(Response::new(pb::GetStatsResponse {
            users: n(st.users),
            active_memories: n(st.active_memories),
            superseded_memories: n(st.superseded_memories),
            forgotten_memories: n(st.forgotten_memories),
            versions: n(st.versions),
            episodes: n(st.episodes),
            content_bytes: n(st.content_bytes),
            quotas: vec![
                usage("max_memories", st.active_memories, t.max_memories),
                usage("max_episodes", st.episodes, t.max_episodes),
                usage("max_content_bytes", st.content_bytes, t.max_content_bytes),
            ],
            rate_limits: vec![
                usage("rate_limit_rps", 0, t.rate_limit_rps.into()),
                usage("rate_limit_burst", 0, t.rate_limit_burst.into()),
                usage("ingest_rate_limit_mps", 0, t.ingest_rate_limit_mps.into()),
            ],
        }))
    }

    async fn run_maintenance(
        &self,
        req: Request<pb::RunMaintenanceRequest>,
    ) -> Result<Response<pb::RunMaintenanceResponse>, Status> {
        use memoire_usecases::jobs::Job;
        let s = &self.state;
        let who = admin(&req)?;
        let r = req.into_inner();
        let job = match pb::MaintenanceJob::try_from(r.job) {
            Ok(pb::MaintenanceJob::Optimize) => Job::Optimize,
            Ok(pb::MaintenanceJob::Decay) => Job::Decay,
            Ok(pb::MaintenanceJob::Reflect) => Job::Reflect,
            Ok(pb::MaintenanceJob::Retention) => Job::Retention,
            Ok(pb::MaintenanceJob::Reembed) => Job::ReEmbed,
            Ok(pb::MaintenanceJob::Unspecified) | Err(_) => {
                return Err(status(Error::invalid(
                    "job",
                    "is required: MAINTENANCE_JOB_OPTIMIZE, _DECAY, _REFLECT, _RETENTION or _REEMBED",
                )));
            }
        };
        let tenant = target_tenant(&who, &r.tenant_id).map_err(status)?;
        let scope = memoire_usecases::JobScope {
            tenant_id: Some(tenant),
            user_id: r
                .user_id
                .filter(|u| !u.is_empty())
                .map(|u| v::required_id("user_id", &u))
                .transpose()
                .map_err(status)?,
        };
        tracing::info!(job = job.as_str(), tenant_id = %tenant, user_id = ?scope.user_id, actor = %who.actor, "maintenance requested");
        let (id, result) =
            s.uc.run_maintenance(job, scope, r.wait)
                .await
                .map_err(status)?;
        Ok(Response::new(pb::RunMaintenanceResponse {
            job_id: id.to_string(),
            finished: result.is_some(),
            result_json: result.map(|v| v.to_string()).unwrap_or_default(),
        }))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let s = &self.state;
        let who = admin(&req)?;
        let r = req.into_inner();
        let tenant = target_tenant(&who, &r.tenant_id).map_err(status)?;
        let size = v::page_size("page_size", r.page_size, 500).map_err(status)?;
        let after = dead_letter_cursor::decode(&s.page_key, &r.page_token).map_err(status)?;
        let mut letters =
            s.uc.list_dead_letters(tenant, size as i64 + 1, after)
                .await
                .map_err(status)?;
        let more = letters.len() > size;
        letters.truncate(size);
        let next_page_token = match (more, letters.last()) {
            (true, Some(last)) => dead_letter_cursor::encode(&s.page_key, last.created_at, last.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: letters.into_iter().map(convert::dead_letter_pb).collect(),
            next_page_token,
        }))
    }

    async fn replay_dead_letters(
        &self,
        req: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let s = &self.state;
        let who = admin(&req)?;
        let r = req.into_inner();
        let tenant = target_tenant(&who, &r.tenant_id).map_err(status)?;
        if r.ids.len() > s.limits.max_batch_ids {
            return Err(status(Error::invalid(
                "ids",
                format!(
                    "holds {} ids; the limit is {} (max_batch_ids)",
                    r.ids.len(),
                    s.limits.max_batch_ids
                ),
            )));
        }
        let ids = r
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| v::uuid(&format!("ids[{i}]"), id))
            .collect::<Result<Vec<_>>>()
            .map_err(status)?;
        let replayed =
            s.uc.replay_dead_letters(tenant, &ids)
                .await
                .map_err(status)?;
        tracing::info!(tenant_id = %tenant, replayed, actor = %who.actor, "dead letters replayed");
        Ok(Response::new(pb::ReplayDeadLettersResponse {
            replayed: replayed as u32,
        }))
    }

    type ExportMemoriesStream = ExportStream;

    async fn export_memories(
        &self,
        req: Request<pb::ExportMemoriesRequest>,
    ) -> Result<Response<Self::ExportMemoriesStream>, Status> {
        let s = &self.state;
        let who = admin(&req)?;
        let r = req.into_inner();
        let tenant = target_tenant(&who, &r.tenant_id).map_err(status)?;
        let user = match r.user_id.as_str() {
            "" => None,
            u => Some(v::required_id("user_id", u).map_err(status)?),
        };
        let namespaces = r
            .namespaces
            .iter()
            .enumerate()
            .map(|(i, n)| match n.as_str() {
                "" => Err(Error::invalid(format!("namespaces[{i}]"), "is empty")),
                n => v::namespace(&format!("namespaces[{i}]"), n),
            })
            .collect::<Result<Vec<_>>>()
            .map_err(status)?;
        // An unknown tenant is an error before the stream starts, not in it.
        let records =
            s.uc.export(memoire_usecases::ExportScope {
                tenant,
                user: user.clone(),
                namespaces,
            })
            .await
            .map_err(status)?;
        tracing::info!(tenant_id = %tenant, user_id = ?user, actor = %who.actor, "export started");
        Ok(Response::new(Box::pin(export_messages(records))))
    }

    async fn import_memories(
        &self,
        req: Request<Streaming<pb::ImportMemoriesRequest>>,
    ) -> Result<Response<pb::ImportMemoriesResponse>, Status> {
        let s = &self.state;
        let who = admin(&req)?;
        let mut messages = req.into_inner();
        let Some(first) = messages.message().await? else {
            return Err(status(Error::invalid(
                "tenant_id",
                "the stream is empty; its first message names the tenant",
            )));
        };
        let tenant = target_tenant(&who, &first.tenant_id).map_err(status)?;
        let dry_run = first.dry_run;
        let mut importer = s.uc.importer(tenant).await.map_err(status)?;
        let mut line = 0;
        let mut message = Some(first);
        while let Some(m) = message {
            for text in &m.lines {
                line += 1;
                importer.push(line, text).await.map_err(status)?;
            }
            message = messages.message().await?;
        }
        let c =
            s.uc.finish_import(importer, dry_run)
                .await
                .map_err(status)?;
        if c.to_embed > 0 && !dry_run {
            s.uc.reembed_tenant(tenant, false).await.map_err(status)?;
        }
        tracing::info!(tenant_id = %tenant, records = c.records, memories = c.memories, skipped = c.skipped, dry_run, actor = %who.actor, "import finished");
        Ok(Response::new(pb::ImportMemoriesResponse {
            records: c.records,
            episodes: c.episodes,
            memories: c.memories,
            versions: c.versions,
            edges: c.edges,
            skipped: c.skipped,
            dry_run,
        }))
    }
}

/// Records per export message, and bytes (a message also ends when no record is ready).
const EXPORT_MESSAGE_RECORDS: usize = 256;
const EXPORT_MESSAGE_BYTES: usize = 1 << 20;

/// The export's records as messages: those ready at once, up to a size, in each. An error ends
/// the stream after the records before it.
fn export_messages(
    records: tokio::sync::mpsc::Receiver<Result<String>>,
) -> impl Stream<Item = Result<pb::ExportRecords, Status>> + Send {
    futures::stream::unfold((records, None), |(mut records, failed)| async move {
        if let Some(e) = failed {
            return Some((Err(status(e)), (records, None)));
        }
        let mut lines = Vec::new();
        let mut bytes = 0;
        let mut next = records.recv().await;
        loop {
            match next {
                Some(Ok(line)) => {
                    bytes += line.len();
                    lines.push(line);
                }
                Some(Err(e)) if lines.is_empty() => return Some((Err(status(e)), (records, None))),
                Some(Err(e)) => return Some((Ok(pb::ExportRecords { lines }), (records, Some(e)))),
                None if lines.is_empty() => return None,
                None => break,
            }
            if lines.len() >= EXPORT_MESSAGE_RECORDS || bytes >= EXPORT_MESSAGE_BYTES {
                break;
            }
            match records.try_recv() {
                Ok(r) => next = Some(r),
                Err(_) => break,
            }
        }
        Some((Ok(pb::ExportRecords { lines }), (records, None)))
    })
}
