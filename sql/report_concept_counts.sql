-- MetaCLIP (arXiv 2309.16671): matches per concept entry before balancing (the pool it saw,
-- dedup's removals excluded:
-- the rows at or above the DFN $threshold when scoring came first, NULL: every annotated row)
-- and after (the curated rows), largest first; the report plots them by rank.
WITH seen AS (
    SELECT sample_id, concepts
    FROM pool
    WHERE $threshold::DOUBLE IS NULL OR dfn::DOUBLE >= $threshold::DOUBLE
),
matches AS (
    SELECT 'before' AS stage, u.entry FROM seen, unnest(seen.concepts) AS u(entry)
    UNION ALL
    SELECT 'after', u.entry
    FROM seen, unnest(seen.concepts) AS u(entry)
    WHERE seen.sample_id IN (SELECT sample_id FROM curated)
)
SELECT stage, count(*) AS n
FROM matches
GROUP BY stage, entry
ORDER BY stage, n DESC;
