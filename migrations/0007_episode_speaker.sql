-- Whether an episode's speaker is the user (the owner of its user_id) or someone else in the
-- conversation. Extraction files what a speaker says about themself under that speaker: the
-- user's own statements get `user.…` slots and no subject; another named speaker's get the name
-- as subject and `<name>.…` slots, so that one person's facts never supersede another's.
-- Ingest sets it from `IngestRequest.user_name`. Rows stored before this migration were
-- extracted as the user's, and keep meaning that (adding a column with a constant default does
-- not rewrite the table).
ALTER TABLE episodes ADD COLUMN speaker_is_user boolean NOT NULL DEFAULT true;

-- A turn's neighbours in its session (Recall's context) are found by (occurred_at, seq): an index
-- in that order reads one row per neighbour instead of sorting the session.
CREATE INDEX episodes_session_order
    ON episodes (tenant_id, user_id, namespace, session_id, occurred_at, seq);
DROP INDEX episodes_by_session;
