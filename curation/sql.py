"""DuckDB over one or many runs' Parquet: views by name, SQL kept in `sql/`, loaded by name.

Views (sql/views/*.sql), every row tagged with `run_id` (the run directory's name): inputs,
downloads, curated (= samples), rejects, texts, annotations, concepts (sample, entry), shards
(per-shard markers), runs (manifests). File lists are bound as DuckDB variables, so no SQL is
built from strings at run time.
"""

import atexit
import json
import shutil
import sys
import tempfile
from functools import cache
from pathlib import Path

import duckdb
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from curation import schema
from curation.rundir import RunDir

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

# Variable name -> (glob under each RUN_DIR, schema of an empty stand-in when nothing matches).
FILES = {
    "inputs_files": (RunDir.pattern("input"), schema.INPUT),
    "raw_files": (RunDir.pattern("raw"), schema.RAW),
    "curated_files": (RunDir.pattern("shards"), schema.CURATED),
    "rejects_files": (RunDir.pattern("rejects"), schema.REJECTS),
    "annotations_files": (RunDir.pattern("annotations"), schema.ANNOTATIONS),
    "markers_files": (RunDir.MARKERS_PATTERN, None),
    "manifests_files": (RunDir.MANIFEST, None),
}


def load(name: str) -> str:
    """The text of sql/NAME.sql."""
    return (SQL_DIR / f"{name}.sql").read_text()


@cache
def _empty_file(variable: str) -> str:
    """A zero-row file standing in for a table that has no files yet (a view must bind)."""
    folder = Path(tempfile.mkdtemp(prefix="curate-empty-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # cached for the process's life
    _, table_schema = FILES[variable]
    if table_schema is None:
        path = folder / "empty.json"
        path.write_text("")
    else:
        path = folder / "empty.parquet"
        pq.write_table(table_schema.empty_table(), path)
    return str(path)


def is_query(text: str) -> bool:
    """True when `text` parses as SQL: how `curate sql` tells its query from its run folders,
    without handing the query text to the file system (a path does not parse: "runs/a")."""
    try:
        return bool(duckdb.extract_statements(text))
    except duckdb.Error:
        return False


def run_files(run_dirs: list[str | Path]) -> dict[str, list[str]]:
    """Each variable's file list over all runs, never empty."""
    found = {}
    for variable, (pattern, _) in FILES.items():
        files = sorted(str(p.resolve()) for d in run_dirs for p in Path(d).glob(pattern))
        found[variable] = files or [_empty_file(variable)]
    return found


def connect(*run_dirs: str | Path, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views of `run_dirs` (one or many runs)."""
    con = duckdb.connect(database)
    for variable, files in run_files(list(run_dirs)).items():
        con.execute(f"SET VARIABLE {variable} = $files", {"files": files})  # noqa: S608 -- our names
    for view_file in sorted((SQL_DIR / "views").glob("*.sql")):
        con.execute(view_file.read_text())
    return con


def query(con: duckdb.DuckDBPyConnection, name: str, **params) -> tuple[list[str], list[tuple]]:
    """Run sql/NAME.sql with `$param` bindings; returns (column names, rows)."""
    result = con.execute(load(name), params or None)
    return [d[0] for d in result.description], result.fetchall()


def _literal(files: list[str]) -> str:
    """A DuckDB list literal of our own file paths (quotes doubled, as SQL escapes them)."""
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def write_catalog(run_dirs: list[str | Path], path: str | Path) -> Path:
    """A DuckDB database file holding the views, readable by the DuckDB shell or any client.

    Variables do not persist in a database file, so here the file lists are written into the
    view definitions as literals; reopen after a run grows to pick up new shards.
    """
    path = Path(path)
    path.unlink(missing_ok=True)
    files = run_files(run_dirs)
    con = duckdb.connect(str(path))
    for view_file in sorted((SQL_DIR / "views").glob("*.sql")):
        text = view_file.read_text()
        for variable, paths in files.items():
            text = text.replace(f"getvariable('{variable}')", _literal(paths))
        con.execute(text)
    con.close()
    return path


def write_result(relation: duckdb.DuckDBPyRelation, fmt: str, out: str | None) -> None:
    """Write a query result as csv, json (one object a line) or parquet to `out` or stdout."""
    table = relation.to_arrow_table()
    if fmt == "parquet":
        pq.write_table(table, out)
        return
    stream = open(out, "wb") if out else sys.stdout.buffer  # noqa: SIM115 -- closed below
    try:
        if fmt == "csv":
            pacsv.write_csv(table, stream)
        else:
            for row in table.to_pylist():
                stream.write(json.dumps(row, default=str).encode() + b"\n")
    finally:
        stream.flush()
        if out:
            stream.close()
