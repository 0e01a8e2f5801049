-- MetaCLIP balancing (Xu et al. 2023, arXiv 2309.16671): the concept distribution of the pool
-- (every image that passed CapFilt and dedup) and of the curated set. Head entries have count >= $t (the
-- run's t, from selection.json); the tail share is the share of matches outside them; Gini is
-- over the entries matched at least once (0: all equal; near 1: a few entries hold everything).
WITH stages AS (
    SELECT 'pool' AS stage, sample_id, concepts FROM pool
    UNION ALL
    SELECT 'curated', sample_id, concepts FROM annotations
    WHERE sample_id IN (SELECT sample_id FROM curated)
),
sizes AS (
    SELECT stage, count(*) AS "rows", count(*) FILTER (WHERE len(concepts) > 0) AS matched_rows
    FROM stages GROUP BY stage
),
counts AS (
    SELECT s.stage, u.entry, count(*) AS n
    FROM stages AS s, unnest(s.concepts) AS u(entry)
    GROUP BY s.stage, u.entry
),
ranked AS (
    SELECT stage, n, row_number() OVER (PARTITION BY stage ORDER BY n) AS i,
        count(*) OVER (PARTITION BY stage) AS k, sum(n) OVER (PARTITION BY stage) AS total
    FROM counts
)
SELECT
    z.stage,
    z."rows",
    z.matched_rows,
    coalesce(sum(r.n), 0) AS matches,
    count(r.n) AS entries,
    count(r.n) FILTER (WHERE r.n >= $t) AS head_entries,
    round(coalesce(sum(r.n) FILTER (WHERE r.n >= $t) / sum(r.n), 0), 4) AS head_share,
    round(coalesce(sum(r.n) FILTER (WHERE r.n < $t) / sum(r.n), 0), 4) AS tail_share,
    round(coalesce(2.0 * sum(r.i * r.n) / (any_value(r.k) * any_value(r.total))
        - (any_value(r.k) + 1.0) / any_value(r.k), 0), 4) AS gini,
    coalesce(max(r.n), 0) AS max_count
FROM sizes AS z
LEFT JOIN ranked AS r USING (stage)
GROUP BY z.stage, z."rows", z.matched_rows
ORDER BY z.stage = 'curated', z.stage;
