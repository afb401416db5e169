-- docker-compose's Postgres runs this once, when its volume is new, as the image's superuser.
-- The service gets a role of its own that row-level security binds: a superuser (what the image
-- makes of POSTGRES_USER) or a BYPASSRLS role would step around every policy (docs/operations.md).
CREATE ROLE memoire LOGIN PASSWORD 'memoire' NOSUPERUSER NOBYPASSRLS;
CREATE DATABASE memoire OWNER memoire;
\connect memoire
CREATE EXTENSION IF NOT EXISTS vector;
