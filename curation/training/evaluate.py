"""How good is a captioner/filter pair? Retrieval, captioning and caption truth on a held-out set.

BLIP (Li et al. 2022, arXiv 2201.12086) judges each bootstrapping round by downstream tasks:
image-text retrieval recall@k (sec. 5.1, table 5) and captioning BLEU-4 / CIDEr (sec. 5.2,
table 7). We do the same, small and fast on CPU:

- retrieval: image-to-text and text-to-image recall@1/@5 from the filter's ITC cosine
  similarities over every eval image and caption (captions grouped by `image_id`); BLIP reranks
  its top-k with ITM, which this skips (the ITC ranking alone is the scorer's quality too);
- captioning: the captioner decodes deterministically (beam search, 3 beams, BLIP's COCO
  setting) from the prompt "a picture of", which is stripped, and BLEU-4 and CIDEr-D compare
  the result with the image's reference captions (`curation.training.metrics`);
- truth: on the synthetic world, the share of generated captions fully true of their scene
  (`curation.world.captions.caption_is_true`), which n-gram metrics cannot measure.

`model_dir` is a folder with `captioner/` and `filter/` as `curation.training.train` writes them
(any
`save_pretrained` checkpoints work).
"""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.nn.functional import normalize

from curation.config import CapFiltConfig, TrainConfig
from curation.models.blip import (
    Captioner,
    Filter,
    image_processor_config,
    load_captioner,
    load_filter,
    pick_device,
    preprocess,
)
from curation.pipeline.images import decode_image
from curation.training import metrics
from curation.training.data import require_columns
from curation.world.captions import caption_is_true
from curation.world.scenes import Scene

BATCH_SIZE = 64  # images or texts per model call
MAX_TEXT_TOKENS = TrainConfig().max_text_tokens  # as the models were trained
PROMPT = "a picture of"  # BLIP's captioning prompt, as the captioner was trained with
NUM_BEAMS = 3  # BLIP's COCO captioning evaluation: beam search with 3 beams
# The synthetic world's captions run to ~32 tokens (three objects with every attribute); a
# 20-token cap (BLIP's COCO max_length) would cut them mid-phrase and make them false.
MAX_NEW_TOKENS = 30
SAMPLES = 8  # generated captions echoed in the result, for a human look


@dataclass
class EvalSet:
    """An eval table grouped by image: each image once, each caption with its image's id."""

    image_ids: list[int]  # (I,) in order of first appearance
    images: list[bytes]  # (I,) encoded image of each id
    texts: list[str]  # (T,) every caption
    text_image_ids: list[int]  # (T,) the image id each caption describes


def load_eval_set(eval_parquet: str | Path) -> EvalSet:
    """Read an eval table (`schema.CLEAN`: image, caption, optional image_id) grouped by image:
    by `image_id` when the table has it, else rows with identical image bytes are one image
    (ids 0, 1, ... in order of first appearance).

    Raises:
        ConfigError: the file is missing, not Parquet, or lacks `image` or `caption`.
    """
    names = require_columns(eval_parquet, "eval set", ("image", "caption"))
    columns = ["image", "caption"] + (["image_id"] if "image_id" in names else [])
    table = pq.read_table(eval_parquet, columns=columns).to_pydict()
    ids = table.get("image_id") or ids_by_bytes(table["image"])
    first: dict[int, bytes] = {}
    for image, image_id in zip(table["image"], ids, strict=True):
        first.setdefault(image_id, image)
    return EvalSet(list(first), list(first.values()), table["caption"], ids)


def ids_by_bytes(images: list[bytes]) -> list[int]:
    """One id per distinct image (identical bytes), numbered in order of first appearance."""
    ids: dict[bytes, int] = {}
    return [ids.setdefault(image, len(ids)) for image in images]


def eval_pixels(processor, images: list[bytes]) -> torch.Tensor:
    """Decode and preprocess every eval image; an eval set must decode whole. (I, 3, H, W)"""
    decoded = [decode_image(data, 1, CapFiltConfig().max_image_pixels) for data in images]
    bad = [i for i, d in enumerate(decoded) if d.image is None]
    if bad:
        raise ValueError(f"eval image {bad[0]} does not decode: {decoded[bad[0]].detail}")
    return preprocess(processor, [d.image for d in decoded])


def _chunks(n: int, size: int = BATCH_SIZE) -> list[slice]:
    return [slice(i, i + size) for i in range(0, n, size)]


@torch.inference_mode()
def itc_similarity(filt: Filter, pixels: torch.Tensor, texts: list[str]) -> np.ndarray:
    """Cosine similarity of every image with every text, unimodal ITC features. (I, T)"""
    model, image_feats, text_feats = filt.model, [], []
    for part in _chunks(len(pixels)):
        embeds = model.vision_model(pixel_values=filt.to_device(pixels[part]))[0]  # (b, 1+P, Dv)
        image_feats.append(normalize(model.vision_proj(embeds[:, 0, :]).float(), dim=-1))
    for part in _chunks(len(texts)):
        tokens = filt.tokenize(texts[part], MAX_TEXT_TOKENS)  # (b, L)
        hidden = model.text_encoder(**tokens).last_hidden_state  # (b, L, Dt), no cross-attention
        text_feats.append(normalize(model.text_proj(hidden[:, 0, :]).float(), dim=-1))
    return (torch.cat(image_feats) @ torch.cat(text_feats).t()).cpu().numpy()


@torch.inference_mode()
def generate_captions(
    captioner: Captioner,
    pixels: torch.Tensor,
    num_beams: int = NUM_BEAMS,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[str]:
    """One deterministic caption per image (beam search; 1 beam = greedy), prompt removed."""
    prompt_ids = captioner.tokenize([PROMPT], max_tokens=16)["input_ids"]  # (1, P)
    captions: list[str] = []
    for part in _chunks(len(pixels)):
        images = captioner.to_device(pixels[part])  # (b, 3, H, W)
        input_ids = prompt_ids.repeat(len(images), 1)  # (b, P); generate sets [CLS] -> [DEC]
        sequences = captioner.model.generate(
            pixel_values=images,
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            min_new_tokens=1,  # BLIP's min_length 5 counts "[DEC] a picture of"
        )  # (b, P - 1 + new)
        captions += captioner._strip_prompt(sequences, prompt_ids)
    return captions


def caption_truth(captions: list[str], image_ids: list[int], truth_parquet: str | Path) -> float:
    """Share of captions fully true of their image's scene (synthetic world's eval_truth)."""
    table = pq.read_table(truth_parquet, columns=["image_id", "scene"]).to_pydict()
    scenes = dict(zip(table["image_id"], table["scene"], strict=True))
    missing = [i for i in image_ids if i not in scenes]
    if missing:
        raise ValueError(f"{truth_parquet} has no scene for image_id {missing[0]}")
    true = [
        caption_is_true(caption, Scene.from_json(scenes[image_id]))
        for caption, image_id in zip(captions, image_ids, strict=True)
    ]
    return float(np.mean(true)) if true else 0.0


def _references(data: EvalSet) -> list[list[str]]:
    """The reference captions of each image, in image order."""
    refs: dict[int, list[str]] = {image_id: [] for image_id in data.image_ids}
    for text, image_id in zip(data.texts, data.text_image_ids, strict=True):
        refs[image_id].append(text)
    return [refs[image_id] for image_id in data.image_ids]


def evaluate(
    model_dir: str | Path,
    eval_parquet: str | Path,
    truth: str | Path | None = None,
    num_beams: int = NUM_BEAMS,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> dict:
    """Recall@1/@5 both ways (filter ITC), BLEU-4 and CIDEr-D (captioner), and with `truth`
    (eval_truth.parquet) the share of generated captions true of their scene."""
    started = time.perf_counter()
    device, dtype = pick_device()
    filt = load_filter(str(Path(model_dir) / "filter"), device, dtype)
    captioner = load_captioner(str(Path(model_dir) / "captioner"), device, dtype)
    data = load_eval_set(eval_parquet)
    pixels = eval_pixels(filt.processor, data.images)
    same = image_processor_config(filt.processor) == image_processor_config(captioner.processor)
    cap_pixels = pixels if same else eval_pixels(captioner.processor, data.images)
    sim = itc_similarity(filt, pixels, data.texts)  # (I, T)
    result = metrics.retrieval_recall(sim, data.text_image_ids, data.image_ids)
    captions = generate_captions(captioner, cap_pixels, num_beams, max_new_tokens)
    refs = _references(data)
    result |= {"bleu4": metrics.bleu4(captions, refs), "cider": metrics.cider_d(captions, refs)}
    if truth is not None:
        result["caption_true"] = caption_truth(captions, data.image_ids, truth)
    samples = zip(data.image_ids[:SAMPLES], captions, refs, strict=False)
    result["samples"] = [{"image_id": i, "caption": c, "references": r} for i, c, r in samples]
    result |= {"images": len(data.image_ids), "texts": len(data.texts)}
    result["seconds"] = time.perf_counter() - started
    return result
