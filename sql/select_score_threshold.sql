-- DFN threshold (Fang et al. 2023, arXiv 2309.17425): the (1 - $keep_fraction) quantile of the
-- scores over the whole run, never per shard, so every shard is held to the same bar; or the
-- absolute $min_score when one is given. Rows at or above it pass (ties pass).
-- score_population (sample_id, dfn): every annotated row, or the rows balancing kept when
-- balancing comes first.
WITH bar AS (
    SELECT coalesce($min_score::DOUBLE, quantile_cont(dfn::DOUBLE, 1.0 - $keep_fraction)) AS threshold
    FROM score_population
)
SELECT
    (SELECT threshold FROM bar) AS threshold,
    count(*) AS population_rows,
    count(dfn) AS scored_rows,
    count(*) FILTER (WHERE dfn::DOUBLE >= (SELECT threshold FROM bar)) AS kept_rows,
    min(dfn)::DOUBLE AS min,
    quantile_cont(dfn::DOUBLE, 0.1) AS p10,
    quantile_cont(dfn::DOUBLE, 0.25) AS p25,
    quantile_cont(dfn::DOUBLE, 0.5) AS median,
    quantile_cont(dfn::DOUBLE, 0.75) AS p75,
    quantile_cont(dfn::DOUBLE, 0.9) AS p90,
    max(dfn)::DOUBLE AS max,
    fsum(dfn::DOUBLE) / count(dfn) AS mean
FROM score_population;
