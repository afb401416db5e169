-- Recall takes the names of the conversation's speakers out of the text it searches for (they
-- say who is asked about, not what: `core::recall::without_names`). Which of a query's words are
-- a speaker of the scope is looked up here: one probe per candidate run of words, stopping at
-- the first turn that speaker said, whatever the size of the history.
CREATE INDEX episodes_speaker_names ON episodes (tenant_id, user_id, namespace, lower(name))
    WHERE name IS NOT NULL;
