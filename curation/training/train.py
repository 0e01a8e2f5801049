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
"""

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipProcessor
from transformers.utils import logging as transformers_logging

from curation.config import CapFiltConfig, ConfigError, TrainConfig
from curation.io import write_json
from curation.models import tiny
from curation.models.blip import pick_device, preprocess
from curation.pipeline.images import decode_image

OBJECTIVES = ("itc", "itm", "lm")
MIN_IMAGE_SIDE = 8  # as CapFiltConfig.min_image_side: smaller images are not training data
MAX_IMAGE_PIXELS = CapFiltConfig().max_image_pixels  # the curation run's bomb guard
BUCKET_BATCHES = 16  # batches per window sorted by text length (see batch_indices)
PREPROCESS_CHUNK = 256  # images per preprocess call: bounds peak memory of the PIL -> tensor step
# TrainConfig fields that change no weight; left out of the fingerprint that guards a resume.
VISION_ONLY = ("vision_epochs", "vision_batch_size", "vision_lr")  # `curate pretrain-vision`'s
NOT_IN_FINGERPRINT = ("checkpoint_every", "log_every", "keep_checkpoints", *VISION_ONLY)
PRETRAIN_ONLY = ("size", "epochs", "lr", "vision_init")
FINETUNE_ONLY = ("finetune_epochs", "finetune_lr")


class TrainDirError(ValueError):
    """OUT_DIR holds a training of other data or another configuration."""


# --------------------------------------------------------------------------- pairs


def pairs_from_curated(run_dir: str | Path) -> list[tuple[bytes, str]]:
    """(image bytes, text) for every KEPT candidate of every curated row (shards/*.parquet).

    BLIP pre-trains on the bootstrapped set: each web or synthetic text that passed the
    filter is a training pair with its image (sec. 3.3), not only the row's chosen caption.
    """
    pairs = []
    for path in sorted(Path(run_dir, "shards").glob("*.parquet")):
        table = pq.read_table(path, columns=["image", "candidates"])
        for image, candidates in zip(*table.to_pydict().values(), strict=True):
            kept = [c["text"] for c in candidates or [] if c["kept"] and (c["text"] or "").strip()]
            pairs.extend((image, text) for text in kept)
    return pairs


def pairs_from_raw(run_dir: str | Path) -> list[tuple[bytes, str]]:
    """(image bytes, web text) for every downloaded image with non-empty alt-text (raw/).

    Round 0 of the loop: BLIP's first model learns from the noisy web as it is.
    """
    pairs = []
    for path in sorted(Path(run_dir, "raw").glob("*.parquet")):
        table = pq.read_table(path, columns=["image", "web_text", "status"])
        table = table.filter(pc.equal(table["status"], "success"))
        images, texts = table["image"].to_pylist(), table["web_text"].to_pylist()
        pairs += [(i, t) for i, t in zip(images, texts, strict=True) if t and t.strip()]
    return pairs


def pairs_from_clean(clean_parquet: str | Path) -> list[tuple[bytes, str]]:
    """(image bytes, caption) rows of a clean, human-captioned-like set (BLIP's COCO role)."""
    table = pq.read_table(clean_parquet, columns=["image", "caption"])
    images, captions = table["image"].to_pylist(), table["caption"].to_pylist()
    return [(i, c) for i, c in zip(images, captions, strict=True) if c and c.strip()]


@dataclass
class PairData:
    """Pairs decoded and preprocessed once: each distinct image one row of `pixels`."""

    pixels: torch.Tensor  # (I, 3, H, W) float32 pixel_values, one row per distinct image
    image_of: torch.Tensor  # (N,) long: the pixels row of each pair = its image id
    text_of: torch.Tensor  # (N,) long: an id per distinct text (equal texts, equal ids)
    texts: list[str]  # (N,) the pairs' texts
    skipped: int  # pairs dropped because their image did not decode
    digest: str  # sha256 over all pairs, part of the resume fingerprint


def pixels_of(images: list[bytes], processor: BlipProcessor) -> tuple[torch.Tensor, list[int]]:
    """Decode (`decode_image`, the run's guards) and preprocess images in chunks that bound peak
    memory: (pixels of the decodable ones (I, 3, H, W), their indices in `images`)."""
    decoded = [decode_image(data, MIN_IMAGE_SIDE, MAX_IMAGE_PIXELS).image for data in images]
    ok = [i for i, image in enumerate(decoded) if image is not None]
    starts = range(0, len(ok), PREPROCESS_CHUNK)
    chunks = [preprocess(processor, [decoded[i] for i in ok[j : j + PREPROCESS_CHUNK]])
              for j in starts]  # fmt: skip
    return (torch.cat(chunks) if chunks else preprocess(processor, [])), ok


def prepare_pairs(pairs: Iterable[tuple[bytes, str]], processor: BlipProcessor) -> PairData:
    """Decode every distinct image once (`pixels_of`), preprocess once, index the pairs.

    Undecodable images (and their pairs) are skipped and counted, never raised.
    """
    pairs = list(pairs)
    distinct = list(dict.fromkeys(data for data, _ in pairs))
    pixels, ok = pixels_of(distinct, processor)  # (I, 3, H, W)
    row_of = {distinct[i]: row for row, i in enumerate(ok)}  # image bytes -> pixels row
    kept = [(row_of[data], text) for data, text in pairs if data in row_of]
    image_index = torch.tensor([row for row, _ in kept], dtype=torch.long)
    texts = [text for _, text in kept]
    text_ids: dict[str, int] = {}
    text_index = torch.tensor([text_ids.setdefault(t, len(text_ids)) for t in texts])
    skipped = len(pairs) - len(kept)
    return PairData(pixels, image_index, text_index, texts, skipped, pairs_digest(pairs))


@dataclass
class Tokens:
    """The pairs' texts tokenized once, for the encoders and (with the prompt) the decoder."""

    ids: torch.Tensor  # (N, L) [CLS] text [SEP] [PAD]..., for ITC and ITM
    mask: torch.Tensor  # (N, L)
    lm_ids: torch.Tensor  # (N, L') [DEC] prompt text [SEP] [PAD]...
    lm_mask: torch.Tensor  # (N, L')
    lm_labels: torch.Tensor  # (N, L') lm_ids with prompt and padding set to -100 (not scored)


def tokenize_pairs(texts: list[str], tokenizer, cfg: TrainConfig) -> Tokens:
    """Tokenize once. The decoder's input starts with [DEC] (BLIP's bos) instead of [CLS], as
    `BlipForConditionalGeneration.generate` does; the prompt is not scored (BLIP's captioning
    fine-tuning masks `prompt_length` tokens), so the captioner continues "a picture of"."""

    def encode(batch: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tokenizer(
            batch,
            padding="longest",
            truncation=True,
            max_length=cfg.max_text_tokens,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"]

    ids, mask = encode(texts)
    lm_ids, lm_mask = encode([cfg.prompt + t for t in texts])
    prompt_length = len(tokenizer(cfg.prompt.strip())["input_ids"]) - 1  # [CLS] + prompt words
    lm_ids[:, 0] = tokenizer.bos_token_id  # [CLS] -> [DEC]
    labels = lm_ids.masked_fill(lm_mask == 0, -100)
    labels[:, :prompt_length] = -100
    return Tokens(ids, mask, lm_ids, lm_mask, labels)


# --------------------------------------------------------------------------- models


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
            from curation.training import vision  # it trains with this module's helpers

            vision.load_into(filt, cfg.vision_init)
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
    """BLIP's learnable ITC temperature (sec. 3.2; init 0.07, kept within [0.001, 0.5]).

    Learning it matters from scratch: with random features a fixed low temperature makes the
    contrastive loss exceed log(batch), and the quickest way down is to collapse every feature
    to one point, a plateau that costs tens of steps; raising the temperature is quicker.
    Training only: the saved checkpoints score with plain cosine similarity.
    """

    def __init__(self, init: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))

    def forward(self) -> torch.Tensor:
        with torch.no_grad():
            self.value.clamp_(0.001, 0.5)
        return self.value


@dataclass
class _Job:
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


# --------------------------------------------------------------------------- objectives


@dataclass
class _Batch:
    pixels: torch.Tensor  # (B, 3, H, W)
    positive: torch.Tensor  # (B, B) bool: pair j's text fits pair i's image (see _make_batch)
    ids: torch.Tensor  # (B, L)
    mask: torch.Tensor  # (B, L)
    lm_ids: torch.Tensor  # (B, L')
    lm_mask: torch.Tensor  # (B, L')
    lm_labels: torch.Tensor  # (B, L')


def _make_batch(pixels: torch.Tensor, data: PairData, tokens: Tokens, index, device) -> _Batch:
    """The pairs at `index`, text padding trimmed to the batch's longest text, on device."""

    def trim(*tensors: torch.Tensor) -> list[torch.Tensor]:
        length = int(tensors[1][index].sum(dim=1).max())  # tensors[1] is the attention mask
        return [t[index, :length].to(device) for t in tensors]

    image_of, text_of = data.image_of[index], data.text_of[index]  # (B,), (B,)
    positive = (image_of[:, None] == image_of[None, :]) | (text_of[:, None] == text_of[None, :])
    ids, mask = trim(tokens.ids, tokens.mask)
    lm_ids, lm_mask, lm_labels = trim(tokens.lm_ids, tokens.lm_mask, tokens.lm_labels)
    images = pixels[image_of.to(pixels.device)].to(device)
    return _Batch(images, positive.to(device), ids, mask, lm_ids, lm_mask, lm_labels)


def itc_loss(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    positive: torch.Tensor,
    temperature: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, similarities): InfoNCE image->text and text->image over the batch (sec. 3.2).

    image_feat, text_feat: (B, E) L2-normalised; pair i's image is row i. positive: (B, B)
    bool, symmetric, true on the diagonal. Every text of the same image is a positive (targets
    spread evenly over them, BLIP's retrieval `idx`), and so is the same text on another image
    ("untitled", "a red circle"): calling it a negative would contradict the other pair.
    """
    sim = image_feat @ text_feat.t() / temperature  # (B, B): image of pair i vs text j
    targets = positive.float() / positive.sum(dim=1, keepdim=True)
    loss_i2t = -(F.log_softmax(sim, dim=1) * targets).sum(dim=1).mean()
    loss_t2i = -(F.log_softmax(sim.t(), dim=1) * targets).sum(dim=1).mean()
    return (loss_i2t + loss_t2i) / 2, sim


def sample_negatives(
    sim: torch.Tensor, same: torch.Tensor, generator: torch.Generator, hard: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative text per image, negative image per text), indices into the batch. (B,), (B,)

    BLIP (sec. 3.2, after ALBEF) draws each negative with probability softmax(ITC similarity)
    + 1e-4, so texts that look like matches but are not, the informative cases, come up most;
    `hard=False` draws uniformly. Positives (`same`, (B, B): the same image, or the same text)
    are never drawn; a row with nothing else falls back to any other pair.
    """
    with torch.no_grad():
        sim = sim.float()
        others = ~torch.eye(len(sim), dtype=torch.bool, device=sim.device)

        def draw(scores: torch.Tensor) -> torch.Tensor:
            weights = F.softmax(scores, dim=1) + 1e-4 if hard else torch.ones_like(scores)
            weights = weights.masked_fill(same, 0.0)
            weights = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights, others.float())
            return torch.multinomial(weights, 1, generator=generator).squeeze(1)

        return draw(sim), draw(sim.t())


def itm_loss(
    filt: BlipForImageTextRetrieval,
    image_embeds: torch.Tensor,
    batch: _Batch,
    neg_text: torch.Tensor,
    neg_image: torch.Tensor,
) -> torch.Tensor:
    """Match / no-match cross-entropy over B positives and 2B hard negatives (sec. 3.2, ITM)."""
    b = len(batch.ids)
    embeds = torch.cat([image_embeds, image_embeds, image_embeds[neg_image]])  # (3B, 1+P, Dv)
    ids = torch.cat([batch.ids, batch.ids[neg_text], batch.ids])  # (3B, L)
    mask = torch.cat([batch.mask, batch.mask[neg_text], batch.mask])  # (3B, L)
    hidden = filt.text_encoder(
        input_ids=ids, attention_mask=mask, encoder_hidden_states=embeds
    ).last_hidden_state  # (3B, L, Dt): text cross-attending to the image
    logits = filt.itm_head(hidden[:, 0, :])  # (3B, 2): [no match, match]
    labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(logits.device)
    return F.cross_entropy(logits.float(), labels)


def lm_loss(
    captioner: BlipForConditionalGeneration,
    image_embeds: torch.Tensor,
    batch: _Batch,
    label_smoothing: float,
) -> torch.Tensor:
    """Next-token cross-entropy of the image-grounded decoder, smoothed (sec. 3.2, LM)."""
    logits = captioner.text_decoder(
        input_ids=batch.lm_ids,
        attention_mask=batch.lm_mask,
        encoder_hidden_states=image_embeds,
        use_cache=False,
    ).logits  # (B, L', V)
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),  # (B * (L'-1), V): predictions for tokens 1..
        batch.lm_labels[:, 1:].flatten(),
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )


def _itc_features(filt, image_embeds, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected, normalised [CLS] features of the unimodal encoders. (B, E), (B, E)"""
    image_feat = F.normalize(filt.vision_proj(image_embeds[:, 0, :]), dim=-1)
    hidden = filt.text_encoder(
        input_ids=batch.ids, attention_mask=batch.mask
    ).last_hidden_state  # (B, L, Dt), text only: no cross-attention
    return image_feat, F.normalize(filt.text_proj(hidden[:, 0, :]), dim=-1)


def _image_embeds(job: _Job, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Vision encoder output per model, (B, 1+P, Dv); once for a module the models share."""
    out: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor] = {}
    for name, model in job.models.items():
        key = id(model.vision_model)
        if key not in done:
            done[key] = model.vision_model(pixel_values=pixels).last_hidden_state
        out[name] = done[key]
    return out


def compute_losses(
    job: _Job, batch: _Batch, cfg: TrainConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """The job's objectives on one batch; BLIP sums them with equal weights."""
    embeds = _image_embeds(job, batch.pixels)
    losses = {}
    if "itc" in job.objectives or "itm" in job.objectives:
        filt = job.models["filter"]
        image_feat, text_feat = _itc_features(filt, embeds["filter"], batch)
        itc, sim = itc_loss(image_feat, text_feat, batch.positive, job.temperature())
        if "itc" in job.objectives:
            losses["itc"] = itc
        if "itm" in job.objectives:
            negs = sample_negatives(sim, batch.positive, generator, cfg.itm_hard_negatives)
            losses["itm"] = itm_loss(filt, embeds["filter"], batch, *negs)
    if "lm" in job.objectives:
        captioner = job.models["captioner"]
        losses["lm"] = lm_loss(captioner, embeds["captioner"], batch, cfg.label_smoothing)
    return losses


# --------------------------------------------------------------------------- schedule


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to 0 (BLIP's schedule)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def steps_per_epoch(n_pairs: int, batch_size: int) -> int:
    """Full batches per epoch (the last partial one is dropped); one batch when n < batch."""
    return max(1, n_pairs // batch_size)


def batch_indices(lengths: torch.Tensor, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Pair indices of `step`'s batch. (B,)

    Each epoch is a seeded permutation, so any step's batch is known without replaying the
    ones before it (what makes a resume exact). Within windows of BUCKET_BATCHES batches the
    pairs are sorted by text length (`lengths`, (N,)) and the batches then shuffled: a batch
    holds texts of similar length, which cuts padding (and the text side's compute) about in
    half on web alt-text, while every epoch still sees every pair once.
    """
    n = len(lengths)
    per_epoch = steps_per_epoch(n, batch_size)
    epoch, k = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    size = min(batch_size, n)
    order = torch.randperm(n, generator=generator)[: per_epoch * size]
    window = size * BUCKET_BATCHES
    windows = [order[i : i + window] for i in range(0, len(order), window)]
    order = torch.cat([w[torch.argsort(lengths[w], stable=True)] for w in windows])
    batches = order.view(per_epoch, size)  # (steps, B)
    return batches[torch.randperm(per_epoch, generator=generator)[k]]


# --------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: Path, job: _Job, optimizer, progress: dict, fingerprint: str) -> Path:
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


def load_checkpoint(root: Path, job: _Job, optimizer, fingerprint: str) -> dict | None:
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


def _progress_line(job: _Job, entry: dict, epoch: int) -> str:
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


def run_job(job: _Job, ctx: _Context) -> dict:
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
        batch = _make_batch(ctx.pixels, ctx.data, ctx.tokens, index, ctx.device)
        generator = torch.Generator(ctx.device).manual_seed(cfg.seed * 1_000_003 + step)
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


def _save_model(model: nn.Module, processor: BlipProcessor, path: Path) -> None:
    """save_pretrained (safetensors) + processor into a temporary folder, then rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def _write_outputs(ctx: _Context, captioner, filt, processor, log: dict) -> dict:
    """captioner/, filter/, scorer/ (the filter: DFN scoring reads its ITC cosine), then
    train_log.json last: its presence marks the training finished."""
    for name, model in (("captioner", captioner), ("filter", filt), ("scorer", filt)):
        _save_model(model, processor, ctx.out / name)
        log["outputs"][name] = str(ctx.out / name)
    write_json(log, ctx.out / "train_log.json")
    if not ctx.cfg.keep_checkpoints:
        shutil.rmtree(ctx.out / "checkpoints", ignore_errors=True)
    return log


def _finished(out: Path, fingerprint: str) -> dict | None:
    """The log of a finished training of the same data and settings; None if none."""
    path = out / "train_log.json"
    if not path.exists():
        return None
    log = json.loads(path.read_text())
    if log.get("fingerprint") != fingerprint:
        raise TrainDirError(f"{out} holds a training of other data or settings; use a new folder")
    return log


def _fingerprint(kind: str, cfg: TrainConfig, digest: str, init_dir) -> str:
    """What the result depends on: the kind, the settings that change weights, data, init."""
    skip = NOT_IN_FINGERPRINT + (FINETUNE_ONLY if kind == "pretrain" else PRETRAIN_ONLY)
    settings = {k: v for k, v in asdict(cfg).items() if k not in skip}
    if kind == "finetune" or init_dir is not None:
        settings["init_dir"] = str(Path(init_dir).resolve())
    elif cfg.vision_init:  # its weights, not its path
        from curation.training import vision

        settings["vision_init"] = vision.finished_fingerprint(cfg.vision_init)
    text = repr((kind, sorted(settings.items()), digest))
    return hashlib.sha256(text.encode()).hexdigest()


def pairs_digest(pairs: list[tuple[bytes, str]]) -> str:
    """sha256 over every pair's image bytes and text, in order (cheap next to decoding)."""
    digest = hashlib.sha256()
    for data, text in pairs:
        digest.update(hashlib.sha256(data or b"").digest() + text.encode() + b"\0")
    return digest.hexdigest()


def check_config(cfg: TrainConfig) -> None:
    """Fail at the entry point, with one line saying what to fix, on settings that cannot work."""
    checks = [
        (cfg.size in tiny.PRESETS, f"[train] size must be one of {', '.join(tiny.PRESETS)}"),
        (cfg.batch_size >= 2, "[train] batch_size must be >= 2 (ITC/ITM need in-batch negatives)"),
        (cfg.epochs >= 1 and cfg.finetune_epochs >= 1, "[train] epochs must be >= 1"),
        (cfg.lr > 0 and cfg.finetune_lr > 0, "[train] lr must be > 0"),
        (cfg.temperature > 0, "[train] temperature must be > 0"),
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


def _start(kind, pairs, out_dir, cfg, init_dir) -> tuple[list, Path, str, dict | None]:
    """Validate, fingerprint; the finished log when this training is already done."""
    check_config(cfg)
    pairs, out = list(pairs), Path(out_dir)
    fingerprint = _fingerprint(kind, cfg, pairs_digest(pairs), init_dir)
    done = _finished(out, fingerprint)
    if done is not None:
        print(f"[train {kind}] {out} already finished; not redone", file=sys.stderr, flush=True)
    return pairs, out, fingerprint, done


def _context(pairs, processor, out: Path, cfg, fingerprint, on_step) -> _Context:
    """Decode, preprocess and tokenize once; pick the device."""
    data = prepare_pairs(pairs, processor)
    if len(data.texts) < 2:
        raise ValueError(f"need at least 2 pairs with a decodable image, got {len(data.texts)}")
    tokens = tokenize_pairs(data.texts, processor.tokenizer, cfg)
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
    job = _Job("pretrain", models, OBJECTIVES, cfg.epochs, cfg.lr, Temperature(cfg.temperature))
    log["jobs"]["pretrain"] = run_job(job, ctx)
    return _write_outputs(ctx, captioner, filt, processor, log)


def finetune(
    clean_pairs: list[tuple[bytes, str]],
    init_dir: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig | None = None,
    on_step: OnStep | None = None,
) -> dict:
    """CapFilt fine-tuning (sec. 3.3) on the clean set: the captioner with LM only, the filter
    with ITC + ITM, both from init_dir, trained one after the other with nothing shared.

    Same outputs, resume and skip rules as `pretrain`; `scorer/` is the fine-tuned filter,
    trained on clean data as DFN's filtering network is.
    """
    cfg = cfg or TrainConfig()
    pairs, out, fingerprint, done = _start("finetune", clean_pairs, out_dir, cfg, init_dir)
    if done is not None:
        return done
    captioner, filt, processor = build_models(cfg, init_dir, share_vision=False)
    ctx = _context(pairs, processor, out, cfg, fingerprint, on_step)
    epochs, lr = cfg.finetune_epochs, cfg.finetune_lr
    jobs = (
        _Job("captioner", {"captioner": captioner}, ("lm",), epochs, lr, Temperature(1.0)),
        _Job("filter", {"filter": filt}, ("itc", "itm"), epochs, lr, Temperature(cfg.temperature)),
    )  # the captioner's LM uses no temperature
    log = _base_log("finetune", ctx, init_dir)
    for job in jobs:
        log["jobs"][job.name] = run_job(job, ctx)
    return _write_outputs(ctx, captioner, filt, processor, log)
