-- Rows balancing draws for, when it comes before scoring: every annotated row with at least
-- one matched entry (the others are never kept). Streamed in batches to the keep draws.
SELECT sample_id, dfn, concepts
FROM annotations
WHERE len(concepts) > 0;
