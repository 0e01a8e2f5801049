-- Rows in, curated, rejected; balanced when every input row is accounted for exactly once.
WITH n AS (
    SELECT
        (SELECT count(*) FROM inputs) AS input_rows,
        (SELECT count(*) FROM curated) AS curated,
        (SELECT count(*) FROM rejects) AS rejected
)
SELECT input_rows, curated, rejected, input_rows = curated + rejected AS balanced
FROM n;
