-- Row-level security: a second wall behind every query's `tenant_id = $1`. Each table with a
-- tenant admits only the rows of the tenant named by the `memoire.tenant` setting, which the
-- store sets for each transaction or connection it hands out (store/src/lib.rs, `Rows`); `*`
-- admits every tenant and is set only by paths that work across tenants on purpose (the worker's
-- queue, the periodic jobs, the bootstrap admin, key lookup). With no setting, nothing is
-- visible. FORCE applies the policies to the tables' owner too: the service role must not be a
-- superuser nor have BYPASSRLS (scripts/setup.sh creates it so).

-- The setting is read once per statement, not once per row: each scalar subquery below becomes
-- an InitPlan, and a row costs one uuid comparison (which indexes can use, too).
CREATE FUNCTION memoire_all_tenants() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('memoire.tenant', true) = '*', false)
$$;
CREATE FUNCTION memoire_tenant() RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT nullif(nullif(current_setting('memoire.tenant', true), ''), '*')::uuid
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
        EXECUTE format('CREATE POLICY tenant_rows ON %I '
                       'USING ((SELECT memoire_all_tenants()) OR tenant_id = (SELECT memoire_tenant())) '
                       'WITH CHECK ((SELECT memoire_all_tenants()) OR tenant_id = (SELECT memoire_tenant()))', t);
    END LOOP;
END
$$;

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON tenants
    USING ((SELECT memoire_all_tenants()) OR id = (SELECT memoire_tenant()))
    WITH CHECK ((SELECT memoire_all_tenants()) OR id = (SELECT memoire_tenant()));
