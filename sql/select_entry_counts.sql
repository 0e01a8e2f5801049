-- MetaCLIP (Xu et al. 2023, arXiv 2309.16671, Algorithm 1): matches per metadata entry over
-- the pool being balanced: every annotated row, or only the rows at or above the DFN
-- $threshold when scoring comes first (NULL: every row). A caption counts once per entry.
SELECT u.entry, count(*) AS matches
FROM annotations AS a, unnest(a.concepts) AS u(entry)
WHERE $threshold::DOUBLE IS NULL OR a.dfn::DOUBLE >= $threshold::DOUBLE
GROUP BY u.entry
ORDER BY matches DESC, u.entry;
