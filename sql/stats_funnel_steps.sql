-- The funnel: rows entering each step, rows it rejected (per reason) and rows leaving it.
-- $stages: the rejects' stage values in funnel order (schema.REJECT_STAGES).
WITH steps AS (
    SELECT unnest($stages) AS step, generate_subscripts($stages, 1) AS position
),
dropped AS (
    SELECT s.step, s.position, r.reason, count(r.reason) AS n
    FROM steps AS s LEFT JOIN rejects AS r ON r.stage = s.step
    GROUP BY ALL
),
per_step AS (
    SELECT step, position, sum(n) AS rejected,
           string_agg(reason || ' ' || n, ', ' ORDER BY n DESC) FILTER (WHERE n > 0) AS reasons
    FROM dropped GROUP BY ALL
),
flow AS (
    SELECT step, position, rejected, reasons,
        (SELECT count(*) FROM inputs)
            - coalesce(sum(rejected) OVER (ORDER BY position ROWS BETWEEN UNBOUNDED PRECEDING
                                           AND 1 PRECEDING), 0) AS rows_in
    FROM per_step
)
SELECT step, rows_in, rejected, rows_in - rejected AS rows_out, coalesce(reasons, '') AS reasons
FROM flow
ORDER BY position;
