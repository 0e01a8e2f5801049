"""Captioning throughput of the BLIP model families on a GPU, random weights (nothing downloaded).

Alone, it times BLIP-2 captioning as CapFilt runs it: `curation.models.captioners.
PromptedCaptioner.generate` (per-image sampling streams, K caption rows per image) at OPT-2.7B
sizes (Salesforce/blip2-opt-2.7b's architecture: ViT-g/14 at 224 px, Q-Former defaults,
OPT-2.7B), bf16, prompt "a photo of", nucleus sampling (top_p 0.9), a fixed number of new
tokens. Images are random pixel_values already on the device (preprocessing is small beside a
3.8 B-parameter model).

With `--check` it is what `bench/gpu_check.sh` runs (issue 14): three rows in one markdown table,

1. CapFilt, BLIP-large: `curation.pipeline.capfilt.capfilt_shard` (decode, preprocess,
   `Captioner.generate`, `Filter.score`, judging) on a RAW table of JPEGs, as
   `bench/capfilt_throughput.py` times it, against a naive per-batch Hugging Face pipeline at
   the same batch size, K, new tokens and dtype: decode and `BlipProcessor` inline, then
   `BlipForConditionalGeneration.generate(do_sample=True, num_return_sequences=K)`, then
   `BlipForImageTextRetrieval` once with the ITM head and once without (ITC) on every
   (image, text) pair, so the vision encoder runs again for each pair, as the model card does.
   Both use the same models (weights shared) and images; targets: >= 2x the naive pipeline and
   >= 225 images/s;
2. BLIP-2 captioning, as above;
3. BLIP-base pre-training examples/s (ITC + ITM + LM, bf16 autocast on CUDA), via
   `bench/train_throughput.py`'s `measure`.

Each measurement warms up first, then times a fixed amount of work; one that runs out of GPU
memory halves its batch and says so. `--dry-run` runs the same code on CPU with tiny configs.

    .venv/bin/python bench/gpu_check.py --batch-size 64   # BLIP-2 alone, GPU
    bash bench/gpu_check.sh [--dry-run]                   # the three rows
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import curation  # noqa: F401 -- first: sets OMP_WAIT_POLICY before torch loads

# isort: split
import psutil
import torch
import transformers
from PIL import Image
from transformers import (
    BertTokenizerFast,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipImageProcessorPil,
    BlipProcessor,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.config import CapFiltConfig  # noqa: E402
from curation.models import blip, captioners, tiny  # noqa: E402

BERT_VOCAB = 30_524  # BLIP's text vocabulary: bert-base-uncased's 30,522 + [DEC] + [ENC]
# Salesforce/blip2-opt-2.7b: ViT-g/14 (EVA-CLIP) at 224 px, OPT-2.7B; Q-Former defaults.
BLIP2_VISION = dict(
    hidden_size=1408,
    num_hidden_layers=39,
    num_attention_heads=16,
    intermediate_size=6144,
    patch_size=14,
    image_size=224,
)
OPT_2_7B = dict(
    hidden_size=2560,
    num_hidden_layers=32,
    num_attention_heads=32,
    ffn_dim=10240,
    word_embed_proj_dim=2560,
    vocab_size=50272,
)
TINY_BLIP2_VISION = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    patch_size=14,
    image_size=28,
)
TINY_QFORMER = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)
TINY_OPT = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    ffn_dim=64,
    word_embed_proj_dim=32,
    vocab_size=1200,  # the shipped tokenizer (1,130) and its "<image>"
    max_position_embeddings=128,
)


@dataclass(frozen=True)
class Plan:
    """Sizes and amounts of work of one check (GPU or dry run)."""

    dry_run: bool
    capfilt_size: str  # "large" (ViT-L/16 at 384 px, BERT-base text) or a tiny.PRESETS name
    capfilt_batch: int
    capfilt_batches: int  # timed batches per pass; each side's best of `passes` counts
    capfilt_workers: int  # the stage's decode/preprocess threads ([capfilt] num_workers)
    jpeg_side: int
    blip2_batch: int
    blip2_batches: int  # timed generate calls (fewer if `blip2_budget_s` runs out)
    train_preset: str
    train_batch: int
    train_steps: int
    train_warmup: int
    num_captions: int = 3
    new_tokens: int = 20
    passes: int = 2
    blip2_budget_s: float = 120.0


GPU_PLAN = Plan(
    dry_run=False,
    capfilt_size="large",
    capfilt_batch=128,
    capfilt_batches=8,
    capfilt_workers=min(8, max(1, (os.cpu_count() or 2) - 2)),
    jpeg_side=224,
    blip2_batch=64,
    blip2_batches=5,
    train_preset="base",
    train_batch=64,
    train_steps=15,
    train_warmup=3,
)
DRY_PLAN = Plan(
    dry_run=True,
    capfilt_size="tiny",
    capfilt_batch=4,
    capfilt_batches=2,
    capfilt_workers=1,
    jpeg_side=40,
    blip2_batch=2,
    blip2_batches=1,
    train_preset="tiny",
    train_batch=4,
    train_steps=2,
    train_warmup=1,
    new_tokens=3,
    passes=1,
)


@dataclass
class Row:
    """One line of the table."""

    what: str
    unit: str  # "images/s" or "examples/s"
    batch: int
    rate: float | None = None
    baseline: float | None = None  # the naive pipeline's rate, where there is one
    target: str = "none set"
    met: str = "-"
    note: str = ""


# --------------------------------------------------------------------------- helpers


def load_script(name: str):
    """Import bench/NAME.py as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def device_and_dtype(dry_run: bool) -> tuple[torch.device, torch.dtype]:
    return (torch.device("cpu"), torch.float32) if dry_run else blip.pick_device()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    """Drop the last part's models and cached blocks before the next part loads its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def halving(measure, batch: int) -> tuple[object, int, str]:
    """measure(batch), halving the batch after each CUDA out-of-memory; (result, batch, note)."""
    notes = []
    while True:
        try:
            return measure(batch), batch, "; ".join(notes)
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
        # Out of the except block: its traceback no longer holds the failed call's tensors.
        notes.append(f"OOM at batch {batch}, halved")
        free_memory()
        batch //= 2


def build(cls, config, device: torch.device, dtype: torch.dtype, seed: int):
    """`cls(config)` with random weights, built on `device` (a 3.8 B model on CPU takes
    minutes), then cast to `dtype`, in eval mode."""
    torch.manual_seed(seed)
    with device:
        model = cls(config)
    return model.to(dtype=dtype).eval()


# --------------------------------------------------------------------------- BLIP-large CapFilt


def bert_sized_tokenizer(out_dir: Path) -> BertTokenizerFast:
    """data/tokenizer with filler words ("zz0", "zz1", ...) up to BLIP's 30,524 tokens.

    The project's tokenizer has 1,130 tokens; BLIP-large's logits, repetition penalty, top-p
    sort and sampler noise run over 30,524, and every sampled id must decode to a word the
    filter reads back as one token, so that captions keep their length.
    """
    spec = json.loads((tiny.TOKENIZER_DIR / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    for i in range(BERT_VOCAB - len(vocab)):
        vocab[f"zz{i}"] = len(vocab)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(json.dumps(spec))
    config = (tiny.TOKENIZER_DIR / "tokenizer_config.json").read_text()
    (out_dir / "tokenizer_config.json").write_text(config)
    return BertTokenizerFast.from_pretrained(str(out_dir))


def capfilt_models(plan: Plan, workdir: Path, device, dtype) -> tuple:
    """(Captioner, Filter) with random weights: BLIP-large's architecture on a GPU run."""
    tokenizer = bert_sized_tokenizer(workdir / "tokenizer")
    if plan.capfilt_size == "large":
        text = dict(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.sep_token_id,
            sep_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        vision = load_script("capfilt_throughput").LARGE_VISION
        config = BlipConfig(vision_config=vision, text_config=text)
        side = vision["image_size"]
    else:
        config = tiny.config_for_tokenizer(plan.capfilt_size, tokenizer)
        side = tiny.preset(plan.capfilt_size).image_size
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": side, "width": side}),
        tokenizer=tokenizer,
    )
    captioner = build(BlipForConditionalGeneration, config, device, dtype, seed=0)
    filt = build(BlipForImageTextRetrieval, config, device, dtype, seed=1)
    return blip.Captioner(captioner, processor), blip.Filter(filt, processor)


def naive_batch(jpegs: list[bytes], web_texts: list[str], captioner, filt, cfg) -> list:
    """One batch through Hugging Face's documented calls, as a first pipeline would run it.

    Inline decode and preprocessing, `generate` with HF's sampler, then the retrieval model
    once per (image, text) pair for ITM and once more for ITC (its vision encoder each time).
    """
    processor, device, dtype = captioner.processor, captioner.device, captioner.dtype
    images = [Image.open(BytesIO(data)).convert("RGB") for data in jpegs]
    inputs = processor(images=images, text=[cfg.prompt] * len(images), return_tensors="pt")
    pixels = inputs["pixel_values"].to(device, dtype)
    with torch.inference_mode():
        sequences = captioner.model.generate(
            pixel_values=pixels,
            input_ids=inputs["input_ids"].to(device),
            do_sample=True,
            top_k=0,
            top_p=cfg.top_p,
            repetition_penalty=cfg.repetition_penalty,
            num_return_sequences=cfg.num_captions,
            min_new_tokens=cfg.min_new_tokens,
            max_new_tokens=cfg.max_new_tokens,
        )
        captions = [  # the prompt dropped, as BLIP's own code does (and the product)
            c.strip().removeprefix(cfg.prompt).strip()
            for c in processor.batch_decode(sequences, skip_special_tokens=True)
        ]
        k = cfg.num_captions
        texts = [[w, *captions[i * k : (i + 1) * k]] for i, w in enumerate(web_texts)]
        flat = [t for per_image in texts for t in per_image]
        pair_pixels = pixels.repeat_interleave(k + 1, dim=0)  # (B * (K + 1), 3, H, W)
        tokens = processor.tokenizer(
            flat, padding="longest", truncation=True, max_length=35, return_tensors="pt"
        )
        tokens = {name: tokens[name].to(device) for name in ("input_ids", "attention_mask")}
        itm = filt.model(pixel_values=pair_pixels, use_itm_head=True, **tokens).itm_score
        itc = filt.model(pixel_values=pair_pixels, use_itm_head=False, **tokens).itm_score
        scores = itm.float().softmax(-1)[:, 1].tolist(), itc.float().diagonal().tolist()
    return list(zip(flat, *scores, strict=True))


def naive_pass(jpegs: list[bytes], web_texts: list[str], captioner, filt, cfg) -> float:
    """Seconds for the naive pipeline over all images, `cfg.batch_size` at a time."""
    sync(captioner.device)
    start = time.perf_counter()
    for i in range(0, len(jpegs), cfg.batch_size):
        end = i + cfg.batch_size
        naive_batch(jpegs[i:end], web_texts[i:end], captioner, filt, cfg)
    sync(captioner.device)
    return time.perf_counter() - start


def capfilt_rates(plan: Plan, batch: int, workdir: Path) -> tuple[float, float]:
    """(product images/s, naive images/s): best of `plan.passes` passes each, same images."""
    bench = load_script("capfilt_throughput")
    device, dtype = device_and_dtype(plan.dry_run)
    captioner, filt = capfilt_models(plan, workdir, device, dtype)
    cfg = CapFiltConfig(
        num_captions=plan.num_captions,
        batch_size=batch,
        num_workers=plan.capfilt_workers,
        min_new_tokens=plan.new_tokens,  # min = max: both sides decode the same tokens
        max_new_tokens=plan.new_tokens,
    )
    jpegs = bench.make_jpegs(batch * (plan.capfilt_batches + 1), plan.jpeg_side)
    warm, timed = bench.raw_table(jpegs[:batch]), bench.raw_table(jpegs[batch:])
    bench.run_stage(warm, captioner, filt, cfg)  # warm-up, not timed
    naive_pass(jpegs[:batch], warm["web_text"].to_pylist(), captioner, filt, cfg)
    raw, timed, texts = timed, jpegs[batch:], timed["web_text"].to_pylist()
    product = min(bench.run_stage(raw, captioner, filt, cfg)[0] for _ in range(plan.passes))
    naive = min(naive_pass(timed, texts, captioner, filt, cfg) for _ in range(plan.passes))
    return len(timed) / product, len(timed) / naive


def capfilt_row(plan: Plan, workdir: Path) -> Row:
    name = "BLIP-large" if plan.capfilt_size == "large" else f"BLIP-{plan.capfilt_size}"
    row = Row(
        f"CapFilt, {name} (K = {plan.num_captions}, {plan.new_tokens} new tokens): "
        f"capfilt_shard vs naive HF pipeline",
        "images/s",
        plan.capfilt_batch,
        target=">= 2x naive, >= 225 images/s",
    )
    rates, row.batch, row.note = halving(
        lambda b: capfilt_rates(plan, b, workdir), plan.capfilt_batch
    )
    row.rate, row.baseline = rates
    row.met = "yes" if row.rate >= 2 * row.baseline and row.rate >= 225 else "no"
    row.note = "; ".join(filter(None, [f"decode threads {plan.capfilt_workers}", row.note]))
    return row


# --------------------------------------------------------------------------- BLIP-2


def blip2_config(dry_run: bool, image_token: int) -> Blip2Config:
    """blip2-opt-2.7b's architecture (or a tiny one of the same shape for the dry run), its
    image placeholder at `image_token`."""
    if dry_run:
        text = dict(TINY_OPT, model_type="opt")
        return Blip2Config(
            vision_config=TINY_BLIP2_VISION,
            qformer_config=TINY_QFORMER,
            text_config=text,
            num_query_tokens=4,
            image_token_index=image_token,
        )
    return Blip2Config(
        vision_config=BLIP2_VISION,
        text_config=dict(OPT_2_7B, model_type="opt"),
        image_token_index=image_token,
    )


def blip2_captioner(dry_run: bool) -> captioners.PromptedCaptioner:
    """A random BLIP-2 as CapFilt's captioner, with the shipped tokenizer (ids it lacks decode
    to nothing: the timing is the model's)."""
    device, dtype = device_and_dtype(dry_run)
    tokenizer, image_token = tiny.tokenizer_with_image_token(tiny.TOKENIZER_DIR)
    config = blip2_config(dry_run, image_token)
    model = build(Blip2ForConditionalGeneration, config, device, dtype, seed=2)
    side = config.vision_config.image_size
    image_processor = BlipImageProcessorPil(size={"height": side, "width": side})
    processor = Blip2Processor(image_processor, tokenizer, config.num_query_tokens)
    return captioners.PromptedCaptioner(model=model, processor=processor, family="blip-2")


def blip2_rate(dry_run: bool, batch: int, batches: int, plan: Plan) -> float:
    """Images/s of `generate` over up to `batches` timed calls of `batch` images (warm-up first;
    fewer calls when `plan.blip2_budget_s` runs out, at least one)."""
    captioner = blip2_captioner(dry_run)
    side = captioner.model.config.vision_config.image_size
    pixels = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0))
    pixels = captioner.to_device(pixels)
    sampling = CapFiltConfig(
        num_captions=plan.num_captions,
        prompt="a photo of",
        min_new_tokens=plan.new_tokens,
        max_new_tokens=plan.new_tokens,
    ).sampling()
    seeds = list(range(batch))
    captioner.generate(pixels, sampling, seeds)  # warm-up, not timed
    sync(captioner.device)
    start, done = time.perf_counter(), 0
    while done < batches and (not done or time.perf_counter() - start < plan.blip2_budget_s):
        captioner.generate(pixels, sampling, seeds)
        sync(captioner.device)
        done += 1
    return batch * done / (time.perf_counter() - start)


def blip2_row(plan: Plan) -> Row:
    name = "BLIP-2 (tiny OPT)" if plan.dry_run else "BLIP-2 OPT-2.7B"
    row = Row(
        f"{name} captioning (K = {plan.num_captions}, {plan.new_tokens} new tokens, top_p 0.9): "
        "PromptedCaptioner.generate",
        "images/s",
        plan.blip2_batch,
    )
    row.rate, row.batch, row.note = halving(
        lambda b: blip2_rate(plan.dry_run, b, plan.blip2_batches, plan), plan.blip2_batch
    )
    return row


# --------------------------------------------------------------------------- training


def train_row(plan: Plan) -> Row:
    name = "BLIP-base" if plan.train_preset == "base" else f"BLIP-{plan.train_preset}"
    row = Row(f"{name} pre-training (ITC + ITM + LM, fwd + bwd + AdamW)", "examples/s", 0)
    measure = load_script("train_throughput").measure
    result, row.batch, row.note = halving(
        lambda b: measure(plan.train_preset, b, plan.train_steps, plan.train_warmup),
        plan.train_batch,
    )
    row.rate = result["median_examples_per_s"]
    row.what += f", {result['dtype']}"
    return row


# --------------------------------------------------------------------------- report


def attempt(make_row, fallback: Row) -> Row:
    """The row, or `fallback` saying why it failed (one failed part leaves the others' numbers);
    its note ends with the part's wall time, models' building and inputs included."""
    start = time.perf_counter()
    try:
        row = make_row()
    except Exception as err:  # reported in the table; the other parts still run
        row = fallback
        row.note = f"FAILED: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        row.met = "no"
    free_memory()
    row.note = "; ".join(filter(None, [row.note, f"part took {time.perf_counter() - start:.0f} s"]))
    return row


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(rows: list[Row], plan: Plan, seconds: float) -> str:
    """The report: setting lines, then one markdown table."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)"
    _, dtype = device_and_dtype(plan.dry_run)
    lines = [
        "**dry run: CPU, tiny configs, numbers meaningless**\n" if plan.dry_run else "",
        f"GPU {gpu}; torch {torch.__version__}; transformers {transformers.__version__}; "
        f"dtype {str(dtype).removeprefix('torch.')}; random weights; "
        f"total wall time {seconds:.0f} s\n",
        "| what | batch | rate | naive baseline | ratio | target | met | note |",
        "|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r.rate / r.baseline:.2f}x" if r.rate and r.baseline else "-"
        lines.append(
            f"| {r.what} | {r.batch} | {fmt(r.rate)} {r.unit} | {fmt(r.baseline)} | {ratio} "
            f"| {r.target} | {r.met} | {r.note} |"
        )
    return "\n".join(line for line in lines if line)


def check(plan: Plan, workdir: Path) -> int:
    """Run the three measurements and print the table; 1 when a part failed."""
    rows = [
        attempt(lambda: capfilt_row(plan, workdir), Row("CapFilt", "images/s", 0)),
        attempt(lambda: blip2_row(plan), Row("BLIP-2 captioning", "images/s", 0)),
        attempt(lambda: train_row(plan), Row("BLIP pre-training", "examples/s", 0)),
    ]
    started = psutil.Process().create_time()  # wall time includes Python's start and imports
    print(table(rows, plan, time.time() - started))
    return 1 if any(r.note.startswith("FAILED") for r in rows) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="all three rows (bench/gpu_check.sh)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny configs: that it works")
    p.add_argument("--batch-size", type=int, help="BLIP-2 alone: images per generate call")
    p.add_argument("--batches", type=int, default=5, help="BLIP-2 alone: timed calls")
    p.add_argument("--workdir", type=Path, help="tokenizer files (default: a temporary folder)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "no CUDA device: this measures a GPU (use --dry-run to check it on CPU)",
            file=sys.stderr,
        )
        return 2
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    if not args.check:
        batch = args.batch_size or plan.blip2_batch
        rate = blip2_rate(plan.dry_run, batch, args.batches, plan)
        print(f"BLIP-2 captioning: {rate:.1f} images/s at batch {batch}")
        return 0
    if args.workdir:
        return check(plan, args.workdir)
    with tempfile.TemporaryDirectory() as workdir:
        return check(plan, Path(workdir))


if __name__ == "__main__":
    sys.exit(main())
