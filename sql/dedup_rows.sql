-- Every CapFilt survivor with what the dedup stage judges it by (pipeline/duplicates.py).
SELECT s.sample_id, s.sha256, s.caption, s.caption_itm, a.phash, a.thumbnail, a.embedding
FROM survivors AS s
JOIN annotated AS a USING (sample_id)
ORDER BY s.sample_id
