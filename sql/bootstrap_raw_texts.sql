-- Downloaded web images with non-empty alt-text: the raw web's pairs (round 0's training set).
SELECT url, web_text
FROM downloads
WHERE status = 'success' AND trim(coalesce(web_text, '')) <> ''
ORDER BY sample_id;
