-- The extraction queue's lag (memoire_queue_oldest_age_seconds{queue="extract"}) is the age of
-- its oldest message: the first waiting episode in the order of arrival. The embedding queue
-- already has such an index (episodes_pending_embedding).
CREATE INDEX episodes_pending_extraction_by_arrival ON episodes (seq)
    WHERE extracted_at IS NULL AND extract_dead_at IS NULL;
