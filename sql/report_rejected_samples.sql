-- $n rejected rows to show, round-robin over reasons so every reason appears, a stable
-- pseudo-random pick within each (hash of sample_id).
SELECT sample_id, url, web_text, stage, reason, detail, candidates, shard
FROM rejects
QUALIFY row_number() OVER (PARTITION BY reason ORDER BY hash(sample_id), sample_id) <= $n
ORDER BY row_number() OVER (PARTITION BY reason ORDER BY hash(sample_id), sample_id), reason
LIMIT $n;
