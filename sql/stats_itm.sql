-- ITM probability and ITC similarity per text source.
SELECT
    source,
    round(min(itm), 3) AS itm_min,
    round(quantile_cont(itm, 0.1), 3) AS itm_p10,
    round(median(itm), 3) AS itm_median,
    round(avg(itm), 3) AS itm_mean,
    round(quantile_cont(itm, 0.9), 3) AS itm_p90,
    round(max(itm), 3) AS itm_max,
    round(avg(itc), 3) AS itc_mean
FROM texts
GROUP BY source
ORDER BY source DESC;
