-- A generation per scope of memories' vectors (tenant, user, namespace), drawn from one sequence
-- whenever a statement writes or removes the scope's rows of `memory_vectors` (migration 0019),
-- in the same transaction. A server keeps the vectors of the scopes it searches exactly in its
-- memory, with the generation they were read at (in the same statement, hence the same
-- snapshot); a Recall reads the scope's generation — one index probe — and searches its copy
-- when the generation is the same, instead of reading and comparing every vector again. The
-- values come from one sequence, never from a counter per row, so that a scope emptied (its row
-- deleted: no user's identifier stays behind its memories) and written again cannot come back
-- to a generation that a copy was read at.
CREATE SEQUENCE memory_scope_generations;

CREATE TABLE memory_scopes (
    tenant_id   uuid NOT NULL,
    user_id     text NOT NULL,
    namespace   text NOT NULL,
    generation  bigint NOT NULL,
    PRIMARY KEY (tenant_id, user_id, namespace)
);

ALTER TABLE memory_scopes ENABLE ROW LEVEL SECURITY;
ALTER TABLE memory_scopes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON memory_scopes
    USING ((SELECT memoire_all_tenants()) OR tenant_id = (SELECT memoire_tenant()))
    WITH CHECK ((SELECT memoire_all_tenants()) OR tenant_id = (SELECT memoire_tenant()));

-- The scopes a statement wrote (`written`, and for an update the rows' old scopes in
-- `replaced`) get a new generation; they are locked in one order, so that two statements
-- writing the same scopes wait for each other instead of deadlocking. Once per transaction:
-- a scope's row that this transaction already renewed (its `xmin` is the transaction's) is
-- left as it is — readers see the transaction whole or not at all, so one new generation is
-- enough, and a bulk write (a COPY, an import: one statement here per memory, through the
-- trigger of migration 0019) does not pile up a version of the row per memory.
CREATE FUNCTION memoire_memory_scopes_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO memory_scopes (tenant_id, user_id, namespace, generation)
    SELECT w.tenant_id, w.user_id, w.namespace, nextval('memory_scope_generations')
    FROM (SELECT DISTINCT tenant_id, user_id, namespace FROM written ORDER BY 1, 2, 3) w
    ON CONFLICT (tenant_id, user_id, namespace)
    DO UPDATE SET generation = EXCLUDED.generation
    WHERE memory_scopes.xmin <> pg_current_xact_id()::xid;
    RETURN NULL;
END;
$$;

CREATE FUNCTION memoire_memory_scopes_rewritten() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO memory_scopes (tenant_id, user_id, namespace, generation)
    SELECT w.tenant_id, w.user_id, w.namespace, nextval('memory_scope_generations')
    FROM (SELECT tenant_id, user_id, namespace FROM written
          UNION SELECT tenant_id, user_id, namespace FROM replaced ORDER BY 1, 2, 3) w
    ON CONFLICT (tenant_id, user_id, namespace)
    DO UPDATE SET generation = EXCLUDED.generation
    WHERE memory_scopes.xmin <> pg_current_xact_id()::xid;
    RETURN NULL;
END;
$$;

-- Rows removed: their scopes get a new generation, and a scope left without vectors loses its
-- row.
CREATE FUNCTION memoire_memory_scopes_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM memory_scopes s
    WHERE (s.tenant_id, s.user_id, s.namespace) IN
          (SELECT tenant_id, user_id, namespace FROM removed)
    ORDER BY s.tenant_id, s.user_id, s.namespace
    FOR UPDATE;
    UPDATE memory_scopes s SET generation = nextval('memory_scope_generations')
    WHERE (s.tenant_id, s.user_id, s.namespace) IN
          (SELECT tenant_id, user_id, namespace FROM removed)
      AND s.xmin <> pg_current_xact_id()::xid;
    DELETE FROM memory_scopes s
    WHERE (s.tenant_id, s.user_id, s.namespace) IN
          (SELECT tenant_id, user_id, namespace FROM removed)
      AND NOT EXISTS (SELECT 1 FROM memory_vectors v WHERE v.tenant_id = s.tenant_id
                      AND v.user_id = s.user_id AND v.namespace = s.namespace);
    RETURN NULL;
END;
$$;

CREATE TRIGGER memory_vectors_scope_insert AFTER INSERT ON memory_vectors
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION memoire_memory_scopes_written();
CREATE TRIGGER memory_vectors_scope_update AFTER UPDATE ON memory_vectors
    REFERENCING OLD TABLE AS replaced NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION memoire_memory_scopes_rewritten();
CREATE TRIGGER memory_vectors_scope_delete AFTER DELETE ON memory_vectors
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION memoire_memory_scopes_removed();

-- The scopes written before this migration (of every tenant, as in migration 0019).
SELECT set_config('memoire.tenant', '*', true);
INSERT INTO memory_scopes (tenant_id, user_id, namespace, generation)
SELECT tenant_id, user_id, namespace, nextval('memory_scope_generations')
FROM (SELECT DISTINCT tenant_id, user_id, namespace FROM memory_vectors ORDER BY 1, 2, 3) s;
