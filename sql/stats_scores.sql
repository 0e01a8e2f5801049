-- DFN scores (Fang et al. 2023, arXiv 2309.17425), cosine of image and chosen caption, of the
-- pool (every image that passed CapFilt and dedup) and of the curated set, with the run's $threshold
-- (from selection.json; NULL when the score was not thresholded).
WITH stages AS (
    SELECT 'pool' AS stage, dfn::DOUBLE AS dfn FROM pool
    UNION ALL
    SELECT 'curated', dfn::DOUBLE FROM annotations
    WHERE sample_id IN (SELECT sample_id FROM curated)
)
SELECT
    stage,
    count(*) AS "rows",
    count(dfn) AS scored,
    round(min(dfn), 4) AS min,
    round(quantile_cont(dfn, 0.1), 4) AS p10,
    round(quantile_cont(dfn, 0.25), 4) AS p25,
    round(median(dfn), 4) AS median,
    round(quantile_cont(dfn, 0.75), 4) AS p75,
    round(quantile_cont(dfn, 0.9), 4) AS p90,
    round(max(dfn), 4) AS max,
    round(avg(dfn), 4) AS mean,
    round($threshold::DOUBLE, 4) AS threshold,
    count(*) FILTER (WHERE dfn >= $threshold::DOUBLE) AS at_or_above
FROM stages
GROUP BY stage
ORDER BY stage = 'curated', stage;
