-- What the dedup stage removed ([dedup], pipeline/duplicates.py), by reason, with the first
-- removed row's URL and detail (which kept copy, or which eval image, it duplicates).
SELECT
    reason,
    count(*) AS rows,
    arg_min(url, sample_id) AS example_url,
    arg_min(detail, sample_id) AS example_detail
FROM rejects
WHERE reason IN (SELECT unnest($reasons))
GROUP BY reason
ORDER BY reason;
