"""Reading the user's URL list (Parquet, CSV, TSV or JSONL) and cutting it into shards.

Problems with the list itself are configuration errors: they stop the run before any work with
one line that says what to fix (docs/architecture.md, style rule 3). Problems with single rows
are data and are handled downstream as rejects.
"""

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from curation import schema
from curation.config import ConfigError

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


class UrlListError(ConfigError):
    """The URL list cannot be used as given; the message names the file and the problem."""


def _read_any(path: Path, text_columns: list[str]) -> pa.Table:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise UrlListError(f"{path}: unknown URL list format (use {', '.join(FORMATS)})")
    if kind == "parquet":
        return pq.read_table(path)
    if kind == "jsonl":
        return pajson.read_json(path)
    # TSV files of alt-text are not quoted: a lone '"' is part of the caption. A quoted CSV
    # value may hold newlines (Python's csv module writes them so): the block reader must know,
    # or a file over one block is refused ("CSV parser got out of sync with chunker").
    parse = (
        pacsv.ParseOptions(delimiter="\t", quote_char=False)
        if kind == "tsv"
        else pacsv.ParseOptions(newlines_in_values=True)
    )
    # URL and caption stay text: type inference would turn a caption "007" into the number 7.
    convert = pacsv.ConvertOptions(
        strings_can_be_null=False, column_types=dict.fromkeys(text_columns, pa.string())
    )
    return pacsv.read_csv(path, parse_options=parse, convert_options=convert)


def _non_utf8_line(path: Path) -> str | None:
    """Where a text file stops being UTF-8 ("line 3, byte 0xe9"), or None; read on errors only."""
    if FORMATS.get(path.suffix.lower()) == "parquet":
        return None
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return f"line {number}, byte {line[err.start]:#04x}"
    return None


def read_url_list(path: str | Path, url_col: str = "url", caption_col: str | None = "caption"):
    """Read and normalise a URL list to `schema.INPUT` (sample_id = row position).

    `caption_col=None` means the list has no alt-text: CapFilt then relies on synthetic captions.
    A text file with bytes that are not UTF-8 (a latin-1 line among UTF-8 ones) is refused with
    the first such line, rather than decoded with replacement characters: replacing would
    change alt-text silently, and only the user knows the file's real encoding.
    """
    path = Path(path)
    if not path.is_file():
        raise UrlListError(f"URL list not found: {path}")
    try:
        table = _read_any(path, [c for c in (url_col, caption_col) if c])
        table.validate(full=True)  # the JSON reader does not check UTF-8
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as err:
        where = _non_utf8_line(path)
        if where:
            raise UrlListError(f"{path}: not UTF-8 at {where}; re-encode it as UTF-8") from None
        raise UrlListError(f"{path}: cannot read URL list: {str(err).splitlines()[0]}") from None
    for label, column in (("--url-col", url_col), ("--caption-col", caption_col)):
        if column is not None and column not in table.column_names:
            raise UrlListError(
                f"{path}: no column {column!r} ({label}); columns are {table.column_names}"
            )
        if column is not None and table.column_names.count(column) > 1:
            raise UrlListError(f"{path}: the header names column {column!r} more than once")
    if len(table) == 0:
        raise UrlListError(f"{path}: the URL list has no rows")
    urls = _as_strings(table[url_col], path, url_col)
    texts = (
        _as_strings(table[caption_col], path, caption_col)
        if caption_col
        else pa.nulls(len(table), pa.string())
    )
    ids = pa.array(range(len(table)), pa.int64())
    return pa.table([ids, urls, texts], schema=schema.INPUT)


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):  # pandas' categorical columns
        return _is_text(kind.value_type)
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or kind == pa.string_view()


def _as_strings(column: pa.ChunkedArray, path: Path, name: str) -> pa.ChunkedArray:
    """The column as strings; numbers are refused (a url column of ints is a wrong column)."""
    if _is_text(column.type) or pa.types.is_null(column.type):  # null: every value missing
        return column.cast(pa.string())
    raise UrlListError(f"{path}: column {name!r} holds {column.type}, expected text")


def split_shards(table: pa.Table, shard_size: int) -> list[pa.Table]:
    """Consecutive slices of `shard_size` rows: the same list always gives the same shards."""
    return [table.slice(start, shard_size) for start in range(0, len(table), shard_size)]
