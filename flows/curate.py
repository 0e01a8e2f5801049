"""The `curate` flow: download -> CapFilt -> annotate, then a global plan, then select.

One task per shard and step, except the plan: DFN's score threshold and MetaCLIP's concept
counts are computed over the whole run (DESIGN.md), so selection waits for every shard.

Downloads run two shards at a time on a thread pool (they wait on the network, in a child
process); CapFilt runs shard after shard in the flow's thread, on models loaded once, so the
download of shard i+1 overlaps the models' work on shard i.
"""

import time
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from curation import run
from curation.config import from_dict
from flows.progress import Progress


@task(cache_policy=NO_CACHE, retries=1, task_run_name="download-{shard:05d}")
def download(run_dir: str, shard: int, config: dict) -> dict:
    return run.download_step(Path(run_dir), shard, from_dict(config))


@task(cache_policy=NO_CACHE, task_run_name="capfilt-{shard:05d}")
def capfilt(run_dir: str, shard: int, config: dict) -> dict:
    return run.capfilt_step(Path(run_dir), shard, from_dict(config))


@task(cache_policy=NO_CACHE, task_run_name="annotate-{shard:05d}")
def annotate(run_dir: str, shard: int, config: dict) -> dict:
    return run.annotate_step(Path(run_dir), shard, from_dict(config))


@task(cache_policy=NO_CACHE, task_run_name="plan-selection")
def plan(run_dir: str, config: dict) -> dict:
    return run.plan_step(Path(run_dir), from_dict(config))


@task(cache_policy=NO_CACHE, task_run_name="select-{shard:05d}")
def select(run_dir: str, shard: int, config: dict) -> dict:
    return run.select_step(Path(run_dir), shard, from_dict(config))


@flow(name="curate", task_runner=ThreadPoolTaskRunner(max_workers=2))
def curate(
    urls: str,
    out: str,
    url_col: str = "url",
    caption_col: str | None = "caption",
    config: dict | None = None,
) -> dict:
    """Curate the URL list at `urls` into `out`; returns the run's counts."""
    cfg = from_dict(config or {})
    started = time.perf_counter()
    shards = run.prepare(Path(out), Path(urls), url_col, caption_col, cfg)
    progress = Progress(len(shards))
    config = cfg.to_dict()
    futures = [download.submit(out, s, config) for s in shards]
    for shard, future in zip(shards, futures, strict=True):
        progress.step_done("download", shard, future.result())
        progress.step_done("capfilt", shard, capfilt(out, shard, config))
        progress.step_done("annotate", shard, annotate(out, shard, config))
    plan(out, config)  # the global pass: needs every shard's annotations
    for shard, future in zip(shards, [select.submit(out, s, config) for s in shards], strict=True):
        progress.step_done("select", shard, future.result())
    timings = {**progress.seconds, "wall": time.perf_counter() - started}
    manifest = run.write_manifest(Path(out), cfg, timings)
    progress.finish(manifest["counts"])
    return manifest["counts"]
