-- Each memory's vector again in a narrow row, for the exact vector search of a scope (every scope
-- of up to `recall_exact_search_max_scope` vectors). Reading a vector from `memories` means
-- walking its row to the 23rd column, past the content, key, tags and the rest, for each of the
-- scope's rows: at 10,000 memories that walk cost Postgres about as much as the distances
-- themselves (12 ms a search against 6.5 ms over rows that hold only what the search filters
-- on). `memories` stays the source of truth and keeps the HNSW index (larger scopes); these rows
-- follow it through the trigger below, in the same transaction, so that an exact search reads the
-- same vectors and computes the same distances, bit for bit.
CREATE TABLE memory_vectors (
    id               uuid PRIMARY KEY REFERENCES memories(id) ON DELETE CASCADE,
    tenant_id        uuid NOT NULL,
    user_id          text NOT NULL,
    namespace        text NOT NULL,
    status           text NOT NULL,
    expires_at       timestamptz,
    confidence       real NOT NULL,
    embedding_model  text NOT NULL,
    embedding        vector NOT NULL
);
ALTER TABLE memory_vectors ALTER COLUMN embedding SET STORAGE MAIN;
CREATE INDEX memory_vectors_scope ON memory_vectors (tenant_id, user_id, namespace);

ALTER TABLE memory_vectors ENABLE ROW LEVEL SECURITY;
ALTER TABLE memory_vectors FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON memory_vectors
    USING ((SELECT memoire_all_tenants()) OR tenant_id = (SELECT memoire_tenant()))
    WITH CHECK ((SELECT memoire_all_tenants()) OR tenant_id = (SELECT memoire_tenant()));

CREATE FUNCTION memoire_memory_vectors() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.embedding IS NULL THEN
        DELETE FROM memory_vectors WHERE id = NEW.id;
        RETURN NULL;
    END IF;
    INSERT INTO memory_vectors (id, tenant_id, user_id, namespace, status, expires_at, confidence,
                                embedding_model, embedding)
    VALUES (NEW.id, NEW.tenant_id, NEW.user_id, NEW.namespace, NEW.status, NEW.expires_at,
            NEW.confidence, NEW.embedding_model, NEW.embedding)
    ON CONFLICT (id) DO UPDATE SET
        tenant_id = EXCLUDED.tenant_id, user_id = EXCLUDED.user_id,
        namespace = EXCLUDED.namespace, status = EXCLUDED.status,
        expires_at = EXCLUDED.expires_at, confidence = EXCLUDED.confidence,
        embedding_model = EXCLUDED.embedding_model, embedding = EXCLUDED.embedding;
    RETURN NULL;
END;
$$;
-- A memory written without a vector has nothing to copy.
CREATE TRIGGER memories_vectors_insert AFTER INSERT ON memories
    FOR EACH ROW WHEN (NEW.embedding IS NOT NULL) EXECUTE FUNCTION memoire_memory_vectors();
-- Only when something the exact search reads changed (not on access statistics, importance,
-- versions or content alone).
CREATE TRIGGER memories_vectors_update AFTER UPDATE ON memories
    FOR EACH ROW
    WHEN ((OLD.tenant_id, OLD.user_id, OLD.namespace, OLD.status, OLD.expires_at, OLD.confidence,
           OLD.embedding_model, OLD.embedding)
          IS DISTINCT FROM
          (NEW.tenant_id, NEW.user_id, NEW.namespace, NEW.status, NEW.expires_at, NEW.confidence,
           NEW.embedding_model, NEW.embedding))
    EXECUTE FUNCTION memoire_memory_vectors();

-- Memories written before this migration (of every tenant: row-level security, migration 0014,
-- admits them all to this transaction).
SELECT set_config('memoire.tenant', '*', true);
INSERT INTO memory_vectors (id, tenant_id, user_id, namespace, status, expires_at, confidence,
                            embedding_model, embedding)
SELECT id, tenant_id, user_id, namespace, status, expires_at, confidence, embedding_model, embedding
FROM memories WHERE embedding IS NOT NULL;
