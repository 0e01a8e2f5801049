-- ITM match probability of every text the filter scored, per source (web / synthetic).
CREATE OR REPLACE TEMP VIEW report_values AS
SELECT source AS grp, itm AS value FROM texts;
