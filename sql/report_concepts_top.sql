-- The $limit concept entries with the most matches in the pool balancing saw (the rows at or
-- above the DFN $threshold when scoring came first, NULL: every annotated row), and their
-- matches among the curated rows: balancing thins the head (MetaCLIP, arXiv 2309.16671).
WITH seen AS (
    SELECT sample_id, concepts
    FROM pool
    WHERE $threshold::DOUBLE IS NULL OR dfn::DOUBLE >= $threshold::DOUBLE
),
matches AS (
    SELECT seen.sample_id, u.entry FROM seen, unnest(seen.concepts) AS u(entry)
)
SELECT
    entry,
    count(*) AS before,
    count(*) FILTER (WHERE sample_id IN (SELECT sample_id FROM curated)) AS after
FROM matches
GROUP BY entry
ORDER BY before DESC, entry
LIMIT $limit;
