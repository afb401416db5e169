-- Rate limits (enforced in Redis by every replica; see core/src/ratelimit.rs). `tenants.rate_limit_rps`
-- existed since 0001; a burst and an Ingest message rate join it, and keys get their own request rate.
ALTER TABLE tenants
    ADD COLUMN rate_limit_burst integer NOT NULL DEFAULT 0 CHECK (rate_limit_burst >= 0),
    ADD COLUMN ingest_rate_limit_mps integer NOT NULL DEFAULT 0 CHECK (ingest_rate_limit_mps >= 0);
ALTER TABLE api_keys
    ADD COLUMN rate_limit_rps integer NOT NULL DEFAULT 0 CHECK (rate_limit_rps >= 0);
