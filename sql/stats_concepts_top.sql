-- The $limit most matched concept entries of the pool and how many of their rows were curated:
-- balancing caps the head near t (MetaCLIP, arXiv 2309.16671) and keeps the tail whole.
WITH pool AS (
    SELECT entry, count(*) AS pool FROM concepts GROUP BY entry
),
kept AS (
    SELECT entry, count(*) AS curated
    FROM concepts
    WHERE sample_id IN (SELECT sample_id FROM curated)
    GROUP BY entry
)
SELECT
    entry,
    pool,
    coalesce(curated, 0) AS curated,
    round(100.0 * coalesce(curated, 0) / pool, 1) AS kept_pct
FROM pool
LEFT JOIN kept USING (entry)
ORDER BY pool DESC, entry
LIMIT $limit;
