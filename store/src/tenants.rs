//! Tenants, API keys and stats.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use memoire_core::command::{ListUsers, Principal, UserSummary};
use memoire_core::model::{ApiKey, KeyRole, Stats, Tenant};
use memoire_core::{Error, Result};
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use crate::rows::{KEY_COLUMNS, KeyRow, PrincipalRow, TENANT_COLUMNS, TenantRow, convert_all};
use crate::{PgStore, Rows, db_error};

/// The prefix every Mémoire API key secret starts with, so that leaked keys are recognisable.
const SECRET_PREFIX: &str = "mem_";

/// Changes to a tenant's policies; `None` leaves one as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantUpdate {
    /// PII mode.
    pub pii_mode: Option<memoire_core::model::PiiMode>,
    /// Extraction kill switch.
    pub extraction_create_only: Option<bool>,
    /// Episode retention, days.
    pub episode_retention_days: Option<u32>,
    /// Memory retention, days.
    pub memory_retention_days: Option<u32>,
    /// Whether the PII policy applies to Teach content.
    pub scrub_teach: Option<bool>,
    /// Most active memories (0: no quota).
    pub max_memories: Option<u64>,
    /// Requests per second for the tenant (0: unlimited).
    pub rate_limit_rps: Option<u32>,
    /// Requests admitted at once (0: one second's worth).
    pub rate_limit_burst: Option<u32>,
    /// Ingested messages per second (0: unlimited).
    pub ingest_rate_limit_mps: Option<u32>,
    /// Most stored episodes (0: no quota).
    pub max_episodes: Option<u64>,
    /// Most bytes of stored content: messages and memory versions (0: no quota).
    pub max_content_bytes: Option<u64>,
}

/// SQL for the bytes of a tenant's (`$1`) stored content: its messages plus every memory version
/// — what `max_content_bytes` counts (migration 0013).
macro_rules! content_bytes {
    () => {
        "(SELECT COALESCE(sum(octet_length(content)), 0) FROM episodes WHERE tenant_id = $1) \
         + (SELECT COALESCE(sum(octet_length(content)), 0) FROM memory_versions \
            WHERE tenant_id = $1)"
    };
}

/// The tenant a query found, or `NOT_FOUND`.
fn found(row: Option<TenantRow>, id: Uuid) -> Result<Tenant> {
    row.ok_or_else(|| Error::NotFound {
        what: "tenant",
        id: id.to_string(),
    })?
    .try_into()
}

/// SHA-256 of an API key secret: what is stored and looked up.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// How long a key's principal is reused without asking Postgres. A revocation or tenant update
/// made through this process empties the cache at once; one made through another replica takes
/// effect here within this long.
pub const PRINCIPAL_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Principals of recently used keys, by the hash of the secret (never the secret itself).
#[derive(Debug)]
pub(crate) struct PrincipalCache(crate::ttl::TtlMap<[u8; 32], Principal>);

impl Default for PrincipalCache {
    fn default() -> Self {
        PrincipalCache(crate::ttl::TtlMap::new(PRINCIPAL_TTL))
    }
}

/// A newly created API key: its record and its secret (shown once).
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// The record.
    pub key: ApiKey,
    /// The secret.
    pub secret: String,
}

impl PgStore {
    /// Creates a tenant. `AlreadyExists` when the name is taken.
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant> {
        let sql = format!(
            "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) RETURNING {TENANT_COLUMNS}"
        );
        let row: TenantRow = sqlx::query_as(AssertSqlSafe(sql))
            .bind(Uuid::now_v7())
            .bind(name)
            .bind(self.clock.now())
            .fetch_one(&mut *self.conn(Rows::All).await?)
            .await
            .map_err(|e| match db_error(e) {
                Error::AlreadyExists(_) => {
                    Error::AlreadyExists(format!("a tenant named '{name}' already exists"))
                }
                other => other,
            })?;
        row.try_into()
    }

    /// The tenant named `name`, creating it when missing (dev mode's default tenant).
    pub async fn ensure_tenant(&self, name: &str) -> Result<Tenant> {
        match self.create_tenant(name).await {
            Err(Error::AlreadyExists(_)) => {
                let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = $1");
                let row: TenantRow = sqlx::query_as(AssertSqlSafe(sql))
                    .bind(name)
                    .fetch_one(&mut *self.conn(Rows::All).await?)
                    .await
                    .map_err(db_error)?;
                row.try_into()
            }
            other => other,
        }
    }

    /// A tenant by id.
    pub async fn tenant(&self, id: Uuid) -> Result<Tenant> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1");
        let row: Option<TenantRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&mut *self.conn(id).await?)
            .await
            .map_err(db_error)?;
        found(row, id)
    }

    /// Changes a tenant's policies (`None`: unchanged).
    pub async fn update_tenant(&self, id: Uuid, u: &TenantUpdate) -> Result<Tenant> {
        let sql = format!(
            "UPDATE tenants SET pii_mode = COALESCE($2, pii_mode), \
             extraction_create_only = COALESCE($3, extraction_create_only), \
             episode_retention_days = COALESCE($4, episode_retention_days), \
             memory_retention_days = COALESCE($5, memory_retention_days), \
             scrub_teach = COALESCE($6, scrub_teach), \
             rate_limit_rps = COALESCE($7, rate_limit_rps), \
             rate_limit_burst = COALESCE($8, rate_limit_burst), \
             ingest_rate_limit_mps = COALESCE($9, ingest_rate_limit_mps) \
             WHERE id = $1 RETURNING {TENANT_COLUMNS}"
        );
        let int = |d: Option<u32>| d.map(|d| d.min(i32::MAX as u32) as i32);
        let mut tx = self.begin(id).await?;
        if let Some(max) = u.max_memories {
            let max = i64::try_from(max).unwrap_or(i64::MAX);
            if max > 0 {
                // Counting starts exact: writers in flight finish first, new ones wait for the
                // count (a rare administrative step; see migration 0011).
                sqlx::query("LOCK TABLE memories IN SHARE MODE")
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
            }
            sqlx::query(
                "UPDATE tenants SET max_memories = $2, active_memories = CASE WHEN $2 = 0 THEN NULL \
                   ELSE COALESCE(active_memories, (SELECT count(*) FROM memories \
                     WHERE tenant_id = $1 AND status = 'active')) END \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(max)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        if u.max_episodes.is_some() || u.max_content_bytes.is_some() {
            let quota = |q: Option<u64>| q.map(|q| i64::try_from(q).unwrap_or(i64::MAX));
            let (episodes, bytes) = (quota(u.max_episodes), quota(u.max_content_bytes));
            if episodes.unwrap_or(0) > 0 || bytes.unwrap_or(0) > 0 {
                // As for max_memories: the counts start exact (migration 0013).
                sqlx::query("LOCK TABLE episodes, memory_versions IN SHARE MODE")
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
            }
            sqlx::query(
                "UPDATE tenants SET max_episodes = COALESCE($2, max_episodes), \
                   max_content_bytes = COALESCE($3, max_content_bytes) WHERE id = $1",
            )
            .bind(id)
            .bind(episodes)
            .bind(bytes)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            sqlx::query(concat!(
                "UPDATE tenants SET \
                   stored_episodes = CASE WHEN max_episodes = 0 AND max_content_bytes = 0 THEN NULL \
                     ELSE COALESCE(stored_episodes, \
                       (SELECT count(*) FROM episodes WHERE tenant_id = $1)) END, \
                   content_bytes = CASE WHEN max_episodes = 0 AND max_content_bytes = 0 THEN NULL \
                     ELSE COALESCE(content_bytes, ",
                content_bytes!(),
                ") END WHERE id = $1",
            ))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        let row: Option<TenantRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id)
            .bind(u.pii_mode.map(|m| m.as_str()))
            .bind(u.extraction_create_only)
            .bind(int(u.episode_retention_days))
            .bind(int(u.memory_retention_days))
            .bind(u.scrub_teach)
            .bind(int(u.rate_limit_rps))
            .bind(int(u.rate_limit_burst))
            .bind(int(u.ingest_rate_limit_mps))
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        // Principals carry the tenant's PII policy and rate limits.
        self.principals.0.clear();
        found(row, id)
    }

    /// All tenants (or only `only`), by name.
    pub async fn list_tenants(&self, only: Option<Uuid>) -> Result<Vec<Tenant>> {
        let sql = format!(
            "SELECT {TENANT_COLUMNS} FROM tenants WHERE ($1::uuid IS NULL OR id = $1) ORDER BY name"
        );
        let rows: Vec<TenantRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(only)
            .fetch_all(&mut *self.conn(only).await?)
            .await
            .map_err(db_error)?;
        convert_all(rows)
    }

    /// Creates an API key for `tenant_id`.
    pub async fn create_api_key(
        &self,
        tenant_id: Uuid,
        name: &str,
        role: KeyRole,
        rate_limit_rps: u32,
    ) -> Result<NewApiKey> {
        self.tenant(tenant_id).await?;
        let mut raw = [0u8; 24];
        rand::rng().fill_bytes(&mut raw);
        let secret = format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        let prefix: String = secret.chars().take(SECRET_PREFIX.len() + 6).collect();
        let sql = format!(
            "INSERT INTO api_keys (id, tenant_id, name, role, prefix, secret_hash, created_at, \
             rate_limit_rps) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {KEY_COLUMNS}"
        );
        let row: KeyRow = sqlx::query_as(AssertSqlSafe(sql))
            .bind(Uuid::now_v7())
            .bind(tenant_id)
            .bind(name)
            .bind(role.as_str())
            .bind(&prefix)
            .bind(hash_secret(&secret).as_slice())
            .bind(self.clock.now())
            .bind(i32::try_from(rate_limit_rps).unwrap_or(i32::MAX))
            .fetch_one(&mut *self.conn(tenant_id).await?)
            .await
            .map_err(db_error)?;
        Ok(NewApiKey {
            key: row.try_into()?,
            secret,
        })
    }

    /// A tenant's keys, oldest first.
    pub async fn list_api_keys(&self, tenant_id: Uuid) -> Result<Vec<ApiKey>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id"
        );
        let rows: Vec<KeyRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(tenant_id)
            .fetch_all(&mut *self.conn(tenant_id).await?)
            .await
            .map_err(db_error)?;
        convert_all(rows)
    }

    /// Revokes a key (idempotent). With `tenant_id`, only a key of that tenant.
    pub async fn revoke_api_key(&self, key_id: Uuid, tenant_id: Option<Uuid>) -> Result<ApiKey> {
        let sql = format!(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $3) \
             WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) RETURNING {KEY_COLUMNS}"
        );
        let row: Option<KeyRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(key_id)
            .bind(tenant_id)
            .bind(self.clock.now())
            .fetch_optional(&mut *self.conn(tenant_id).await?)
            .await
            .map_err(db_error)?;
        self.principals.0.clear();
        row.ok_or_else(|| Error::NotFound {
            what: "api key",
            id: key_id.to_string(),
        })?
        .try_into()
    }

    /// Resolves a presented secret to the principal of a live key, or `None`.
    pub async fn principal_for_secret(&self, secret: &str) -> Result<Option<Principal>> {
        if !secret.starts_with(SECRET_PREFIX) {
            return Ok(None);
        }
        let hash = hash_secret(secret);
        if let Some(p) = self.principals.0.get(&hash) {
            metrics::counter!("memoire_cache_requests_total", "cache" => "principal", "result" => "hit")
                .increment(1);
            return Ok(Some(p));
        }
        metrics::counter!("memoire_cache_requests_total", "cache" => "principal", "result" => "miss")
            .increment(1);
        let row: Option<PrincipalRow> = sqlx::query_as(
            "SELECT k.id, k.tenant_id, k.role, t.pii_mode, t.scrub_teach, t.rate_limit_rps, \
               t.rate_limit_burst, t.ingest_rate_limit_mps, k.rate_limit_rps AS key_rate_limit_rps \
             FROM api_keys k \
             JOIN tenants t ON t.id = k.tenant_id \
             WHERE k.secret_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(hash.as_slice())
        .fetch_optional(&mut *self.conn(Rows::All).await?)
        .await
        .map_err(db_error)?;
        let principal = row.map(Principal::try_from).transpose()?;
        if let Some(p) = &principal {
            self.principals.0.put(hash, p.clone());
        }
        Ok(principal)
    }

    /// A page of the tenant's users (everyone with memories or turns), by user id.
    pub async fn list_users(&self, q: &ListUsers) -> Result<(Vec<UserSummary>, Option<String>)> {
        // Each side reads its (tenant_id, user_id, …) index in user order and stops after a
        // page of users; the counts are per user of the page.
        let rows: Vec<(String, i64, i64, Option<DateTime<Utc>>)> = sqlx::query_as(
            "WITH users AS ( \
               (SELECT DISTINCT user_id FROM memories \
                 WHERE tenant_id = $1 AND ($2::text IS NULL OR namespace = $2) \
                   AND ($3::text IS NULL OR user_id > $3) \
                 ORDER BY user_id LIMIT $4) \
               UNION \
               (SELECT DISTINCT user_id FROM episodes \
                 WHERE tenant_id = $1 AND ($2::text IS NULL OR namespace = $2) \
                   AND ($3::text IS NULL OR user_id > $3) \
                 ORDER BY user_id LIMIT $4) \
               ORDER BY user_id LIMIT $4) \
             SELECT u.user_id, \
                    (SELECT count(*) FROM memories m WHERE m.tenant_id = $1 AND m.user_id = u.user_id \
                        AND ($2::text IS NULL OR m.namespace = $2) AND m.status = 'active'), \
                    (SELECT count(*) FROM episodes e WHERE e.tenant_id = $1 AND e.user_id = u.user_id \
                        AND ($2::text IS NULL OR e.namespace = $2)), \
                    GREATEST( \
                      (SELECT max(m.updated_at) FROM memories m WHERE m.tenant_id = $1 \
                          AND m.user_id = u.user_id AND ($2::text IS NULL OR m.namespace = $2)), \
                      (SELECT max(e.created_at) FROM episodes e WHERE e.tenant_id = $1 \
                          AND e.user_id = u.user_id AND ($2::text IS NULL OR e.namespace = $2))) \
               FROM users u ORDER BY u.user_id",
        )
        .bind(q.tenant_id)
        .bind(&q.namespace)
        .bind(&q.after)
        .bind(q.page_size as i64 + 1)
        .fetch_all(&mut *self.read_conn(q.tenant_id).await?)
        .await
        .map_err(db_error)?;
        let mut users: Vec<UserSummary> = rows
            .into_iter()
            .map(
                |(user_id, active_memories, episodes, last_active_at)| UserSummary {
                    user_id,
                    active_memories,
                    episodes,
                    last_active_at,
                },
            )
            .collect();
        let next = if users.len() > q.page_size {
            users.truncate(q.page_size);
            users.last().map(|u| u.user_id.clone())
        } else {
            None
        };
        Ok((users, next))
    }

    /// Counts of what a tenant stores.
    pub async fn stats(&self, tenant_id: Uuid) -> Result<Stats> {
        #[allow(clippy::type_complexity)]
        let (users, active, superseded, forgotten, versions, episodes, content_bytes): (
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = sqlx::query_as(concat!(
                "SELECT \
                   (SELECT count(*) FROM (SELECT user_id FROM memories WHERE tenant_id = $1 \
                                          UNION SELECT user_id FROM episodes WHERE tenant_id = $1) u), \
                   (SELECT count(*) FROM memories WHERE tenant_id = $1 AND status = 'active'), \
                   (SELECT count(*) FROM memories WHERE tenant_id = $1 AND status = 'superseded'), \
                   (SELECT count(*) FROM memories WHERE tenant_id = $1 \
                                                   AND status IN ('tombstoned', 'expired')), \
                   (SELECT count(*) FROM memory_versions WHERE tenant_id = $1), \
                   (SELECT count(*) FROM episodes WHERE tenant_id = $1), \
                   COALESCE((SELECT content_bytes FROM tenants WHERE id = $1), ",
                content_bytes!(),
                ")",
            ))
            .bind(tenant_id)
            .fetch_one(&mut *self.conn(tenant_id).await?)
            .await
            .map_err(db_error)?;
        Ok(Stats {
            users,
            active_memories: active,
            superseded_memories: superseded,
            forgotten_memories: forgotten,
            versions,
            episodes,
            content_bytes,
        })
    }
}
