-- $n curated rows to show, a pseudo-random but stable pick (hash of sample_id). DuckDB fetches
-- the image bytes of the picked rows only (late materialization of the top-N).
SELECT sample_id, key, url, web_text, candidates, caption, caption_source, caption_itm,
    width, height, image
FROM curated
ORDER BY hash(sample_id), sample_id
LIMIT $n;
