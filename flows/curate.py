"""The `curate` flow over the step table (`curation.pipeline.steps.STEPS`): download -> CapFilt
-> annotate, then a global plan, then select.

One task per shard and step, except the plan: DFN's score threshold and MetaCLIP's concept
counts are computed over the whole run (docs/architecture.md), so selection waits for every
shard.

By default downloads run two shards at a time on a thread pool (they wait on the network, in a
child process); CapFilt runs shard after shard in the flow's thread, on models loaded once, so
the download of shard i+1 overlaps the models' work on shard i.

Scale-out (`curate run --workers N` or `--cluster ADDRESS`): the tasks run on Dask through
prefect-dask. Each shard's chain download -> CapFilt -> annotate runs on the workers, shards in
parallel; every worker process loads the models once (`steps.load_models` is cached per
process).
RUN_DIR must be on a filesystem every worker sees.
"""

import importlib.util
import time
from contextlib import contextmanager

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from curation.config import from_dict
from curation.pipeline import calibration, run, steps
from curation.pipeline.run import RunSpec
from curation.pipeline.steps import AFTER_PLAN, BEFORE_PLAN, PLAN, STEPS, Step
from curation.rundir import RunDir
from flows import stopping
from flows.progress import Progress


def _task(step: Step):
    """The Prefect task of one step: a few lines around `steps.run_step`."""

    def run_one(run_dir: str, shard: int, config: dict) -> dict:
        return steps.run_step(step.name, RunDir(run_dir), shard, from_dict(config))

    def run_global(run_dir: str, config: dict) -> dict:
        return step.run(RunDir(run_dir), from_dict(config))

    name = f"{step.name}-{{shard:05d}}" if step.per_shard else step.name
    fn = run_one if step.per_shard else run_global
    return task(fn, name=step.name, cache_policy=NO_CACHE, retries=step.retries, task_run_name=name)


TASKS = {step.name: _task(step) for step in STEPS}


def _shards_here(out: str, shards: list[int], config: dict, progress: Progress) -> None:
    """I/O-bound steps (downloads) run ahead on the thread pool; the model steps run in this
    thread, shard after shard, on models loaded once."""
    ahead = {
        step.name: [TASKS[step.name].submit(out, s, config) for s in shards]
        for step in BEFORE_PLAN
        if step.io_bound
    }
    for i, shard in enumerate(shards):
        for step in BEFORE_PLAN:
            if step.io_bound:
                summary = ahead[step.name][i].result()
            else:
                summary = TASKS[step.name](out, shard, config)
            progress.step_done(step.name, shard, summary)


def _shards_on_workers(out: str, shards: list[int], config: dict, progress: Progress) -> None:
    """Every shard's chain of steps before the plan submitted at once; Dask runs the chains in
    parallel, each step once the one before it finished."""
    futures, names = [], {}  # names: task run id -> (step, shard), for the progress lines
    for shard in shards:
        previous = []
        for step in BEFORE_PLAN:
            future = TASKS[step.name].submit(out, shard, config, wait_for=previous)
            futures.append(future)
            names[future.task_run_id] = (step.name, shard)
            previous = [future]
    for future in as_completed(futures):
        progress.step_done(*names[future.task_run_id], future.result())


@flow(name="curate", task_runner=ThreadPoolTaskRunner(max_workers=2))
def curate(spec: RunSpec) -> dict:
    """Curate `spec.urls` into `spec.out`; returns the run's counts."""
    stopping.reclaim()  # Ctrl-C / SIGTERM stop the run now, not after its running tasks
    spec = calibration.calibrated(spec)
    cfg = from_dict(spec.config)
    started = time.perf_counter()
    out, run_dir = spec.out, spec.run_dir
    shards = run.prepare(spec, cfg)
    progress = Progress(len(shards))
    config = cfg.to_dict()
    if isinstance(FlowRunContext.get().task_runner, DaskTaskRunner):
        _shards_on_workers(out, shards, config, progress)
    else:
        _shards_here(out, shards, config, progress)
    TASKS[STEPS[PLAN].name](out, config)  # the global pass, in this process: every shard's output
    for step in AFTER_PLAN:
        futures = [TASKS[step.name].submit(out, s, config) for s in shards]
        for shard, future in zip(shards, futures, strict=True):
            progress.step_done(step.name, shard, future.result())
    timings = {**progress.seconds, "wall": time.perf_counter() - started}
    manifest = run.write_manifest(run_dir, cfg, timings)
    progress.finish(manifest["counts"])
    return manifest["counts"]


def local_cluster(workers: int) -> tuple[str, dict]:
    """Dask cluster class and arguments for `--workers N` on this machine.

    One process per worker with one thread: each process loads the models once and runs one
    shard at a time (Dask's nanny also sets OMP_NUM_THREADS=1, so torch uses one core each).
    With CUDA and dask-cuda installed, one worker per GPU (at most N) instead.
    """
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("dask_cuda"):
        gpus = min(workers, torch.cuda.device_count())
        return "dask_cuda.LocalCUDACluster", {"n_workers": gpus, "threads_per_worker": 1}
    return "distributed.LocalCluster", {"n_workers": workers, "threads_per_worker": 1}


def dask_runner(workers: int = 0, cluster: str | None = None) -> DaskTaskRunner:
    """Dask on an existing scheduler (`cluster`) or on a local cluster of `workers`."""
    if cluster:
        return DaskTaskRunner(address=cluster)
    cluster_class, kwargs = local_cluster(workers)
    return DaskTaskRunner(cluster_class=cluster_class, cluster_kwargs=kwargs)


@contextmanager
def api_for_workers():
    """Give Dask workers this process's Prefect API server.

    Workers receive the flow's Prefect settings with each task. Without PREFECT_API_URL each
    worker process would start a temporary API server of its own (seconds and hundreds of MB
    each, over the same SQLite file); start the temporary server here and name it instead.
    """
    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect itself would start in this process
    server.start()
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield


def curate_on(spec: RunSpec, workers: int = 0, cluster: str | None = None) -> dict:
    """Run the curate flow here (default) or on Dask when `workers` / `cluster` ask for it."""
    if not (workers or cluster):
        return curate(spec)
    with api_for_workers():
        return curate.with_options(task_runner=dask_runner(workers, cluster))(spec)
