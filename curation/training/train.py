"""BLIP pre-training and CapFilt fine-tuning (Li et al. 2022, arXiv 2201.12086).

BLIP's bootstrapping loop is: pre-train on noisy web pairs -> fine-tune a captioner and a filter
on a small clean set -> CapFilt the web -> pre-train a new model on the bootstrapped set. This
module does the two training steps; `curation.pipeline.capfilt` does the middle one.

- `pretrain` (sec. 3.1-3.2): three objectives, one image encoder shared by all of them:
  ITC (unimodal image and text encoders, contrastive in both directions), ITM (image-grounded
  text encoder + a binary head, with hard negatives mined from the ITC similarities) and LM
  (image-grounded text decoder, cross-entropy with label smoothing 0.1). The filter
  (`BlipForImageTextRetrieval`: ITC + ITM) and the captioner (`BlipForConditionalGeneration`:
  LM) hold the very same vision module object while training.
- `finetune` (sec. 3.3): captioner (LM only) and filter (ITC + ITM) initialised from the same
  pre-trained model and fine-tuned separately on the clean set, nothing shared.

Simplifications at this scale, all documented departures from the paper: no momentum encoder,
no distillation and no feature queue (sec. 3.2 inherits them from ALBEF; the plain in-batch
loss learns fine on the synthetic world); the text encoder and decoder are two separate models
(BLIP shares all but the self-attention layers); the ITM pass reads [CLS], not [ENC], because
`curation.models.blip.Filter.score` (and Hugging Face's `BlipForImageTextRetrieval`) do so. Texts of
the same image are treated as positives of each other (BLIP's retrieval fine-tuning, `idx`).

Outputs in OUT_DIR: `captioner/`, `filter/` (save_pretrained safetensors + BlipProcessor, read
as-is by `curation.models.blip.load_captioner` / `load_filter`), `scorer/` (the filter's weights
again: a DFN-style scorer (Fang et al. 2023, arXiv 2309.17425) uses its unimodal ITC cosine,
i.e. `BlipForImageTextRetrieval(..., use_itm_head=False)`, never the ITM head) and
`train_log.json` (losses per logged step and objective, examples/s), written last: it is the
completion marker. Resumable checkpoints (weights, optimizer, step, RNG) go to
`checkpoints/<job>/step_NNNNNN/`, written under a temporary name and renamed.

The pieces live beside it: `data` (pairs, pixels, tokens, batches), `modeling` (models,
temperature, jobs), `losses`, `schedule` and `checkpoints` (checkpoints, saved models, the
fingerprint).
"""

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from curation.config import ConfigError, TrainConfig
from curation.io import write_json
from curation.models import tiny
from curation.models.blip import Filter, pick_device
from curation.pipeline import calibration
from curation.training.checkpoints import TrainDirError as TrainDirError  # re-exported
from curation.training.checkpoints import (
    finished_log,
    load_checkpoint,
    save_checkpoint,
    save_model,
    training_fingerprint,
)
from curation.training.data import (
    PairData,
    Tokens,
    add_web_negatives,
    make_batch,
    pairs_digest,
    prepare_pairs,
    tokenize_pairs,
)
from curation.training.holdout import held_out_scores, split_holdout
from curation.training.losses import OBJECTIVES, compute_losses
from curation.training.modeling import Job, Temperature, build_models
from curation.training.schedule import batch_indices, lr_at, steps_per_epoch

# --------------------------------------------------------------------------- loop


@dataclass
class _Context:
    """What every job of one `pretrain` / `finetune` call shares."""

    data: PairData
    tokens: Tokens
    cfg: TrainConfig
    out: Path
    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    on_step: Callable[[str, int, dict[str, float]], None] | None = None
    pixels: torch.Tensor = field(init=False)  # (I, 3, H, W) on device
    lengths: torch.Tensor = field(init=False)  # (N,) decoder tokens per pair, for bucketing

    def __post_init__(self) -> None:
        self.pixels = self.data.pixels.to(self.device)  # small images: the whole cache fits
        self.lengths = self.tokens.lm_mask.sum(dim=1)


def _step(job, batch, optimizer, lr, ctx: _Context, generator) -> dict[str, float]:
    """One AdamW step on the sum of the job's losses; bf16 autocast on CUDA."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    autocast = ctx.device.type == "cuda" and ctx.dtype == torch.bfloat16
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=autocast):
        losses = compute_losses(job, batch, ctx.cfg, generator)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()
    return {name: loss.item() for name, loss in losses.items()}


def _new_acc() -> dict:
    return {"steps": 0, "examples": 0, "seconds": 0.0, "loss": {}}


def _log_entry(step: int, total: int, lr: float, acc: dict) -> dict:
    """Mean loss per objective over the steps since the last entry, and their speed."""
    losses = {name: value / acc["steps"] for name, value in acc["loss"].items()}
    rate = acc["examples"] / acc["seconds"] if acc["seconds"] > 0 else 0.0
    return {"step": step, "of": total, "lr": lr, **losses, "examples_per_s": rate}


def _progress_line(job: Job, entry: dict, epoch: int) -> str:
    losses = " ".join(f"{k} {entry[k]:.3f}" for k in OBJECTIVES if k in entry)
    return (
        f"[train {job.name}] step {entry['step']}/{entry['of']} epoch {epoch}/{job.epochs} "
        f"{losses} lr {entry['lr']:.1e} {entry['examples_per_s']:.0f} ex/s"
    )


def _accumulate(acc: dict, losses: dict[str, float], examples: int, seconds: float) -> None:
    acc["steps"] += 1
    acc["examples"] += examples
    acc["seconds"] += seconds
    for name, value in losses.items():
        acc["loss"][name] = acc["loss"].get(name, 0.0) + value


def run_job(job: Job, ctx: _Context) -> dict:
    """Train `job` to its last step, resuming from its latest checkpoint; its log."""
    cfg, n = ctx.cfg, len(ctx.data.texts)
    total = steps_per_epoch(n, cfg.batch_size) * job.epochs
    for module in job.modules().values():
        module.to(ctx.device).train()
    optimizer = torch.optim.AdamW(job.parameters(), lr=job.lr, weight_decay=cfg.weight_decay)
    root = ctx.out / "checkpoints" / job.name
    for partial in root.glob(".step_*.tmp-*"):  # a killed run's half-written checkpoint
        shutil.rmtree(partial, ignore_errors=True)
    progress = load_checkpoint(root, job, optimizer, ctx.fingerprint)
    progress = progress or {"step": 0, "log": [], "acc": _new_acc()}
    started, trained = time.perf_counter(), 0
    while progress["step"] < total:
        step, tick = progress["step"], time.perf_counter()
        index = batch_indices(ctx.lengths, cfg.batch_size, cfg.seed, step)
        batch = make_batch(ctx.pixels, ctx.data, ctx.tokens, index, ctx.device)
        generator = torch.Generator(ctx.device).manual_seed(cfg.seed * 1_000_003 + step)
        if ctx.tokens.web_ids is not None and "itm" in job.objectives:
            add_web_negatives(batch, ctx.tokens, cfg.web_negatives, generator)
        lr = lr_at(step, total, job.lr, cfg.warmup)
        losses = _step(job, batch, optimizer, lr, ctx, generator)
        _accumulate(progress["acc"], losses, len(index), time.perf_counter() - tick)
        progress["step"], trained = step + 1, trained + len(index)
        _after_step(job, ctx, optimizer, progress, total, lr, losses)
    seconds = time.perf_counter() - started
    return {
        "steps": total,
        "epochs": job.epochs,
        "objectives": list(job.objectives),
        "examples_this_process": trained,
        "seconds_this_process": seconds,
        "examples_per_s": trained / seconds if trained else 0.0,
        "log": progress["log"],
    }


def _after_step(job, ctx: _Context, optimizer, progress: dict, total: int, lr, losses) -> None:
    """Log, checkpoint and call back after a step, in that order (a checkpoint holds its log)."""
    step, cfg = progress["step"], ctx.cfg
    if step % cfg.log_every == 0 or step == total:
        entry = _log_entry(step, total, lr, progress["acc"])
        if "itc" in job.objectives:
            entry["temperature"] = job.temperature.value.item()
            if cfg.contrastive_loss == "sigmoid":
                entry["bias"] = job.temperature.bias.item()
        progress["log"].append(entry)
        progress["acc"] = _new_acc()
        epoch = -(-step // steps_per_epoch(len(ctx.data.texts), cfg.batch_size))
        print(_progress_line(job, entry, epoch), file=sys.stderr, flush=True)
    if step % cfg.checkpoint_every == 0 or step == total:
        save_checkpoint(
            ctx.out / "checkpoints" / job.name, job, optimizer, progress, ctx.fingerprint
        )
    if ctx.on_step is not None:
        ctx.on_step(job.name, step, losses)


# --------------------------------------------------------------------------- outputs


def _write_outputs(ctx: _Context, captioner, filt, processor, log: dict, scores=None) -> dict:
    """captioner/, filter/ (with calibration.json when held-out `scores` are given), scorer/
    (the filter: DFN scoring reads its ITC cosine), then train_log.json last: its presence
    marks the training finished."""
    for name, model in (("captioner", captioner), ("filter", filt), ("scorer", filt)):
        save_model(model, processor, ctx.out / name)
        log["outputs"][name] = str(ctx.out / name)
    if scores is not None:
        calibration.write(ctx.out / "filter", *scores)
    write_json(log, ctx.out / "train_log.json")
    if not ctx.cfg.keep_checkpoints:
        shutil.rmtree(ctx.out / "checkpoints", ignore_errors=True)
    return log


def check_config(cfg: TrainConfig) -> None:
    """Fail at the entry point, with one line saying what to fix, on settings that cannot work."""
    checks = [
        (cfg.size in tiny.PRESETS, f"[train] size must be one of {', '.join(tiny.PRESETS)}"),
        (cfg.batch_size >= 2, "[train] batch_size must be >= 2 (ITC/ITM need in-batch negatives)"),
        (cfg.epochs >= 1 and cfg.finetune_epochs >= 1, "[train] epochs must be >= 1"),
        (cfg.lr > 0 and cfg.finetune_lr > 0, "[train] lr must be > 0"),
        (cfg.temperature > 0, "[train] temperature must be > 0"),
        (
            cfg.contrastive_loss in ("softmax", "sigmoid"),
            "[train] contrastive_loss must be softmax or sigmoid",
        ),
        (0.0 <= cfg.label_smoothing < 1.0, "[train] label_smoothing must be in [0, 1)"),
        (cfg.checkpoint_every >= 1 and cfg.log_every >= 1, "[train] *_every must be >= 1"),
        (cfg.warmup >= 0 and cfg.max_text_tokens >= 4, "[train] warmup/max_text_tokens too small"),
        (
            min(cfg.vision_epochs, cfg.vision_batch_size) >= 1 and cfg.vision_lr > 0,
            "[train] vision_epochs and vision_batch_size must be >= 1, vision_lr > 0",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# --------------------------------------------------------------------------- entry points

OnStep = Callable[[str, int, dict[str, float]], None]  # (job name, step done, losses)


def _start(
    kind, pairs, out_dir, cfg, init_dir, web_texts=()
) -> tuple[list, Path, str, dict | None]:
    """Validate, fingerprint; the finished log when this training is already done."""
    check_config(cfg)
    pairs, out = list(pairs), Path(out_dir)
    digest = pairs_digest(pairs + [(b"", text) for text in web_texts])
    fingerprint = training_fingerprint(kind, cfg, digest, init_dir)
    done = finished_log(out, fingerprint)
    if done is not None:
        print(f"[train {kind}] {out} already finished; not redone", file=sys.stderr, flush=True)
    return pairs, out, fingerprint, done


def _context(pairs, processor, out: Path, cfg, fingerprint, on_step, web_texts=()) -> _Context:
    """Decode, preprocess and tokenize once; pick the device."""
    data = prepare_pairs(pairs, processor)
    if len(data.texts) < 2:
        raise ValueError(f"need at least 2 pairs with a decodable image, got {len(data.texts)}")
    tokens = tokenize_pairs(data.texts, processor.tokenizer, cfg, list(web_texts))
    device, dtype = pick_device()
    print(
        f"[train] {len(data.texts)} pairs, {len(data.pixels)} images "
        f"({data.skipped} pairs skipped: undecodable) on {device} {dtype}",
        file=sys.stderr,
        flush=True,
    )
    return _Context(data, tokens, cfg, out, fingerprint, device, dtype, on_step)


def _base_log(kind: str, ctx: _Context, init_dir) -> dict:
    return {
        "kind": kind,
        "fingerprint": ctx.fingerprint,
        "config": asdict(ctx.cfg),
        "init_dir": None if init_dir is None else str(init_dir),
        "pairs": len(ctx.data.texts),
        "images": len(ctx.data.pixels),
        "skipped_pairs": ctx.data.skipped,
        "device": str(ctx.device),
        "dtype": str(ctx.dtype).removeprefix("torch."),
        "jobs": {},
        "outputs": {},
    }


def pretrain(
    pairs: list[tuple[bytes, str]],
    out_dir: str | Path,
    cfg: TrainConfig | None = None,
    init_dir: str | Path | None = None,
    on_step: OnStep | None = None,
) -> dict:
    """BLIP pre-training (sec. 3.2) of a captioner and a filter sharing one image encoder.

    ITC + ITM + LM summed, AdamW, warm-up + cosine. From scratch at `cfg.size`, or from
    init_dir/{captioner,filter} (the filter's vision weights then serve both). Writes
    OUT_DIR/{captioner,filter,scorer,train_log.json}; returns the log. Resumes from the last
    checkpoint; a finished training (train_log.json of the same data and settings) is
    returned as it is; one of other data or settings raises TrainDirError.
    """
    cfg = cfg or TrainConfig()
    pairs, out, fingerprint, done = _start("pretrain", pairs, out_dir, cfg, init_dir)
    if done is not None:
        return done
    captioner, filt, processor = build_models(cfg, init_dir, share_vision=True)
    ctx = _context(pairs, processor, out, cfg, fingerprint, on_step)
    models = {"captioner": captioner, "filter": filt}
    log = _base_log("pretrain", ctx, init_dir)
    job = Job("pretrain", models, OBJECTIVES, cfg.epochs, cfg.lr, Temperature(cfg.temperature))
    log["jobs"]["pretrain"] = run_job(job, ctx)
    return _write_outputs(ctx, captioner, filt, processor, log)


def finetune(
    clean_pairs: list[tuple[bytes, str]],
    init_dir: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig | None = None,
    on_step: OnStep | None = None,
    web_texts: list[str] | None = None,
) -> dict:
    """CapFilt fine-tuning (sec. 3.3) on the clean set: the captioner with LM only, the filter
    with ITC + ITM, both from init_dir, trained one after the other with nothing shared.
    `web_texts`: the web's alt-text, drawn as extra ITM negatives (`cfg.web_negatives`).

    Same outputs, resume and skip rules as `pretrain`; `scorer/` is the fine-tuned filter,
    trained on clean data as DFN's filtering network is.
    """
    cfg, web_texts = cfg or TrainConfig(), list(web_texts or [])
    start = _start("finetune", clean_pairs, out_dir, cfg, init_dir, web_texts)
    pairs, out, fingerprint, done = start
    if done is not None:
        return done
    captioner, filt, processor = build_models(cfg, init_dir, share_vision=False)
    ctx = _context(pairs, processor, out, cfg, fingerprint, on_step)
    epochs, lr = cfg.finetune_epochs, cfg.finetune_lr
    log = _base_log("finetune", ctx, init_dir)
    job = Job("captioner", {"captioner": captioner}, ("lm",), epochs, lr, Temperature(1.0))
    log["jobs"]["captioner"] = run_job(job, ctx)  # the captioner's LM uses no temperature
    train_pairs, held_out = split_holdout(pairs, cfg.calibration_holdout, cfg.seed)
    filter_ctx = _context(train_pairs, processor, out, cfg, fingerprint, on_step, web_texts)
    job = Job("filter", {"filter": filt}, ("itc", "itm"), epochs, lr, Temperature(cfg.temperature))
    log["jobs"]["filter"] = run_job(job, filter_ctx)
    scores = None
    if held_out:  # calibration for itm_threshold = "auto"
        scores = held_out_scores(Filter(filt.eval(), processor), held_out, web_texts, cfg.seed)
        negatives = {kind: len(found) for kind, found in scores[1].items()}
        log["calibration"] = {"held_out_pairs": len(scores[0]), "negatives": negatives}
    return _write_outputs(ctx, captioner, filt, processor, log, scores)
