-- Row-level security: a second wall behind every query's `tenant_id = $1`. Each table with a
-- tenant admits only the rows of the tenant named by the `memoire.tenant` setting, which the
-- store sets for each transaction or connection it hands out (store/src/lib.rs, `Rows`); `*`
-- admits every tenant and is set only by paths that work across tenants on purpose (the worker's
-- queue, the periodic jobs, the bootstrap admin, key lookup). With no setting, nothing is
-- visible. FORCE applies the policies to the tables' owner too: the service role must not be a
-- superuser nor have BYPASSRLS (scripts/setup.sh creates it so).

CREATE FUNCTION memoire_visible(tenant uuid) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE current_setting('memoire.tenant', true)
        WHEN '*' THEN true
        WHEN '' THEN false
        ELSE tenant = current_setting('memoire.tenant', true)::uuid
    END
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['api_keys', 'episodes', 'memories', 'memory_versions', 'edges',
                             'audit_log', 'memory_terms', 'episode_terms', 'dead_letters',
                             'maintenance_runs']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY tenant_rows ON %I USING (memoire_visible(tenant_id)) '
                       'WITH CHECK (memoire_visible(tenant_id))', t);
    END LOOP;
END
$$;

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON tenants USING (memoire_visible(id)) WITH CHECK (memoire_visible(id));
