-- The rows the DFN quantile is taken over when balancing comes first: the rows whose MetaCLIP
-- draw kept them (balance_survivors, registered from the same draws `decide` makes).
CREATE OR REPLACE TEMP VIEW score_population AS
SELECT sample_id, dfn FROM balance_survivors;
