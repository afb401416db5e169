//! BM25 (k1 = 1.2, b = 0.75) over the postings tables (migrations 0003 and 0017): the query's
//! terms with their document frequencies, the scope's best documents, and the scores of given
//! documents. Recall (`recall.rs`) filters the best documents by scope and fuses them.
//!
//! The best documents are found without scoring every posting of a common term (the threshold
//! algorithm, Fagin et al.): each term's postings are read best first — the index orders them by
//! term frequency, then document length, and the term's score falls in that order — a few hundred
//! of them. Every document read that could reach the pool is scored exactly (its missing terms
//! looked up by primary key), and a document no list has reached can score at most the sum of each
//! unfinished list's last score. When the pool's last score is above that bound (or, with one
//! list unfinished, equal to it, the unread ties coming after the last read in the index, so after
//! it by id), the pool is the exact top of the scope, ties broken by id as in a full scan.
//! Otherwise (and with filters, which the postings do not carry) every posting is scored in one
//! statement — except in a scope larger than the exact limit (`recall_exact_text_max_scope`),
//! where the work is bounded: at most as many documents as the pool are looked up (those read
//! that could rank highest), and when that does not prove the pool, the best of the documents
//! scored in full are the pool. Like the approximate vector search of such scopes, this may miss
//! a document that no list's head reached, or one not looked up; it is deterministic, and
//! counted.

use std::collections::HashMap;

use memoire_core::Result;
use memoire_core::command::RecallQuery;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::db_error;
use crate::ttl::TtlMap;

/// Query words that carry no information in a memory store (stemmed, as in the index).
const QUERY_STOP_WORDS: &[&str] = &["user", "memori", "rememb", "know"];

/// BM25's k1 and b.
const K1: f64 = 1.2;
const B: f64 = 0.75;

/// Postings read per term, as a multiple of the pool asked for. (Reading further in rounds did
/// not pay on the recall bench: a query whose lists' heads do not settle it is mostly one whose
/// terms are common together, where a second round read thousands of postings, looked up
/// thousands of documents, and then often scanned anyway.)
const DEPTH: usize = 2;
/// Terms a document's membership is tracked for (a bit each of a `u64`, whose all-terms mask must
/// not shift by 64); longer queries are scored by a full scan.
const MAX_TERMS: usize = 63;

/// The postings tables (migration 0003).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Postings {
    Memories,
    Episodes,
}

impl Postings {
    pub(crate) fn table(self) -> &'static str {
        match self {
            Postings::Memories => "memory_terms",
            Postings::Episodes => "episode_terms",
        }
    }
}

/// The corpus statistics BM25 reads: documents in the scope and their average length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Corpus {
    pub docs: f64,
    pub avg_len: f64,
}

impl Corpus {
    fn avg(self) -> f64 {
        self.avg_len.max(1.0)
    }
}

/// The query's terms that occur in the scope, with their inverse document frequencies.
#[derive(Debug, Clone, Default)]
pub struct Terms {
    lexemes: Vec<String>,
    idf: Vec<f64>,
}

impl Terms {
    pub(crate) fn is_empty(&self) -> bool {
        self.lexemes.is_empty()
    }

    /// Each lexeme's position among the terms (its bit in a document's `known`).
    fn positions(&self) -> HashMap<&str, usize> {
        self.lexemes
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i))
            .collect()
    }
}

/// Document frequencies of common terms in large scopes, kept as long as the scope statistics
/// (counting a term in 30,000 postings takes ~10 ms): keyed by table, scope, statuses and lexeme.
#[derive(Debug)]
pub(crate) struct DfCache(TtlMap<String, f64>);

impl DfCache {
    pub(crate) fn new(ttl: std::time::Duration) -> Self {
        DfCache(TtlMap::new(ttl))
    }
}

/// BM25's inverse document frequency (never negative).
fn idf(docs: f64, df: f64) -> f64 {
    (1.0 + (docs.max(df) - df + 0.5) / (df + 0.5)).ln()
}

/// A term's BM25 score in one document, per unit of idf (the same expression as the SQL of
/// [`push_score`], evaluated in the same order).
fn weight(tf: f64, dl: f64, avg: f64) -> f64 {
    tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * dl / avg))
}

/// Pushes the SQL for one posting's score (`idf`, `p.tf`, `p.dl` in scope).
fn push_score(b: &mut QueryBuilder<Postgres>, corpus: Corpus) {
    b.push("idf * p.tf * ")
        .push_bind(K1 + 1.0)
        .push(" / (p.tf + ")
        .push_bind(K1)
        .push(" * (1 - ")
        .push_bind(B)
        .push(" + ")
        .push_bind(B)
        .push(" * p.dl / ")
        .push_bind(corpus.avg())
        .push("))");
}

/// The statuses whose postings count: the current view of memories scores only what is in force
/// (the postings carry their memory's status); `None` for turns, and for a view of the past
/// (where the memory's version decides, not its status now).
fn statuses(table: Postings, q: &RecallQuery) -> Option<&'static [&'static str]> {
    match (table, q.as_of) {
        (Postings::Memories, None) if q.include_superseded => Some(&["active", "superseded"]),
        (Postings::Memories, None) => Some(&["active"]),
        _ => None,
    }
}

/// Pushes ` p.tenant_id = … AND p.user_id = … AND p.namespace … [AND p.status …]`: the postings
/// of `q`'s scope.
fn push_postings_scope(b: &mut QueryBuilder<Postgres>, table: Postings, q: &RecallQuery) {
    b.push(" p.tenant_id = ")
        .push_bind(q.tenant_id)
        .push(" AND p.user_id = ")
        .push_bind(q.user_id.clone());
    // An equality for one namespace (the common case), so that it is an index condition whatever
    // the statistics (without them, `= ANY` was applied as a filter, and the term's range became
    // the user's).
    match q.namespaces.as_slice() {
        [one] => b.push(" AND p.namespace = ").push_bind(one.clone()),
        many => b
            .push(" AND p.namespace = ANY(")
            .push_bind(many.to_vec())
            .push(")"),
    };
    if let Some(statuses) = statuses(table, q) {
        b.push(" AND p.status = ANY(").push_bind(statuses).push(")");
    }
}

/// One term's postings, best first (as far as they were read).
#[derive(Debug, Default)]
struct List {
    postings: Vec<(Uuid, f32, f32)>,
    /// Every posting of the term in the scope was read.
    complete: bool,
}

impl List {
    /// The most any posting not yet read can score, per unit of idf: postings come by term
    /// frequency (highest first), then length (shortest first). When the last one read has the
    /// least possible frequency (1), the rest share it and are no shorter; otherwise a later
    /// posting may have a lower frequency in a shorter document, bounded by the last frequency in
    /// the shortest possible one.
    fn rest_bound(&self, avg: f64) -> f64 {
        let Some((_, tf, dl)) = self.last().filter(|_| !self.complete) else {
            return 0.0;
        };
        if tf <= 1.0 {
            weight(1.0, dl as f64, avg)
        } else {
            weight(tf as f64, 0.0, avg)
        }
    }
}

impl List {
    /// The last posting read, in the index's order (whatever order the rows came in).
    fn last(&self) -> Option<(Uuid, f32, f32)> {
        self.postings.iter().copied().min_by(|a, b| {
            a.1.total_cmp(&b.1)
                .then_with(|| b.2.total_cmp(&a.2))
                .then_with(|| b.0.cmp(&a.0))
        })
    }
}

/// The postings of the query text's terms, up to `depth` per term, best first: one index range
/// per term, whatever the planner's statistics.
async fn read_lists(
    conn: &mut PgConnection,
    table: Postings,
    q: &RecallQuery,
    depth: usize,
) -> Result<Vec<(String, List)>> {
    // Every memory is about the user: in a query, "user" names no topic, yet it matches every
    // memory that mentions "the user's …" — thousands of postings for nothing.
    let mut b = QueryBuilder::<Postgres>::new(
        "WITH t AS (SELECT DISTINCT lexeme FROM unnest(to_tsvector('english', ",
    );
    b.push_bind(q.text.clone())
        .push(")) WHERE lexeme <> ALL(")
        .push_bind(QUERY_STOP_WORDS)
        .push(")");
    b.push(format!(
        ") SELECT t.lexeme, p.doc_id, p.tf, p.dl FROM t CROSS JOIN LATERAL \
         (SELECT p.doc_id, p.tf, p.dl FROM {} p WHERE",
        table.table()
    ));
    push_postings_scope(&mut b, table, q);
    b.push(" AND p.lexeme = t.lexeme ORDER BY p.tf DESC, p.dl, p.doc_id LIMIT ")
        .push_bind(depth as i64)
        .push(") p");
    let rows: Vec<(String, Uuid, f32, f32)> = b
        .build_query_as()
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)?;
    let mut lists: HashMap<String, List> = HashMap::new();
    for (lexeme, doc, tf, dl) in rows {
        lists
            .entry(lexeme)
            .or_default()
            .postings
            .push((doc, tf, dl));
    }
    let mut lists: Vec<(String, List)> = lists
        .into_iter()
        .map(|(lexeme, mut list)| {
            list.complete = list.postings.len() < depth;
            (lexeme, list)
        })
        .collect();
    // A term that no document of the scope has is dropped (it scores nothing); the rest are in
    // the order of their lexemes (the order of the terms, and of a document's bits).
    lists.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(lists)
}

/// The document frequency of each of `lexemes` in the scope (one index range each).
async fn count(
    conn: &mut PgConnection,
    table: Postings,
    q: &RecallQuery,
    lexemes: &[String],
) -> Result<Vec<(String, f64)>> {
    let mut b = QueryBuilder::<Postgres>::new(format!(
        "SELECT t.lexeme, (SELECT count(*) FROM {} p WHERE",
        table.table()
    ));
    push_postings_scope(&mut b, table, q);
    b.push(" AND p.lexeme = t.lexeme)::float8 FROM unnest(")
        .push_bind(lexemes.to_vec())
        .push("::text[]) t(lexeme)");
    b.build_query_as()
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)
}

fn df_key(table: Postings, q: &RecallQuery, lexeme: &str) -> String {
    format!(
        "{}|{}|{}|{}|{:?}|{lexeme}",
        table.table(),
        q.tenant_id,
        q.user_id,
        q.namespaces.join(","),
        statuses(table, q)
    )
}

/// The terms' document frequencies: a list read to its end counts its term; the others are
/// taken from `cache` or counted (and cached when `cache_it`).
async fn terms_of(
    conn: &mut PgConnection,
    cache: &DfCache,
    cache_it: bool,
    table: Postings,
    q: &RecallQuery,
    corpus: Corpus,
    lists: &[(String, List)],
) -> Result<Terms> {
    let mut dfs: Vec<Option<f64>> = lists
        .iter()
        .map(|(lexeme, list)| {
            let read = list.postings.len() as f64;
            if list.complete {
                Some(read)
            } else {
                // Never below what was read: the cached count may predate the newest documents.
                cache
                    .0
                    .get(&df_key(table, q, lexeme))
                    .map(|df| df.max(read))
            }
        })
        .collect();
    let missing: Vec<String> = lists
        .iter()
        .zip(&dfs)
        .filter(|(_, df)| df.is_none())
        .map(|((lexeme, _), _)| lexeme.clone())
        .collect();
    if !missing.is_empty() {
        let counted: HashMap<String, f64> =
            count(conn, table, q, &missing).await?.into_iter().collect();
        for ((lexeme, _), df) in lists.iter().zip(dfs.iter_mut()) {
            if df.is_none() {
                let n = counted.get(lexeme).copied().unwrap_or(0.0);
                if cache_it {
                    cache.0.put(df_key(table, q, lexeme), n);
                }
                *df = Some(n);
            }
        }
    }
    Ok(Terms {
        lexemes: lists.iter().map(|(l, _)| l.clone()).collect(),
        idf: dfs
            .into_iter()
            .map(|df| idf(corpus.docs, df.unwrap_or(0.0)))
            .collect(),
    })
}

/// The postings of `lexemes` in the documents `ids` (by primary key).
async fn postings_of(
    conn: &mut PgConnection,
    table: Postings,
    q: &RecallQuery,
    ids: &[Uuid],
    lexemes: &[String],
) -> Result<Vec<(Uuid, String, f32, f32)>> {
    // Index-only probes of the primary key, by document (fenced, so that the tenant's condition,
    // the impact index's first column, cannot draw the plan to that index whatever the
    // statistics). The documents were found in the scope with the statuses asked for, and a
    // document's postings all carry its status.
    let mut b = QueryBuilder::<Postgres>::new(format!(
        "SELECT p.doc_id, p.lexeme, p.tf, p.dl FROM (SELECT p.doc_id, p.lexeme, p.tf, p.dl, \
         p.tenant_id FROM {} p WHERE p.doc_id = ANY(",
        table.table()
    ));
    b.push_bind(ids.to_vec())
        .push(") OFFSET 0) p WHERE p.tenant_id = ")
        .push_bind(q.tenant_id)
        .push(" AND p.lexeme = ANY(")
        .push_bind(lexemes.to_vec())
        .push(")");
    b.build_query_as()
        .fetch_all(&mut *conn)
        .await
        .map_err(db_error)
}

/// What is known of one document read in some term's list.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The sum of the scores of the terms it is known to have.
    score: f64,
    /// The terms whose score is known (a bit per term), including those it does not have.
    known: u64,
}

/// One round's documents, scored as far as the lists tell.
struct Round {
    seen: HashMap<Uuid, Seen>,
    /// Per term: the most a posting not yet read can score (0 once the list is complete).
    rest: Vec<f64>,
    /// Per term: the last posting read.
    last: Vec<Option<(Uuid, f32, f32)>>,
    idf: Vec<f64>,
    avg: f64,
    /// The terms whose list is complete (a bit per term).
    complete: u64,
}

impl Round {
    fn new(terms: &Terms, lists: &[(String, List)], avg: f64) -> Round {
        let mut seen: HashMap<Uuid, Seen> = HashMap::new();
        let mut rest = Vec::with_capacity(lists.len());
        let mut last = Vec::with_capacity(lists.len());
        let mut complete = 0u64;
        for (i, ((_, list), idf)) in lists.iter().zip(&terms.idf).enumerate() {
            for &(doc, tf, dl) in &list.postings {
                let s = seen.entry(doc).or_insert(Seen {
                    score: 0.0,
                    known: 0,
                });
                s.score += idf * weight(tf as f64, dl as f64, avg);
                s.known |= 1 << i;
            }
            rest.push(idf * list.rest_bound(avg));
            last.push(list.last());
            if list.complete {
                complete |= 1 << i;
            }
        }
        // A term whose list is complete is known of every document: absent, it scores 0.
        for s in seen.values_mut() {
            s.known |= complete;
        }
        Round {
            seen,
            rest,
            last,
            idf: terms.idf.clone(),
            avg,
            complete,
        }
    }

    fn all(&self) -> u64 {
        (1u64 << self.rest.len()) - 1
    }

    /// The terms whose list is not complete.
    fn open(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.rest.len()).filter(|i| self.complete & (1 << i) == 0)
    }

    /// The most a document can still gain from the terms it is not known to have.
    fn upper(&self, s: &Seen) -> f64 {
        s.score
            + (0..self.rest.len())
                .filter(|i| s.known & (1 << i) == 0)
                .map(|i| self.rest[i])
                .sum::<f64>()
    }

    /// Whether looking documents up cannot prove the pool: even scored at their upper bounds,
    /// the `pool`-th best would not pass what an unread document may score (and, with several
    /// lists unfinished, ties there are not settled either). Then every posting is scored at once.
    fn hopeless(&self, pool: usize) -> bool {
        if self.complete == self.all() {
            return false;
        }
        let open = self.open().count();
        let mut upper: Vec<f64> = self.seen.values().map(|s| self.upper(s)).collect();
        if upper.len() < pool {
            return true;
        }
        let ceiling = nth_best(&mut upper, pool);
        let unseen: f64 = self.rest.iter().sum();
        open > 1 && ceiling <= unseen + margin(unseen)
    }

    /// The documents whose missing terms must be looked up: those that could still reach the
    /// pool (the `pool`-th best lower bound).
    fn to_resolve(&self, pool: usize) -> Vec<Uuid> {
        let all = self.all();
        let mut lower: Vec<f64> = self.seen.values().map(|s| s.score).collect();
        let floor = nth_best(&mut lower, pool);
        let mut ids: Vec<Uuid> = self
            .seen
            .iter()
            .filter(|(_, s)| s.known != all && self.upper(s) + margin(floor) >= floor)
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    }

    /// Adds the looked-up postings of `resolved` (which are now known in full).
    fn resolve(
        &mut self,
        terms: &Terms,
        resolved: &[Uuid],
        found: &[(Uuid, String, f32, f32)],
        avg: f64,
    ) {
        let index = terms.positions();
        for (doc, lexeme, tf, dl) in found {
            let (Some(s), Some(&i)) = (self.seen.get_mut(doc), index.get(lexeme.as_str())) else {
                continue;
            };
            if s.known & (1 << i) == 0 {
                s.score += terms.idf[i] * weight(*tf as f64, *dl as f64, avg);
                s.known |= 1 << i;
            }
        }
        let all = self.all();
        for id in resolved {
            if let Some(s) = self.seen.get_mut(id) {
                s.known = all;
            }
        }
    }

    /// Of `ids` (documents to look up), the `n` that could score the most: the best bound first,
    /// then by id (so that the choice depends only on the data).
    fn most_promising(&self, ids: Vec<Uuid>, n: usize) -> Vec<Uuid> {
        if ids.len() <= n {
            return ids;
        }
        // Each bound once, not once per comparison.
        let mut bounded: Vec<(f64, Uuid)> = ids
            .into_iter()
            .map(|id| (self.seen.get(&id).map_or(0.0, |s| self.upper(s)), id))
            .collect();
        bounded.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut ids: Vec<Uuid> = bounded.into_iter().take(n).map(|(_, id)| id).collect();
        ids.sort();
        ids
    }

    /// The best `pool` of the documents whose score is known in full, ranked by score (as `real`,
    /// like the SQL) then id.
    fn best_known(&self, pool: usize) -> Vec<(Uuid, f64)> {
        let all = self.all();
        let mut exact: Vec<(Uuid, f64)> = self
            .seen
            .iter()
            .filter(|(_, s)| s.known == all)
            .map(|(id, s)| (*id, s.score))
            .collect();
        exact.sort_by(|a, b| (b.1 as f32).total_cmp(&(a.1 as f32)).then(a.0.cmp(&b.0)));
        exact.truncate(pool);
        exact
    }

    /// The best `pool` documents, when this round proves them the scope's (see
    /// [`Round::proves`]).
    #[cfg(test)]
    fn best(&self, pool: usize) -> Option<Vec<(Uuid, f32)>> {
        let exact = self.best_known(pool);
        self.proves(&exact, pool).then(|| as_real(exact))
    }

    /// Whether `exact`, this round's [`Round::best_known`] `pool`, is the scope's top: every
    /// document that could reach the pool fully scored; and either every list complete, or the
    /// last of the pool above anything a document not read could score.
    fn proves(&self, exact: &[(Uuid, f64)], pool: usize) -> bool {
        let all = self.all();
        self.complete == all || {
            let unseen: f64 = self.rest.iter().sum();
            exact.len() == pool && {
                let (id, last) = exact[pool - 1];
                last > unseen + margin(unseen) || self.ties_follow(last, id)
            }
        }
    }

    /// Whether the pool's last (`score`, `id`) is proven although an unread document may score as
    /// much: with one list unfinished, a document no list reached has that term alone; scoring as
    /// much as the last one read, it has its frequency (1) and length, and so comes after it in
    /// the index — by id, as ties rank. Every other unread document scores less.
    fn ties_follow(&self, score: f64, id: Uuid) -> bool {
        let mut open = self.open();
        let (Some(i), None) = (open.next(), open.next()) else {
            return false;
        };
        let Some((last_id, tf, dl)) = self.last[i] else {
            return false;
        };
        // Lengths are whole numbers of lexemes: the next possible one scores strictly less.
        let below = self.idf[i] * weight(1.0, dl as f64 + 1.0, self.avg);
        tf <= 1.0
            && score as f32 >= self.rest[i] as f32
            && score > below + margin(below)
            && last_id >= id
    }
}

/// Scores as the SQL returns them (`real`).
fn as_real(scored: Vec<(Uuid, f64)>) -> Vec<(Uuid, f32)> {
    scored.into_iter().map(|(id, s)| (id, s as f32)).collect()
}

/// The `n`-th largest of `scores` (`n` ≥ 1), or −∞ when there are fewer.
fn nth_best(scores: &mut [f64], n: usize) -> f64 {
    if scores.len() < n {
        return f64::NEG_INFINITY;
    }
    *scores
        .select_nth_unstable_by(n - 1, |a, b| b.total_cmp(a))
        .1
}

/// Counts how a full-text search found its best documents, in
/// `memoire_recall_full_text_total{how}`: every list read to its end (`complete`), proven from
/// the lists' heads (`proven`), taken from the lists' heads unproven in a scope above the exact
/// limit (`approximate`), or every posting scored (`scan`: filters, long queries, or lists too
/// deep).
fn ranked_by(how: &'static str) {
    metrics::counter!("memoire_recall_full_text_total", "how" => how).increment(1);
}

/// How far apart two scores must be to be told apart after rounding to `real`.
fn margin(score: f64) -> f64 {
    1e-6 * (1.0 + score.abs())
}

/// The scope's best `pool` documents for the query and its terms, before the scope's other
/// filters. `None` when the query's terms cannot be ranked this way (filters the postings do not
/// carry, too many terms, or lists too deep in a scope searched exactly): score them with
/// [`push_full_scan`]. With `exact` false (a scope above the exact limit), lists too deep give
/// the best documents of their heads instead (see the module's documentation).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn best(
    conn: &mut PgConnection,
    cache: &DfCache,
    table: Postings,
    q: &RecallQuery,
    corpus: Corpus,
    cache_dfs: bool,
    pool: Option<usize>,
    exact: bool,
) -> Result<(Terms, Option<Vec<(Uuid, f32)>>)> {
    if corpus.docs == 0.0 || q.text.trim().is_empty() {
        return Ok((Terms::default(), None));
    }
    let avg = corpus.avg();
    // (Without a pool, the lists only spare counting the rare terms.)
    let depth = DEPTH * pool.unwrap_or(q.candidates).max(1);
    let lists = read_lists(conn, table, q, depth).await?;
    let terms = terms_of(conn, cache, cache_dfs, table, q, corpus, &lists).await?;
    if terms.is_empty() {
        return Ok((terms, None));
    }
    let Some(pool) = pool.filter(|_| terms.lexemes.len() <= MAX_TERMS) else {
        ranked_by("scan");
        return Ok((terms, None));
    };
    let mut round = Round::new(&terms, &lists, avg);
    if exact && round.hopeless(pool) {
        ranked_by("scan");
        return Ok((terms, None));
    }
    let mut ids = round.to_resolve(pool);
    // Above the exact limit the work is bounded: at most as many documents as the pool are looked
    // up (one round trip of a few hundred primary-key probes), the heads' most promising. Proving
    // the pool could take thousands (60 ms and more at 100k on the recall bench).
    let cut = !exact && ids.len() > pool;
    if cut {
        ids = round.most_promising(ids, pool);
    }
    if !ids.is_empty() {
        let open: Vec<String> = round.open().map(|i| terms.lexemes[i].clone()).collect();
        let found = postings_of(conn, table, q, &ids, &open).await?;
        round.resolve(&terms, &ids, &found, avg);
    }
    // With lookups cut, a document not looked up may still pass the pool: nothing is proven.
    let top = round.best_known(pool);
    let how = if !cut && round.proves(&top, pool) {
        if round.complete == round.all() {
            "complete"
        } else {
            "proven"
        }
    } else if !exact {
        "approximate"
    } else {
        ranked_by("scan");
        return Ok((terms, None));
    };
    ranked_by(how);
    Ok((terms, Some(as_real(top))))
}

/// Pushes `scored AS (…)`: every posting of the terms in the scope, scored and summed per
/// document, best first (`limit`: only the best few).
pub(crate) fn push_full_scan(
    b: &mut QueryBuilder<Postgres>,
    table: Postings,
    q: &RecallQuery,
    terms: &Terms,
    corpus: Corpus,
    limit: Option<usize>,
) {
    // One index range per query term (the fenced subquery is run per term), whatever the
    // planner believes of the table: with stale or missing statistics (a young database,
    // autovacuum off or behind) a join here was planned as a scan of every posting of the
    // user — 5–25x slower at 10k memories.
    b.push("scored AS (SELECT p.doc_id, sum(");
    push_score(b, corpus);
    b.push(")::float4 AS score FROM unnest(")
        .push_bind(terms.lexemes.clone())
        .push("::text[], ")
        .push_bind(terms.idf.clone())
        .push(format!(
            "::float8[]) t(lexeme, idf) CROSS JOIN LATERAL (SELECT p.doc_id, p.tf, p.dl FROM {} p WHERE",
            table.table()
        ));
    push_postings_scope(b, table, q);
    b.push(" AND p.lexeme = t.lexeme OFFSET 0) p GROUP BY p.doc_id ORDER BY score DESC, p.doc_id");
    if let Some(limit) = limit {
        b.push(" LIMIT ").push_bind(limit as i64);
    }
    b.push(")");
}

/// The BM25 scores of the documents `ids` (those that have a query term).
pub(crate) async fn scores_of(
    conn: &mut PgConnection,
    table: Postings,
    q: &RecallQuery,
    terms: &Terms,
    corpus: Corpus,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, f32)>> {
    if terms.is_empty() || ids.is_empty() {
        return Ok(Vec::new());
    }
    let avg = corpus.avg();
    let index = terms.positions();
    let mut scores: HashMap<Uuid, f64> = HashMap::new();
    for (doc, lexeme, tf, dl) in postings_of(conn, table, q, ids, &terms.lexemes).await? {
        if let Some(&i) = index.get(lexeme.as_str()) {
            *scores.entry(doc).or_default() += terms.idf[i] * weight(tf as f64, dl as f64, avg);
        }
    }
    Ok(scores.into_iter().map(|(id, s)| (id, s as f32)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn terms(idf: &[f64]) -> Terms {
        Terms {
            lexemes: (0..idf.len()).map(|i| format!("t{i}")).collect(),
            idf: idf.to_vec(),
        }
    }

    fn list(postings: &[(u128, f32, f32)], complete: bool) -> (String, List) {
        (
            String::new(),
            List {
                postings: postings
                    .iter()
                    .map(|&(d, tf, dl)| (id(d), tf, dl))
                    .collect(),
                complete,
            },
        )
    }

    #[test]
    fn a_term_scores_less_the_longer_its_document_and_more_the_more_often_it_occurs() {
        assert!(weight(1.0, 3.0, 6.0) > weight(1.0, 9.0, 6.0));
        assert!(weight(2.0, 9.0, 6.0) > weight(1.0, 9.0, 6.0));
        assert!(idf(100.0, 1.0) > idf(100.0, 50.0));
        assert!(idf(10.0, 10.0) > 0.0);
    }

    #[test]
    fn what_is_not_read_is_bounded_by_the_last_posting_read() {
        let avg = 6.0;
        // tf 1 at the end: the rest are tf 1 and at least as long.
        let (_, l) = list(&[(1, 2.0, 3.0), (2, 1.0, 4.0), (3, 1.0, 7.0)], false);
        assert_eq!(l.rest_bound(avg), weight(1.0, 7.0, avg));
        // Still in the tf > 1 head: a shorter document with a lower tf may follow.
        let (_, l) = list(&[(1, 3.0, 3.0), (2, 2.0, 9.0)], false);
        assert!(l.rest_bound(avg) >= weight(1.0, 1.0, avg));
        assert!(l.rest_bound(avg) >= weight(2.0, 1.0, avg));
        // A complete list leaves nothing unread.
        let (_, l) = list(&[(1, 1.0, 3.0)], true);
        assert_eq!(l.rest_bound(avg), 0.0);
    }

    #[test]
    fn the_pool_is_proven_only_when_nothing_unread_can_pass_its_last() {
        let avg = 5.0;
        let t = terms(&[2.0, 1.0]);
        // Both lists cut: documents 1 and 2 are in both, 3 in one only.
        let lists = vec![
            list(&[(1, 1.0, 2.0), (2, 1.0, 3.0), (3, 1.0, 9.0)], false),
            list(&[(1, 1.0, 2.0), (2, 1.0, 3.0)], false),
        ];
        let mut r = Round::new(&t, &lists, avg);
        assert!(!r.hopeless(2));
        // Fewer documents read than places, with lists unfinished: only a scan can tell.
        assert!(r.hopeless(4));
        // For two places, document 3 cannot reach them whatever its second term: not looked up,
        // and the two are proven (an unread document scores at most the lists' last scores).
        assert!(r.to_resolve(2).is_empty());
        let best = r.best(2).expect("proven");
        assert_eq!(
            best.iter().map(|b| b.0).collect::<Vec<_>>(),
            vec![id(1), id(2)]
        );
        assert!(best[0].1 > best[1].1);
        // For three, document 3 is looked up (it has no second term) and scored exactly; but an
        // unread document with both terms at the lists' ends could pass it: not proven.
        let ids = r.to_resolve(3);
        assert_eq!(ids, vec![id(3)]);
        r.resolve(&t, &ids, &[], avg);
        assert_eq!(r.seen[&id(3)].known, 0b11);
        assert!(r.best(3).is_none());
        // Looked up with its second term, it gains that term's score.
        let mut r = Round::new(&t, &lists, avg);
        r.resolve(&t, &ids, &[(id(3), "t1".into(), 1.0, 9.0)], avg);
        let both = 2.0 * weight(1.0, 9.0, avg) + weight(1.0, 9.0, avg);
        assert!((r.seen[&id(3)].score - both).abs() < 1e-12);
    }

    #[test]
    fn unproven_heads_give_their_best_looked_up_documents() {
        let avg = 5.0;
        let t = terms(&[1.0, 1.0]);
        // Two unfinished lists of equal postings: nothing is proven.
        let lists = vec![
            list(&[(1, 1.0, 4.0), (2, 1.0, 4.0), (3, 1.0, 4.0)], false),
            list(&[(3, 1.0, 4.0), (4, 1.0, 4.0), (5, 1.0, 4.0)], false),
        ];
        let mut r = Round::new(&t, &lists, avg);
        assert!(r.best(2).is_none());
        // Document 3 is known in full (both lists reached it); of the others, each has one term
        // and may have the other: they tie on their bound, so the lowest ids are looked up first.
        let ids = r.to_resolve(2);
        assert_eq!(ids, vec![id(1), id(2), id(4), id(5)]);
        let picked = r.most_promising(ids, 2);
        assert_eq!(picked, vec![id(1), id(2)]);
        // Document 2 has the other term, document 1 not: 3 and 2 are the best known, by id.
        r.resolve(&t, &picked, &[(id(2), "t1".into(), 1.0, 4.0)], avg);
        let best = r.best_known(2);
        assert_eq!(
            best.iter().map(|b| b.0).collect::<Vec<_>>(),
            vec![id(2), id(3)]
        );
        assert_eq!(best[0].1, best[1].1);
        // A document not looked up is never in the pool: its score is not known.
        assert!(r.best_known(10).iter().all(|b| b.0 != id(4)));
    }

    #[test]
    fn ties_at_the_cut_are_settled_by_the_index_order_or_not_at_all() {
        let avg = 5.0;
        // One list, cut inside a run of equal postings: the unread ones of the run come after the
        // last read in the index, so after it by id — as ties rank.
        let t = terms(&[1.0]);
        let lists = vec![list(&[(5, 1.0, 4.0), (6, 1.0, 4.0), (7, 1.0, 4.0)], false)];
        let r = Round::new(&t, &lists, avg);
        let best = r.best(2).expect("ties follow");
        assert_eq!(
            best.iter().map(|b| b.0).collect::<Vec<_>>(),
            vec![id(5), id(6)]
        );
        // Two unfinished lists: an unread document could have both terms at the lists' ends (and
        // any id). Not guessed.
        let t = terms(&[1.0, 1.0]);
        let lists = vec![
            list(&[(5, 1.0, 4.0), (6, 1.0, 4.0)], false),
            list(&[(5, 1.0, 4.0), (6, 1.0, 4.0)], false),
        ];
        let r = Round::new(&t, &lists, avg);
        assert!(r.best(2).is_none());
        // Read to the end, they are ranked by id.
        let t = terms(&[1.0]);
        let lists = vec![list(&[(6, 1.0, 4.0), (5, 1.0, 4.0)], true)];
        let r = Round::new(&t, &lists, avg);
        let best = r.best(2).expect("complete");
        assert_eq!(
            best.iter().map(|b| b.0).collect::<Vec<_>>(),
            vec![id(5), id(6)]
        );
    }
}
