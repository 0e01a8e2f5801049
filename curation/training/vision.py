"""Image-encoder pre-training on labelled images: the ImageNet step that comes before BLIP.

BLIP never trains its image encoder from nothing: its ViT starts from ImageNet weights (Li et al.
2022, arXiv 2201.12086, sec. 4.1). With both towers random, image-text pre-training on the
synthetic world settles on the background colour and stays there (docs/benchmarks.md, "Why the
models do not learn the world"); an encoder first taught object classes learns from captions.
`pretrain_vision` is that first step: multi-label classification (one sigmoid per label, binary
cross-entropy) on a LABELLED parquet (`image`, `labels`), a linear head on the ViT's pooled
[CLS] output, AdamW with warm-up + cosine. The head is thrown away; the encoder is saved with
`save_pretrained` and `[train] vision_init` starts every from-scratch pre-training from it.

It is short (a minute on 2 CPU cores for the demo), so it has no checkpoints: an interrupted run
starts again; a finished one (`vision_log.json` of the same data and settings) is not redone.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn

from curation.config import ConfigError, TrainConfig
from curation.io import write_json
from curation.models.blip import pick_device
from curation.training.data import pixels_of
from curation.training.modeling import build_models
from curation.training.schedule import lr_at, steps_per_epoch
from curation.training.train import check_config
from curation.training.vision_init import LOG_FILE, finished_fingerprint

HELD_OUT_EVERY = 10  # every 10th image is held out to measure the encoder, never trained on


def load_labelled(path: str | Path) -> tuple[list[bytes], list[list[str]]]:
    """(image bytes, labels) of a LABELLED parquet; a clear error when its columns are not."""
    names = pq.read_schema(path).names
    if not {"image", "labels"} <= set(names):
        raise ConfigError(f"{path}: a labelled set needs columns image, labels (has {names})")
    table = pq.read_table(path, columns=["image", "labels"])
    return table["image"].to_pylist(), [list(x or []) for x in table["labels"].to_pylist()]


def _fingerprint(cfg: TrainConfig, images: list[bytes], labels: list[list[str]]) -> str:
    digest = hashlib.sha256()
    for data, names in zip(images, labels, strict=True):
        digest.update(hashlib.sha256(data or b"").digest() + "\0".join(names).encode() + b"\1")
    settings = (
        cfg.size,
        cfg.seed,
        cfg.vision_batch_size,
        cfg.weight_decay,
        cfg.warmup,
        cfg.vision_epochs,
        cfg.vision_lr,
    )
    return hashlib.sha256(repr((settings, digest.hexdigest())).encode()).hexdigest()


def _decode(images: list[bytes], labels: list[list[str]], processor):
    """(pixels, targets, vocabulary, skipped): undecodable images counted, not raised."""
    pixels, keep = pixels_of(images, processor)
    vocab = sorted({name for i in keep for name in labels[i]})
    targets = torch.zeros(len(keep), len(vocab))
    column = {name: j for j, name in enumerate(vocab)}
    for row, i in enumerate(keep):
        targets[row, [column[name] for name in labels[i]]] = 1.0
    return pixels, targets, vocab, len(images) - len(keep)


def _logits(vision: nn.Module, head: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    return head(vision(pixel_values=pixels).pooler_output)


def label_auc(logits: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean over labels of P(an image with the label scores above one without): 0.5 is chance,
    also for a model that only knows how frequent each label is. Labels that every held-out
    image has, or none has, are left out; NaN when none is left."""
    aucs = []
    for scores, positive in zip(logits.t(), truth.t(), strict=True):
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos and n_neg:
            ranks = scores.argsort().argsort().double() + 1  # Mann-Whitney U
            aucs.append((ranks[positive].sum().item() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return sum(aucs) / len(aucs) if aucs else float("nan")


@torch.no_grad()
def held_out_scores(vision, head, pixels: torch.Tensor, targets: torch.Tensor) -> dict:
    """Mean per-label AUC (chance 0.5), micro-F1 of the labels predicted at
    p >= 0.5 and the share of images whose whole label set is right."""
    vision.eval()
    logits = torch.cat([_logits(vision, head, chunk) for chunk in pixels.split(256)])
    vision.train()
    predicted, truth = logits > 0, targets > 0
    hits = (predicted & truth).sum().item()
    return {
        "label_auc": label_auc(logits, truth),
        "micro_f1": 2 * hits / max(1, predicted.sum().item() + truth.sum().item()),
        "exact_match": (predicted == truth).all(dim=1).float().mean().item(),
    }


def _train(vision, head, pixels, targets, cfg: TrainConfig, device) -> list[dict]:
    """AdamW on binary cross-entropy over shuffled batches; the mean loss per log_every steps."""
    params = list(vision.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=cfg.weight_decay)
    per_epoch = steps_per_epoch(len(pixels), cfg.vision_batch_size)
    total = per_epoch * cfg.vision_epochs
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.cat(
        [torch.randperm(len(pixels), generator=generator) for _ in range(cfg.vision_epochs + 1)]
    )
    log, losses, tick = [], [], time.perf_counter()
    for step in range(total):
        index = order[step * cfg.vision_batch_size : (step + 1) * cfg.vision_batch_size]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, cfg.vision_lr, cfg.warmup)
        logits = _logits(vision, head, pixels[index].to(device))
        loss = F.binary_cross_entropy_with_logits(logits, targets[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == total:
            log.append({"step": step + 1, "of": total, "bce": sum(losses) / len(losses)})
            rate = cfg.vision_batch_size * len(losses) / (time.perf_counter() - tick)
            epoch = -(-(step + 1) // per_epoch)
            print(
                f"[vision] step {step + 1}/{total} epoch {epoch}/{cfg.vision_epochs} "
                f"bce {log[-1]['bce']:.3f} {rate:.0f} img/s",
                file=sys.stderr,
                flush=True,
            )
            losses, tick = [], time.perf_counter()
    return log


def _save(vision: nn.Module, processor, log: dict, out: Path) -> None:
    """The encoder and its processor into a temporary folder, renamed; the log last inside."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    vision.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    write_json(log, tmp / LOG_FILE)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def pretrain_vision(labelled: str | Path, out_dir: str | Path, cfg: TrainConfig | None = None):
    """Train an image encoder of `cfg.size` on a labelled set; writes it to `out_dir` (a
    BlipVisionModel folder + vision_log.json) and returns the log."""
    cfg = cfg or TrainConfig()
    check_config(cfg)
    images, labels = load_labelled(labelled)
    out, fingerprint = Path(out_dir), _fingerprint(cfg, images, labels)
    if (out / LOG_FILE).exists() and finished_fingerprint(out) == fingerprint:
        print(f"[vision] {out} already finished; not redone", file=sys.stderr, flush=True)
        return json.loads((out / LOG_FILE).read_text())
    _, filt, processor = build_models(dataclasses.replace(cfg, vision_init=""))
    pixels, targets, vocab, skipped = _decode(images, labels, processor)
    held = torch.arange(len(pixels)) % HELD_OUT_EVERY == 0
    if (~held).sum() < 2 or not vocab:
        raise ConfigError(f"{labelled}: need at least 2 decodable labelled images with labels")
    device, _ = pick_device()
    vision = filt.vision_model.to(device).train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = nn.Linear(vision.config.hidden_size, len(vocab)).to(device)
    print(
        f"[vision] {int((~held).sum())} images, {len(vocab)} labels ({skipped} undecodable "
        f"skipped) on {device}",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    steps = _train(vision, head, pixels[~held], targets[~held], cfg, device)
    seconds = time.perf_counter() - started
    scores = held_out_scores(vision, head, pixels[held].to(device), targets[held].to(device))
    print(
        f"[vision] held out: label AUC {scores['label_auc']:.3f} (chance 0.5), micro-F1 "
        f"{scores['micro_f1']:.3f}, exact label sets {scores['exact_match']:.3f}",
        file=sys.stderr,
        flush=True,
    )
    log = {
        "fingerprint": fingerprint,
        "images": int((~held).sum()),
        "held_out": int(held.sum()),
        "skipped": skipped,
        "labels": vocab,
        "held_out_scores": scores,
        "log": steps,
        "seconds": seconds,
        "config": dataclasses.asdict(cfg),
    }
    _save(vision.cpu(), processor, log, out)
    return log
