"""A curation run on disk: start it (validate the URL list, cut it into input shards) and sum it
up (manifest, `curate runs`). The steps in between are `pipeline.steps`; the layout is
`curation.rundir`.
"""

import hashlib
import json
import os
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from curation import io, schema
from curation.config import ConfigError, RunConfig, from_dict
from curation.pipeline import download, steps, urls
from curation.pipeline.steps import STEPS
from curation.rundir import RunDir


@dataclass(frozen=True)
class RunSpec:
    """What `curate run` curates: a URL list (Parquet, CSV, TSV or JSONL) into a run directory,
    with a configuration (`RunConfig.to_dict()`; {} = the defaults)."""

    urls: str
    out: str
    url_col: str = "url"
    caption_col: str | None = "caption"  # None: the list has no alt-text
    config: dict = field(default_factory=dict)
    # How `itm_threshold = "auto"` was resolved (curation.pipeline.calibration), for run.json
    calibration: dict | None = None

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.out)


class RunDirError(ConfigError):
    """RUN_DIR already holds a different run."""


def _fingerprint(spec: RunSpec, cfg: RunConfig) -> str:
    digest = hashlib.sha256(Path(spec.urls).read_bytes())
    digest.update(
        json.dumps([spec.url_col, spec.caption_col, cfg.to_dict()], sort_keys=True).encode()
    )
    return digest.hexdigest()


@contextmanager
def exclusive(root: str | Path):
    """Hold the run directory's lock (fcntl, via filelock) for the block: one writer at a
    time, released when the process ends however it ends (the kernel drops the flock).

    Raises:
        RunDirError: another live process holds it; the message names its pid.
    """
    run_dir = RunDir(root)
    lock = FileLock(run_dir.lock)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        holder = run_dir.lock_pid.read_text().strip() if run_dir.lock_pid.exists() else "?"
        raise RunDirError(
            f"--out {root} is being written by another curate process (pid {holder}); "
            "wait for it to finish or stop it"
        ) from None
    try:
        run_dir.lock_pid.write_text(str(os.getpid()))
        yield
    finally:
        run_dir.lock_pid.unlink(missing_ok=True)
        lock.release()


def check_out_dir(root: str | Path, inputs: list[str | Path]) -> None:
    """Refuse, in one line, an `--out` the run cannot or must not write: a file, a folder
    holding something that is not a run, one holding an input (its manifest would overwrite
    it), or one this process cannot write. Creates the folder when it is missing.

    Raises:
        RunDirError: naming the folder and the problem.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise RunDirError(f"--out {root} is a file, not a folder")
    for given in inputs:
        if Path(given).resolve().is_relative_to(root.resolve()):
            raise RunDirError(f"--out {root} holds the input {given}; write the run elsewhere")
    if root.is_dir() and not RunDir(root).is_run() and _holds_other_files(root):
        raise RunDirError(
            f"--out {root} holds files that are not a curation run; give a new or empty folder"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as err:
        raise RunDirError(f"cannot write to --out {root}: {err.strerror or err}") from None


def _holds_other_files(root: Path) -> bool:
    return any(p.name not in (RunDir.LOCK, RunDir.LOCK_PID) for p in root.iterdir())


def prepare(spec: RunSpec, cfg: RunConfig) -> list[int]:
    """Validate the URL list, cut it into input shards (once) and return the shard numbers.

    Raises:
        RunDirError: the run directory holds a run of another URL list or configuration.
        ConfigError: the URL list cannot be read (urls.read_url_list).
    """
    run_dir, fingerprint = spec.run_dir, _fingerprint(spec, cfg)
    if run_dir.run_json.exists():
        io.remove_partial_files(run_dir.own_folders())  # a killed run's half-written files
        known = json.loads(run_dir.run_json.read_text())
        if known["fingerprint"] != fingerprint:
            raise RunDirError(
                f"{run_dir.root} holds a run of another URL list or configuration; use a new --out"
            )
        return list(range(known["shards"]))
    table = urls.read_url_list(spec.urls, spec.url_col, spec.caption_col)
    parts = urls.split_shards(table, cfg.sharding.shard_size)
    for shard, part in enumerate(parts):
        io.write_parquet(part, run_dir.shard_file("input", shard), schema.INPUT)
    known = {
        "fingerprint": fingerprint,
        "urls": str(Path(spec.urls)),
        "url_col": spec.url_col,
        "caption_col": spec.caption_col,
        "rows": len(table),
        "shards": len(parts),
        "config": cfg.to_dict(),
        "calibration": spec.calibration,
    }
    io.write_json(known, run_dir.run_json)
    return list(range(len(parts)))


OUTCOME = ["status", "error", "image"]  # what a download decided for a row


def retry_failed_downloads(run_dir: RunDir, cfg: RunConfig, say=print) -> dict:
    """Fetch again the rows whose download failed for a transient reason (`download.
    is_transient`), in every downloaded shard; the later steps of a shard where something
    changed, the global plan and every shard's selection are then left to the rerun.

    Returns (and appends to RUN_DIR/retries.json) {"retried": rows, "recovered": rows}.
    """
    retried = recovered = 0
    for shard in range(json.loads(run_dir.run_json.read_text())["shards"]):
        path = run_dir.shard_file("raw", shard)
        if run_dir.read_marker("download", shard) is None or not path.exists():
            continue  # not downloaded yet: the run downloads it anyway
        raw = pq.read_table(path)
        status, error = raw["status"].to_pylist(), raw["error"].to_pylist()
        failed = pa.array([download.is_transient(*row) for row in zip(status, error, strict=True)])
        if not pc.any(failed).as_py():
            continue
        before = raw.filter(failed)
        again = download.download_shard(before.select(schema.INPUT.names), cfg.download)
        n_ok = again["status"].to_pylist().count("success")
        retried, recovered = retried + len(again), recovered + n_ok
        say(f"[retry] shard {shard}: {len(again)} failed downloads fetched again, {n_ok} recovered")
        if again.select(OUTCOME).to_pylist() != before.select(OUTCOME).to_pylist():
            io.write_parquet(_merged(raw, again), path, schema.RAW)
            marker = run_dir.read_marker("download", shard)
            io.write_json(
                {**marker, "outputs": [steps.fingerprint(run_dir, path)]},
                run_dir.marker("download", shard),
            )
            steps.forget_from(run_dir, "capfilt", shard)  # the rerun redoes them
    attempt = {"retried": retried, "recovered": recovered}
    history = run_dir.read_json(run_dir.retries).get("attempts", [])
    io.write_json({"attempts": [*history, attempt]}, run_dir.retries)
    return attempt


def _merged(raw: pa.Table, again: pa.Table) -> pa.Table:
    """`raw` with the rows of `again` (same sample_ids) in place, in the original order."""
    by_id = {r["sample_id"]: r for r in again.to_pylist()}
    rows = [by_id.get(r["sample_id"], r) for r in raw.to_pylist()]
    return pa.Table.from_pylist(rows, schema=raw.schema)


def versions() -> dict:
    names = ["torch", "transformers", "img2dataset", "prefect", "duckdb", "pyarrow", "pillow"]
    return {n: metadata.version(n) for n in names}


def write_manifest(run_dir: RunDir, cfg: RunConfig, timings: dict) -> dict:
    """Sum the per-shard markers into RUN_DIR/manifest.json; inputs = curated + rejected."""
    run = json.loads(run_dir.run_json.read_text())
    rejecting = [step.name for step in STEPS if step.stages]
    markers = [run_dir.read_marker(name, s) for name in rejecting for s in range(run["shards"])]
    rejects = sum((Counter(m["rejects"]) for m in markers), Counter())
    counts = {
        "input": run["rows"],
        "curated": sum(m.get("curated", 0) for m in markers),
        "rejected": sum(rejects.values()),
        "rejects_by_reason": dict(sorted(rejects.items())),
    }
    manifest = {
        "urls": run["urls"],
        "shards": run["shards"],
        "config": cfg.to_dict(),
        "models": {
            "captioner": cfg.capfilt.captioner,
            "filter": cfg.capfilt.filter,
            **{
                f"{role}_family": sorted(
                    {m.get(f"{role}_family", blip) for m in markers if "passed" in m}
                )  # markers of earlier versions lack it: BLIP's models were all they loaded
                for role, blip in (("captioner", "blip"), ("filter", "blip_itm"))
            },
        },
        "versions": versions(),
        "counts": counts,
        "timings": timings,
    }
    io.write_json(manifest, run_dir.manifest)
    return manifest


def config_of(run_dir: RunDir) -> RunConfig:
    return from_dict(json.loads(run_dir.run_json.read_text())["config"])


def summary(run_dir: RunDir) -> dict:
    """One line of `curate runs`: status, counts and duration of a run directory."""
    known = json.loads(run_dir.run_json.read_text())
    manifest = run_dir.read_json(run_dir.manifest) or None
    done = len(run_dir.markers(STEPS[-1].name))
    counts = manifest["counts"] if manifest else {"curated": None, "rejected": None}
    return {
        "run": run_dir.root.name,
        "status": "done" if manifest else f"incomplete ({done}/{known['shards']} shards)",
        "input": known["rows"],
        "curated": counts["curated"],
        "rejected": counts["rejected"],
        "seconds": round(manifest["timings"]["wall"], 1) if manifest else None,
    }
