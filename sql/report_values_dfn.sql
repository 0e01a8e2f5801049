-- DFN score (image vs chosen caption) of the pool (every CapFilt survivor dedup kept), and of
-- the curated set.
CREATE OR REPLACE TEMP VIEW report_values AS
SELECT 'pool' AS grp, dfn::DOUBLE AS value FROM pool
UNION ALL
SELECT 'curated', dfn::DOUBLE FROM annotations WHERE sample_id IN (SELECT sample_id FROM curated);
