-- Every text the filter scored, with its image's URL, whether it passed the filter, whether
-- its image ended in the curated output, its ITM probability and its image's reject reason.
SELECT s.url, t.source, t.text, t.kept, t.outcome = 'curated' AS curated, t.itm, s.reason
FROM texts AS t
JOIN (SELECT run_id, sample_id, url, NULL AS reason FROM curated
      UNION ALL
      SELECT run_id, sample_id, url, reason FROM rejects) AS s USING (run_id, sample_id)
ORDER BY t.sample_id, t.source;
