//! Migrations, and the per-model HNSW indexes.

use memoire_core::Error;
use sha2::{Digest, Sha256};
use sqlx::AssertSqlSafe;

use crate::{PgStore, Rows, db_error};

/// The migrations in `migrations/` at the repository root, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// An arbitrary, fixed advisory-lock key that serializes index creation across processes.
const INDEX_LOCK_KEY: i64 = 0x6d656d6f_69726531;

/// The name of the HNSW index for vectors of `model` with `dims` dimensions on `table`.
pub fn vector_index_name(table: &str, model: &str, dims: u32) -> String {
    let digest = Sha256::digest(format!("{model}/{dims}").as_bytes());
    format!("{table}_hnsw_{}", &hex::encode(digest)[..12])
}

impl PgStore {
    /// Applies pending migrations (idempotent; safe to run from several processes at once).
    pub async fn migrate(&self) -> memoire_core::Result<()> {
        MIGRATOR.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => db_error(e),
            other => Error::Internal(format!("migration failed: {other}")),
        })?;
        // Row-level security (migration 0014) does not hold back a superuser or a BYPASSRLS role.
        let (superuser, bypass): (bool, bool) = sqlx::query_as(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        if superuser || bypass {
            tracing::warn!(
                superuser,
                bypass_rls = bypass,
                "the database role bypasses row-level security: tenant isolation rests on the \
                 queries alone; connect as a role without SUPERUSER and BYPASSRLS"
            );
        }
        Ok(())
    }

    /// Creates, when missing, the HNSW cosine indexes of memories and episodes for the embedding
    /// model `model` with `dims` dimensions. They are partial expression indexes: only vectors of
    /// that model, cast to its dimension — queries must use the same expression and predicate.
    pub async fn ensure_vector_indexes(&self, model: &str, dims: u32) -> memoire_core::Result<()> {
        if model.is_empty()
            || !model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':'))
        {
            return Err(Error::invalid(
                "embedding_model",
                "may contain only ASCII letters, digits, '-', '_', '.', '/' and ':'",
            ));
        }
        if !(1..=16_000).contains(&dims) {
            return Err(Error::invalid(
                "embedding_dims",
                "must be between 1 and 16000",
            ));
        }
        let mut tx = self.begin(Rows::All).await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(INDEX_LOCK_KEY)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        for table in ["memories", "episodes"] {
            let name = vector_index_name(table, model, dims);
            // The model id was checked above to hold no quote; it is a literal because index
            // predicates cannot take parameters.
            let sql = format!(
                "CREATE INDEX IF NOT EXISTS {name} ON {table} \
                 USING hnsw ((embedding::vector({dims})) vector_cosine_ops) \
                 WHERE embedding_model = '{model}'"
            );
            sqlx::query(AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }
}
