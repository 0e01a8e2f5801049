-- Size of the pool being balanced (same rows as select_entry_counts): rows, rows whose
-- caption matches at least one entry, and matches (MetaCLIP drops the rows matching nothing).
SELECT
    count(*) AS population_rows,
    count(*) FILTER (WHERE len(concepts) > 0) AS matched_rows,
    coalesce(sum(len(concepts)), 0) AS matches
FROM annotations
WHERE $threshold::DOUBLE IS NULL OR dfn::DOUBLE >= $threshold::DOUBLE;
