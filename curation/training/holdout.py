"""The clean images held out of the filter's fine-tuning, and the ITM scores they give: what
`[capfilt] itm_threshold = "auto"` calibrates on (`curation.pipeline.calibration`)."""

import hashlib
import random

import torch

from curation.models.blip import Filter
from curation.training.data import negatives_for, pixels_of, web_negative_pool

Pairs = list[tuple[bytes, str]]
SCORE_BATCH = 64  # held-out images per ITM call


def split_holdout(pairs: Pairs, share: float, seed: int) -> tuple[Pairs, Pairs]:
    """(training pairs, held-out pairs): round(share x images) distinct images held out with
    all their captions, the images chosen by a seeded hash of their bytes (so the same set and
    seed hold out the same images, whatever the row order)."""
    images = sorted(
        {data for data, _ in pairs},
        key=lambda data: hashlib.sha256(f"{seed}:".encode() + data).digest(),
    )
    held = set(images[: round(share * len(images))])
    return [p for p in pairs if p[0] not in held], [p for p in pairs if p[0] in held]


def held_out_scores(
    filt: Filter, held_out: Pairs, web_texts: list[str], seed: int
) -> tuple[list[float], dict[str, list[float]]]:
    """ITM match probabilities of the held-out true pairs (positives) and of three negatives
    per pair: a web text (of another image; absent without `web_texts`), the caption of another
    held-out image, and a compositional negative of its own caption (NegCLIP's swap/replace,
    `data.negatives_for`). Pairs whose image does not decode are left out."""
    pixels, ok = pixels_of([data for data, _ in held_out], filt.processor)  # (I, 3, H, W)
    pairs = [held_out[i] for i in ok]
    rng = random.Random(seed)
    web = web_negative_pool(web_texts, [text for _, text in pairs])
    texts, kinds = [], []  # per pair: its texts, and the kind of each negative
    for (data, text), swapped in zip(
        pairs, negatives_for([t for _, t in pairs], seed), strict=True
    ):
        others = [t for d, t in pairs if d != data]
        negatives = {
            "web_text": rng.choice(web) if web else None,
            "other_caption": rng.choice(others) if others else None,
            "compositional": swapped if swapped != text else None,
        }
        negatives = {kind: t for kind, t in negatives.items() if t is not None}
        texts.append([text, *negatives.values()])
        kinds.append(list(negatives))
    itm = _score(filt, pixels, texts)
    by_kind: dict[str, list[float]] = {"web_text": [], "other_caption": [], "compositional": []}
    for per_pair, names in zip(itm, kinds, strict=True):
        for kind, score in zip(names, per_pair[1:], strict=True):
            by_kind[kind].append(score)
    return [per_pair[0] for per_pair in itm], by_kind


def _score(filt: Filter, pixels: torch.Tensor, texts: list[list[str]]) -> list[list[float]]:
    """`Filter.score`'s ITM probabilities, SCORE_BATCH images at a time."""
    itm = []
    for start in range(0, len(texts), SCORE_BATCH):
        chunk = slice(start, start + SCORE_BATCH)
        itm += filt.score(pixels[chunk], texts[chunk])[0]
    return itm
