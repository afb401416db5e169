-- Ingest and the extraction worker.
--
-- The episodes table is the durable queue: an episode with `extracted_at IS NULL` and no dead
-- letter is pending extraction, one with `embedding IS NULL` pending embedding. Ingest commits the
-- episodes and nothing else, so an acknowledged message can never be "lost from the queue": a
-- worker that crashes, a Redis that is flushed, or a notification that never arrives only delay
-- the work, which the worker's reconciler finds again by scanning these indexes.

-- Insertion order: ties of occurred_at (one batch, one timestamp) are resolved in the order said.
ALTER TABLE episodes ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;

ALTER TABLE episodes
    ADD COLUMN extract_attempts  integer NOT NULL DEFAULT 0,
    ADD COLUMN extract_after     timestamptz,
    ADD COLUMN extract_error     text,
    ADD COLUMN embed_attempts    integer NOT NULL DEFAULT 0,
    ADD COLUMN embed_after       timestamptz,
    -- set when the episode's extraction / embedding was set aside in dead_letters
    ADD COLUMN extract_dead_at   timestamptz,
    ADD COLUMN embed_dead_at     timestamptz;

DROP INDEX episodes_unextracted;
-- Per-user ordered scan of what is left to extract.
CREATE INDEX episodes_pending_extraction ON episodes (tenant_id, user_id, namespace, occurred_at, seq)
    WHERE extracted_at IS NULL AND extract_dead_at IS NULL;
CREATE INDEX episodes_pending_embedding ON episodes (seq)
    WHERE embedding IS NULL AND embed_dead_at IS NULL;

-- Jobs that failed `extraction_max_attempts` times: kept for inspection (with the model's raw
-- reply) and replay. Purging an episode purges its dead letters.
CREATE TABLE dead_letters (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    job         text NOT NULL CHECK (job IN ('extract', 'embed')),
    episode_id  uuid NOT NULL REFERENCES episodes (id) ON DELETE CASCADE,
    payload     jsonb NOT NULL,
    error       text NOT NULL,
    attempts    integer NOT NULL,
    raw_reply   text,
    created_at  timestamptz NOT NULL
);
CREATE INDEX dead_letters_by_tenant ON dead_letters (tenant_id, created_at, id);
CREATE UNIQUE INDEX dead_letters_one_per_job ON dead_letters (episode_id, job);

-- Wake workers when episodes arrive: one notification per INSERT statement (a batch), sent at
-- commit. A lost notification only delays extraction until the worker's next reconcile scan.
CREATE FUNCTION memoire_notify_episodes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('memoire_episodes', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER episodes_notify AFTER INSERT ON episodes
    FOR EACH STATEMENT EXECUTE FUNCTION memoire_notify_episodes();
