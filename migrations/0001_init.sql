-- Mémoire's schema: the whole memory model of PRODUCT.md §2.
--
-- Every row carries tenant_id, and every query filters on it. Vectors are stored in an
-- untyped `vector` column with the id of the model that made them beside it: HNSW indexes are
-- partial expression indexes per (model, dimension), created by `memoire-server migrate` (and at
-- start-up) from the configured embedding model, so that a model change can re-embed in the
-- background while the old vectors stay searchable — and vectors of two models are never compared.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE tenants (
    id                      uuid PRIMARY KEY,
    name                    text NOT NULL UNIQUE,
    pii_mode                text NOT NULL DEFAULT 'redact' CHECK (pii_mode IN ('redact', 'mask', 'off')),
    extraction_create_only  boolean NOT NULL DEFAULT false,
    rate_limit_rps          integer NOT NULL DEFAULT 0 CHECK (rate_limit_rps >= 0),
    max_memories            bigint NOT NULL DEFAULT 0 CHECK (max_memories >= 0),
    created_at              timestamptz NOT NULL
);

-- API keys are stored as SHA-256 of the secret (secrets are 192-bit random, so a fast hash is
-- the right tool; no password stretching needed). The prefix identifies a key to humans.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         text NOT NULL DEFAULT '',
    role         text NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
    prefix       text NOT NULL,
    secret_hash  bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, created_at);

-- Episodes: raw conversation messages, immutable except for purge.
CREATE TABLE episodes (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id          text NOT NULL,
    namespace        text NOT NULL,
    session_id       text NOT NULL,
    role             text NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    name             text,
    content          text NOT NULL,
    message_id       text,
    occurred_at      timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    embedding        vector,
    embedding_model  text,
    extracted_at     timestamptz,
    tsv              tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    CHECK ((embedding IS NULL) = (embedding_model IS NULL))
);
CREATE UNIQUE INDEX episodes_message_id ON episodes (tenant_id, user_id, namespace, message_id)
    WHERE message_id IS NOT NULL;
CREATE INDEX episodes_by_session ON episodes (tenant_id, user_id, namespace, session_id, occurred_at);
CREATE INDEX episodes_tsv ON episodes USING gin (tsv);
CREATE INDEX episodes_unextracted ON episodes (tenant_id, created_at) WHERE extracted_at IS NULL;

-- Memories: the current state of each durable statement. Its history is memory_versions.
CREATE TABLE memories (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id             text NOT NULL,
    namespace           text NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('fact', 'preference', 'event', 'goal', 'rule',
                                                      'trait', 'signal', 'summary', 'document')),
    content             text NOT NULL,
    -- lowercased, white-space-collapsed content: duplicate detection
    content_key         text NOT NULL,
    slot                text,
    subject             text,
    tags                text[] NOT NULL DEFAULT '{}',
    importance          real NOT NULL CHECK (importance BETWEEN 0 AND 1),
    confidence          real NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    pinned              boolean NOT NULL DEFAULT false,
    essential           boolean NOT NULL DEFAULT false,
    expires_at          timestamptz,
    status              text NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'superseded', 'tombstoned', 'expired')),
    -- deferred: a supersession marks the old row before the new row (same slot) is inserted
    superseded_by       uuid REFERENCES memories (id) ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED,
    version             integer NOT NULL CHECK (version >= 1),
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    last_accessed_at    timestamptz,
    access_count        bigint NOT NULL DEFAULT 0,
    embedding           vector,
    embedding_model     text,
    source_episode_ids  uuid[] NOT NULL DEFAULT '{}',
    tsv                 tsvector GENERATED ALWAYS AS (
                            to_tsvector('english', coalesce(subject, '') || ' ' || content || ' '
                                                   || translate(coalesce(slot, ''), '._', '  '))
                        ) STORED,
    CHECK ((embedding IS NULL) = (embedding_model IS NULL))
);
-- At most one current memory per slot: supersession is structural, not a convention.
CREATE UNIQUE INDEX memories_current_slot ON memories (tenant_id, user_id, namespace, slot)
    WHERE status = 'active' AND slot IS NOT NULL;
-- Listing (newest first, stable keyset cursor) and scope filters.
CREATE INDEX memories_listing ON memories (tenant_id, user_id, namespace, created_at DESC, id DESC);
-- Duplicate detection among current memories.
CREATE INDEX memories_current_content ON memories (tenant_id, user_id, namespace, content_key)
    WHERE status = 'active';
CREATE INDEX memories_tsv ON memories USING gin (tsv);
CREATE INDEX memories_tags ON memories USING gin (tags);
CREATE INDEX memories_expiring ON memories (expires_at) WHERE expires_at IS NOT NULL AND status = 'active';
CREATE INDEX memories_sources ON memories USING gin (source_episode_ids);

-- Append-only history: one row per change, the memory as that change left it.
CREATE TABLE memory_versions (
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    memory_id      uuid NOT NULL REFERENCES memories (id) ON DELETE CASCADE,
    version        integer NOT NULL CHECK (version >= 1),
    op             text NOT NULL CHECK (op IN ('create', 'update', 'correct', 'supersede', 'tombstone', 'expire')),
    basis          text NOT NULL CHECK (basis IN ('teach', 'correction', 'llm', 'rule', 'resolver',
                                                  'forget', 'retention', 'import')),
    score          real,
    reason         text NOT NULL DEFAULT '',
    actor          text NOT NULL,
    created_at     timestamptz NOT NULL,
    kind           text NOT NULL,
    content        text NOT NULL,
    slot           text,
    subject        text,
    tags           text[] NOT NULL DEFAULT '{}',
    importance     real NOT NULL,
    confidence     real NOT NULL,
    pinned         boolean NOT NULL,
    expires_at     timestamptz,
    status         text NOT NULL,
    superseded_by  uuid,
    PRIMARY KEY (memory_id, version)
);
CREATE INDEX memory_versions_as_of ON memory_versions (tenant_id, memory_id, created_at);

-- History is never rewritten: only purge (DELETE) may remove versions.
CREATE FUNCTION memoire_forbid_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END;
$$;
CREATE TRIGGER memory_versions_append_only BEFORE UPDATE ON memory_versions
    FOR EACH ROW EXECUTE FUNCTION memoire_forbid_update();

-- The graph: relations between memories and episodes.
CREATE TABLE edges (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    src_type    text NOT NULL CHECK (src_type IN ('memory', 'episode')),
    src_id      uuid NOT NULL,
    relation    text NOT NULL CHECK (relation IN ('derived_from', 'supersedes', 'relates_to', 'summarizes')),
    dst_type    text NOT NULL CHECK (dst_type IN ('memory', 'episode')),
    dst_id      uuid NOT NULL,
    weight      real NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, src_id, relation, dst_id)
);
CREATE INDEX edges_by_dst ON edges (tenant_id, dst_id);

-- Audit: who did what to which memory. Holds ids and decisions, never content.
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   uuid REFERENCES tenants (id) ON DELETE CASCADE,
    actor       text NOT NULL,
    action      text NOT NULL,
    target_id   uuid,
    detail      jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, created_at);
CREATE INDEX audit_log_by_target ON audit_log (target_id) WHERE target_id IS NOT NULL;
