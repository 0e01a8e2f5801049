"""DuckDB over one or many runs' Parquet: views by name, SQL kept in `sql/`, loaded by name.

Views (sql/views/*.sql), every row tagged with `run_id` (the run directory's name): inputs,
downloads, curated (= samples), rejects, texts, annotations, concepts (sample, entry), shards
(per-shard markers), runs (manifests). File lists are bound as DuckDB variables, so no SQL is
built from strings at run time.
"""

import atexit
import base64
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from functools import cache
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from curation import schema
from curation.rundir import RunDir

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

# Variable name -> (glob under each RUN_DIR, schema of an empty stand-in when nothing matches).
FILES = {
    "inputs_files": ("input", schema.INPUT),
    "raw_files": ("raw", schema.RAW),
    "curated_files": ("shards", schema.CURATED),
    "rejects_files": ("rejects", schema.REJECTS),
    "annotations_files": ("annotations", schema.ANNOTATIONS),
    "markers_files": (None, None),
    "manifests_files": (None, None),
}
KINDS = {variable: kind for variable, (kind, _) in FILES.items() if kind}


def load(name: str) -> str:
    """The text of sql/NAME.sql."""
    return (SQL_DIR / f"{name}.sql").read_text()


@cache
def _empty_file(variable: str) -> str:
    """A zero-row file standing in for a table that has no files yet (a view must bind).

    Kept in one folder per user, named by variable and schema, written once and reused: a
    folder per process leaked whenever a process was killed.
    """
    _, table_schema = FILES[variable]
    digest = hashlib.sha256(str(table_schema).encode()).hexdigest()[:12]
    path = _empty_folder() / f"{variable}-{digest}.{'json' if table_schema is None else 'parquet'}"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        if table_schema is None:
            tmp.write_text("")
        else:
            pq.write_table(table_schema.empty_table(), tmp)
        os.replace(tmp, path)
    return str(path)


def _empty_folder() -> Path:
    """This user's folder for the empty files, private to them; a fresh one should another
    user own the name (their files must not become our tables)."""
    folder = Path(tempfile.gettempdir()) / f"curate-empty-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if folder.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o077:
        folder = Path(tempfile.mkdtemp(prefix="curate-empty-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def literal_path(path: str | Path) -> str:
    """`path` as a DuckDB file pattern that matches only itself: DuckDB globs every path it
    reads, so `exp[1]/a.parquet` would read `exp1/a.parquet`; a `[`, `*` or `?` becomes a
    one-character class (`[[]`)."""
    return re.sub(r"([\[*?])", r"[\1]", str(path))


def is_query(text: str) -> bool:
    """True when `text` parses as SQL: how `curate sql` tells its query from its run folders,
    without handing the query text to the file system (a path does not parse: "runs/a")."""
    try:
        return bool(duckdb.extract_statements(text))
    except duckdb.Error:
        return False


def run_files(run_dirs: list[str | Path]) -> dict[str, list[str]]:
    """Each variable's file list over all runs, never empty: only files the runs wrote
    (`RunDir.shard_files`, `RunDir.marker_files`), never whatever else lies in their folders."""
    runs = [(RunDir(d), RunDir(d).listed_outputs()) for d in run_dirs]  # markers read once
    found = {}
    for variable in FILES:
        files = sorted(
            str(p.resolve()) for run, listed in runs for p in _files_of(run, variable, listed)
        )
        found[variable] = [literal_path(f) for f in files or [_empty_file(variable)]]
    return found


def _files_of(run: RunDir, variable: str, listed: set[str]) -> list[Path]:
    if variable == "markers_files":
        return run.marker_files()
    if variable == "manifests_files":
        return [run.manifest] if run.manifest.is_file() else []
    return run.shard_files(KINDS[variable], listed)


def connect(
    *run_dirs: str | Path, database: str = ":memory:", allow_files: bool = False
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views of `run_dirs` (one or many runs).

    Unless `allow_files`, the connection is then locked down for the user's SQL (predicates of
    `curate export --where`, `curate sql` queries): DuckDB may read only inside the runs'
    folders, write nowhere (no COPY TO, no ATTACH), install or load no extension, and the
    settings cannot be changed back. Without this a predicate could read any local file
    (`read_blob('/etc/shadow')`) one yes/no at a time.
    """
    con = duckdb.connect(database)
    found = run_files(list(run_dirs))
    for variable, files in found.items():
        con.execute(f"SET VARIABLE {variable} = $files", {"files": files})  # noqa: S608 -- our names
    for view_file in sorted((SQL_DIR / "views").glob("*.sql")):
        con.execute(view_file.read_text())
    if not allow_files:
        readable = {str(Path(d).resolve()) for d in run_dirs}
        readable |= {str(Path(_empty_file(v)).parent) for v in FILES}
        _lock(con, sorted(readable | {literal_path(d) for d in readable}))  # checked as given
    return con


def _lock(con: duckdb.DuckDBPyConnection, readable_dirs: list[str]) -> None:
    """Read only inside `readable_dirs`; no writes, extensions or setting changes after."""
    con.execute("SET allowed_directories = $dirs", {"dirs": [d + os.sep for d in readable_dirs]})
    for setting in ("autoinstall_known_extensions", "autoload_known_extensions"):
        con.execute(f"SET {setting} = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


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
    """Write a query result as csv, json (one object a line) or parquet to `out` or stdout.

    CSV has no nested or binary values: lists and structs are written as JSON text, bytes as
    base64. `out` is written under a temporary name and renamed: a failed write leaves no file.
    """
    table = relation.to_arrow_table()
    if not out:
        _write_table(table, fmt, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as stream:
            _write_table(table, fmt, stream)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _write_table(table: pa.Table, fmt: str, stream) -> None:
    if fmt == "parquet":
        pq.write_table(table, stream)
    elif fmt == "csv":
        pacsv.write_csv(_flat_for_csv(table), stream)
    else:
        for row in table.to_pylist():
            stream.write(json.dumps(row, default=_json_value).encode() + b"\n")


def _json_value(value):
    """JSON for what json cannot write: bytes as base64, anything else (dates...) as text."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _flat_for_csv(table: pa.Table) -> pa.Table:
    """Nested columns as JSON text, binary ones as base64: values a CSV cell can hold."""
    for i, field in enumerate(table.schema):
        kind = field.type
        if pa.types.is_nested(kind):
            values = [
                None if v is None else json.dumps(v, default=_json_value)
                for v in table[i].to_pylist()
            ]
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            values = [None if v is None else _json_value(v) for v in table[i].to_pylist()]
        else:
            continue
        table = table.set_column(i, field.name, pa.array(values, pa.string()))
    return table
