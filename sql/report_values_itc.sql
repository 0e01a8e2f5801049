-- ITC cosine similarity of every text the filter scored, per source (web / synthetic).
CREATE OR REPLACE TEMP VIEW report_values AS
SELECT source AS grp, itc AS value FROM texts;
