-- One curated shard's rows to export, in sample order (deterministic output shards).
SELECT * FROM export_rows ORDER BY sample_id;
