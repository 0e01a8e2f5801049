-- Whether the annotations view holds any row (a stand-in for a step not yet run is empty).
SELECT EXISTS (SELECT 1 FROM annotations);
