"""Load: a 100,000-pair synthetic run through the real `curate run`, with each stage's throughput.

Draws a synthetic web (curation.world.synthetic) of `--pairs` images, serves it on a loopback HTTP
server, writes tiny BLIP checkpoints and runs `curate run ... --allow-private-network` in a
subprocess (the process tree's peak memory sampled as in memory_scaling.py). Then it reads the
run's completion markers and prints, per stage, the rows it handled, the seconds its shards
took (summed; downloads run two shards at a time, so their sum exceeds their wall time) and
rows per second, and the run's wall time and overall throughput. Exit 1 when the run fails or
its accounting is off (input != curated + rejected).

    .venv/bin/python bench/load_run.py                          # 100,000 pairs, 10 shards
    .venv/bin/python bench/load_run.py --pairs 5000 --shard-size 1000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from memory_scaling import measured_run, prepare  # noqa: E402

from curation.pipeline.steps import STEPS  # noqa: E402
from curation.rundir import RunDir  # noqa: E402
from curation.world import (
    synthetic,
    webserver,  # noqa: E402
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=100_000)
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/load_run"))
    return p.parse_args(argv)


def stage_table(run_dir: Path) -> list[tuple[str, int, float]]:
    """(stage, rows, summed shard seconds) from the completion markers."""
    rows = []
    for step in [s.name for s in STEPS if s.per_shard]:
        markers = [json.loads(p.read_text()) for p in RunDir(run_dir).markers(step)]
        count = sum(m.get("images", m["rows"]) for m in markers)  # CapFilt: images modelled
        rows.append((step, count, sum(m["seconds"] for m in markers)))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    world, *models = prepare(args.workdir, args.pairs)
    server = webserver.Server(webserver.routes_from_dir(world / "images", prefix="/images"))
    try:
        urls = synthetic.url_list(world, server.base_url)
        result = measured_run(
            args.workdir / "work", urls, models, args.shard_size, batch_size=64, interval=1.0
        )
    finally:
        server.close()
    run_dir = args.workdir / "work" / "run"
    manifest = json.loads(RunDir(run_dir).manifest.read_text())
    counts = manifest["counts"]
    print(f"{'stage':<9} {'rows':>8} {'shard_s':>9} {'rows/s':>8}")
    for step, count, seconds in stage_table(run_dir):
        print(f"{step:<9} {count:>8} {seconds:>9.1f} {count / max(seconds, 1e-9):>8.1f}")
    wall = result["seconds"]
    print(
        f"wall {wall:.0f} s for {counts['input']:,} pairs ({counts['input'] / wall:.1f} pairs/s)"
        f": {counts['curated']:,} curated + {counts['rejected']:,} rejected "
        f"{counts['rejects_by_reason']}; peak memory of the tree (PSS) "
        f"{result['peak'] / 2**20:.0f} MiB"
    )
    return 0 if counts["input"] == counts["curated"] + counts["rejected"] == args.pairs else 1


if __name__ == "__main__":
    sys.exit(main())
