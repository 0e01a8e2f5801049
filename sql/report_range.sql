-- Smallest and largest finite value of report_values (the histogram's range).
SELECT min(value)::DOUBLE AS lo, max(value)::DOUBLE AS hi, count(*) AS n
FROM report_values
WHERE value IS NOT NULL AND isfinite(value);
