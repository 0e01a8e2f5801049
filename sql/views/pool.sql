-- The pool that scoring and balancing saw: every annotated CapFilt survivor except the copies
-- and eval leaks the dedup stage removed (the reasons of schema.GATES' "dedup" gate).
CREATE OR REPLACE VIEW pool AS
SELECT * FROM annotations
ANTI JOIN (
    SELECT run_id, sample_id FROM rejects
    WHERE reason IN (
        'duplicate', 'near_duplicate', 'semantic_duplicate', 'repeated_caption'
    )
) USING (run_id, sample_id);
