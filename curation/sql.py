"""DuckDB over a run's Parquet: views by name, SQL kept in `sql/` and loaded by name."""

from pathlib import Path

import duckdb

from curation import schema

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

# View name -> (folder under RUN_DIR, schema of its files).
BASE_VIEWS = {
    "inputs": ("input", schema.INPUT),
    "curated": ("shards", schema.CURATED),
    "rejects": ("rejects", schema.REJECTS),
}


def load(name: str) -> str:
    """The text of sql/NAME.sql."""
    return (SQL_DIR / f"{name}.sql").read_text()


def connect(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the run's views: inputs, curated, rejects, texts."""
    con = duckdb.connect()
    for view, (folder, table_schema) in BASE_VIEWS.items():
        files = sorted(str(p) for p in (Path(run_dir) / folder).glob("*.parquet"))
        if files:
            con.read_parquet(files).create_view(view)
        else:  # a run with no such rows yet still answers its queries
            con.register(view, table_schema.empty_table())
    for view_file in sorted((SQL_DIR / "views").glob("*.sql")):
        con.execute(view_file.read_text())
    return con


def query(con: duckdb.DuckDBPyConnection, name: str, **params) -> tuple[list[str], list[tuple]]:
    """Run sql/NAME.sql with `$param` bindings; returns (column names, rows)."""
    result = con.execute(load(name), params or None)
    return [d[0] for d in result.description], result.fetchall()
