-- Web rows rejected as copies of an evaluation image (--decontaminate): which, and of what.
SELECT sample_id, url, web_text, detail
FROM rejects
WHERE reason = 'eval_overlap'
ORDER BY sample_id
LIMIT $limit;
