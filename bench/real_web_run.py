"""Real web data check: curate CC3M's 6,000 images end to end through `curate run`.

Serves ``../shared/data/cc3m-6k/images`` on a loopback HTTP server, builds the URL list from
its ``captions.tsv`` (``file<TAB>caption``), runs the real command line
(``curate run ... --allow-private-network``) with tiny random-weight BLIP checkpoints and
``shard_size = 1000``, then ``curate stats``. Afterwards it checks the accounting on the files
themselves: every input sample_id in exactly one curated shard or rejects file, and the
manifest's counts equal to those rows. Exit status 1 when they disagree or a command fails.

Not a project test: the data sits beside the project and is absent from a fresh checkout (the
script then says so and exits 0). The data is real junk: HTML error pages saved as .jpg, empty
captions, WEBP/PNG/GIF, repeated placeholders.

    .venv/bin/python bench/real_web_run.py                   # fresh run into /tmp/cc3m_run
    .venv/bin/python bench/real_web_run.py --resume          # rerun: finished shards are skipped
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/real_web_run.py   # CPU shared with other work

(On 2 busy cores, torch's default spinning OpenMP threads made the tiny models' CapFilt 5-20x
slower: 1114 s for the run, against 156 s with one intra-op thread; see capfilt_throughput.py.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.models import tiny
from curation.rundir import RunDir
from curation.world import webserver  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cc3m-6k"
CURATE = Path(sys.executable).with_name("curate")  # the console script of this venv
CONFIG = "[sharding]\nshard_size = {shard_size}\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="cc3m-6k folder")
    p.add_argument("--out", type=Path, default=Path("/tmp/cc3m_run"), help="run directory")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/cc3m_bench"), help="models, list")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--limit", type=int, default=0, help="first N rows only (0: all)")
    p.add_argument("--resume", action="store_true", help="keep --out and resume the run in it")
    return p.parse_args(argv)


def write_url_list(captions_tsv: Path, base_url: str, out: Path, limit: int = 0) -> int:
    """`url<TAB>caption` for every row of `file<TAB>caption`; returns the number of rows.

    Captions are copied verbatim (the project's TSV reader does not unquote); file names in
    cc3m-6k are plain [0-9_.a-z], so they need no percent-encoding in a URL.
    """
    lines = captions_tsv.read_text(encoding="utf-8").splitlines()[1:]  # skip the header
    lines = lines[:limit] if limit else lines
    rows = ["url\tcaption"]
    for line in lines:
        name, _, caption = line.partition("\t")
        rows.append(f"{base_url}/{name}\t{caption}")
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return len(rows) - 1


def fresh_run_dir(out: Path) -> None:
    """Remove a previous run in `out`; refuse a folder that is not a run directory."""
    if not out.exists():
        return
    if not RunDir(out).is_run() and any(out.iterdir()):
        sys.exit(f"{out} exists and is not a run directory (no run.json); choose another --out")
    shutil.rmtree(out)


def tiny_checkpoints(folder: Path) -> tuple[Path, Path]:
    """Tiny random-weight captioner and filter (written once): the run checks plumbing."""
    paths = (folder / "captioner", folder / "filter")
    if all((p / "config.json").is_file() for p in paths):
        return paths
    return tiny.save_blip_checkpoints(folder, size="tiny")


def curate(*args: str) -> float:
    """Run `curate ARGS`, streaming its output; seconds it took. Exits on failure."""
    command = [str(CURATE), *args]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"curate {args[0]} failed with exit status {done.returncode}")
    return seconds


def shard_ids(files: list[Path]) -> list[int]:
    """sample_id of every row in the Parquet `files`."""
    return [i for f in files for i in pq.read_table(f)["sample_id"].to_pylist()]


def reject_reasons(files: list[Path]) -> Counter:
    """Rejected rows per (stage, reason), read from the rejects files."""
    counts = Counter()
    for f in files:
        table = pq.read_table(f, columns=["stage", "reason"])
        counts.update(zip(table["stage"].to_pylist(), table["reason"].to_pylist(), strict=True))
    return counts


def check_accounting(run_dir: Path, inputs: int) -> bool:
    """Print per-reason counts and inputs = curated + rejected, from files and manifest."""
    run = RunDir(run_dir)
    curated, rejected = shard_ids(run.shard_files("shards")), shard_ids(run.shard_files("rejects"))
    reasons = reject_reasons(run.shard_files("rejects"))
    print("\nRejects by stage/reason (from rejects/*.parquet):")
    for (stage, reason), n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:>8} {reason:<18} {n:6d}")
    every = curated + rejected
    once = sorted(every) == list(range(inputs))
    print(
        f"inputs {inputs} = curated {len(curated)} + rejected {len(rejected)} "
        f"= {len(every)}: {'OK' if len(every) == inputs else 'MISMATCH'}; "
        f"every sample_id exactly once: {once}"
    )
    counts = json.loads(run.manifest.read_text())["counts"]
    agrees = counts["input"] == inputs and counts["curated"] == len(curated)
    agrees = agrees and counts["rejected"] == len(rejected)
    print(f"manifest counts {counts}: {'agree' if agrees else 'DISAGREE'} with the files")
    return once and agrees


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.data / "captions.tsv").is_file():
        print(
            f"skipped: {args.data} not found (the shared real-data folder is beside the "
            "project, not in a fresh checkout)"
        )
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        fresh_run_dir(args.out)
    captioner, filt = tiny_checkpoints(args.workdir / "tiny")
    config = args.workdir / "cc3m.toml"
    config.write_text(CONFIG.format(shard_size=args.shard_size))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"load avg before {os.getloadavg()}", flush=True)
    server = webserver.Server(webserver.routes_from_dir(args.data / "images"))
    try:
        url_list = args.workdir / "urls.tsv"
        inputs = write_url_list(args.data / "captions.tsv", server.base_url, url_list, args.limit)
        wall = curate(
            "run",
            "--urls",
            str(url_list),
            "--out",
            str(args.out),
            "--config",
            str(config),
            "--captioner",
            str(captioner),
            "--filter",
            str(filt),
            "--allow-private-network",
        )
    finally:
        server.close()
    curate("stats", str(args.out))
    print(
        f"\ncurate run wall time: {wall:.1f} s for {inputs} URLs (load avg after {os.getloadavg()})"
    )
    return 0 if check_accounting(args.out, inputs) else 1


if __name__ == "__main__":
    sys.exit(main())
