//! Copies of memories' vectors for the exact vector search, held in the server's memory.
//!
//! An exact search used to read every vector of the scope from `memory_vectors` and compute
//! every distance in Postgres, for each Recall: most of Postgres's work for a scope of a
//! thousand memories, and ~10 ms at ten thousand. A server now keeps a copy of the scopes it
//! searches, with the generation that `memory_scopes` (migration 0020) held when the copy was
//! read — in the same statement, so the same snapshot. A Recall reads the scope's generation
//! (one index probe on the connection it searches on) and searches the copy when it is still
//! that generation: what Postgres would have read. A copy is read only when a scope's
//! generation was already seen unchanged by an earlier Recall, so that a scope written between
//! every two Recalls keeps the search in Postgres instead of reading its vectors again each
//! time. The copies are bounded in bytes (`recall_vector_cache_mb`); the least recently used go
//! first.
//!
//! The similarity is pgvector's cosine similarity as Recall's statements compute it
//! (`(1 - (a <=> b))::float4`: single-precision sums, the quotient in double precision), but
//! the order of the single-precision sums is not the order of Postgres's build (it depends on
//! the vector instructions it was compiled for), so a score may differ from Postgres's in its
//! last bit. Ties are broken by id, as in Postgres.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use memoire_core::Result;
use memoire_core::command::RecallQuery;
use pgvector::Vector;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db_error;

/// Which memories a copy holds: the statuses Recall can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Active,
    Superseded,
}

/// One scope's vectors of one model, as of `generation`.
#[derive(Debug)]
struct Copy {
    generation: i64,
    dims: usize,
    ids: Vec<Uuid>,
    status: Vec<Status>,
    /// Microseconds since the Unix epoch.
    expires_at: Vec<Option<i64>>,
    confidence: Vec<f32>,
    /// Each row's sum of squares (single precision, summed as [`sums`] sums).
    norms: Vec<f32>,
    /// The rows' vectors, one after the other.
    vectors: Vec<f32>,
}

impl Copy {
    fn bytes(&self) -> usize {
        bytes(self.ids.len(), self.dims)
    }
}

/// The bytes a copy of `rows` vectors of `dims` dimensions takes.
fn bytes(rows: usize, dims: usize) -> usize {
    rows.saturating_mul(dims * 4 + 16 + 1 + 16 + 4 + 4)
        .saturating_add(128)
}

/// Tenant, user, namespace, model.
type Key = (Uuid, String, String, String);

#[derive(Debug, Default)]
struct Entries {
    copies: HashMap<Key, (Arc<Copy>, u64)>,
    /// The generation each scope without a copy was last seen at.
    seen: HashMap<Key, i64>,
    bytes: usize,
    tick: u64,
}

/// The copies, bounded in bytes.
#[derive(Debug, Default)]
pub(crate) struct VectorCache {
    entries: Mutex<Entries>,
}

/// At most this many scopes' generations are remembered without a copy.
const MAX_SEEN: usize = 100_000;

/// A nearest neighbour: its id and similarity.
pub(crate) type Hit = (Uuid, f32);

/// What an exact search filters the scope's vectors on, besides the scope.
pub(crate) struct Filter<'a> {
    pub model: &'a str,
    pub dims: usize,
    pub include_superseded: bool,
    pub min_confidence: f32,
    pub now: DateTime<Utc>,
    pub limit: usize,
    /// The budget in bytes (0: no copies).
    pub budget: usize,
    /// How many vectors the scope holds (its statistics): a scope whose copy would not fit
    /// the budget is not read.
    pub vectors: u64,
}

impl VectorCache {
    /// The `f.limit` nearest neighbours of `vector` among `q`'s scope's memories that pass
    /// `f`, from the copies, or `None` when a copy is missing and was not read now (then the
    /// search runs in Postgres). Reads the scope's generations on `conn`, and the copies that
    /// are stale and may be read.
    pub(crate) async fn nearest(
        &self,
        conn: &mut PgConnection,
        q: &RecallQuery,
        vector: &[f32],
        f: &Filter<'_>,
    ) -> Result<Option<Vec<Hit>>> {
        if vector.len() != f.dims || bytes(f.vectors as usize, f.dims) > f.budget {
            return Ok(None);
        }
        let mut namespaces = q.namespaces.clone();
        namespaces.sort();
        namespaces.dedup();
        let generations: HashMap<String, i64> = sqlx::query_as(
            "SELECT namespace, generation FROM memory_scopes \
             WHERE tenant_id = $1 AND user_id = $2 AND namespace = ANY($3)",
        )
        .bind(q.tenant_id)
        .bind(&q.user_id)
        .bind(&namespaces)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?
        .into_iter()
        .collect();
        let mut copies = Vec::with_capacity(namespaces.len());
        for ns in namespaces {
            // A scope without a row has no vectors: generation 0.
            let generation = generations.get(&ns).copied().unwrap_or(0);
            let key = (q.tenant_id, q.user_id.clone(), ns, f.model.to_owned());
            match self.lookup(&key, generation) {
                Lookup::Fresh(copy) => copies.push(copy),
                Lookup::Read => match read(conn, &key, f.dims).await? {
                    Some(copy) => copies.push(self.keep(key, copy, f.budget)),
                    None => return Ok(None),
                },
                Lookup::Skip => return Ok(None),
            }
        }
        Ok(Some(search(&copies, vector, f)))
    }

    fn lookup(&self, key: &Key, generation: i64) -> Lookup {
        let Ok(mut e) = self.entries.lock() else {
            return Lookup::Skip;
        };
        e.tick += 1;
        let tick = e.tick;
        if let Some((copy, used)) = e.copies.get_mut(key)
            && copy.generation == generation
        {
            *used = tick;
            return Lookup::Fresh(copy.clone());
        }
        if e.seen.get(key) == Some(&generation) {
            return Lookup::Read;
        }
        if e.seen.len() >= MAX_SEEN {
            e.seen.clear();
        }
        e.seen.insert(key.clone(), generation);
        Lookup::Skip
    }

    /// Keeps `copy` (when it fits the budget), dropping the least recently used copies.
    fn keep(&self, key: Key, copy: Copy, budget: usize) -> Arc<Copy> {
        let copy = Arc::new(copy);
        let size = copy.bytes();
        let Ok(mut e) = self.entries.lock() else {
            return copy;
        };
        e.seen.remove(&key);
        if let Some((old, _)) = e.copies.remove(&key) {
            e.bytes -= old.bytes();
        }
        if size > budget {
            return copy;
        }
        while e.bytes + size > budget {
            let Some(oldest) = e
                .copies
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((old, _)) = e.copies.remove(&oldest) {
                e.bytes -= old.bytes();
            }
        }
        e.tick += 1;
        let tick = e.tick;
        e.bytes += size;
        e.copies.insert(key, (copy.clone(), tick));
        copy
    }
}

enum Lookup {
    Fresh(Arc<Copy>),
    Read,
    Skip,
}

/// A row of a copy as read: the generation (on every row), then the memory (none for a scope
/// without vectors of the model).
type Row = (
    i64,
    Option<Uuid>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<f32>,
    Option<Vector>,
);

/// `key`'s scope's vectors and its generation, in one statement (one snapshot). `None` when a
/// vector has another dimension than `dims` (the search then runs in Postgres, which refuses
/// to compare it).
async fn read(conn: &mut PgConnection, key: &Key, dims: usize) -> Result<Option<Copy>> {
    let (tenant, user, namespace, model) = key;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT g.generation, m.id, m.status, m.expires_at, m.confidence, m.embedding \
         FROM (SELECT coalesce((SELECT generation FROM memory_scopes WHERE tenant_id = $1 \
                 AND user_id = $2 AND namespace = $3), 0) AS generation) g \
         LEFT JOIN memory_vectors m ON m.tenant_id = $1 AND m.user_id = $2 AND m.namespace = $3 \
           AND m.embedding_model = $4 AND m.status IN ('active', 'superseded')",
    )
    .bind(tenant)
    .bind(user)
    .bind(namespace)
    .bind(model)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let mut copy = Copy {
        generation: rows.first().map_or(0, |r| r.0),
        dims,
        ids: Vec::with_capacity(rows.len()),
        status: Vec::with_capacity(rows.len()),
        expires_at: Vec::with_capacity(rows.len()),
        confidence: Vec::with_capacity(rows.len()),
        norms: Vec::with_capacity(rows.len()),
        vectors: Vec::with_capacity(rows.len() * dims),
    };
    for (_, id, status, expires_at, confidence, embedding) in rows {
        let (Some(id), Some(status), Some(confidence), Some(embedding)) =
            (id, status, confidence, embedding)
        else {
            continue;
        };
        let v = embedding.as_slice();
        if v.len() != dims {
            return Ok(None);
        }
        copy.ids.push(id);
        copy.status.push(if status == "active" {
            Status::Active
        } else {
            Status::Superseded
        });
        copy.expires_at
            .push(expires_at.map(|t| t.timestamp_micros()));
        copy.confidence.push(confidence);
        copy.norms.push(sums(v, v));
        copy.vectors.extend_from_slice(v);
    }
    Ok(Some(copy))
}

/// A memory row a job holds and is about to write: its id and scope.
pub(crate) type Held = (Uuid, Uuid, String, String);

/// Of the memory rows `held` that a job holds (locked, without the user's lock) and is about
/// to write, the ids it must leave: those of the scopes whose `memory_scopes` row it could not
/// lock now without waiting (it locks the others; a scope without a row is free). A writer
/// under the user's lock (Teach, extraction, Forget) holds its scope's row from its first
/// vector write to its commit and may then wait for one of the job's rows; a job that waited
/// for that scope's row would close the cycle. So the job never waits: it leaves a busy
/// scope's rows for its next batch or run.
pub(crate) async fn busy_rows(conn: &mut PgConnection, held: &[Held]) -> Result<HashSet<Uuid>> {
    let scopes: BTreeSet<(Uuid, &str, &str)> = held
        .iter()
        .map(|(_, t, u, n)| (*t, u.as_str(), n.as_str()))
        .collect();
    let t: Vec<Uuid> = scopes.iter().map(|x| x.0).collect();
    let u: Vec<&str> = scopes.iter().map(|x| x.1).collect();
    let n: Vec<&str> = scopes.iter().map(|x| x.2).collect();
    let busy: HashSet<(Uuid, String, String)> = sqlx::query_as(
        "WITH k AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) k(t, u, n)), \
              locked AS (SELECT s.tenant_id, s.user_id, s.namespace FROM memory_scopes s \
                         WHERE (s.tenant_id, s.user_id, s.namespace) IN (SELECT t, u, n FROM k) \
                         ORDER BY 1, 2, 3 FOR UPDATE SKIP LOCKED) \
         SELECT tenant_id, user_id, namespace FROM memory_scopes \
         WHERE (tenant_id, user_id, namespace) IN (SELECT t, u, n FROM k) \
         EXCEPT ALL SELECT * FROM locked",
    )
    .bind(t)
    .bind(u)
    .bind(n)
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?
    .into_iter()
    .collect();
    Ok(held
        .iter()
        .filter(|(_, t, u, n)| busy.contains(&(*t, u.clone(), n.clone())))
        .map(|h| h.0)
        .collect())
}

/// The sum of `a[i] * b[i]` in single precision, in sixteen lanes.
fn sums(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ra.iter().zip(rb) {
        tail += x * y;
    }
    lanes.iter().sum::<f32>() + tail
}

/// pgvector's cosine similarity as Recall's statements round it: `(1 - (a <=> b))::float4`.
fn similarity(dot: f32, norm_a: f32, norm_b: f32) -> f32 {
    let s = (dot as f64 / (norm_a as f64 * norm_b as f64).sqrt()).clamp(-1.0, 1.0);
    (1.0 - (1.0 - s)) as f32
}

/// Postgres's order of `float4` values, descending: NaN above every number.
fn descending(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
    }
}

/// The best `f.limit` rows of `copies` that pass `f`, by similarity to `vector` then by id.
fn search(copies: &[Arc<Copy>], vector: &[f32], f: &Filter<'_>) -> Vec<Hit> {
    let norm = sums(vector, vector);
    let now = f.now.timestamp_micros();
    let mut hits: Vec<Hit> = Vec::new();
    for copy in copies {
        for (i, row) in copy.vectors.chunks_exact(copy.dims).enumerate() {
            if (copy.status[i] == Status::Superseded && !f.include_superseded)
                || copy.expires_at[i].is_some_and(|t| t <= now)
                || (f.min_confidence > 0.0 && copy.confidence[i] < f.min_confidence)
            {
                continue;
            }
            let sim = similarity(sums(row, vector), copy.norms[i], norm);
            hits.push((copy.ids[i], sim));
        }
    }
    let order = |a: &Hit, b: &Hit| descending(a.1, b.1).then(a.0.cmp(&b.0));
    if f.limit > 0 && hits.len() > f.limit {
        hits.select_nth_unstable_by(f.limit - 1, order);
    }
    hits.truncate(f.limit);
    hits.sort_unstable_by(order);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_matches_the_definition() {
        let a = [0.6f32, 0.8, 0.0];
        let b = [0.8f32, 0.6, 0.0];
        let s = similarity(sums(&a, &b), sums(&a, &a), sums(&b, &b));
        assert!((s - 0.96).abs() < 1e-6, "{s}");
    }

    /// Id, status, expiry, confidence, vector.
    type TestRow = (u128, Status, Option<i64>, f32, [f32; 2]);

    fn copy(rows: &[TestRow]) -> Arc<Copy> {
        let mut c = Copy {
            generation: 1,
            dims: 2,
            ids: vec![],
            status: vec![],
            expires_at: vec![],
            confidence: vec![],
            norms: vec![],
            vectors: vec![],
        };
        for (id, status, expires_at, confidence, v) in rows {
            c.ids.push(Uuid::from_u128(*id));
            c.status.push(*status);
            c.expires_at.push(*expires_at);
            c.confidence.push(*confidence);
            c.norms.push(sums(v, v));
            c.vectors.extend_from_slice(v);
        }
        Arc::new(c)
    }

    #[test]
    fn a_search_filters_as_recalls_statement_and_orders_by_similarity_then_id() {
        let now = DateTime::from_timestamp(1_000, 0).expect("time");
        let at = now.timestamp_micros();
        let c = copy(&[
            (1, Status::Active, None, 1.0, [1.0, 0.0]),
            (2, Status::Superseded, None, 1.0, [1.0, 0.0]),
            (3, Status::Active, Some(at), 1.0, [1.0, 0.0]),
            (4, Status::Active, Some(at + 1), 1.0, [1.0, 0.0]),
            (5, Status::Active, None, 0.2, [1.0, 0.0]),
            (6, Status::Active, None, 1.0, [0.0, 1.0]),
            (7, Status::Active, None, 1.0, [2.0, 0.0]),
        ]);
        let f = |include_superseded, min_confidence, limit| Filter {
            model: "m",
            dims: 2,
            include_superseded,
            min_confidence,
            now,
            limit,
            budget: 1,
            vectors: 7,
        };
        let ids = |hits: Vec<Hit>| hits.iter().map(|h| h.0.as_u128()).collect::<Vec<_>>();
        let q = [3.0, 0.0];
        let c = [c];
        // Expired at `now` (3) is out, a microsecond later (4) is in; equal vectors tie by id,
        // the orthogonal one (6) comes last.
        assert_eq!(ids(search(&c, &q, &f(false, 0.0, 10))), [1, 4, 5, 7, 6]);
        assert_eq!(ids(search(&c, &q, &f(true, 0.0, 10))), [1, 2, 4, 5, 7, 6]);
        assert_eq!(ids(search(&c, &q, &f(false, 0.5, 10))), [1, 4, 7, 6]);
        assert_eq!(ids(search(&c, &q, &f(false, 0.0, 2))), [1, 4]);
        assert!(search(&c, &q, &f(false, 0.0, 0)).is_empty());
    }

    #[test]
    fn a_copy_is_sized_by_its_rows() {
        let c = copy(&[(1, Status::Active, None, 1.0, [1.0, 0.0])]);
        assert_eq!(c.bytes(), bytes(1, 2));
        assert!(bytes(10_000, 384) > 15 << 20 && bytes(10_000, 384) < 17 << 20);
        assert_eq!(bytes(usize::MAX, 384), usize::MAX);
    }

    #[test]
    fn nan_ranks_first_and_ties_go_by_id() {
        let mut v = [
            (Uuid::from_u128(2), 0.5),
            (Uuid::from_u128(1), 0.5),
            (Uuid::from_u128(3), f32::NAN),
        ];
        v.sort_by(|a, b| descending(a.1, b.1).then(a.0.cmp(&b.0)));
        assert_eq!(
            v.iter().map(|h| h.0.as_u128()).collect::<Vec<_>>(),
            vec![3, 1, 2]
        );
    }
}
