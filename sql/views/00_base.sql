-- The run's Parquet tables, one view each, tagged with the run they come from (the run
-- directory's name). The file lists are bound by curation/sql.py as variables.
CREATE OR REPLACE VIEW inputs AS
SELECT regexp_extract(filename, '([^/]+)/[^/]+/[^/]+$', 1) AS run_id, * EXCLUDE (filename)
FROM read_parquet(getvariable('inputs_files'), filename = true, union_by_name = true);

-- Every input row after the download step: status, error and the bytes as served.
CREATE OR REPLACE VIEW downloads AS
SELECT regexp_extract(filename, '([^/]+)/[^/]+/[^/]+$', 1) AS run_id, * EXCLUDE (filename)
FROM read_parquet(getvariable('raw_files'), filename = true, union_by_name = true);

CREATE OR REPLACE VIEW curated AS
SELECT regexp_extract(filename, '([^/]+)/[^/]+/[^/]+$', 1) AS run_id, * EXCLUDE (filename)
FROM read_parquet(getvariable('curated_files'), filename = true, union_by_name = true);

CREATE OR REPLACE VIEW rejects AS
SELECT regexp_extract(filename, '([^/]+)/[^/]+/[^/]+$', 1) AS run_id, * EXCLUDE (filename)
FROM read_parquet(getvariable('rejects_files'), filename = true, union_by_name = true);

CREATE OR REPLACE VIEW annotations AS
SELECT regexp_extract(filename, '([^/]+)/[^/]+/[^/]+$', 1) AS run_id, * EXCLUDE (filename)
FROM read_parquet(getvariable('annotations_files'), filename = true, union_by_name = true)
-- Runs from before the dedup stage have no pHash, thumbnail or embedding: NULL, not an error.
UNION ALL BY NAME
SELECT NULL::BIGINT AS phash, NULL::BLOB AS thumbnail, NULL::FLOAT[] AS embedding
WHERE false;

-- One row per curated image (the name users reach for first).
CREATE OR REPLACE VIEW samples AS SELECT * FROM curated;

-- One row per shard and step: rows, counts and seconds from the completion markers.
CREATE OR REPLACE VIEW shards AS
SELECT
    regexp_extract(filename, '([^/]+)/_done/[^/]+/[^/]+$', 1) AS run_id,
    regexp_extract(filename, '_done/([^/]+)/', 1) AS step,
    CAST(regexp_extract(filename, '(\d+)\.json$', 1) AS INTEGER) AS shard,
    * EXCLUDE (filename)
FROM read_json(getvariable('markers_files'), filename = true, union_by_name = true,
               format = 'auto')
-- A run stopped early has markers of its first steps only: the later steps' counts are NULL.
UNION ALL BY NAME
SELECT NULL::VARCHAR AS run_id, NULL::VARCHAR AS step, NULL::INTEGER AS shard,
       NULL::BIGINT AS rows, NULL::BIGINT AS passed, NULL::BIGINT AS curated,
       NULL::BIGINT AS images, NULL::DOUBLE AS seconds
WHERE false;

-- One row per run: its manifest (configuration, versions, counts, timings).
CREATE OR REPLACE VIEW runs AS
SELECT regexp_extract(filename, '([^/]+)/manifest\.json$', 1) AS run_id, * EXCLUDE (filename)
FROM read_json(getvariable('manifests_files'), filename = true, union_by_name = true,
               format = 'auto');
