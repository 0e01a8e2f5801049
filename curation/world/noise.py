"""The noise kinds of web alt-text (`NOISE_KINDS`, `NOISE_MIX`) and the text makers for each.

`web_caption` writes the alt-text of one web image for its kind; `assign_kinds` draws the kinds.
"""

from dataclasses import replace

import numpy as np

from curation.world.captions import (
    STYLES,
    Description,
    caption_is_true,
    describe,
    description_is_true,
    render_caption,
    true_captions,
)
from curation.world.scenes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Scene

# Share of web alt-text per kind. Noisy = every kind but `clean`: 45% by default, in the range
# BLIP reports for web alt-text after its filter removes a large part of it.
NOISE_KINDS = ("clean", "wrong_attribute", "other_image", "boilerplate", "buried", "empty")
NOISE_MIX = {
    "clean": 0.55,  # a true caption
    "wrong_attribute": 0.12,  # a true caption with one attribute changed
    "other_image": 0.10,  # the caption of another image
    "boilerplate": 0.10,  # "IMG_0423.jpg", "free shipping on all orders"...
    "buried": 0.08,  # a true caption inside boilerplate (noisy but recoverable)
    "empty": 0.05,  # ""
}
BOILERPLATE = (
    "IMG_{n:04d}.jpg",
    "DSC_{n:05d}.JPG",
    "click to enlarge",
    "free shipping on all orders",
    "stock photo {n}",
    "untitled",
    "thumbnail {n}",
    "photo by user{n}",
    "buy now and save {p}%",
    "download high resolution",
    "best price guaranteed",
    "screenshot {n}",
    "product view {n}",
    "copyright {y} all rights reserved",
)
BURIED = ("{b} | {c}", "{c} - {b}", "{b} {c} {b2}", "{c} | {b}")

# --------------------------------------------------------------------------- noisy alt-text

_VOCAB = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS}


def _mutations(d: Description, rng: np.random.Generator):
    """Every one-attribute change of `d`, attributes in random order."""
    slots = [(i, f) for i, m in enumerate(d.mentions) for f in _VOCAB if getattr(m, f)]
    slots += [(-1, "background")] if d.background else []
    for j in rng.permutation(len(slots)):
        i, field = slots[int(j)]
        current = d.background if i < 0 else getattr(d.mentions[i], field)
        values = [v for v in _VOCAB.get(field, BACKGROUNDS) if v != current]
        for k in rng.permutation(len(values)):
            if i < 0:
                yield replace(d, background=values[int(k)])
            else:
                m = replace(d.mentions[i], **{field: values[int(k)]})
                yield replace(d, mentions=d.mentions[:i] + (m,) + d.mentions[i + 1 :])


def wrong_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption of `scene` with one attribute changed so that it is false (BLIP's "noisy")."""
    for _ in range(20):
        style = STYLES[int(rng.integers(len(STYLES)))]
        for d in _mutations(describe(scene, style, rng), rng):
            if not description_is_true(d, scene):
                return render_caption(d)
    raise RuntimeError(f"no false one-attribute change found for {scene}")


def boilerplate(rng: np.random.Generator) -> str:
    """Alt-text that says nothing about the image."""
    template = BOILERPLATE[int(rng.integers(len(BOILERPLATE)))]
    n, p, y = int(rng.integers(10_000)), int(rng.integers(5, 60)), int(rng.integers(1999, 2024))
    return template.format(n=n, m=n + int(rng.integers(1, 20)), p=p, y=y)


def buried(caption: str, rng: np.random.Generator) -> str:
    """A true caption surrounded by boilerplate ("IMG_0423.jpg | a red circle")."""
    template = BURIED[int(rng.integers(len(BURIED)))]
    return template.format(b=boilerplate(rng), b2=boilerplate(rng), c=caption)


def _other_caption(scenes: list[Scene], i: int, rng: np.random.Generator) -> str:
    """A true caption of another scene that is false of scene i (retried a few times)."""
    caption = ""
    for _ in range(20):
        j = int(rng.integers(len(scenes) - 1))
        j += j >= i
        caption = true_captions(scenes[j], rng, 1)[0]
        if not caption_is_true(caption, scenes[i]):
            break
    return caption


def assign_kinds(n: int, mix: dict[str, float], rng: np.random.Generator) -> list[str]:
    """Exactly round(share * n) rows per kind (largest remainder), in random order."""
    unknown = set(mix) - set(NOISE_KINDS)
    if unknown or abs(sum(mix.values()) - 1.0) > 1e-6:
        raise ValueError(f"noise mix must use {NOISE_KINDS} and sum to 1, got {mix}")
    exact = np.array([mix[k] * n for k in mix])
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact)[: n - counts.sum()]] += 1
    kinds = np.repeat(list(mix), counts)
    return [str(k) for k in rng.permutation(kinds)]


def web_caption(kind: str, scenes: list[Scene], i: int, rng: np.random.Generator) -> str:
    """Alt-text of noise `kind` for web image i."""
    if kind == "clean":
        return true_captions(scenes[i], rng, 1)[0]
    if kind == "wrong_attribute":
        return wrong_caption(scenes[i], rng)
    if kind == "other_image":
        return _other_caption(scenes, i, rng)
    if kind == "boilerplate":
        return boilerplate(rng)
    if kind == "buried":
        return buried(true_captions(scenes[i], rng, 1)[0], rng)
    if kind == "empty":
        return ""
    raise ValueError(f"unknown noise kind {kind!r}")
