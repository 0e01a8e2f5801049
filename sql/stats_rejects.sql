-- Rejected rows per stage and reason.
SELECT stage, reason, count(*) AS "rows"
FROM rejects
GROUP BY ALL
ORDER BY "rows" DESC, stage, reason;
