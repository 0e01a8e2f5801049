-- Alt-text repeated on several downloaded images (boilerplate such as "image not found"): the
-- texts on the most URLs, and how many such texts and images there are in all.
WITH repeated AS (
    SELECT web_text, count(DISTINCT url) AS urls
    FROM downloads
    WHERE status = 'success' AND trim(coalesce(web_text, '')) <> ''
    GROUP BY web_text
    HAVING count(DISTINCT url) >= 2
)
SELECT
    left(web_text, 60) AS web_text,
    urls,
    (SELECT count(*) FROM repeated) AS repeated_texts,
    (SELECT sum(urls) FROM repeated)::BIGINT AS images_with_them
FROM repeated
ORDER BY urls DESC, web_text
LIMIT $limit;
