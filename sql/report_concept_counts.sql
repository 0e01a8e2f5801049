-- MetaCLIP (arXiv 2309.16671): matches per concept entry before balancing (the pool it saw:
-- the rows at or above the DFN $threshold when scoring came first, NULL: every annotated row)
-- and after (the curated rows), largest first; the report plots them by rank.
WITH pool AS (
    SELECT sample_id, concepts
    FROM annotations
    WHERE $threshold::DOUBLE IS NULL OR dfn::DOUBLE >= $threshold::DOUBLE
),
matches AS (
    SELECT 'before' AS stage, u.entry FROM pool, unnest(pool.concepts) AS u(entry)
    UNION ALL
    SELECT 'after', u.entry
    FROM pool, unnest(pool.concepts) AS u(entry)
    WHERE pool.sample_id IN (SELECT sample_id FROM curated)
)
SELECT stage, count(*) AS n
FROM matches
GROUP BY stage, entry
ORDER BY stage, n DESC;
