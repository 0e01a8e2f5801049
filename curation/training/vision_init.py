"""A finished `curate pretrain-vision` folder as `[train] vision_init` reads it: its
fingerprint, and its encoder copied into a from-scratch model (see `curation.training.vision`)."""

import json
from pathlib import Path

import torch
from transformers import BlipVisionModel

from curation.config import ConfigError

LOG_FILE = "vision_log.json"  # written last: marks the folder finished
SIZE_FIELDS = ("image_size", "patch_size", "hidden_size", "num_hidden_layers")


def finished_fingerprint(folder: str | Path) -> str:
    """The fingerprint of a finished vision pre-training in `folder`; ConfigError if none."""
    path = Path(folder) / LOG_FILE
    if not path.exists():
        raise ConfigError(f"[train] vision_init: no finished `curate pretrain-vision` in {folder}")
    return json.loads(path.read_text())["fingerprint"]


def load_into(filt, folder: str | Path) -> None:
    """Copy a `pretrain_vision` encoder into a from-scratch model; its sizes must match."""
    finished_fingerprint(folder)
    vision = BlipVisionModel.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
    want, have = filt.vision_model.config, vision.config
    differs = [k for k in SIZE_FIELDS if getattr(want, k) != getattr(have, k)]
    if differs:
        raise ConfigError(
            f"[train] vision_init {folder} has other sizes than [train] size "
            f"({', '.join(differs)}); pre-train it at the same size"
        )
    filt.vision_model.load_state_dict(vision.state_dict())
