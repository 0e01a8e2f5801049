-- Downloaded bytes of the sample ids $ids, from the raw shard files $files that hold them.
SELECT sample_id, image
FROM read_parquet($files)
WHERE list_contains($ids, sample_id) AND image IS NOT NULL;
