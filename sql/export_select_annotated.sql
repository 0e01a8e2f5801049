-- One curated shard's rows to export with their DFN score and matched concepts, in sample
-- order. The join is per curated shard, so its hash table holds at most one shard's images.
SELECT r.*, a.dfn, a.concepts
FROM export_rows AS r
LEFT JOIN annotations AS a USING (sample_id)
ORDER BY r.sample_id;
