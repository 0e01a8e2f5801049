"""Peak memory of `curate run` at 1x and 10x the shards: a run's memory must not grow with its size.

Draws a synthetic web (curation.world.synthetic) of 10x the rows, serves it on a loopback HTTP
server (curation.world.webserver), writes tiny BLIP checkpoints (curation.models.tiny), then runs
the real command
line (`curate run ... --allow-private-network`) in a subprocess twice: on the first
SHARDS x SHARD_SIZE rows, then on 10x as many (same shard size, so 10x the shards).

What "peak memory" means here: every 0.2 s the script sums the proportional set size (PSS) of
every live process in the command's tree (curate itself, Prefect's temporary API server, the
img2dataset process of each download, Dask workers with --workers) and keeps the largest sum.
PSS splits each shared page among the processes that map it, so the sum is the physical memory
the run holds at that moment; summed RSS would count the Python runtime and torch's libraries
once per process. `getrusage(RUSAGE_CHILDREN).ru_maxrss` would not do either: it is the
largest single descendant, not the tree at one moment. The peak of each kind of
process is printed too, to show what grows. Target: peak(10x) / peak(1x) <= 1.25.

    .venv/bin/python bench/memory_scaling.py                      # 2 shards of 20, then 20
    .venv/bin/python bench/memory_scaling.py --shards 4 --shard-size 50 --workers 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.models import tiny
from curation.world import (
    synthetic,
    webserver,  # noqa: E402
)

CURATE = Path(sys.executable).with_name("curate")  # the console script of this venv
# Light CapFilt settings: the bench measures memory, not captions. Selection keeps its defaults
# (balancing over the default concept list), so the global pass is the real one.
CONFIG = """[sharding]
shard_size = {shard_size}
[capfilt]
num_captions = 1
max_new_tokens = 8
min_new_tokens = 2
batch_size = {batch_size}
[download]
timeout = 10
"""
# A process's kind, from the command lines of it and its ancestors up to `curate run`.
KINDS = [("img2dataset", "downloads"), ("uvicorn", "prefect_server"), ("spawn_main", "workers")]
TARGET = 1.25


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", type=int, default=2, help="shards of the 1x run")
    p.add_argument("--shard-size", type=int, default=20, help="rows per shard")
    p.add_argument("--scale", type=int, default=10, help="the large run has this many times more")
    p.add_argument("--workers", type=int, help="pass --workers N to curate run (Dask)")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/memory_scaling"))
    return p.parse_args(argv)


def kind(process: psutil.Process, root_pid: int) -> str:
    """'curate' for the command's own process, else the first KINDS match in its lineage."""
    lineage = []
    while process is not None and process.pid != root_pid:
        lineage.append(" ".join(process.cmdline()))
        process = process.parent()
    text = " ".join(lineage)
    return next((name for needle, name in KINDS if needle in text), "curate")


def sample_tree(root: psutil.Process) -> Counter:
    """PSS in bytes by kind of process, summed over the live processes of `root`'s tree."""
    pss = Counter()
    for process in [root, *root.children(recursive=True)]:
        try:
            pss[kind(process, root.pid)] += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass  # ended between the listing and the reading
    return pss


def measure(argv: list[str], env: dict, log: Path, interval: float) -> dict:
    """Run `argv`, sampling its tree; peak of the sum, peak per kind, wall seconds."""
    started = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        root, peak, by_kind = psutil.Process(child.pid), 0, Counter()
        while child.poll() is None:
            try:
                rss = sample_tree(root)
            except psutil.NoSuchProcess:
                break
            peak = max(peak, sum(rss.values()))
            by_kind = Counter({k: max(by_kind[k], rss[k]) for k in {*by_kind, *rss}})
            time.sleep(interval)
    if child.wait() != 0:
        sys.exit(f"curate run failed (exit {child.returncode}); see {log}")
    return {"peak": peak, "by_kind": by_kind, "seconds": time.perf_counter() - started}


def prepare(workdir: Path, rows: int) -> tuple[Path, Path, Path]:
    """(world dir, captioner, filter) in `workdir`, reused when already there."""
    world = workdir / f"world-{rows}"
    if not (world / "web.parquet").exists():
        synthetic.write_world(world, n_web=rows, clean_frac=0.01, n_eval=1, seed=0)
    models = workdir / "models"
    if not (models / "filter" / "config.json").exists():
        tiny.save_blip_checkpoints(models, size="tiny", seed=0)
    return world, models / "captioner", models / "filter"


def measured_run(
    work: Path,
    urls,
    models,
    shard_size: int,
    batch_size: int = 16,
    extra: list[str] | None = None,
    interval: float = 0.2,
) -> dict:
    """`curate run` over the URL table `urls` into WORK/run (fresh), its process tree sampled."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pq.write_table(urls, work / "urls.parquet")
    (work / "cfg.toml").write_text(CONFIG.format(shard_size=shard_size, batch_size=batch_size))
    argv = [
        str(CURATE),
        "run",
        "--urls",
        str(work / "urls.parquet"),
        "--out",
        str(work / "run"),
        "--config",
        str(work / "cfg.toml"),
        "--captioner",
        str(models[0]),
        "--filter",
        str(models[1]),
        "--allow-private-network",
        *(extra or []),
    ]
    # A fresh Prefect home per run: its temporary API server starts from an empty database.
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "HF_HUB_OFFLINE": "1"}
    return measure(argv, env, work / "curate.log", interval)


def run_once(args, scale: int, world: Path, models: tuple[Path, Path], base_url: str) -> dict:
    """One `curate run` over the first scale x shards x shard_size rows, in a fresh run dir."""
    rows = scale * args.shards * args.shard_size
    urls = synthetic.url_list(world, base_url).slice(0, rows)
    extra = ["--workers", str(args.workers)] if args.workers else []
    result = measured_run(
        args.workdir / f"x{scale}",
        urls,
        models,
        args.shard_size,
        extra=extra,
        interval=args.interval,
    )
    return {"scale": scale, "rows": rows, "shards": scale * args.shards, **result}


def report(results: list[dict]) -> float:
    mib = 2**20
    kinds = sorted({k for r in results for k in r["by_kind"]})
    print(
        f"{'run':>4} {'shards':>6} {'rows':>6} {'wall_s':>7} {'peak_MiB':>9}  "
        + "  ".join(f"{k}_MiB" for k in kinds)
    )
    for r in results:
        per_kind = "  ".join(f"{r['by_kind'][k] / mib:>{len(k) + 4}.0f}" for k in kinds)
        print(
            f"{r['scale']:>3}x {r['shards']:>6} {r['rows']:>6} {r['seconds']:>7.1f} "
            f"{r['peak'] / mib:>9.0f}  {per_kind}"
        )
    ratio = results[-1]["peak"] / results[0]["peak"]
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(
        f"peak PSS of the process tree, {results[-1]['scale']}x / 1x: {ratio:.3f} "
        f"(target <= {TARGET}: {verdict})"
    )
    return ratio


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    world, *models = prepare(args.workdir, args.scale * args.shards * args.shard_size)
    server = webserver.Server(webserver.routes_from_dir(world / "images", prefix="/images"))
    try:
        results = [
            run_once(args, scale, world, models, server.base_url) for scale in (1, args.scale)
        ]
    finally:
        server.close()
    return 0 if report(results) <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
