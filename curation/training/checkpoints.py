"""What a training leaves on disk besides its log: resumable checkpoints (weights, optimizer,
step, RNG), the saved models, and the fingerprint that tells a finished or resumable training
of the same data and settings from one of other data or settings."""

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from transformers import BlipProcessor

from curation.config import TrainConfig
from curation.training.modeling import Job
from curation.training.vision_init import finished_fingerprint

# TrainConfig fields that change no weight; left out of the fingerprint that guards a resume.
VISION_ONLY = ("vision_epochs", "vision_batch_size", "vision_lr")  # `curate pretrain-vision`'s
# settings that do not change what a training job computes
NOT_IN_FINGERPRINT = (
    "checkpoint_every",
    "log_every",
    "keep_checkpoints",
    "synthetic_gate",
    *VISION_ONLY,
)
PRETRAIN_ONLY = ("size", "epochs", "lr", "vision_init")
FINETUNE_ONLY = (
    "finetune_epochs",
    "finetune_lr",
    "web_negatives",
    "calibration_holdout",
)


class TrainDirError(ValueError):
    """OUT_DIR holds a training of other data or another configuration."""


def _rng_state() -> dict:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, job: Job, optimizer, progress: dict, fingerprint: str) -> Path:
    """Write checkpoint `root/step_NNNNNN` atomically (temporary folder, then rename); older
    checkpoints of the job are removed after the new one is in place."""
    step = progress["step"]
    final = root / f"step_{step:06d}"
    tmp = root / f".step_{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {
        "fingerprint": fingerprint,
        "models": {name: module.state_dict() for name, module in job.modules().items()},
        "optimizer": optimizer.state_dict(),
        "rng": _rng_state(),
        **progress,
    }
    torch.save(state, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in root.glob("step_*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(root: Path, job: Job, optimizer, fingerprint: str) -> dict | None:
    """Restore the job's latest checkpoint (weights, optimizer, RNG); its progress, or None."""
    found = sorted(root.glob("step_*"))
    if not found:
        return None
    state = torch.load(found[-1] / "state.pt", map_location="cpu", weights_only=True)
    if state["fingerprint"] != fingerprint:
        raise TrainDirError(
            f"{root} holds a checkpoint of other data or settings; use a new output folder"
        )
    for name, module in job.modules().items():
        module.load_state_dict(state["models"][name])
    optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"])
    return {key: state[key] for key in ("step", "log", "acc")}


def save_model(model: nn.Module, processor: BlipProcessor, path: Path) -> None:
    """save_pretrained (safetensors) + processor into a temporary folder, then rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def finished_log(out: Path, fingerprint: str) -> dict | None:
    """The log of a finished training of the same data and settings; None if none."""
    path = out / "train_log.json"
    if not path.exists():
        return None
    log = json.loads(path.read_text())
    if log.get("fingerprint") != fingerprint:
        raise TrainDirError(f"{out} holds a training of other data or settings; use a new folder")
    return log


def training_fingerprint(kind: str, cfg: TrainConfig, digest: str, init_dir) -> str:
    """What the result depends on: the kind, the settings that change weights, data, init."""
    skip = NOT_IN_FINGERPRINT + (FINETUNE_ONLY if kind == "pretrain" else PRETRAIN_ONLY)
    settings = {k: v for k, v in asdict(cfg).items() if k not in skip}
    if kind == "finetune" or init_dir is not None:
        settings["init_dir"] = str(Path(init_dir).resolve())
    elif cfg.vision_init:  # its weights, not its path
        settings["vision_init"] = finished_fingerprint(cfg.vision_init)
    text = repr((kind, sorted(settings.items()), digest))
    return hashlib.sha256(text.encode()).hexdigest()
