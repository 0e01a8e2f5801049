"""ITC as softmax (CLIP/BLIP) or sigmoid (SigLIP) on the demo world, at equal steps.

Draws the demo's world (`flows.demo.DEMO_WORLD`), pre-trains the image encoder on its labelled
set once (as the demo does), then pre-trains the demo's model (`[train]` of the demo's recipe)
on the world's web pairs as they are (round 0 of the loop) once per `[train] contrastive_loss`,
with the same seed, data and steps, and prints recall@1 and @5 both ways on the eval set.

    .venv/bin/python bench/contrastive_loss.py --out /tmp/contrastive [--seeds 0,1]
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq

from curation.config import from_dict
from curation.training import evaluate, train, vision
from curation.world import synthetic
from flows.demo import DEMO_WORLD, demo_config

RECALLS = ["i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5"]


def web_pairs(world: synthetic.WorldPaths) -> list[tuple[bytes, str]]:
    """(image bytes, alt-text) of every web image with alt-text: round 0's raw pairs."""
    rows = pq.read_table(world.web, columns=["file", "caption"]).to_pylist()
    return [((world.root / r["file"]).read_bytes(), r["caption"]) for r in rows if r["caption"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/contrastive_loss"))
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    args = parser.parse_args()
    world = synthetic.write_world(args.out / "world", **DEMO_WORLD)
    cfg = from_dict(demo_config({})).train
    vision.pretrain_vision(world.labelled, args.out / "vision", cfg)
    cfg = dataclasses.replace(cfg, vision_init=str(args.out / "vision"))
    pairs = web_pairs(world)
    lines = ["| loss | seed | " + " | ".join(RECALLS) + " | final ITC loss | minutes |"]
    lines.append("|" + "---|" * (len(RECALLS) + 4))
    for seed in [int(s) for s in args.seeds.split(",")]:
        for loss in ("softmax", "sigmoid"):
            started = time.perf_counter()
            out = args.out / f"{loss}-{seed}"
            run = dataclasses.replace(cfg, contrastive_loss=loss, seed=seed)
            log = train.pretrain(pairs, out, run)
            scores = evaluate.evaluate(out, world.eval)
            final = log["jobs"]["pretrain"]["log"][-1]["itc"]
            minutes = (time.perf_counter() - started) / 60
            cells = [f"{scores[k]:.1f}" for k in RECALLS]
            lines.append(f"| {loss} | {seed} | {' | '.join(cells)} | {final:.3f} | {minutes:.1f} |")
            print("\n".join(lines), file=sys.stderr, flush=True)
    print(f"{len(pairs)} web pairs, {cfg.epochs} epochs, batch {cfg.batch_size}\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
