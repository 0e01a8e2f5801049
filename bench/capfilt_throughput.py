"""Throughput of the CapFilt stage, and how much of it the models get (its efficiency).

Two timings over the same images, batch size and number of captions, in the same process:

- whole stage: `curation.pipeline.capfilt.capfilt_shard` on a RAW table of JPEG bytes, i.e. decode,
  preprocess, caption generation, ITM/ITC scoring and judging, as a run does it;
- models only: the same model calls (`capfilt._score_batch`, which the stage itself times as
  `model_seconds`) on batches decoded and preprocessed beforehand and already on the device.

efficiency = models-only time / whole-stage time. 1.0 means decoding and preprocessing are fully
hidden behind the models; the target is >= 0.85. Both passes draw the same captions (the
sampling seed depends on the batch's samples only), so they do the same model work; the script
checks that their outputs agree. A warm-up pass over one batch runs before any timing.

Images are JPEGs of synthetic scenes with photo-like noise (so decoding is real work), drawn
here: the script needs no data beside the project. Models are random-weight BLIP checkpoints
from `curation.models.tiny.save_blip_checkpoints`, or, with `--size large`, BLIP-large's
architecture (ViT-L/16 at 384 px, BERT-base text) built from `BlipConfig` (written only when asked).

    .venv/bin/python bench/capfilt_throughput.py                         # small, CPU
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/capfilt_throughput.py   # busy shared CPU

On a CPU shared with other work, torch's OpenMP threads spin-wait at every barrier by default
(libgomp spins before it sleeps); a thread that gets descheduled holds up every op, so both
passes run many times slower and erratically, the stage (which adds a decode thread) the worst.
OMP_WAIT_POLICY=PASSIVE in the environment, or `--torch-threads 1`, keeps them stable.

`--sampler` times the caption sampler alone instead (no models, no images): seconds per
decoding step of `PerRowSampler` (top-p, counter-based Gumbel noise) against the per-row torch
generators it replaced (a private copy here), at 8, 64 and 512 rows of BERT's 30,522-token
vocabulary, printed as a markdown table:

    .venv/bin/python bench/capfilt_throughput.py --sampler
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import pstats
import statistics
import sys
import time
from functools import partial
from io import BytesIO
from pathlib import Path

import curation  # noqa: F401 -- first: sets OMP_WAIT_POLICY before torch loads

# isort: split
import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from transformers import LogitsProcessor, TopPLogitsWarper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation import schema  # noqa: E402
from curation.config import CapFiltConfig  # noqa: E402
from curation.models import blip as models
from curation.models import tiny  # noqa: E402
from curation.pipeline import capfilt
from curation.world.drawing import render_scene
from curation.world.scenes import Scene, sample_scenes

SIZES = (*tiny.PRESETS, "large")
# BLIP-large's vision tower (Salesforce/blip-image-captioning-large, blip-itm-large-coco):
# ViT-L/16 at 384 px. Its text side is BlipTextConfig's default BERT-base.
LARGE_VISION = dict(
    image_size=384,
    patch_size=16,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=SIZES, default="small", help="model architecture")
    p.add_argument("--images", type=int, default=256, help="images per timed pass")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-captions", type=int, default=3, help="K synthetic captions per image")
    p.add_argument("--num-workers", type=int, default=1, help="decode/preprocess threads")
    p.add_argument("--prefetch-batches", type=int, default=4)
    p.add_argument("--min-new-tokens", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--image-side", type=int, default=224, help="side of the JPEGs, in pixels")
    p.add_argument("--repeat", type=int, default=3, help="timed (stage, models) pairs")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/capfilt_bench"), help="checkpoints")
    p.add_argument("--torch-threads", type=int, default=0, help="intra-op threads (0: torch's)")
    p.add_argument("--profile", type=Path, help="write a cProfile of one stage pass here")
    p.add_argument("--sampler", action="store_true", help="time the caption sampler alone")
    p.add_argument("--sampler-rows", default="8,64,512", help="comma-separated batch rows")
    p.add_argument("--vocab", type=int, default=30_522, help="--sampler: BERT's vocabulary")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- inputs


def photo_like(scene: Scene, side: int, rng: np.random.Generator) -> Image.Image:
    """A rendered scene with a smooth shading and sensor-like noise.

    Flat synthetic shapes compress to a few hundred bytes and decode in no time; the noise
    brings JPEG size and decode cost near a real 224 px web photo (CC3M's are ~10-20 kB).
    """
    pixels = np.asarray(render_scene(scene, side, side), dtype=np.float32)
    ramp = np.linspace(-25, 25, side, dtype=np.float32)
    pixels = pixels + ramp[None, :, None] + rng.normal(0, 12, pixels.shape).astype(np.float32)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def make_jpegs(n: int, side: int, seed: int = 0) -> list[bytes]:
    """`n` distinct JPEG images (quality 90) of `side` x `side` pixels."""
    rng = np.random.default_rng(seed)
    scenes = sample_scenes(rng, n, None, set())
    out = []
    for scene in scenes:
        buffer = BytesIO()
        photo_like(scene, side, rng).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def raw_table(jpegs: list[bytes]) -> pa.Table:
    """A downloaded shard (`schema.RAW`) where every URL succeeded, with a web text each."""
    n = len(jpegs)
    return pa.table(
        {
            "sample_id": pa.array(range(n), pa.int64()),
            "url": [f"http://bench.invalid/{i}.jpg" for i in range(n)],
            "web_text": [f"a photo of thing number {i}" for i in range(n)],
            "status": ["success"] * n,
            "error": pa.nulls(n, pa.string()),
            "image": pa.array(jpegs, pa.binary()),
        },
        schema=schema.RAW,
    )


# --------------------------------------------------------------------------- models


def save_large_checkpoints(out_dir: Path) -> tuple[Path, Path]:
    """BLIP-large captioner and filter with random weights, in save_pretrained format.

    `curation.models.tiny` has no large preset; this builds it from BlipConfig's defaults with the
    vision tower set to ViT-L/16 at 384 px and the text side fitted to data/tokenizer.
    """
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipForImageTextRetrieval,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    tokenizer = tiny.load_tokenizer()
    text = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.sep_token_id,
        sep_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = BlipConfig(vision_config=LARGE_VISION, text_config=text)
    side = LARGE_VISION["image_size"]
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": side, "width": side}),
        tokenizer=tokenizer,
    )
    paths = (out_dir / "captioner", out_dir / "filter")
    for seed, cls, path in zip(
        (0, 1), (BlipForConditionalGeneration, BlipForImageTextRetrieval), paths, strict=True
    ):
        torch.manual_seed(seed)
        cls(config).eval().save_pretrained(path)
        processor.save_pretrained(path)
    return paths


def checkpoints(size: str, workdir: Path) -> tuple[Path, Path]:
    """Captioner and filter folders for `size`, written once under `workdir/size`."""
    out = workdir / size
    paths = (out / "captioner", out / "filter")
    if all((p / "config.json").is_file() for p in paths):
        return paths
    if size == "large":
        return save_large_checkpoints(out)
    return tiny.save_blip_checkpoints(out, size=size)


def load_models(size: str, workdir: Path):
    """(captioner, filter) on the device and dtype the pipeline picks for itself."""
    device, dtype = models.pick_device()
    cap_dir, filt_dir = checkpoints(size, workdir)
    return models.load_captioner(str(cap_dir), device, dtype), models.load_filter(
        str(filt_dir), device, dtype
    )


# --------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer stops when the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_stage(raw: pa.Table, captioner, filt, cfg: CapFiltConfig) -> tuple[float, dict]:
    """Seconds for `capfilt_shard` on `raw`, and its candidates per sample_id."""
    sync(captioner.device)
    start = time.perf_counter()
    result = capfilt.capfilt_shard(raw, captioner, filt, cfg, shard=0)
    sync(captioner.device)
    seconds = time.perf_counter() - start
    lost = [r["reason"] for r in result.rejects if r["reason"] != "no_matching_text"]
    if lost:  # every bench image must reach the models, or the two passes differ in work
        raise RuntimeError(f"{len(lost)} bench images did not reach the models: {set(lost)}")
    rows = result.curated + result.rejects
    return seconds, {r["sample_id"]: r["candidates"] for r in rows}


def preload(raw: pa.Table, captioner, filt, cfg: CapFiltConfig) -> list[tuple]:
    """The stage's batches, decoded, preprocessed and moved to the device beforehand.

    Same batching as `capfilt_shard` (consecutive `batch_size` slices), so same sampling seeds.
    """
    rows = raw.to_pylist()
    inline = CapFiltConfig(**{**vars(cfg), "num_workers": 0})
    out = []
    for batch in capfilt.batches([r["image"] for r in rows], captioner, filt, inline):
        shared = batch.captioner_pixels is batch.filter_pixels
        batch.captioner_pixels = captioner.to_device(batch.captioner_pixels)
        batch.filter_pixels = (
            batch.captioner_pixels if shared else filt.to_device(batch.filter_pixels)
        )
        picked = [rows[i] for i in batch.rows]
        out.append((batch, [r["web_text"] for r in picked], [r["sample_id"] for r in picked]))
    sync(captioner.device)
    return out


def run_models(preloaded: list[tuple], captioner, filt, cfg: CapFiltConfig) -> tuple[float, dict]:
    """Seconds for the model calls alone on preloaded batches, and candidates per sample_id."""
    sync(captioner.device)
    start = time.perf_counter()
    scored = [
        capfilt._score_batch(batch, texts, captioner, filt, cfg, ids)
        for batch, texts, ids in preloaded
    ]
    sync(captioner.device)
    seconds = time.perf_counter() - start
    ids = [i for _, _, batch_ids in preloaded for i in batch_ids]
    return seconds, dict(zip(ids, [c for per_batch in scored for c in per_batch], strict=True))


def same_outputs(stage: dict, alone: dict, tolerance: float = 1e-3) -> bool:
    """Both passes wrote the same texts with the same ITM probabilities (within tolerance)."""
    if stage.keys() != alone.keys():
        return False
    for sample_id, cands in stage.items():
        other = alone[sample_id]
        if [c["text"] for c in cands] != [c["text"] for c in other]:
            return False
        if any(abs(a["itm"] - b["itm"]) > tolerance for a, b in zip(cands, other, strict=True)):
            return False
    return True


def timed_pairs(raw, preloaded, captioner, filt, cfg, repeat: int) -> tuple[list, bool]:
    """`repeat` (stage seconds, models-only seconds) pairs and whether all outputs agreed.

    Which pass goes first alternates: load drifts on a shared machine.
    """
    pairs, match = [], True
    for i in range(repeat):
        if i % 2:
            alone, alone_out = run_models(preloaded, captioner, filt, cfg)
            stage, stage_out = run_stage(raw, captioner, filt, cfg)
        else:
            stage, stage_out = run_stage(raw, captioner, filt, cfg)
            alone, alone_out = run_models(preloaded, captioner, filt, cfg)
        pairs.append((stage, alone))
        match = match and same_outputs(stage_out, alone_out)
    return pairs, match


def profile_stage(raw: pa.Table, captioner, filt, cfg: CapFiltConfig, path: Path) -> None:
    """cProfile one stage pass (main thread only) into `path`; print the top entries."""
    profiler = cProfile.Profile()
    profiler.runcall(capfilt.capfilt_shard, raw, captioner, filt, cfg, 0)
    profiler.dump_stats(path)
    pstats.Stats(str(path)).sort_stats("cumulative").print_stats(25)


# --------------------------------------------------------------------------- report


def stage_config(args: argparse.Namespace) -> CapFiltConfig:
    """The CapFilt settings under test; every other field keeps the pipeline's default."""
    return CapFiltConfig(
        num_captions=args.num_captions,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        prefetch_batches=args.prefetch_batches,
        min_new_tokens=args.min_new_tokens,
        max_new_tokens=args.max_new_tokens,
    )


def load_avg() -> str:
    """The 1/5/15-minute load averages: how busy the (shared) machine was."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def describe(args, captioner, jpegs: list[bytes]) -> None:
    """The setting: device, dtype, preset, sizes, threads, machine load."""
    params = sum(p.numel() for p in captioner.model.parameters()) / 1e6
    kbytes = sum(map(len, jpegs)) / len(jpegs) / 1024
    tokens = f"{args.min_new_tokens}-{args.max_new_tokens}"
    print(
        f"device {captioner.device}  dtype {captioner.dtype}  preset {args.size}  "
        f"params/model {params:.1f} M"
    )
    print(
        f"batch {args.batch_size}  K {args.num_captions}  new tokens {tokens}  "
        f"images {len(jpegs)} ({args.image_side}px JPEG, mean {kbytes:.1f} kB)"
    )
    print(
        f"decode workers {args.num_workers}  torch threads {torch.get_num_threads()}  "
        f"cpus {os.cpu_count()}  load avg {load_avg()}"
    )


def report(pairs: list[tuple[float, float]], n: int, outputs_match: bool) -> float:
    """Print each timed pair and the summaries; return the headline (best-of-N) efficiency.

    The headline compares the fastest pass of each kind: on a shared machine other processes
    only ever add time, so the minimum is the best estimate of what the code itself costs
    (timeit's rule). The all-passes ratio and the median of per-pass ratios show the noise.
    """
    for i, (stage, alone) in enumerate(pairs):
        print(
            f"  pass {i}: stage {stage:7.2f} s ({n / stage:7.1f} img/s)   "
            f"models only {alone:7.2f} s ({n / alone:7.1f} img/s)   "
            f"efficiency {alone / stage:.3f}"
        )
    stage = min(s for s, _ in pairs)
    alone = min(a for _, a in pairs)
    efficiency = alone / stage
    total = sum(a for _, a in pairs) / sum(s for s, _ in pairs)
    median = statistics.median(a / s for s, a in pairs)
    print(f"whole stage  {n / stage:8.1f} img/s  (best of {len(pairs)})")
    print(f"models only  {n / alone:8.1f} img/s  (best of {len(pairs)})")
    print(
        f"efficiency   {efficiency:8.3f}  (target >= 0.85; all passes {total:.3f}, "
        f"median of pass ratios {median:.3f})"
    )
    print(f"outputs identical in both passes: {outputs_match}")
    return efficiency


# --------------------------------------------------------------------------- sampler


class OldPerRowSampler(LogitsProcessor):
    """The sampler before issue 14, kept for comparison: one torch generator per row and one
    `torch.rand(vocab)` per row and step (a Python loop of ~3 kernels per row)."""

    def __init__(self, keys: list[tuple[int, int]], top_p: float, device="cpu"):
        self.top_p = TopPLogitsWarper(top_p=top_p) if top_p < 1.0 else None
        self.generators = [
            torch.Generator(device).manual_seed(_old_row_seed(seed, k)) for seed, k in keys
        ]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        return scores.float() + self.noise(input_ids.shape[1], scores.shape[1])

    def noise(self, step: int, vocab: int) -> torch.Tensor:
        """Gumbel noise, one generator draw per row (the generators keep the step). (rows, V)"""
        device = self.generators[0].device
        noise = torch.stack(
            [torch.rand(vocab, generator=g, device=device) for g in self.generators]
        )
        return -torch.log(-torch.log(noise.clamp_min(1e-20)))


def _old_row_seed(seed: int, caption_index: int) -> int:
    digest = hashlib.blake2b(repr((seed, caption_index)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def best_seconds(call, repeat: int) -> float:
    """Fastest of `repeat` timed calls, after one untimed warm-up (timeit's rule, as `report`)."""
    call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def time_sampler(cls, rows: int, vocab: int, repeat: int) -> tuple[float, float]:
    """Seconds of one decoding step of sampler `cls` on (rows, vocab) scores at top_p 0.9, and
    of its Gumbel noise alone (the step also pays HF's top-p, the same in both: a sort)."""
    sampler = cls([(i // 3, i % 3) for i in range(rows)], top_p=0.9)  # 3 captions per image
    scores = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(rows)) * 4
    input_ids = torch.zeros(rows, 6, dtype=torch.long)  # the step: 6 tokens so far
    if isinstance(sampler, OldPerRowSampler):
        noise = partial(sampler.noise, 6, vocab)
    else:
        noise = partial(models.gumbel_noise, sampler.row_keys, 6, vocab)
    step = best_seconds(lambda: sampler(input_ids, scores.clone()), repeat)
    return step, best_seconds(noise, repeat)


def sampler_main(args: argparse.Namespace) -> None:
    """Print the per-step time of the old and new samplers side by side, one row per batch."""
    print(f"device cpu  vocab {args.vocab}  top_p 0.9  best of {args.repeat}  ", end="")
    print(f"torch threads {torch.get_num_threads()}  load avg {load_avg()}\n")
    print(
        "| rows | step: per-row generators (s) | step: counter-based (s) | old / new "
        "| noise only: old (s) | noise only: new (s) | old / new |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for rows in (int(r) for r in args.sampler_rows.split(",")):
        old, old_noise = time_sampler(OldPerRowSampler, rows, args.vocab, args.repeat)
        new, new_noise = time_sampler(models.PerRowSampler, rows, args.vocab, args.repeat)
        print(
            f"| {rows} | {old:.4f} | {new:.4f} | {old / new:.2f} "
            f"| {old_noise:.4f} | {new_noise:.4f} | {old_noise / new_noise:.2f} |"
        )
    print(f"\nload avg after {load_avg()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.sampler:
        sampler_main(args)
        return 0
    cfg = stage_config(args)
    captioner, filt = load_models(args.size, args.workdir)
    jpegs = make_jpegs(args.images, args.image_side)
    raw = raw_table(jpegs)
    describe(args, captioner, jpegs)
    warm = raw.slice(0, args.batch_size)  # warm-up, not timed: allocator, kernels, caches
    run_stage(warm, captioner, filt, cfg)
    run_models(preload(warm, captioner, filt, cfg), captioner, filt, cfg)
    if args.profile:
        profile_stage(raw, captioner, filt, cfg, args.profile)
    preloaded = preload(raw, captioner, filt, cfg)
    pairs, match = timed_pairs(raw, preloaded, captioner, filt, cfg, args.repeat)
    report(pairs, len(jpegs), match)
    print(f"load avg after {load_avg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
