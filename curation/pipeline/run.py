"""A curation run on disk: the per-shard steps the flow calls, one function each.

Layout of RUN_DIR (deterministic paths, so a rerun finds what is done):
    run.json                 what the run is (URL list fingerprint, configuration)
    input/00000.parquet      the URL list cut into shards (schema.INPUT)
    raw/00000.parquet        download results, one row per input row (schema.RAW)
    capfilt/00000.parquet    images that passed CapFilt (schema.CURATED, before selection)
    annotations/00000.parquet  their DFN score and matched concepts (schema.ANNOTATIONS)
    selection.json           the global selection plan: score threshold, concept counts, t
    decisions/00000.parquet  keep / reason per CapFilt survivor (schema.DECISIONS)
    shards/00000.parquet     curated rows (schema.CURATED)
    rejects/<step>-00000.parquet  every input row that did not make it (schema.REJECTS)
    _done/<step>/00000.json  completion marker with the step's counts and timings
    manifest.json            configuration, versions, counts per stage and reason, timings
"""

import hashlib
import json
import os
import time
from collections import Counter
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import pyarrow.parquet as pq

from curation import io, schema
from curation.config import ConfigError, RunConfig, SelectConfig, from_dict
from curation.models import blip as models
from curation.models import scorer as scoring
from curation.pipeline import capfilt, download, select, urls


class RunDirError(ConfigError):
    """RUN_DIR already holds a different run."""


def _fingerprint(urls_path: Path, url_col: str, caption_col: str | None, cfg: RunConfig) -> str:
    digest = hashlib.sha256(Path(urls_path).read_bytes())
    digest.update(json.dumps([url_col, caption_col, cfg.to_dict()], sort_keys=True).encode())
    return digest.hexdigest()


def prepare(
    run_dir: Path, urls_path: Path, url_col: str, caption_col: str | None, cfg: RunConfig
) -> list[int]:
    """Validate the URL list, cut it into input shards (once) and return the shard numbers."""
    run_dir = Path(run_dir)
    fingerprint = _fingerprint(urls_path, url_col, caption_col, cfg)
    run_file = run_dir / "run.json"
    if run_file.exists():
        io.remove_partial_files(run_dir)  # a killed run's half-written files
        known = json.loads(run_file.read_text())
        if known["fingerprint"] != fingerprint:
            raise RunDirError(
                f"{run_dir} holds a run of another URL list or configuration; use a new --out"
            )
        return list(range(known["shards"]))
    table = urls.read_url_list(urls_path, url_col, caption_col)
    parts = urls.split_shards(table, cfg.sharding.shard_size)
    for shard, part in enumerate(parts):
        io.write_parquet(part, input_path(run_dir, shard), schema.INPUT)
    io.write_json(
        {"fingerprint": fingerprint, "urls": str(urls_path), "url_col": url_col,
         "caption_col": caption_col, "rows": len(table), "shards": len(parts),
         "config": cfg.to_dict()},
        run_file,
    )  # fmt: skip
    return list(range(len(parts)))


def input_path(run_dir: Path, shard: int) -> Path:
    return Path(run_dir) / "input" / f"{io.shard_name(shard)}.parquet"


def output_path(run_dir: Path, kind: str, shard: int, prefix: str = "") -> Path:
    return Path(run_dir) / kind / f"{prefix}{io.shard_name(shard)}.parquet"


def download_step(run_dir: Path, shard: int, cfg: RunConfig) -> dict:
    """Download one shard into raw/, unless its marker says it is done."""
    done = io.read_marker(run_dir, "download", shard)
    if done is not None:
        return done
    started = time.perf_counter()
    raw = download.download_shard(pq.read_table(input_path(run_dir, shard)), cfg.download)
    io.write_parquet(raw, output_path(run_dir, "raw", shard), schema.RAW)
    summary = {
        "rows": len(raw), "status": dict(Counter(raw["status"].to_pylist())),
        "seconds": time.perf_counter() - started,
    }  # fmt: skip
    io.write_marker(run_dir, "download", shard, summary)
    return summary


@lru_cache(maxsize=2)
def load_models(captioner_id: str, filter_id: str):
    """Each model once per process, whatever the number of shards."""
    device, dtype = models.pick_device()
    captioner = models.load_captioner(captioner_id, device, dtype)
    filt = models.load_filter(filter_id, device, dtype)
    return captioner, filt


def capfilt_step(run_dir: Path, shard: int, cfg: RunConfig, progress=None) -> dict:
    """CapFilt one downloaded shard into capfilt/ and rejects/, unless already done."""
    done = io.read_marker(run_dir, "capfilt", shard)
    if done is not None:
        return done
    captioner, filt = load_models(cfg.capfilt.captioner, cfg.capfilt.filter)
    raw = pq.read_table(output_path(run_dir, "raw", shard))
    result = capfilt.capfilt_shard(raw, captioner, filt, cfg.capfilt, shard, progress)
    passed, rejects = capfilt.to_tables(result)
    io.write_parquet(passed, output_path(run_dir, "capfilt", shard), schema.CURATED)
    io.write_parquet(rejects, output_path(run_dir, "rejects", shard, "capfilt-"), schema.REJECTS)
    summary = {
        "rows": len(raw), "passed": len(passed),
        "rejects": dict(Counter(rejects["reason"].to_pylist())),
        "images": result.images, "seconds": result.seconds, "model_seconds": result.model_seconds,
        # which process ran it and how many model loads that process has done so far: one per
        # process, however many shards it runs (checked on Dask workers in test_scaleout.py)
        "pid": os.getpid(), "model_loads": load_models.cache_info().misses,
    }  # fmt: skip
    io.write_marker(run_dir, "capfilt", shard, summary)
    return summary


@lru_cache(maxsize=2)
def load_selectors(scorer_id: str, metadata: str, casefold: bool):
    """The DFN scorer and the concept matcher, each built once per process (None when off)."""
    device, dtype = models.pick_device()
    scorer = scoring.load_scorer(scorer_id, device, dtype) if scorer_id else None
    cfg = SelectConfig(metadata=metadata, casefold=casefold)
    return scorer, select.load_matcher(cfg)


def annotate_step(run_dir: Path, shard: int, cfg: RunConfig) -> dict:
    """DFN score and concept matches of one shard's CapFilt survivors, unless already done."""
    done = io.read_marker(run_dir, "annotate", shard)
    if done is not None:
        return done
    started = time.perf_counter()
    c = cfg.select
    scorer, matcher = load_selectors(c.scorer, c.metadata, c.casefold)
    passed = pq.read_table(output_path(run_dir, "capfilt", shard))
    notes = select.annotate(passed, scorer, matcher, batch_size=c.batch_size,
                            num_workers=c.num_workers)  # fmt: skip
    io.write_parquet(notes, output_path(run_dir, "annotations", shard), schema.ANNOTATIONS)
    summary = {"rows": len(notes), "seconds": time.perf_counter() - started}
    io.write_marker(run_dir, "annotate", shard, summary)
    return summary


def plan_step(run_dir: Path, cfg: RunConfig) -> dict:
    """The run's global selection plan (selection.json), computed once over every shard."""
    path = Path(run_dir) / "selection.json"
    if path.exists():
        return json.loads(path.read_text())
    plan = select.global_plan(run_dir, cfg.select)
    io.write_json(plan, path)
    return plan


def select_step(run_dir: Path, shard: int, cfg: RunConfig) -> dict:
    """Apply the plan to one shard: decisions/, curated shards/ and selection rejects."""
    done = io.read_marker(run_dir, "select", shard)
    if done is not None:
        return done
    started = time.perf_counter()
    plan = json.loads((Path(run_dir) / "selection.json").read_text())
    passed = pq.read_table(output_path(run_dir, "capfilt", shard))
    notes = pq.read_table(output_path(run_dir, "annotations", shard))
    decisions = select.decide(notes, plan, cfg.select)
    io.write_parquet(decisions, output_path(run_dir, "decisions", shard), schema.DECISIONS)
    curated, rejects = capfilt.apply_decisions(passed, notes, decisions, shard)
    io.write_parquet(curated, output_path(run_dir, "shards", shard), schema.CURATED)
    io.write_parquet(rejects, output_path(run_dir, "rejects", shard, "select-"), schema.REJECTS)
    summary = {
        "rows": len(passed), "curated": len(curated),
        "rejects": dict(Counter(rejects["reason"].to_pylist())),
        "seconds": time.perf_counter() - started,
    }  # fmt: skip
    io.write_marker(run_dir, "select", shard, summary)
    return summary


def versions() -> dict:
    names = ["torch", "transformers", "img2dataset", "prefect", "duckdb", "pyarrow", "pillow"]
    return {n: metadata.version(n) for n in names}


def write_manifest(run_dir: Path, cfg: RunConfig, timings: dict) -> dict:
    """Sum the per-shard markers into RUN_DIR/manifest.json; inputs = curated + rejected."""
    run = json.loads((Path(run_dir) / "run.json").read_text())
    markers = [io.read_marker(run_dir, step, s)
               for step in ("capfilt", "select") for s in range(run["shards"])]  # fmt: skip
    rejects = sum((Counter(m["rejects"]) for m in markers), Counter())
    counts = {
        "input": run["rows"],
        "curated": sum(m.get("curated", 0) for m in markers),
        "rejected": sum(rejects.values()),
        "rejects_by_reason": dict(sorted(rejects.items())),
    }
    manifest = {
        "urls": run["urls"], "shards": run["shards"], "config": cfg.to_dict(),
        "models": {"captioner": cfg.capfilt.captioner, "filter": cfg.capfilt.filter},
        "versions": versions(), "counts": counts, "timings": timings,
    }  # fmt: skip
    io.write_json(manifest, Path(run_dir) / "manifest.json")
    return manifest


def config_of(run_dir: Path) -> RunConfig:
    return from_dict(json.loads((Path(run_dir) / "run.json").read_text())["config"])


def is_run(path: Path) -> bool:
    return (Path(path) / "run.json").is_file()


def summary(run_dir: Path) -> dict:
    """One line of `curate runs`: status, counts and duration of a run directory."""
    run_dir = Path(run_dir)
    known = json.loads((run_dir / "run.json").read_text())
    manifest_file = run_dir / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else None
    done = sum(1 for _ in (run_dir / "_done" / "select").glob("*.json"))
    counts = manifest["counts"] if manifest else {"curated": None, "rejected": None}
    return {
        "run": run_dir.name,
        "status": "done" if manifest else f"incomplete ({done}/{known['shards']} shards)",
        "input": known["rows"], "curated": counts["curated"], "rejected": counts["rejected"],
        "seconds": round(manifest["timings"]["wall"], 1) if manifest else None,
    }  # fmt: skip
