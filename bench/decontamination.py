"""Decontamination on the demo world: eval images planted in the web, the loop with and without.

Draws the demo's world (`flows.demo`), then plants `--planted` eval images in the web: each
replaces a web image's file, re-encoded as JPEG at `--quality` and resized by 1.25, with its
eval caption as the alt-text (a leak of image and text, as web copies of benchmark images come).
Runs one round of `curate bootstrap` (the demo's recipe) twice on that web, with the loop's
automatic decontamination (its --eval and --clean sets) and with `--no-decontaminate`, and
prints: planted rows rejected as `eval_overlap`, other web rows rejected as `eval_overlap`
(false alarms), and round 0 / round 1 recall@K on the eval set, side by side.

The world's truth still describes the replaced images' original scenes, so the noise columns
of the two runs are off by at most the planted rows' share (2% at 20).

    .venv/bin/python bench/decontamination.py --out /tmp/decontam [--planted 20]
"""

import argparse
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curation.rundir import LoopDir, RunDir
from curation.training import bootstrap as loop
from curation.world import synthetic
from curation.world.webserver import Server, routes_from_dir
from flows.bootstrap import bootstrap
from flows.demo import DEMO_WORLD, demo_config

RECALLS = ["i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5"]


def plant(world: synthetic.WorldPaths, n: int, quality: int) -> tuple[list[int], list[str]]:
    """Replace the files of every (len / n)-th web image by a re-encoded eval image, whose
    caption becomes that row's alt-text; returns the planted rows and every row's alt-text."""
    web = pq.read_table(world.web, columns=["file", "caption"]).to_pylist()
    evals = list({r["image_id"]: r for r in pq.read_table(world.eval).to_pylist()[::-1]}.values())
    evals = evals[::-1][:n]  # one row (its first caption) per eval image
    rows = [i * (len(web) // n) for i in range(n)]
    captions = [r["caption"] for r in web]
    for row, record in zip(rows, evals, strict=True):
        image = Image.open(io.BytesIO(record["image"])).convert("RGB")
        image = image.resize((round(image.width * 1.25), round(image.height * 1.25)))
        image.save(world.root / web[row]["file"], "JPEG", quality=quality)
        captions[row] = record["caption"]
    return rows, captions


def eval_overlaps(run_dir: RunDir) -> set[int]:
    ids = set()
    for path in run_dir.shard_files("rejects"):
        table = pq.read_table(path, columns=["sample_id", "reason"]).to_pylist()
        ids |= {r["sample_id"] for r in table if r["reason"] == "eval_overlap"}
    return ids


def run(out: Path, decontaminate: bool, args) -> dict:
    started = time.perf_counter()
    world = synthetic.write_world(out / "world", **DEMO_WORLD)
    planted, captions = plant(world, args.planted, args.quality)
    server = Server(routes_from_dir(world.images, prefix="/images"))  # reads the files now
    try:
        urls = synthetic.url_list(world.root, server.base_url)
        urls = urls.set_column(1, "caption", pa.array(captions, pa.string()))
        pq.write_table(urls, out / "urls.parquet")
        spec = loop.BootstrapSpec(
            str(out / "urls.parquet"),
            str(world.clean),
            str(out / "run"),
            eval_set=str(world.eval),
            config=demo_config({}),
            truth=str(world.truth),
            eval_truth=str(world.eval_truth),
            labelled=str(world.labelled),
            decontaminate=decontaminate,
        )
        metrics = bootstrap(spec)
    finally:
        server.close()
    flagged = eval_overlaps(LoopDir(out / "run").capfilt(1))
    return {
        "decontaminate": decontaminate,
        "planted": len(planted),
        "planted_rejected": len(flagged & set(planted)),
        "false_eval_overlap": len(flagged - set(planted)),
        "models": metrics["models"],
        "capfilt": metrics["capfilt"]["round1"],
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }


def table(results: list[dict]) -> str:
    head = ["decontaminate", "planted", "rejected as eval_overlap", "false eval_overlap"]
    head += [f"{k} r0 -> r1" for k in RECALLS] + ["chosen noise %", "minutes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        models = r["models"]
        recalls = [f"{models['round0'][k]:.1f} -> {models['round1'][k]:.1f}" for k in RECALLS]
        cells = [r["decontaminate"], r["planted"], r["planted_rejected"], r["false_eval_overlap"]]
        cells += recalls + [r["capfilt"]["chosen_noise_pct"], r["minutes"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/decontamination"))
    parser.add_argument("--planted", type=int, default=20, help="eval images planted in the web")
    parser.add_argument("--quality", type=int, default=75, help="JPEG quality of the copies")
    args = parser.parse_args()
    results = []
    for decontaminate in (True, False):
        results.append(
            run(args.out / ("with" if decontaminate else "without"), decontaminate, args)
        )
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        print(table(results), file=sys.stderr, flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
