"""Pre-training throughput: examples/second with all three BLIP objectives (ITC + ITM + LM).

    python bench/train_throughput.py --preset small --batch-size 32 --steps 30
    python bench/train_throughput.py --preset base --batch-size 64   # BLIP-base sizes, GPU

Runs `curation.training.train.pretrain` from scratch (captioner and filter sharing one image
encoder)
on synthetic-world images at the preset's resolution with true captions, and reads the
training log's per-step rates after a few warm-up steps. Prints the device,
dtype (bf16 autocast on CUDA, float32 on CPU), preset, batch size, and the median and best
examples/second. Thread count: `--threads` (default: torch's).
"""

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation.config import TrainConfig
from curation.models import tiny
from curation.training import train  # noqa: E402
from curation.world.captions import true_captions
from curation.world.drawing import encode_jpeg, render_scene
from curation.world.scenes import sample_scenes


def make_pairs(n: int, side: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """`n` synthetic-world images of `side` px, each with one true caption."""
    rng = np.random.default_rng(seed)
    scenes = sample_scenes(rng, n, None, set())
    return [
        (
            encode_jpeg(render_scene(scene, side, side)),
            true_captions(scene, rng, 1)[0],
        )
        for scene in scenes
    ]


def measure(preset: str, batch_size: int, steps: int, warmup: int) -> dict:
    """Run `pretrain` for warmup + steps steps; examples/second of the steps after warm-up.

    The rate is the training log's (step time only: no data preparation, no saving).
    """
    cfg = TrainConfig(
        size=preset, batch_size=batch_size, epochs=1, log_every=1, checkpoint_every=10**9
    )
    pairs = make_pairs((warmup + steps) * batch_size, tiny.preset(preset).image_size)
    with tempfile.TemporaryDirectory() as out:
        log = train.pretrain(pairs, out, cfg)
    rates = [entry["examples_per_s"] for entry in log["jobs"]["pretrain"]["log"][warmup:]]
    return {
        "device": log["device"],
        "dtype": "bfloat16 autocast" if log["device"].startswith("cuda") else log["dtype"],
        "preset": preset,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "median_examples_per_s": statistics.median(rates),
        "best_examples_per_s": max(rates),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="tiny | small | base (small on CPU)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = args.preset or ("base" if torch.cuda.is_available() else "small")
    result = measure(preset, args.batch_size, args.steps, args.warmup)
    print(
        f"device {result['device']} dtype {result['dtype']} preset {result['preset']} "
        f"batch {result['batch_size']} threads {result['threads']}: "
        f"{result['median_examples_per_s']:.1f} examples/s median, "
        f"{result['best_examples_per_s']:.1f} best (ITC + ITM + LM, fwd + bwd + AdamW)"
    )


if __name__ == "__main__":
    main()
