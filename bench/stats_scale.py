"""How long `curate stats` takes on a run of a million curated rows (issue target: < 5 s).

Generates the run's Parquet directly (no models, no downloads): input, curated shards with
three candidate texts each and a 64-byte stand-in image, rejects, annotations with concept
matches and DFN scores, markers, manifest and a selection plan; then times the full report
(every query of `curate stats`) in-process and as the command a user types.

    .venv/bin/python bench/stats_scale.py [--rows 1000000] [--out /tmp/stats_scale]
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation import io, schema
from curation.outputs import stats
from curation.rundir import RunDir

SHARD = 100_000
WORDS = np.array(["dog", "cat", "red", "car", "tree", "sky", "beach", "house", "man", "city"])


def candidates(rng: np.random.Generator, n: int) -> pa.Array:
    """Three scored texts per row (one web, two synthetic), as the CANDIDATE struct list."""
    texts = pa.array(np.char.add("a photo of a ", WORDS[rng.integers(0, 10, 3 * n)]))
    itm = rng.random(3 * n).astype(np.float32)
    structs = pa.StructArray.from_arrays(
        [
            texts,
            pa.array(np.tile(["web", "synthetic", "synthetic"], n)),
            pa.array(itm),
            pa.array(rng.random(3 * n).astype(np.float32)),
            pa.array(itm >= 0.5),
        ],
        fields=list(schema.CANDIDATE),
    )
    return pa.ListArray.from_arrays(pa.array(np.arange(0, 3 * n + 1, 3, dtype=np.int32)), structs)


def curated_shard(rng, ids: np.ndarray, shard: int) -> pa.Table:
    n = len(ids)
    words = WORDS[rng.integers(0, 10, n)]
    return pa.table(
        {
            "sample_id": ids,
            "key": [f"{i:012d}" for i in ids],
            "url": np.char.add("http://example.com/", ids.astype(str)),
            "web_text": words,
            "candidates": candidates(rng, n),
            "caption": np.char.add("a photo of a ", words),
            "caption_source": rng.choice(["web", "synthetic"], n),
            "caption_itm": rng.random(n),
            "image": pa.array([b"\xff" * 64] * n, pa.binary()),
            "width": rng.integers(64, 512, n),
            "height": rng.integers(64, 512, n),
            "sha256": np.char.add("h", ids.astype(str)),
            "shard": np.full(n, shard),
            "dfn": rng.random(n),
            "concepts": pa.array([[w] for w in words]),
        }
    ).cast(schema.CURATED)


def write_run(out: Path, rows: int) -> None:
    run = RunDir(out)
    rng = np.random.default_rng(0)
    rejected = rows // 10
    for shard, start in enumerate(range(0, rows + rejected, SHARD)):
        ids = np.arange(start, min(start + SHARD, rows + rejected))
        inputs = pa.table({"sample_id": ids, "url": ids.astype(str), "web_text": ids.astype(str)})
        io.write_parquet(inputs, run.shard_file("input", shard), schema.INPUT)
        kept, dropped = ids[ids < rows], ids[ids >= rows]
        curated = curated_shard(rng, kept, shard)
        io.write_parquet(curated, run.shard_file("shards", shard), schema.CURATED)
        notes = curated.select(["sample_id", "dfn", "concepts"])
        io.write_parquet(notes, run.shard_file("annotations", shard), schema.ANNOTATIONS)
        n = len(dropped)
        rejects = pa.table(
            {
                "sample_id": dropped,
                "url": dropped.astype(str),
                "web_text": pa.nulls(n, pa.string()),
                "stage": ["download"] * n,
                "reason": ["download_failed"] * n,
                "detail": ["HTTP Error 404"] * n,
                "candidates": pa.nulls(n, schema.CANDIDATE_LIST),
                "shard": np.full(n, shard),
            }
        )
        io.write_parquet(rejects, run.shard_file("rejects", shard), schema.REJECTS)
        markers = {
            "download": {"rows": len(ids), "status": {"success": len(kept)}, "seconds": 9.0},
            "capfilt": {
                "rows": len(ids),
                "passed": len(kept),
                "rejects": {},
                "images": len(kept),
                "seconds": 60.0,
                "model_seconds": 58.0,
            },
            "select": {"rows": len(kept), "curated": len(kept), "rejects": {}, "seconds": 1.0},
        }
        for step, summary in markers.items():
            io.write_json(summary, run.marker(step, shard))
    plan = {"balance": {"t": rows // 20}, "score": {"threshold": 0.3}}
    run.selection.write_text(json.dumps(plan))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", default="/tmp/stats_scale")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    write_run(out, args.rows)
    print(f"generated {args.rows:,} curated rows in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    stats.report(out)
    print(f"curate stats, in-process:  {time.perf_counter() - started:.2f} s")
    started = time.perf_counter()
    curate = Path(sys.executable).with_name("curate")
    subprocess.run([str(curate), "stats", str(out)], check=True, capture_output=True)
    print(f"curate stats, the command: {time.perf_counter() - started:.2f} s (target < 5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
