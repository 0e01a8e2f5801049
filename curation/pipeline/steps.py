"""The steps of a curation run, declared once: the flow, both task runners, the progress lines,
the manifest and the funnels loop over `STEPS`.

Each step is one function over a run directory: it reads its inputs, calls the library, writes
its outputs atomically and returns a summary (counts). `run_step` does the rest in one place:
skip a shard whose completion marker exists, time the step, check every reject against the
reasons the step declares, write the marker last. Adding a stage is one function and one entry.
"""

import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curation import io, schema, sql
from curation.config import RunConfig, SelectConfig
from curation.models import blip as models
from curation.models import captioners
from curation.models import scorer as scoring
from curation.pipeline import capfilt, download, duplicates, select
from curation.rundir import RunDir


@dataclass(frozen=True)
class Step:
    """One step of a run. `per_shard` steps run once per shard, the others once per run (they
    need every shard's output, as DFN's global quantile and MetaCLIP's counts do)."""

    name: str
    run: Callable[..., dict]  # (RunDir, shard, RunConfig) -> summary, or (RunDir, RunConfig)
    per_shard: bool = True
    stages: tuple[str, ...] = ()  # the REJECTS `stage` values (schema.GATES) it may write
    io_bound: bool = False  # waits on the network: the default runner runs it ahead, on threads
    retries: int = 0  # task retries: only for a step whose failures are transient
    writes: tuple[tuple[str, str], ...] = ()  # (shard kind, file prefix) of each output file
    describe: Callable[[dict], str] = lambda summary: ""  # the progress line's detail

    @property
    def reasons(self) -> set[schema.Reason]:
        return {r for gate in schema.GATES if gate.stage in self.stages for r in gate.reasons}


def _rejects_summary(rejects: pa.Table) -> dict:
    return dict(Counter(rejects["reason"].to_pylist()))


def download_shard(run_dir: RunDir, shard: int, cfg: RunConfig) -> dict:
    """Download one shard of the URL list into raw/."""
    raw = download.download_shard(pq.read_table(run_dir.shard_file("input", shard)), cfg.download)
    io.write_parquet(raw, run_dir.shard_file("raw", shard), schema.RAW)
    return {"rows": len(raw), "status": dict(Counter(raw["status"].to_pylist()))}


@lru_cache(maxsize=2)
def load_models(captioner_id: str, filter_id: str):
    """Each model once per process, whatever the number of shards."""
    device, dtype = models.pick_device()
    return captioners.load_captioner(captioner_id, device, dtype), load_filter(filter_id)


@lru_cache(maxsize=2)
def load_filter(filter_id: str):
    """CapFilt's filter, once per process: shared by CapFilt and SemDeDup's embeddings."""
    return scoring.load_filter(filter_id, *models.pick_device())


@lru_cache(maxsize=1)
def load_eval_hashes(paths: tuple[str, ...]) -> dict:
    """The --decontaminate sets' hashes, once per process."""
    return duplicates.eval_hashes(list(paths))


def capfilt_shard(run_dir: RunDir, shard: int, cfg: RunConfig, progress=None) -> dict:
    """CapFilt one downloaded shard into capfilt/ and rejects/."""
    captioner, filt = load_models(cfg.capfilt.captioner, cfg.capfilt.filter)
    raw = pq.read_table(run_dir.shard_file("raw", shard))
    eval_copies = None
    if cfg.dedup.decontaminate:
        evals = load_eval_hashes(tuple(cfg.dedup.decontaminate))
        eval_copies = partial(duplicates.eval_copy_details, evals=evals, cfg=cfg.dedup)
    with models.torch_threads(cfg.sharding.torch_threads) as threads:
        result = capfilt.capfilt_shard(
            raw, captioner, filt, cfg.capfilt, shard, progress, eval_copies
        )
    passed, rejects = capfilt.to_tables(result)
    io.write_parquet(passed, run_dir.shard_file("capfilt", shard), schema.CURATED)
    io.write_parquet(rejects, run_dir.shard_file("rejects", shard, "capfilt"), schema.REJECTS)
    return {
        "rows": len(raw),
        "passed": len(passed),
        "rejects": _rejects_summary(rejects),
        "images": result.images,
        "seconds": result.seconds,
        "model_seconds": result.model_seconds,
        "torch_threads": threads,
        "captioner_family": captioner.family,  # which model wrote the synthetic captions
        "filter_family": filt.family,  # which model judged the texts
        # which process ran it and how many model loads that process has done so far: one per
        # process, however many shards it runs (checked on Dask workers in test_scaleout.py)
        "pid": os.getpid(),
        "model_loads": load_models.cache_info().misses,
    }


@lru_cache(maxsize=2)
def load_selectors(scorer_id: str, metadata: str, casefold: bool):
    """The DFN scorer and the concept matcher, each built once per process (None when off)."""
    device, dtype = models.pick_device()
    scorer = scoring.load_scorer(scorer_id, device, dtype) if scorer_id else None
    cfg = SelectConfig(metadata=metadata, casefold=casefold)
    return scorer, select.load_matcher(cfg)


def load_embedder(filter_id: str):
    """The CapFilt filter as an ITC model (the same weights, not a second copy): SemDeDup's
    image embeddings without a DFN scorer."""
    return scoring.itc_scorer(load_filter(filter_id))


def annotate_shard(run_dir: RunDir, shard: int, cfg: RunConfig) -> dict:
    """DFN score, concept matches, pHash (and embedding) of one shard's CapFilt survivors."""
    c = cfg.select
    scorer, matcher = load_selectors(c.scorer, c.metadata, c.casefold)
    semantic = cfg.dedup.semantic_threshold > 0
    embedder = (scorer or load_embedder(cfg.capfilt.filter)) if semantic else None
    passed = pq.read_table(run_dir.shard_file("capfilt", shard))
    with models.torch_threads(cfg.sharding.torch_threads) as threads:
        notes = select.annotate(
            passed,
            scorer,
            matcher,
            embedder=embedder,
            batch_size=c.batch_size,
            num_workers=c.num_workers,
        )
    io.write_parquet(notes, run_dir.shard_file("annotations", shard), schema.ANNOTATIONS)
    return {"rows": len(notes), "torch_threads": threads}


def plan_run(run_dir: RunDir, cfg: RunConfig) -> dict:
    """The run's global selection plan (selection.json), computed once over every shard."""
    if run_dir.selection.exists():
        return select.SelectionPlan.read(run_dir.selection).to_dict()
    con = select.connect(run_dir)
    rows = con.sql(sql.load("dedup_rows")).to_arrow_table()
    removed = duplicates.removals(rows, cfg.dedup)
    io.write_parquet(removed, run_dir.duplicates, duplicates.REMOVALS)
    select.exclude(con, removed)
    plan = select.global_plan(con, cfg.select)
    plan.dedup = duplicates.summary(removed, cfg.dedup)
    plan.write(run_dir.selection)  # last: its presence says the plan is done
    return plan.to_dict()


def select_shard(run_dir: RunDir, shard: int, cfg: RunConfig) -> dict:
    """Apply the plan to one shard: decisions/, curated shards/ and selection rejects."""
    plan = select.SelectionPlan.read(run_dir.selection)
    passed = pq.read_table(run_dir.shard_file("capfilt", shard))
    notes = pq.read_table(run_dir.shard_file("annotations", shard))
    removed = pq.read_table(run_dir.duplicates, filters=[("sample_id", "in", notes["sample_id"])])
    decisions = select.decide(notes, plan, cfg.select, removed)
    io.write_parquet(decisions, run_dir.shard_file("decisions", shard), schema.DECISIONS)
    curated, rejects = capfilt.apply_decisions(passed, notes, decisions, shard)
    io.write_parquet(curated, run_dir.shard_file("shards", shard), schema.CURATED)
    io.write_parquet(rejects, run_dir.shard_file("rejects", shard, "select"), schema.REJECTS)
    return {"rows": len(passed), "curated": len(curated), "rejects": _rejects_summary(rejects)}


def _describe_download(summary: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(summary.get("status", {}).items()))


def _describe_capfilt(summary: dict) -> str:
    rate = summary["images"] / max(summary["seconds"], 1e-9)
    return f"{summary['passed']} passed, {rate:.1f} img/s"


STEPS = (
    Step(
        "download",
        download_shard,
        io_bound=True,
        retries=1,
        describe=_describe_download,
        writes=(("raw", ""),),
    ),
    Step(
        "capfilt",
        capfilt_shard,
        stages=("download", "decode", "capfilt"),
        describe=_describe_capfilt,
        writes=(("capfilt", ""), ("rejects", "capfilt")),
    ),
    Step(
        "annotate",
        annotate_shard,
        describe=lambda s: f"{s['rows']} rows",
        writes=(("annotations", ""),),
    ),
    Step("plan", plan_run, per_shard=False),
    Step(
        "select",
        select_shard,
        stages=("select",),
        describe=lambda s: f"{s['curated']} curated of {s['rows']}",
        writes=(("decisions", ""), ("shards", ""), ("rejects", "select")),
    ),
)
BY_NAME = {step.name: step for step in STEPS}
PLAN = next(i for i, step in enumerate(STEPS) if not step.per_shard)
BEFORE_PLAN, AFTER_PLAN = STEPS[:PLAN], STEPS[PLAN + 1 :]  # per-shard steps around the plan


def check_rejects(step: Step, summary: dict) -> None:
    """Every reject reason a step wrote must be one it declares (schema.Reason, schema.GATES).

    Raises:
        ValueError: naming the step and the undeclared reasons (a bug, not bad input).
    """
    unknown = set(summary.get("rejects", {})) - step.reasons
    if unknown:
        raise ValueError(f"step {step.name} wrote undeclared reject reasons: {sorted(unknown)}")


def run_step(name: str, run_dir: RunDir, shard: int, cfg: RunConfig, **kwargs) -> dict:
    """Run one shard of step NAME unless its completion marker says it is done and the files
    it lists are intact; returns the step's summary with its wall time (`seconds`) and its
    output files' sizes and SHA-256 (`outputs`), written as the marker, last.

    A listed file missing or changed (truncated, overwritten) makes the step run again, and
    every step after it on this shard, the global plan and the selection with it.
    """
    step = BY_NAME[name]
    done = run_dir.read_marker(name, shard)
    if done is not None and intact(run_dir, done):
        return done
    if done is not None:
        forget_from(run_dir, name, shard)
    started = time.perf_counter()
    summary = step.run(run_dir, shard, cfg, **kwargs)
    summary.setdefault("seconds", time.perf_counter() - started)
    check_rejects(step, summary)
    summary["outputs"] = [fingerprint(run_dir, path) for path in step_files(run_dir, step, shard)]
    io.write_json(summary, run_dir.marker(name, shard))
    return summary


def step_files(run_dir: RunDir, step: Step, shard: int) -> list[Path]:
    return [run_dir.shard_file(kind, shard, prefix) for kind, prefix in step.writes]


def fingerprint(run_dir: RunDir, path: Path) -> dict:
    """An output file as its marker records it: path in the run, size, SHA-256."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    name = str(path.relative_to(run_dir.root))
    return {"file": name, "bytes": path.stat().st_size, "sha256": digest}


def intact(run_dir: RunDir, marker: dict) -> bool:
    """Whether every file a marker lists is there with its recorded size and SHA-256 (a
    marker from before checksums were recorded lists none: trusted)."""
    for recorded in marker.get("outputs", []):
        path = run_dir.root / recorded["file"]
        if not path.is_file() or path.stat().st_size != recorded["bytes"]:
            return False
        if fingerprint(run_dir, path)["sha256"] != recorded["sha256"]:
            return False
    return True


def forget_from(run_dir: RunDir, name: str, shard: int) -> None:
    """Remove the markers of step NAME and of every later step on `shard`, and, when NAME
    comes before the plan, the plan and every shard's selection (they used its output)."""
    names = [s.name for s in STEPS if s.per_shard]
    for later in names[names.index(name) :]:
        run_dir.marker(later, shard).unlink(missing_ok=True)
    if name in [s.name for s in BEFORE_PLAN]:
        for marker in run_dir.markers(STEPS[-1].name):
            marker.unlink(missing_ok=True)
        run_dir.selection.unlink(missing_ok=True)
        run_dir.duplicates.unlink(missing_ok=True)
    run_dir.manifest.unlink(missing_ok=True)
