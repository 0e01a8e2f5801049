"""The models BLIP trains: a captioner and a filter (from scratch or from a trained pair), the
learnable ITC temperature, and the job that bundles what one optimisation updates."""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipProcessor
from transformers.utils import logging as transformers_logging

from curation.config import TrainConfig
from curation.models import tiny
from curation.training.vision_init import load_into


def build_models(
    cfg: TrainConfig,
    init_dir: str | Path | None = None,
    share_vision: bool = True,
) -> tuple[BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipProcessor]:
    """(captioner, filter, processor): from scratch or from init_dir/{captioner,filter}.

    From scratch the sizes are `tiny.config_for_tokenizer(cfg.size, shipped tokenizer)`, the
    init seeded by cfg.seed (the caller's RNG is left alone), the vision encoder then replaced
    by cfg.vision_init's when set. With `share_vision` the captioner's
    vision module is replaced by the filter's: one object that ITC, ITM and LM all update, as
    BLIP's pre-training shares its image encoder (sec. 3.1).
    """
    transformers_logging.disable_progress_bar()
    if init_dir is None:
        tokenizer = tiny.load_tokenizer()
        config = tiny.config_for_tokenizer(cfg.size, tokenizer)
        processor = tiny.make_processor(cfg.size, tokenizer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            captioner = BlipForConditionalGeneration(config)
            filt = BlipForImageTextRetrieval(config)
        if cfg.vision_init:
            load_into(filt, cfg.vision_init)
    else:
        init = Path(init_dir)
        load = dict(use_safetensors=True, dtype=torch.float32)
        captioner = BlipForConditionalGeneration.from_pretrained(init / "captioner", **load)
        filt = BlipForImageTextRetrieval.from_pretrained(init / "filter", **load)
        processor = BlipProcessor.from_pretrained(init / "filter")
    if share_vision:
        captioner.vision_model = filt.vision_model
    return captioner, filt, processor


class Temperature(nn.Module):
    """BLIP's learnable ITC temperature (sec. 3.2; init 0.07, kept within [0.001, 0.5]), and
    the learnable logit bias of SigLIP's sigmoid loss (arXiv 2303.15343; init -10, unused by
    the softmax loss).

    Learning it matters from scratch: with random features a fixed low temperature makes the
    contrastive loss exceed log(batch), and the quickest way down is to collapse every feature
    to one point, a plateau that costs tens of steps; raising the temperature is quicker.
    Training only: the saved checkpoints score with plain cosine similarity.
    """

    def __init__(self, init: float, bias: float = -10.0):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self) -> torch.Tensor:
        with torch.no_grad():
            self.value.clamp_(0.001, 0.5)
        return self.value


@dataclass
class Job:
    """One optimisation: the models it updates, the objectives it sums, its schedule."""

    name: str  # "pretrain" | "captioner" | "filter": its checkpoint folder and log key
    models: dict[str, nn.Module]  # "captioner" and/or "filter"
    objectives: tuple[str, ...]  # subset of OBJECTIVES
    epochs: int
    lr: float
    temperature: Temperature  # ITC's, learnt along with the models

    def modules(self) -> dict[str, nn.Module]:
        """Everything trained and checkpointed: the models and the temperature."""
        return {**self.models, "temperature": self.temperature}

    def parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter once, even when models share modules."""
        unique: dict[int, nn.Parameter] = {}
        for module in self.modules().values():
            for param in module.parameters():
                unique.setdefault(id(param), param)
        return list(unique.values())
