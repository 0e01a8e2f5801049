-- The chosen caption of every curated image, with its URL and source (web or synthetic).
SELECT url, caption, caption_source
FROM curated
ORDER BY sample_id;
