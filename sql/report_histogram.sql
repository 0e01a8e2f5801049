-- Equal-width histogram of report_values per group: $bins bins over [$lo, $hi]; values on the
-- edges fall in the first / last bin. Computed in DuckDB, so a run of any size gives a few rows.
SELECT
    grp,
    least(greatest(floor((value - $lo) / ($hi - $lo) * $bins), 0), $bins - 1)::INTEGER AS bin,
    count(*) AS n
FROM report_values
WHERE value IS NOT NULL AND isfinite(value)
GROUP BY ALL
ORDER BY grp, bin;
