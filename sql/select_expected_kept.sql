-- Rows balancing is expected to keep: the sum over rows of 1 - prod_e (1 - p_e), where
-- p_e = t / max(count_e, t) (MetaCLIP, arXiv 2309.16671). entry_counts (entry, matches) holds
-- the counts select_entry_counts returned for the same $threshold.
WITH pairs AS (
    SELECT m.sample_id, least(1.0, $t / c.matches) AS p
    FROM (
        SELECT sample_id, unnest(concepts) AS entry
        FROM annotations
        WHERE $threshold::DOUBLE IS NULL OR dfn::DOUBLE >= $threshold::DOUBLE
    ) AS m
    JOIN entry_counts AS c USING (entry)
),
per_row AS (
    SELECT 1.0 - product(1.0 - p) AS keep_probability FROM pairs GROUP BY sample_id
)
SELECT round(coalesce(fsum(keep_probability), 0.0), 3) AS expected_kept_rows FROM per_row;
