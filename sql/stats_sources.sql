-- Per text source: texts scored, texts above the ITM threshold, and curated captions chosen.
SELECT
    t.source,
    count(*) AS scored,
    count(*) FILTER (WHERE t.kept) AS kept,
    round(100.0 * count(*) FILTER (WHERE t.kept) / count(*), 1) AS kept_pct,
    (SELECT count(*) FROM curated WHERE caption_source = t.source) AS chosen_captions
FROM texts AS t
GROUP BY t.source
ORDER BY t.source DESC;
