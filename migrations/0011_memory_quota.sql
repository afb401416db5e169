-- A tenant's memory quota (max_memories, active memories) is checked in the transaction that
-- writes: a trigger keeps the tenant's count of active memories while it has a quota, and a
-- write that takes the count past the quota fails (SQLSTATE 53400), rolling the whole write
-- back. Concurrent writers of one tenant queue on its row for that moment, so 50 writes racing
-- for the last slot leave exactly one memory. Without a quota (max_memories = 0) the count is
-- NULL and nothing is counted or locked.
ALTER TABLE tenants ADD COLUMN active_memories bigint;

CREATE FUNCTION memoire_count_active_memories() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta integer := 0;
    tenant uuid;
    used bigint;
    quota bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        tenant := NEW.tenant_id;
        delta := (NEW.status = 'active')::integer;
    ELSIF TG_OP = 'DELETE' THEN
        tenant := OLD.tenant_id;
        delta := -(OLD.status = 'active')::integer;
    ELSE
        tenant := NEW.tenant_id;
        delta := (NEW.status = 'active')::integer - (OLD.status = 'active')::integer;
    END IF;
    IF delta = 0 THEN
        RETURN NULL;
    END IF;
    UPDATE tenants SET active_memories = active_memories + delta
        WHERE id = tenant AND active_memories IS NOT NULL
        RETURNING active_memories, max_memories INTO used, quota;
    IF delta > 0 AND quota > 0 AND used > quota THEN
        RAISE EXCEPTION 'the tenant''s memory quota is used up: % active memories (max_memories)', quota
            USING ERRCODE = '53400';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER memories_count_active
    AFTER INSERT OR DELETE OR UPDATE OF status ON memories
    FOR EACH ROW EXECUTE FUNCTION memoire_count_active_memories();
