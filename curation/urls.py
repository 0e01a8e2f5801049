"""Reading the user's URL list (Parquet, CSV, TSV or JSONL) and cutting it into shards.

Problems with the list itself are configuration errors: they stop the run before any work with
one line that says what to fix (DESIGN.md, style rule 3). Problems with single rows are data and
are handled downstream as rejects.
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from curation import schema
from curation.config import ConfigError

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


class UrlListError(ConfigError):
    """The URL list cannot be used as given; the message names the file and the problem."""


def _read_any(path: Path) -> pa.Table:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UrlListError(f"{path}: unknown URL list format (use {', '.join(FORMATS)})")
    if kind == "parquet":
        return pq.read_table(path)
    if kind == "jsonl":
        return pajson.read_json(path)
    # TSV files of alt-text are not quoted: a lone '"' is part of the caption.
    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False) if kind == "tsv" else None
    convert = pacsv.ConvertOptions(strings_can_be_null=False)
    return pacsv.read_csv(path, parse_options=parse, convert_options=convert)


def read_url_list(path: str | Path, url_col: str = "url", caption_col: str | None = "caption"):
    """Read and normalise a URL list to `schema.INPUT` (sample_id = row position).

    `caption_col=None` means the list has no alt-text: CapFilt then relies on synthetic captions.
    """
    path = Path(path)
    if not path.is_file():
        raise UrlListError(f"URL list not found: {path}")
    try:
        table = _read_any(path)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as err:
        raise UrlListError(f"{path}: cannot read URL list: {str(err).splitlines()[0]}") from None
    for label, column in (("--url-col", url_col), ("--caption-col", caption_col)):
        if column is not None and column not in table.column_names:
            raise UrlListError(
                f"{path}: no column {column!r} ({label}); columns are {table.column_names}"
            )
    urls = _as_strings(table[url_col], path, url_col)
    texts = (
        _as_strings(table[caption_col], path, caption_col)
        if caption_col
        else pa.nulls(len(table), pa.string())
    )
    ids = pa.array(range(len(table)), pa.int64())
    return pa.table([ids, urls, texts], schema=schema.INPUT)


def _as_strings(column: pa.ChunkedArray, path: Path, name: str) -> pa.ChunkedArray:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return pc.cast(column, pa.string())
    if pa.types.is_null(column.type):
        return column.cast(pa.string())
    raise UrlListError(f"{path}: column {name!r} holds {column.type}, expected text")


def split_shards(table: pa.Table, shard_size: int) -> list[pa.Table]:
    """Consecutive slices of `shard_size` rows: the same list always gives the same shards."""
    return [table.slice(start, shard_size) for start in range(0, len(table), shard_size)]
