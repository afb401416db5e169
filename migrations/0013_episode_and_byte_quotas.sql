-- Two more per-tenant quotas, checked in the writing transaction like max_memories (0011):
-- max_episodes (stored messages) and max_content_bytes (UTF-8 bytes of stored message content
-- plus every memory version's content — what grows with use). While a quota is set the tenant's
-- row keeps the count (NULL otherwise: nothing is counted or locked); a write that takes a count
-- past its quota fails with SQLSTATE 53400 and rolls back whole.
ALTER TABLE tenants
    ADD COLUMN max_episodes bigint NOT NULL DEFAULT 0 CHECK (max_episodes >= 0),
    ADD COLUMN max_content_bytes bigint NOT NULL DEFAULT 0 CHECK (max_content_bytes >= 0),
    ADD COLUMN stored_episodes bigint,
    ADD COLUMN content_bytes bigint;

-- Adds `episodes` and `bytes` to a tenant's counts; fails when a count that grew passes its quota.
CREATE FUNCTION memoire_count_usage(tenant uuid, episodes bigint, bytes bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    used_episodes bigint;
    used_bytes bigint;
    quota_episodes bigint;
    quota_bytes bigint;
BEGIN
    UPDATE tenants SET
        stored_episodes = stored_episodes + episodes,
        content_bytes = content_bytes + bytes
        WHERE id = tenant AND (stored_episodes IS NOT NULL OR content_bytes IS NOT NULL)
        RETURNING stored_episodes, content_bytes, max_episodes, max_content_bytes
        INTO used_episodes, used_bytes, quota_episodes, quota_bytes;
    IF episodes > 0 AND quota_episodes > 0 AND used_episodes > quota_episodes THEN
        RAISE EXCEPTION 'the tenant''s episode quota is used up: % episodes (max_episodes)', quota_episodes
            USING ERRCODE = '53400';
    END IF;
    IF bytes > 0 AND quota_bytes > 0 AND used_bytes > quota_bytes THEN
        RAISE EXCEPTION 'the tenant''s content quota is used up: % bytes (max_content_bytes)', quota_bytes
            USING ERRCODE = '53400';
    END IF;
END
$$;

CREATE FUNCTION memoire_count_episode() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM memoire_count_usage(NEW.tenant_id, 1, octet_length(NEW.content));
    ELSE
        PERFORM memoire_count_usage(OLD.tenant_id, -1, -octet_length(OLD.content));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER episodes_count_usage
    AFTER INSERT OR DELETE ON episodes
    FOR EACH ROW EXECUTE FUNCTION memoire_count_episode();

CREATE FUNCTION memoire_count_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM memoire_count_usage(NEW.tenant_id, 0, octet_length(NEW.content));
    ELSE
        PERFORM memoire_count_usage(OLD.tenant_id, 0, -octet_length(OLD.content));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER memory_versions_count_usage
    AFTER INSERT OR DELETE ON memory_versions
    FOR EACH ROW EXECUTE FUNCTION memoire_count_version();
