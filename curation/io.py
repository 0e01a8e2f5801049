"""Atomic writes (temporary name, then rename): a crash leaves no half-written file under a final
name, so a completion marker (written last, `pipeline.steps.run_step`) can be trusted."""

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet(table: pa.Table, path: Path, table_schema: pa.Schema) -> None:
    """Write `table` cast to `table_schema` under a temporary name, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table.select(table_schema.names).cast(table_schema), tmp)
    os.replace(tmp, path)


def write_text(text: str, path: Path) -> None:
    """Write UTF-8 `text` under a temporary name, then rename into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(data: dict, path: Path) -> None:
    write_text(json.dumps(data, indent=2, sort_keys=True, default=str), path)


def remove_partial_files(folders: list[Path]) -> int:
    """Delete the temporary files a killed writer of ours left in `folders` (not below them):
    names as these functions make them, `.<name>.tmp-<pid>`; returns how many.

    Call only while nothing writes there (at the start of a run): a live writer's temporary
    file looks the same.
    """
    partial = [p for folder in folders for p in Path(folder).glob(".*.tmp-*") if _ours(p.name)]
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


def _ours(name: str) -> bool:
    return re.fullmatch(r"\..+\.tmp-\d+", name) is not None
