-- Image sizes of the curated set (upright width x height).
SELECT
    count(*) AS images,
    min(width) AS min_w, round(median(width)) AS median_w, max(width) AS max_w,
    min(height) AS min_h, round(median(height)) AS median_h, max(height) AS max_h,
    count(*) FILTER (WHERE least(width, height) < 224) AS under_224px
FROM curated;
