-- BLIP's "noise ratio" of a CapFilt pass (Table 1 discussion): the share of web texts and of
-- synthetic texts the filter rejected.
SELECT source, round(100.0 * count(*) FILTER (WHERE NOT kept) / count(*), 2) AS rejected_pct
FROM texts
GROUP BY source
ORDER BY source DESC;
