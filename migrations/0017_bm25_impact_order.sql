-- BM25 postings in impact order. Recall reads each query term's postings best first — highest
-- term frequency, then shortest document — and stops once no document it has not read can reach
-- the scores it must return (store/src/bm25.rs), instead of scoring every posting of a common term
-- (tens of thousands in a 100k-memory scope). The primary key becomes (document, lexeme): it keeps
-- the uniqueness, serves the triggers' and the cascade's deletes by document, and looks up a
-- document's postings for the query terms with an index-only scan (it carries the tenant, which
-- row-level security reads: without it every posting looked up was a heap fetch). The same two
-- indexes as before.

ALTER TABLE memory_terms DROP CONSTRAINT memory_terms_pkey;
DROP INDEX memory_terms_by_doc;
ALTER TABLE memory_terms ADD PRIMARY KEY (doc_id, lexeme) INCLUDE (tenant_id, tf, dl, status);
CREATE INDEX memory_terms_by_impact
    ON memory_terms (tenant_id, user_id, namespace, lexeme, tf DESC, dl, doc_id) INCLUDE (status);

ALTER TABLE episode_terms DROP CONSTRAINT episode_terms_pkey;
DROP INDEX episode_terms_by_doc;
ALTER TABLE episode_terms ADD PRIMARY KEY (doc_id, lexeme) INCLUDE (tenant_id, tf, dl, status);
CREATE INDEX episode_terms_by_impact
    ON episode_terms (tenant_id, user_id, namespace, lexeme, tf DESC, dl, doc_id) INCLUDE (status);
