-- Per shard: rows, what each step kept, and CapFilt's throughput.
SELECT
    shard,
    max(rows) FILTER (WHERE step = 'download') AS input_rows,
    max(passed) FILTER (WHERE step = 'capfilt') AS capfilt_passed,
    max(curated) FILTER (WHERE step = 'select') AS curated,
    round(max(images / seconds) FILTER (WHERE step = 'capfilt'), 1) AS capfilt_img_per_s,
    round(sum(seconds), 1) AS seconds
FROM shards
GROUP BY shard
ORDER BY shard;
