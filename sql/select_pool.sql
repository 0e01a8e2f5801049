-- The pool that DFN scoring and MetaCLIP balancing see: every annotated CapFilt survivor
-- except the copies and eval leaks the dedup stage removed (pipeline/duplicates.py).
CREATE VIEW annotations AS
SELECT * FROM annotated ANTI JOIN removed USING (sample_id)
