-- One row per candidate text the filter scored, curated or rejected image alike.
CREATE OR REPLACE VIEW texts AS
SELECT run_id, sample_id, 'curated' AS outcome, c.text, c.source, c.itm::DOUBLE AS itm, c.itc::DOUBLE AS itc, c.kept
FROM curated, unnest(candidates) AS u(c)
UNION ALL
SELECT run_id, sample_id, 'rejected' AS outcome, c.text, c.source, c.itm::DOUBLE AS itm, c.itc::DOUBLE AS itc, c.kept
FROM rejects, unnest(candidates) AS u(c)
WHERE candidates IS NOT NULL;
