"""`curate export`: a run's curated rows, filtered by a SQL predicate, as training shards.

Selection is an artifact (docs/architecture.md, style 4; DataComp's resharder): the run's
curated shards hold the decision, and this step only reads them, keeps the rows a user predicate
selects (``--where "caption_itm > 0.8 AND width >= 256"``) and re-shards them for a training
loader.

Formats (shards of ``shard_size`` rows, ``00000.tar`` / ``.parquet`` / ``.jsonl``):
- ``webdataset``: per sample ``{key}.jpg``, ``{key}.txt`` (the caption) and ``{key}.json`` (url,
  web text, caption source, scores, size, sha256), plus ``sizes.json``, the per-shard counts
  OpenCLIP's ``get_dataset_size`` reads; ``--train-data 'OUT/{00000..00009}.tar'
  --dataset-type webdataset`` trains on it as is. Every image is a ``.jpg``: an upright RGB or
  greyscale JPEG passes through byte for byte; anything else (PNG, WebP, GIF, CMYK, EXIF-rotated)
  is decoded as CapFilt decoded it (upright RGB, transparency over white: the pixels the filter
  scored) and re-encoded as JPEG quality 95, img2dataset's default. Loaders do not apply EXIF
  rotation, and many read only ``jpg``.
- ``parquet``: the same columns with the original image bytes (lossless, for analysis).
- ``jsonl``: one object per row without image bytes (url, captions, scores).

``caption="all"`` keeps one sample per image: ``txt`` still holds the chosen caption (OpenCLIP
reads one ``txt``, and repeating an image per caption would over-weight images with several kept
texts), and the json/columns gain ``captions`` (every kept text, best ITM first) and
``candidates`` (every scored text with its source, ITM, ITC), for a loader that samples a
caption per epoch as BLIP's pretraining does with web and synthetic texts.

Atomic: each shard is written under a temporary name and renamed; on failure the export removes
its temporary file and the shards it already renamed, and ``manifest.json``, written last, is
the completion marker. Rows stream from DuckDB in record batches, one curated shard at a time.

Over 400 lines on purpose: one command, its checks, its three sinks and its manifest; a new
format is one sink class here (docs/architecture.md, recipes).
"""

import hashlib
import json
import os
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from io import BytesIO
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curation import schema, sql
from curation.config import CapFiltConfig, ConfigError
from curation.io import write_json
from curation.pipeline.images import decode_image
from curation.rundir import RunDir

SUFFIX = {"webdataset": "tar", "parquet": "parquet", "jsonl": "jsonl"}  # format -> extension
CAPTION_MODES = ("chosen", "all")
BATCH_ROWS = 64  # rows per record batch from DuckDB: memory holds ~64 images at a time
JPEG_QUALITY = 95  # re-encoded images: img2dataset's default encode quality
EXIF_ORIENTATION = 0x0112

# Exported columns, in order; the annotation and all-caption ones only when they apply.
BASE_COLUMNS = ["key", "sample_id", "url", "web_text", "caption", "caption_source"]
SCORE_COLUMNS = ["caption_itm", "caption_itc"]
ANNOTATION_COLUMNS = ["dfn", "concepts"]  # present when the run has annotations
ALL_CAPTION_COLUMNS = ["captions", "candidates"]  # caption="all"
TAIL_COLUMNS = ["width", "height", "sha256"]
EXTRA_FIELDS = {  # exported columns that are not in schema.CURATED
    "caption_itc": pa.float32(),
    "captions": pa.list_(pa.string()),
    "dfn": pa.float32(),
    "concepts": pa.list_(pa.string()),
}


class ExportError(ConfigError):
    """An export the user must fix (predicate, format, output folder); nothing was written."""


@dataclass
class Plan:
    """What one export does, settled (and validated) before anything is written."""

    fmt: str
    caption: str
    where: str | None
    annotated: bool  # the run has DFN scores and concepts (the annotations view has rows)
    files: list[Path]  # curated shard files, in shard order
    columns: list[str]
    max_pixels: int = CapFiltConfig().max_image_pixels  # decode guard when re-encoding
    reencoded: int = 0  # images re-encoded to JPEG (webdataset)


@dataclass
class ShardInfo:
    file: str
    rows: int
    bytes: int
    sha256: str


def export(
    run_dir: str | Path,
    out_dir: str | Path,
    where: str | None = None,
    fmt: str = "webdataset",
    shard_size: int = 10000,
    caption: str = "chosen",
) -> dict:
    """Write RUN_DIR's curated rows satisfying the SQL predicate `where` to OUT_DIR in `fmt`,
    `shard_size` rows per shard, then OUT_DIR/manifest.json; returns the manifest.

    Raises ExportError, before writing anything, for an unknown format or caption mode, a
    RUN_DIR that is not a finished run, a predicate DuckDB cannot bind or that is not boolean,
    or an OUT_DIR that is a file or not empty (an export never mixes with older shards)."""
    started = time.perf_counter()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _check_options(fmt, shard_size, caption)
    _check_run_dir(run_dir)
    _check_out_dir(out_dir)
    if RunDir(run_dir).holds_data(out_dir):
        raise ExportError(f"export folder {out_dir} is inside the run's data; export elsewhere")
    con = sql.connect(run_dir)
    plan = make_plan(con, run_dir, where, fmt, caption)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = write_shards(selected_batches(con, plan), out_dir, plan, shard_size)
    if fmt == "webdataset":  # OpenCLIP's get_dataset_size reads it
        write_json({s.file: s.rows for s in shards}, out_dir / "sizes.json")
    manifest = make_manifest(run_dir, out_dir, plan, shards, shard_size)
    manifest["seconds"] = round(time.perf_counter() - started, 3)
    write_json(manifest, out_dir / "manifest.json")
    return manifest


def _check_options(fmt: str, shard_size: int, caption: str) -> None:
    if fmt not in SUFFIX:
        raise ExportError(f"unknown export format {fmt!r} (known: {', '.join(SUFFIX)})")
    if caption not in CAPTION_MODES:
        raise ExportError(f"unknown caption mode {caption!r} (known: chosen, all)")
    if not isinstance(shard_size, int) or shard_size < 1:
        raise ExportError(f"shard size must be a positive integer, got {shard_size!r}")


def _check_run_dir(run_dir: Path) -> None:
    """Refuse a folder that is not a finished run: an export of half a run looks complete."""
    if not RunDir(run_dir).is_run():
        raise ExportError(f"{run_dir} is not a curation run (no run.json)")
    if not RunDir(run_dir).manifest.exists():
        raise ExportError(f"run {run_dir} is not finished (no manifest.json); rerun curate run")


def _check_out_dir(out_dir: Path) -> None:
    """Refuse an output that is a file or already holds something (old shards would mix in)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"export folder {out_dir} is a file")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ExportError(f"export folder {out_dir} is not empty; export into a new folder")


def has_annotations(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the run has annotations (DFN score, concepts per CapFilt survivor): the
    `annotations` view of `sql.connect` has rows."""
    return bool(sql.query(con, "annotations_nonempty")[1][0][0])


def output_columns(fmt: str, caption: str, with_annotations: bool) -> list[str]:
    columns = BASE_COLUMNS + SCORE_COLUMNS
    columns += ANNOTATION_COLUMNS if with_annotations else []
    columns += ALL_CAPTION_COLUMNS if caption == "all" else []
    return columns + TAIL_COLUMNS + ([] if fmt == "jsonl" else ["image"])


def make_plan(con, run_dir: Path, where: str | None, fmt: str, caption: str) -> Plan:
    """Settle the export and validate `where` against the exported columns (no data read)."""
    where = where.strip() if where and where.strip() else None
    files = RunDir(run_dir).shard_files("shards")
    plan = Plan(fmt, caption, where, has_annotations(con), files, [])
    plan.columns = output_columns(fmt, caption, plan.annotated)
    plan.max_pixels = _run_config(run_dir).get("max_image_pixels", plan.max_pixels)
    _point_at(con, files[0] if files else None)
    check_predicate(con, plan)
    return plan


def _run_config(run_dir: Path) -> dict:
    """The run's [capfilt] settings, {} when the run has no manifest."""
    run = RunDir(run_dir)
    return run.read_json(run.manifest).get("config", {}).get("capfilt", {})


def _point_at(con: duckdb.DuckDBPyConnection, file: Path | None) -> None:
    """Make the `export_shard` view read one curated shard file (an empty table for None)."""
    if file is None:
        con.register("export_shard", schema.CURATED.empty_table())
    else:
        con.read_parquet(sql.literal_path(file)).create_view("export_shard", replace=True)
    con.execute(sql.load("export_rows"))


def _selection(con: duckdb.DuckDBPyConnection, plan: Plan) -> duckdb.DuckDBPyRelation:
    """The current curated shard's selected rows, in sample order, exported columns only."""
    name = "export_select_annotated" if plan.annotated else "export_select"
    relation = con.sql(sql.load(name))
    if plan.where is not None:
        relation = relation.filter(plan.where)  # parsed as one expression: no second statement
    return relation.project(*plan.columns)


def check_predicate(con: duckdb.DuckDBPyConnection, plan: Plan) -> None:
    """Bind the predicate (DuckDB parses and type-checks it, reading no rows); must be boolean."""
    if plan.where is None:
        return
    try:
        rows = con.sql(sql.load("export_select_annotated" if plan.annotated else "export_select"))
        kinds = [str(t) for t in rows.project(plan.where).types]
        _selection(con, plan)
    except duckdb.Error as err:
        message = str(err).strip().splitlines()[0]
        raise ExportError(f"invalid --where predicate {plan.where!r}: {message}") from None
    if kinds != ["BOOLEAN"]:
        found = ", ".join(kinds)
        raise ExportError(f"--where must be one boolean expression, got {found}: {plan.where!r}")


def selected_batches(con: duckdb.DuckDBPyConnection, plan: Plan) -> Iterator[pa.RecordBatch]:
    """The selected rows as record batches, one curated shard after another (bounded memory).

    A predicate can bind and still fail on some rows (a cast of text to a number): DuckDB's
    error, raised through the Arrow stream, becomes an ExportError naming the predicate."""
    for file in plan.files:
        _point_at(con, file)
        try:
            yield from _selection(con, plan).to_arrow_reader(BATCH_ROWS)
        except (duckdb.Error, pa.ArrowException) as err:
            message = str(err).strip().splitlines()[0]
            raise ExportError(f"--where {plan.where!r} failed on {file.name}: {message}") from None


def write_shards(
    batches: Iterator[pa.RecordBatch], out_dir: Path, plan: Plan, shard_size: int
) -> list[ShardInfo]:
    """Cut the batches into shards of `shard_size` rows; on any failure remove the temporary
    file and the shards this export already put in place, then re-raise."""
    done: list[ShardInfo] = []
    shard = None
    try:
        for batch in batches:
            offset = 0
            while offset < batch.num_rows:
                shard = shard or Shard(out_dir, len(done), plan)
                take = min(shard_size - shard.rows, batch.num_rows - offset)
                shard.write(batch.slice(offset, take))
                offset += take
                if shard.rows == shard_size:
                    done.append(shard.commit())
                    shard = None
        if shard is not None:
            done.append(shard.commit())
    except BaseException:
        if shard is not None:
            shard.abort()
        for info in done:
            (out_dir / info.file).unlink(missing_ok=True)
        raise
    return done


class Shard:
    """One output shard, written under a hidden temporary name until `commit` renames it."""

    def __init__(self, out_dir: Path, index: int, plan: Plan):
        self.final = out_dir / f"{index:05d}.{SUFFIX[plan.fmt]}"
        self.tmp = out_dir / f".{self.final.name}.tmp-{os.getpid()}"
        self.rows = 0
        self.sink = SINKS[plan.fmt](self.tmp, plan)

    def write(self, batch: pa.RecordBatch) -> None:
        self.sink.write(batch)
        self.rows += batch.num_rows

    def commit(self) -> ShardInfo:
        self.sink.close()
        with open(self.tmp, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        info = ShardInfo(self.final.name, self.rows, self.tmp.stat().st_size, digest)
        os.replace(self.tmp, self.final)
        return info

    def abort(self) -> None:
        try:
            self.sink.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def record(row: dict) -> dict:
    """A row as the JSON a sample carries: provenance, caption, scores grouped, no image."""
    scores = {"itm": row.pop("caption_itm"), "itc": row.pop("caption_itc")}
    if "dfn" in row:
        scores["dfn"] = row.pop("dfn")
    row.pop("image", None)
    return {**row, "scores": scores}


def _is_plain_jpeg(data: bytes) -> bool:
    """An upright RGB or greyscale JPEG: loaders read it as is (header only, no decoding)."""
    try:
        with Image.open(BytesIO(data)) as image:
            upright = image.getexif().get(EXIF_ORIENTATION, 1) == 1
            return image.format == "JPEG" and image.mode in ("RGB", "L") and upright
    except Exception:  # noqa: BLE001 -- not an image Pillow reads: decode_image says why
        return False


def as_jpeg(data: bytes, max_pixels: int, key: str) -> tuple[bytes, bool]:
    """(JPEG bytes, re-encoded?): the original when it is a plain JPEG, else the image decoded
    as CapFilt decoded it (upright RGB, alpha over white) and re-encoded."""
    if _is_plain_jpeg(data):
        return data, False
    decoded = decode_image(data, 1, max_pixels)
    if decoded.image is None:  # CapFilt decoded it: the run's files were damaged since
        raise RuntimeError(f"curated sample {key}: image does not decode ({decoded.detail})")
    buffer = BytesIO()
    decoded.image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), True


class TarSink:
    """A WebDataset shard: `{key}.jpg`, `{key}.txt`, `{key}.json` per sample, in key order."""

    def __init__(self, path: Path, plan: Plan):
        self.plan = plan
        self.tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)  # mtime 0, fixed mode: the same rows give the same bytes
        info.size, info.mode = len(data), 0o444
        self.tar.addfile(info, BytesIO(data))

    def write(self, batch: pa.RecordBatch) -> None:
        for row in batch.to_pylist():
            key = row["key"]
            jpeg, reencoded = as_jpeg(row["image"], self.plan.max_pixels, key)
            self.plan.reencoded += reencoded
            self._add(f"{key}.jpg", jpeg)
            self._add(f"{key}.txt", (row["caption"] or "").encode())
            self._add(f"{key}.json", json.dumps(record(row), ensure_ascii=False).encode())

    def close(self) -> None:
        self.tar.close()


def export_schema(columns: list[str]) -> pa.Schema:
    """The Arrow schema of exported Parquet: schema.CURATED's fields plus EXTRA_FIELDS."""
    known = schema.CURATED
    return pa.schema(
        [known.field(c) if c in known.names else pa.field(c, EXTRA_FIELDS[c]) for c in columns]
    )


class ParquetSink:
    """A Parquet shard of the exported columns, original image bytes included."""

    def __init__(self, path: Path, plan: Plan):
        self.schema = export_schema(plan.columns)
        self.writer = pq.ParquetWriter(path, self.schema)

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch.cast(self.schema))

    def close(self) -> None:
        self.writer.close()


class JsonlSink:
    """A JSON Lines shard: one `record` per row (no image bytes)."""

    def __init__(self, path: Path, plan: Plan):
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115 -- closed by close()

    def write(self, batch: pa.RecordBatch) -> None:
        for row in batch.to_pylist():
            self.file.write(json.dumps(record(row), ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.file.close()


SINKS = {"webdataset": TarSink, "parquet": ParquetSink, "jsonl": JsonlSink}


def source_summary(run_dir: Path) -> dict:
    """The run an export came from: path, fingerprint, models, CapFilt settings, counts."""
    run_files = RunDir(run_dir)
    run = run_files.read_json(run_files.run_json)
    manifest = run_files.read_json(run_files.manifest)
    selection = run_files.read_json(run_files.selection)
    capfilt = manifest.get("config", {}).get("capfilt", {})
    return {
        "run_dir": str(run_dir.resolve()),
        "fingerprint": run.get("fingerprint"),
        "urls": run.get("urls", manifest.get("urls")),
        "models": manifest.get("models"),
        "itm_threshold": capfilt.get("itm_threshold"),
        "num_captions": capfilt.get("num_captions"),
        "counts": manifest.get("counts"),
        # Scalars only: the selection's concept counts can hold 500k entries.
        "selection": {k: v for k, v in selection.items() if not isinstance(v, dict | list)},
    }


def make_manifest(
    run_dir: Path, out_dir: Path, plan: Plan, shards: list[ShardInfo], shard_size: int
) -> dict:
    """What the export holds and where it came from; written last, as the completion marker."""
    manifest = {
        "format": plan.fmt,
        "where": plan.where,
        "caption": plan.caption,
        "shard_size": shard_size,
        "columns": plan.columns,
        "counts": {"rows": sum(s.rows for s in shards), "shards": len(shards)},
        "shards": [vars(s) for s in shards],
        "source": source_summary(run_dir),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {n: metadata.version(n) for n in ("duckdb", "pyarrow", "pillow")},
    }
    if plan.fmt == "webdataset" and shards:
        manifest["reencoded_images"] = plan.reencoded
        manifest["train_data"] = str(out_dir.resolve() / f"{{00000..{len(shards) - 1:05d}}}.tar")
    return manifest
