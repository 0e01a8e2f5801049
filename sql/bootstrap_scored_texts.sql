-- Every text the filter scored, with its image's URL, whether it passed the filter, whether
-- its image ended in the curated output, and its ITM probability.
SELECT s.url, t.source, t.text, t.kept, t.outcome = 'curated' AS curated, t.itm
FROM texts AS t
JOIN (SELECT run_id, sample_id, url FROM curated
      UNION ALL
      SELECT run_id, sample_id, url FROM rejects) AS s USING (run_id, sample_id)
ORDER BY t.sample_id, t.source;
