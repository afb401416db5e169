-- The periodic jobs: optimize, decay, reflect, retention, re-embed.

-- Retention policy per tenant (0: keep forever). Episodes older than `episode_retention_days`
-- are deleted (once extracted); unpinned memories untouched (not updated, not recalled) for
-- `memory_retention_days` expire.
ALTER TABLE tenants
    ADD COLUMN episode_retention_days integer NOT NULL DEFAULT 0 CHECK (episode_retention_days >= 0),
    ADD COLUMN memory_retention_days  integer NOT NULL DEFAULT 0 CHECK (memory_retention_days >= 0);

-- Decay is applied as a factor of the time since `decayed_at` (or the last update / access), so
-- that running it twice, or at any frequency, gives the same confidence as running it once.
ALTER TABLE memories ADD COLUMN decayed_at timestamptz;

-- Versions written by the jobs say so.
ALTER TABLE memory_versions DROP CONSTRAINT memory_versions_basis_check;
ALTER TABLE memory_versions ADD CONSTRAINT memory_versions_basis_check
    CHECK (basis IN ('teach', 'correction', 'llm', 'rule', 'resolver', 'forget', 'retention',
                     'import', 'decay', 'reflect', 're_embed'));

-- Maintenance runs (scheduled or triggered from the admin service) and what they did.
CREATE TABLE maintenance_runs (
    id           uuid PRIMARY KEY,
    tenant_id    uuid REFERENCES tenants (id) ON DELETE CASCADE,
    user_id      text,
    job          text NOT NULL CHECK (job IN ('optimize', 'decay', 'reflect', 'retention', 're_embed')),
    status       text NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    result       jsonb NOT NULL DEFAULT '{}',
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz
);
CREATE INDEX maintenance_runs_by_tenant ON maintenance_runs (tenant_id, started_at);

-- Re-embedding finds vectors of another model (or none) without scanning everything.
CREATE INDEX memories_embedding_model ON memories (embedding_model) WHERE status = 'active';
CREATE INDEX episodes_embedding_model ON episodes (embedding_model);
