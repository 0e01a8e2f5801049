-- Exact duplicates among curated images: identical bytes (sha256) served under several rows.
SELECT
    count(*) AS curated_rows,
    count(DISTINCT sha256) AS distinct_images,
    count(*) - count(DISTINCT sha256) AS duplicate_rows,
    (SELECT max(n) FROM (SELECT count(*) AS n FROM curated GROUP BY sha256)) AS most_copies
FROM curated;
