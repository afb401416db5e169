//! The admin service's use-cases: tenants, API keys, stats, dead letters, maintenance on demand.
//! Who may call them is the adapter's check (admin keys; a tenant's admin on its own tenant).

use chrono::{DateTime, Utc};
use memoire_core::Result;
use memoire_core::model::Scope;
use memoire_core::model::{ApiKey, DeadLetter, KeyRole, Stats, Tenant};
use memoire_store::{ExportScope, ImportCounts, Importer, JobScope, NewApiKey, TenantUpdate};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::UseCases;
use crate::jobs::Job;

impl UseCases {
    /// Creates a tenant.
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant> {
        self.store().create_tenant(name).await
    }

    /// One tenant (`NOT_FOUND` when it does not exist).
    pub async fn tenant(&self, id: Uuid) -> Result<Tenant> {
        self.store().tenant(id).await
    }

    /// Changes a tenant's policies.
    pub async fn update_tenant(&self, id: Uuid, update: &TenantUpdate) -> Result<Tenant> {
        self.store().update_tenant(id, update).await
    }

    /// Every tenant, or only `only`.
    pub async fn list_tenants(&self, only: Option<Uuid>) -> Result<Vec<Tenant>> {
        self.store().list_tenants(only).await
    }

    /// A new API key (its secret is returned once, stored hashed), limited to `rate_limit_rps`
    /// requests per second on its own (0: only the tenant's limit).
    pub async fn create_api_key(
        &self,
        tenant: Uuid,
        name: &str,
        role: KeyRole,
        rate_limit_rps: u32,
    ) -> Result<NewApiKey> {
        self.store()
            .create_api_key(tenant, name, role, rate_limit_rps)
            .await
    }

    /// A tenant's keys.
    pub async fn list_api_keys(&self, tenant: Uuid) -> Result<Vec<ApiKey>> {
        self.store().list_api_keys(tenant).await
    }

    /// Revokes a key (of `tenant`, when given).
    pub async fn revoke_api_key(&self, key: Uuid, tenant: Option<Uuid>) -> Result<ApiKey> {
        self.store().revoke_api_key(key, tenant).await
    }

    /// A tenant's counts.
    pub async fn stats(&self, tenant: Uuid) -> Result<Stats> {
        self.store().stats(tenant).await
    }

    /// Up to `limit` dead letters of a tenant after the cursor.
    pub async fn list_dead_letters(
        &self,
        tenant: Uuid,
        limit: i64,
        after: Option<(DateTime<Utc>, Uuid)>,
    ) -> Result<Vec<DeadLetter>> {
        self.store().list_dead_letters(tenant, limit, after).await
    }

    /// Queues dead-lettered jobs again. Returns how many.
    pub async fn replay_dead_letters(&self, tenant: Uuid, ids: &[Uuid]) -> Result<u64> {
        self.store().replay_dead_letters(tenant, ids).await
    }

    /// Runs `job` on `scope`'s tenant (which must exist): waiting for its result, or in the
    /// background (the run records its outcome in `maintenance_runs`). Returns the run's id and,
    /// when waited for, its result.
    pub async fn run_maintenance(
        &self,
        job: Job,
        scope: JobScope,
        wait: bool,
    ) -> Result<(Uuid, Option<serde_json::Value>)> {
        if let Some(tenant) = scope.tenant_id {
            self.tenant(tenant).await?;
        }
        let id = Uuid::now_v7();
        if wait {
            let result = self.run_job(id, job, &scope).await?;
            return Ok((id, Some(result)));
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _ = this.run_job(id, job, &scope).await;
        });
        Ok((id, None))
    }

    /// Streams `scope`'s records as JSON Lines (docs/export.md), from one snapshot;
    /// `NOT_FOUND` first when the tenant does not exist.
    pub async fn export(&self, scope: ExportScope) -> Result<mpsc::Receiver<Result<String>>> {
        self.store().export(scope).await
    }

    /// Starts an import into `tenant`: feed it records with [`Importer::push`], then hand it
    /// to [`Self::finish_import`].
    pub async fn importer(&self, tenant: Uuid) -> Result<Importer> {
        self.store().importer(tenant, self.embedding_model()).await
    }

    /// Ends an import: commits it (or, for a dry run, writes nothing) and drops the working
    /// memories it changed. Rows that came without the configured model's vectors
    /// (`to_embed`) keep what they have until [`Self::reembed_tenant`] (or the worker's periodic re-embed job) replaces them.
    pub async fn finish_import(&self, importer: Importer, dry_run: bool) -> Result<ImportCounts> {
        let tenant_id = importer.tenant();
        let (counts, scopes) = importer.finish(dry_run).await?;
        if dry_run {
            return Ok(counts);
        }
        let scopes: Vec<Scope> = scopes
            .into_iter()
            .map(|(user_id, namespace)| Scope {
                tenant_id,
                user_id,
                namespace,
            })
            .collect();
        self.changed_all(&scopes).await;
        Ok(counts)
    }

    /// Re-embeds `tenant`'s vectors of another model than the configured one, waiting for it or
    /// in the background.
    pub async fn reembed_tenant(&self, tenant: Uuid, wait: bool) -> Result<()> {
        let scope = JobScope {
            tenant_id: Some(tenant),
            user_id: None,
        };
        self.run_maintenance(Job::ReEmbed, scope, wait).await?;
        Ok(())
    }
}
