//! Export and import: a tenant's data, or one user's, as JSON Lines (docs/export.md).
//!
//! Each record is one JSON object: `type`, `format_version`, and the row's columns as Postgres'
//! `to_jsonb` writes them (times in RFC 3339 with microseconds, vectors as `"[…]"` text), so an
//! import puts back exactly what was exported — ids, versions, timestamps, vectors. An export
//! reads from one repeatable-read snapshot and streams (its memory use does not grow with the
//! tenant); an import writes in one transaction, set-based in batches, and names the line of
//! the first record it cannot take.

use std::collections::BTreeSet;

use chrono::SecondsFormat;
use memoire_core::validate as v;
use memoire_core::{Error, Result};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Postgres, Transaction};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{PgStore, db_error};

/// The version of the record format this code writes and reads.
pub const FORMAT_VERSION: u64 = 1;

/// Records buffered before an import writes them (one statement per batch).
const IMPORT_BATCH: usize = 500;

/// What [`PgStore::export`] reads.
#[derive(Debug, Clone)]
pub struct ExportScope {
    /// The tenant.
    pub tenant: Uuid,
    /// One user, or all.
    pub user: Option<String>,
    /// Namespaces; empty means all.
    pub namespaces: Vec<String>,
}

/// The kinds of record, in the order an export writes them — the order an import needs them in
/// (a memory's versions after the memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    /// The first line: what was exported, when. Not written by an import.
    Header,
    Episode,
    Memory,
    MemoryVersion,
    Edge,
}

impl Record {
    const ALL: [Record; 5] = [
        Record::Header,
        Record::Episode,
        Record::Memory,
        Record::MemoryVersion,
        Record::Edge,
    ];

    fn name(self) -> &'static str {
        match self {
            Record::Header => "export",
            Record::Episode => "episode",
            Record::Memory => "memory",
            Record::MemoryVersion => "memory_version",
            Record::Edge => "edge",
        }
    }

    fn table(self) -> &'static str {
        match self {
            Record::Header => "tenants",
            Record::Episode => "episodes",
            Record::Memory => "memories",
            Record::MemoryVersion => "memory_versions",
            Record::Edge => "edges",
        }
    }

    /// The field naming the row that says whose a record is: its own id, or a version's memory.
    fn owner_key(self) -> Option<&'static str> {
        match self {
            Record::Episode | Record::Memory => Some("id"),
            Record::MemoryVersion => Some("memory_id"),
            Record::Header | Record::Edge => None,
        }
    }

    /// The key a stored record is recognised by (an import skips records already stored).
    fn key(self) -> &'static str {
        match self {
            Record::Header | Record::Episode | Record::Memory => "(id)",
            Record::MemoryVersion => "(memory_id, version)",
            Record::Edge => "(tenant_id, src_id, relation, dst_id)",
        }
    }

    /// The export's query for this kind: one JSON text per row, in a stable order. `$1` is the
    /// tenant, `$2` the user (or NULL), `$3` the namespaces (empty: all).
    fn export_sql(self) -> String {
        // The rows of the scope, for a table aliased `x` with user_id and namespace columns.
        const IN_SCOPE: &str = "x.tenant_id = $1 AND ($2::text IS NULL OR x.user_id = $2) \
                                AND (cardinality($3::text[]) = 0 OR x.namespace = ANY($3))";
        let (row, from, filter, order) = match self {
            Record::Header => unreachable!("the header is written by export_into"),
            // `seq` is the queue's order, given again on import; `tsv` is derived.
            Record::Episode => (
                "to_jsonb(x) - 'tsv' - 'seq'",
                "episodes x",
                IN_SCOPE.to_owned(),
                "x.seq",
            ),
            // A memory's access statistics are its columns combined with its row of
            // `memory_access` (migration 0008): exported combined, imported into the columns.
            Record::Memory => (
                "(to_jsonb(x) - 'tsv') || jsonb_build_object(\
                   'access_count', x.access_count + coalesce(a.hits, 0), \
                   'last_accessed_at', greatest(x.last_accessed_at, a.last_accessed_at))",
                "memories x LEFT JOIN memory_access a ON a.memory_id = x.id",
                IN_SCOPE.to_owned(),
                "x.created_at, x.id",
            ),
            Record::MemoryVersion => (
                "to_jsonb(x)",
                "memory_versions x",
                format!(
                    "x.tenant_id = $1 AND x.memory_id IN (SELECT x.id FROM memories x WHERE {IN_SCOPE})"
                ),
                "x.memory_id, x.version",
            ),
            Record::Edge => (
                "to_jsonb(x)",
                "edges x",
                format!(
                    "x.tenant_id = $1 AND (($2::text IS NULL AND cardinality($3::text[]) = 0) \
                     OR EXISTS (SELECT 1 FROM memories x2 WHERE x2.id IN (x.src_id, x.dst_id) AND {m}) \
                     OR EXISTS (SELECT 1 FROM episodes x2 WHERE x2.id IN (x.src_id, x.dst_id) AND {m}))",
                    m = IN_SCOPE.replace("x.", "x2.")
                ),
                "x.src_id, x.relation, x.dst_id",
            ),
        };
        format!(
            "SELECT (jsonb_build_object('type', '{}', 'format_version', {FORMAT_VERSION}) || {row})::text \
             FROM {from} WHERE {filter} ORDER BY {order}",
            self.name()
        )
    }
}

impl PgStore {
    /// Streams `scope`'s records, header first, from one repeatable-read snapshot. The channel
    /// holds a few hundred records: a slow reader holds the export back rather than the export
    /// filling memory. Dropping the receiver ends the export.
    /// `NOT_FOUND`, before any record, when the tenant does not exist.
    pub async fn export(&self, scope: ExportScope) -> Result<mpsc::Receiver<Result<String>>> {
        self.tenant(scope.tenant).await?;
        let (out, records) = mpsc::channel(256);
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(e) = store.export_into(&scope, &out).await {
                let _ = out.send(Err(e)).await;
            }
        });
        Ok(records)
    }

    async fn export_into(
        &self,
        scope: &ExportScope,
        out: &mpsc::Sender<Result<String>>,
    ) -> Result<()> {
        use futures::TryStreamExt;

        let mut tx = self.begin(scope.tenant).await?;
        sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let header = json!({
            "type": Record::Header.name(),
            "format_version": FORMAT_VERSION,
            "tenant_id": scope.tenant,
            "user_id": scope.user,
            "namespaces": scope.namespaces,
            "exported_at": self.now().to_rfc3339_opts(SecondsFormat::Micros, false),
        });
        if out.send(Ok(header.to_string())).await.is_err() {
            return Ok(());
        }
        for record in &Record::ALL[1..] {
            let sql = record.export_sql();
            let mut rows = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql))
                .bind(scope.tenant)
                .bind(&scope.user)
                .bind(&scope.namespaces)
                .fetch(&mut *tx);
            while let Some(line) = rows.try_next().await.map_err(db_error)? {
                if out.send(Ok(line)).await.is_err() {
                    return Ok(()); // the reader is gone
                }
            }
        }
        Ok(())
    }

    /// Starts an import into `tenant` (which must exist). `model` is the configured embedding
    /// model: rows with vectors of another model are counted, for re-embedding.
    pub async fn importer(&self, tenant: Uuid, model: &str) -> Result<Importer> {
        self.tenant(tenant).await?; // NOT_FOUND before anything else
        let mut tx = self.begin(tenant).await?;
        // Every column an insert may set, read from the schema, so that a column added later is
        // carried by export and import alike. Generated and identity columns are derived again;
        // so is `episodes.tsv` (a trigger's).
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT table_name::text, string_agg(quote_ident(column_name), ', ' ORDER BY ordinal_position) \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = ANY($1) \
               AND is_generated = 'NEVER' AND is_identity = 'NO' \
               AND NOT (table_name = 'episodes' AND column_name = 'tsv') \
             GROUP BY table_name",
        )
        .bind(Record::ALL[1..].iter().map(|r| r.table()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        Ok(Importer {
            tx,
            tenant,
            model: model.to_owned(),
            columns,
            pending: Vec::new(),
            pending_kind: None,
            counts: ImportCounts::default(),
            scopes: BTreeSet::new(),
        })
    }
}

/// What an import wrote (or, in a dry run, would have written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportCounts {
    /// Records read, the header included.
    pub records: u64,
    /// Episodes written.
    pub episodes: u64,
    /// Memories written.
    pub memories: u64,
    /// Memory versions written.
    pub versions: u64,
    /// Edges written.
    pub edges: u64,
    /// Records already stored, skipped.
    pub skipped: u64,
    /// Memories and episodes written without a vector of the configured embedding model
    /// (another model's, or none): the re-embed job and the worker embed them.
    pub to_embed: u64,
}

/// An import in progress: one transaction, fed records in file order with [`Importer::push`],
/// ended by [`Importer::finish`]. Dropped unfinished, it writes nothing.
pub struct Importer {
    tx: Transaction<'static, Postgres>,
    tenant: Uuid,
    model: String,
    /// (table, its insertable columns).
    columns: Vec<(String, String)>,
    /// Records of `pending_kind` (one kind per batch) not written yet.
    pending: Vec<Pending>,
    pending_kind: Option<Record>,
    counts: ImportCounts,
    /// The (user, namespace) scopes written to.
    scopes: BTreeSet<(String, String)>,
}

impl std::fmt::Debug for Importer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Importer")
            .field("tenant", &self.tenant)
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

/// A checked record waiting for its batch: the line's own text (it is valid JSON: the batch is
/// these texts joined into an array, with no second serialization) and the id that says whose it
/// is (a version's memory).
struct Pending {
    line: u64,
    text: String,
    key: Option<String>,
}

/// The error for the record on `line`.
fn at(line: u64, message: impl Into<String>) -> Error {
    Error::invalid(format!("line {line}"), message)
}

impl Importer {
    /// The tenant imported into.
    pub fn tenant(&self) -> Uuid {
        self.tenant
    }

    /// Takes the record on `line` (blank lines are skipped). Errors name the line; after one,
    /// drop the importer: nothing is written.
    pub async fn push(&mut self, line: u64, text: &str) -> Result<()> {
        if text.trim().is_empty() {
            return Ok(());
        }
        let (kind, key) = self.parse(line, text)?;
        self.counts.records += 1;
        if kind == Record::Header {
            return Ok(());
        }
        if self.pending_kind != Some(kind) || self.pending.len() >= IMPORT_BATCH {
            self.flush().await?;
            self.pending_kind = Some(kind);
        }
        self.pending.push(Pending {
            line,
            text: text.to_owned(),
            key,
        });
        Ok(())
    }

    /// Checks what the database cannot check for itself: the format, the kind of record, the
    /// tenant, and users and namespaces by the API's own rules.
    /// Returns the record's kind and its owning id (see [`Record::owner_key`]).
    fn parse(&mut self, line: u64, text: &str) -> Result<(Record, Option<String>)> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| at(line, format!("is not a JSON record: {e}")))?;
        let Value::Object(o) = &value else {
            return Err(at(line, "is not a JSON object"));
        };
        match o.get("format_version") {
            Some(Value::Number(n)) if n.as_u64() == Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(at(
                    line,
                    format!("has format_version {other}; this server reads {FORMAT_VERSION}"),
                ));
            }
            None => return Err(at(line, "has no format_version")),
        }
        let kind = match o.get("type").and_then(Value::as_str) {
            Some(name) => Record::ALL.into_iter().find(|r| r.name() == name),
            None => None,
        }
        .ok_or_else(|| {
            at(
                line,
                format!(
                    "has type {}; expected one of {}",
                    o.get("type").map_or("(none)".to_owned(), Value::to_string),
                    Record::ALL.map(Record::name).join(", ")
                ),
            )
        })?;
        let tenant = o.get("tenant_id").and_then(Value::as_str);
        if tenant.and_then(|t| Uuid::parse_str(t).ok()) != Some(self.tenant) {
            return Err(at(
                line,
                format!(
                    "belongs to tenant {}, not to {} (the tenant being imported into)",
                    tenant.unwrap_or("(none)"),
                    self.tenant
                ),
            ));
        }
        // Times by their name (`created_at`, `expires_at`…): checked here, so that the error
        // names the field, which Postgres' would not.
        for (key, value) in o {
            if let (true, Some(t)) = (key.ends_with("_at"), value.as_str())
                && let Err(e) = chrono::DateTime::parse_from_rfc3339(t)
            {
                return Err(at(
                    line,
                    format!("{key} is not an RFC 3339 timestamp ({t:?}: {e})"),
                ));
            }
        }
        if matches!(kind, Record::Episode | Record::Memory) {
            let text = |key: &str| o.get(key).and_then(Value::as_str).unwrap_or_default();
            let named = |e: Error| at(line, e.to_string());
            let user = v::required_id("user_id", text("user_id")).map_err(named)?;
            if text("namespace").is_empty() {
                return Err(at(line, "has no namespace"));
            }
            let namespace = v::namespace("namespace", text("namespace")).map_err(named)?;
            if o.get("embedding_model").and_then(Value::as_str) != Some(self.model.as_str()) {
                self.counts.to_embed += 1;
            }
            self.scopes.insert((user, namespace));
        }
        let key = kind
            .owner_key()
            .and_then(|k| o.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok((kind, key))
    }

    /// Writes the pending batch.
    async fn flush(&mut self) -> Result<()> {
        let Some(kind) = self.pending_kind else {
            return Ok(());
        };
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let table = kind.table();
        let columns = self
            .columns
            .iter()
            .find(|(t, _)| t == table)
            .map(|(_, c)| c.clone())
            .ok_or_else(|| Error::Internal(format!("no columns known for {table}")))?;
        let insert = format!(
            "INSERT INTO {table} ({columns}) SELECT {columns} \
             FROM jsonb_populate_recordset(NULL::{table}, $1::text::jsonb) \
             ON CONFLICT {key} DO NOTHING",
            key = kind.key()
        );
        let rows = json_array(batch.iter().map(|p| p.text.as_str()));
        sqlx::raw_sql("SAVEPOINT import_batch")
            .execute(&mut *self.tx)
            .await
            .map_err(db_error)?;
        let written = match sqlx::query(AssertSqlSafe(insert.clone()))
            .bind(&rows)
            .execute(&mut *self.tx)
            .await
        {
            Ok(done) => done.rows_affected(),
            Err(e) if is_data_error(&e) => {
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT import_batch")
                    .execute(&mut *self.tx)
                    .await
                    .map_err(db_error)?;
                return Err(self.first_bad_record(&insert, &batch, e).await);
            }
            Err(e) => return Err(db_error(e)),
        };
        self.check_owned(kind, &batch).await?;
        let skipped = batch.len() as u64 - written;
        self.counts.skipped += skipped;
        let c = &mut self.counts;
        *match kind {
            Record::Episode => &mut c.episodes,
            Record::Memory => &mut c.memories,
            Record::MemoryVersion => &mut c.versions,
            Record::Edge | Record::Header => &mut c.edges, // headers are never pending
        } += written;
        Ok(())
    }

    /// After a batch failed on bad data: writes its records one by one to find the first that
    /// fails, and answers its line with Postgres' reason.
    async fn first_bad_record(&mut self, insert: &str, batch: &[Pending], e: sqlx::Error) -> Error {
        for Pending { line, text, .. } in batch {
            let one = json_array([text.as_str()]);
            let tried = async {
                sqlx::raw_sql("SAVEPOINT import_record")
                    .execute(&mut *self.tx)
                    .await?;
                let r = sqlx::query(AssertSqlSafe(insert.to_owned()))
                    .bind(&one)
                    .execute(&mut *self.tx)
                    .await;
                sqlx::raw_sql("ROLLBACK TO SAVEPOINT import_record")
                    .execute(&mut *self.tx)
                    .await?;
                r
            }
            .await;
            match tried {
                Ok(_) => continue,
                Err(e) if is_data_error(&e) => return at(*line, data_error_message(&e)),
                Err(e) => return db_error(e),
            }
        }
        // Each record passes alone; together they conflict (the same key twice, say).
        at(
            batch[0].line,
            format!(
                "this batch of records conflicts: {}",
                data_error_message(&e)
            ),
        )
    }

    /// Checks that every record of the batch is the tenant's now: a record whose id is taken by
    /// another tenant's row was not written (and is not the import's to skip), and a version
    /// must belong to one of the tenant's memories.
    async fn check_owned(&mut self, kind: Record, batch: &[Pending]) -> Result<()> {
        let table = match kind {
            Record::Episode | Record::Memory => kind.table(),
            Record::MemoryVersion => "memories",
            Record::Edge | Record::Header => return Ok(()),
        };
        // The records went in, so their ids are UUIDs. One index probe per record (the lateral
        // subquery with its LIMIT keeps the planner from scanning the table instead).
        let ids: Vec<Uuid> = batch
            .iter()
            .map(|p| {
                p.key
                    .as_deref()
                    .and_then(|k| Uuid::parse_str(k).ok())
                    .unwrap_or_default()
            })
            .collect();
        let sql = format!(
            "SELECT u.i FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, i) \
             LEFT JOIN LATERAL (SELECT true AS found FROM {table} t \
                                WHERE t.id = u.id AND t.tenant_id = $2 LIMIT 1) f ON true \
             WHERE f.found IS NULL ORDER BY u.i LIMIT 1"
        );
        let bad: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(&ids)
            .bind(self.tenant)
            .fetch_optional(&mut *self.tx)
            .await
            .map_err(db_error)?;
        match bad {
            None => Ok(()),
            Some(i) => {
                let Pending { line, key, .. } = &batch[(i - 1) as usize];
                let id = key
                    .as_ref()
                    .map_or("(none)".to_owned(), |k| format!("{k:?}"));
                Err(at(
                    *line,
                    match kind {
                        Record::MemoryVersion => format!(
                            "is a version of memory {id}, which is not one of this tenant's \
                             (a memory's record must come before its versions)"
                        ),
                        _ => format!("has id {id}, which another tenant's {} has", kind.name()),
                    },
                ))
            }
        }
    }

    /// Writes what is left and commits — or, for a dry run, rolls everything back. Returns what
    /// was (or would have been) written, and the (user, namespace) scopes it touched.
    pub async fn finish(mut self, dry_run: bool) -> Result<(ImportCounts, Vec<(String, String)>)> {
        self.flush().await?;
        if dry_run {
            self.tx.rollback().await.map_err(db_error)?;
        } else {
            // Deferred checks (a memory's superseded_by) run here.
            self.tx
                .commit()
                .await
                .map_err(|e| match is_data_error(&e) {
                    true => Error::invalid("records", data_error_message(&e)),
                    false => db_error(e),
                })?;
        }
        Ok((self.counts, self.scopes.into_iter().collect()))
    }
}

/// A JSON array of `records`, each already a JSON text.
fn json_array<'a>(records: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("[");
    for (i, r) in records.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r);
    }
    out.push(']');
    out
}

/// Whether Postgres refused the data itself (a data exception or an integrity constraint):
/// the client's record is at fault, not the server.
fn is_data_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("22") || c.starts_with("23")))
}

/// Postgres' reason, with its detail when it has one.
fn data_error_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => {
            let detail = d
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|p| p.detail())
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            format!("{}{detail}", d.message())
        }
        other => other.to_string(),
    }
}
