-- BM25 postings: one row per (document, lexeme) with the term's frequency in the document and the
-- document's length, keyed by scope and lexeme. Recall reads a query term's postings with an
-- index-only scan instead of unnesting the tsvector of every matching document, so scoring a
-- common term over a 100k-memory scope costs an index range, not 100k detoasted tsvectors.
-- Triggers keep the postings in step with the documents' tsvector (and memories' status, so that
-- the current view can be scored without touching the memories table).

CREATE TABLE memory_terms (
    tenant_id  uuid NOT NULL,
    user_id    text NOT NULL,
    namespace  text NOT NULL,
    lexeme     text NOT NULL,
    doc_id     uuid NOT NULL REFERENCES memories (id) ON DELETE CASCADE,
    tf         real NOT NULL,
    dl         real NOT NULL,
    status     text NOT NULL,
    PRIMARY KEY (tenant_id, user_id, namespace, lexeme, doc_id) INCLUDE (tf, dl, status)
);
CREATE INDEX memory_terms_by_doc ON memory_terms (doc_id);

CREATE TABLE episode_terms (
    tenant_id  uuid NOT NULL,
    user_id    text NOT NULL,
    namespace  text NOT NULL,
    lexeme     text NOT NULL,
    doc_id     uuid NOT NULL REFERENCES episodes (id) ON DELETE CASCADE,
    tf         real NOT NULL,
    dl         real NOT NULL,
    status     text NOT NULL DEFAULT 'active',
    PRIMARY KEY (tenant_id, user_id, namespace, lexeme, doc_id) INCLUDE (tf, dl, status)
);
CREATE INDEX episode_terms_by_doc ON episode_terms (doc_id);

CREATE FUNCTION memoire_memory_terms() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.tsv IS NOT DISTINCT FROM OLD.tsv THEN
            IF NEW.status IS DISTINCT FROM OLD.status THEN
                UPDATE memory_terms SET status = NEW.status WHERE doc_id = NEW.id;
            END IF;
            RETURN NULL;
        END IF;
        DELETE FROM memory_terms WHERE doc_id = NEW.id;
    END IF;
    INSERT INTO memory_terms (tenant_id, user_id, namespace, lexeme, doc_id, tf, dl, status)
    SELECT NEW.tenant_id, NEW.user_id, NEW.namespace, u.lexeme, NEW.id,
           coalesce(array_length(u.positions, 1), 1), length(NEW.tsv), NEW.status
    FROM unnest(NEW.tsv) u;
    RETURN NULL;
END;
$$;
-- Not on access-statistics updates: only what changes the text or the status.
CREATE TRIGGER memories_terms AFTER INSERT OR UPDATE OF content, subject, slot, status ON memories
    FOR EACH ROW EXECUTE FUNCTION memoire_memory_terms();

CREATE FUNCTION memoire_episode_terms() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO episode_terms (tenant_id, user_id, namespace, lexeme, doc_id, tf, dl)
    SELECT NEW.tenant_id, NEW.user_id, NEW.namespace, u.lexeme, NEW.id,
           coalesce(array_length(u.positions, 1), 1), length(NEW.tsv)
    FROM unnest(NEW.tsv) u;
    RETURN NULL;
END;
$$;
-- Episodes are immutable (purge deletes, and the postings go with them).
CREATE TRIGGER episodes_terms AFTER INSERT ON episodes
    FOR EACH ROW EXECUTE FUNCTION memoire_episode_terms();

-- Documents written before this migration.
INSERT INTO memory_terms (tenant_id, user_id, namespace, lexeme, doc_id, tf, dl, status)
SELECT m.tenant_id, m.user_id, m.namespace, u.lexeme, m.id,
       coalesce(array_length(u.positions, 1), 1), length(m.tsv), m.status
FROM memories m, unnest(m.tsv) u;
INSERT INTO episode_terms (tenant_id, user_id, namespace, lexeme, doc_id, tf, dl)
SELECT e.tenant_id, e.user_id, e.namespace, u.lexeme, e.id,
       coalesce(array_length(u.positions, 1), 1), length(e.tsv)
FROM episodes e, unnest(e.tsv) u;
