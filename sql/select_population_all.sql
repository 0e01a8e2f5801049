-- The rows the DFN quantile is taken over when scoring comes first: every annotated row.
CREATE OR REPLACE TEMP VIEW score_population AS
SELECT sample_id, dfn FROM annotations;
