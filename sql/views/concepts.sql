-- One row per (sample, metadata entry matched by its chosen caption): MetaCLIP's matches
-- (arXiv 2309.16671), from the annotations the ANNOTATE step wrote; keeps the annotations'
-- other key columns (run_id where the view has it). Empty when balancing is off.
CREATE OR REPLACE VIEW concepts AS
SELECT a.* EXCLUDE (dfn, concepts, phash, thumbnail, embedding), u.entry
FROM annotations AS a, unnest(a.concepts) AS u(entry);
