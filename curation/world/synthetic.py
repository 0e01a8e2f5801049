"""A synthetic "web" of shape images with known truth: the built-in demo and CapFilt's yardstick.

Real web pairs are noisy in ways nobody has labelled, so we cannot say how much CapFilt (BLIP,
Li et al. 2022, arXiv 2201.12086) cleaned them. Here every image is drawn from a *scene*
(background colour + 1-3 coloured shapes with a size and a 3x3-grid position), every caption is
written in a small grammar, and `caption_is_true` parses any caption back and checks each
attribute it states against the scene. That gives:

- web alt-text with a known noise kind per image (`NOISE_KINDS`), about 45% noisy by default;
- a clean, human-captioned-like set (BLIP's COCO role) and a disjoint evaluation set;
- synthetic-caption accuracy: the share of model captions fully true of their scene;
- concepts ("red circle", "red", "circle") for MetaCLIP balancing (Xu et al. 2023,
  arXiv 2309.16671): web colour x shape combos follow a Zipf law (long head, long tail), the
  evaluation set is uniform over them.

Grammar (tokens are lower-cased words, punctuation ignored, `grey`/`big`/`middle` accepted)::

    caption  := [PREFIX] [NUMBER ("shape" | "shapes")] [BG_FIRST] mention ("and"? mention)*
                [BG_TAIL]
    PREFIX   := ("a" | "an") ("photo" | "picture" | "image" | "drawing") "of"
    BG_FIRST := "a" COLOUR "background" "with"
    mention  := ("a" | "an" | "one") [SIZE] [COLOUR] SHAPE [("on" | "in" | "at") "the" POSITION]
    BG_TAIL  := "on" "a" COLOUR "background"

A caption is true when its background and count (if stated) match and its mentions can be
assigned to distinct objects whose attributes equal every attribute the mention states.
Anything outside the grammar (unknown words, no mention) is not true.

Noise decision: `buried` alt-text (a true caption inside boilerplate) counts as noisy
(`is_noisy=True`), as BLIP would: the text as a whole is not a clean caption, though a captioner
can recover the image. `truth.parquet` keeps the kind so an evaluation can choose otherwise.
By construction ``is_noisy == not caption_is_true(caption, scene)`` for every web row.
"""

import itertools
import json
import re
from dataclasses import asdict, dataclass, replace
from io import BytesIO
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from curation import schema
from curation.io import write_parquet

COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
BACKGROUNDS = ("white", "black", "gray")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "heart", "ring")
SIZES = ("small", "large")
# Row-major 3x3 grid: index = row * 3 + col.
POSITIONS = ("top left", "top", "top right", "left", "center", "right")
POSITIONS += ("bottom left", "bottom", "bottom right")
POSITION_PHRASES = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}
NUMBERS = {"one": 1, "two": 2, "three": 3}
PREFIXES = ("a photo of", "a picture of", "an image of", "a drawing of")
SYNONYMS = {"grey": "gray", "big": "large", "middle": "center", "centre": "center"}

RGB = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (130, 50, 170),
    "pink": (245, 130, 185),
    "brown": (125, 75, 35),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
}

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

ZIPF_EXPONENT = 1.0  # web colour x shape combo frequency ~ 1 / rank^s: a MetaCLIP-like head
CAPTIONS_PER_IMAGE = (2, 3)  # clean/eval: true phrasings per image (inclusive range)
JPEG_QUALITY = 90

# Arrow schemas of the files `write_world` writes, declared in schema.py with the others.
WEB, TRUTH, CLEAN, EVAL_TRUTH, LABELLED = (
    schema.SYNTH_WEB,
    schema.SYNTH_TRUTH,
    schema.CLEAN,
    schema.SYNTH_EVAL_TRUTH,
    schema.LABELLED,
)


@dataclass(frozen=True)
class Obj:
    """One drawn shape; `position` is a cell of the 3x3 grid (see POSITIONS)."""

    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "Scene":
        data = json.loads(text)
        return Scene(data["background"], tuple(Obj(**o) for o in data["objects"]))


@dataclass(frozen=True)
class Mention:
    """What a caption says about one object; None = not stated."""

    shape: str
    colour: str | None = None
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class Description:
    """A parsed (or to-be-rendered) caption in the world's grammar."""

    mentions: tuple[Mention, ...]
    background: str | None = None
    count: int | None = None
    prefix: str | None = None
    background_first: bool = False


@dataclass(frozen=True)
class WorldPaths:
    """Everything `write_world` wrote, relative names resolved against `root`."""

    root: Path
    images: Path  # images/web_{i:06d}.jpg, to be served over HTTP from `root`
    web: Path  # web.parquet: file, caption (the alt-text)
    truth: Path  # truth.parquet: evaluation only, never shown to the pipeline
    clean: Path  # clean.parquet: image, caption, image_id
    labelled: Path  # labelled.parquet: image, labels (the image encoder's pre-training set)
    eval: Path  # eval.parquet: image, caption, image_id
    eval_truth: Path  # eval_truth.parquet: image_id, scene
    concepts: Path  # concepts.txt, one per line


# --------------------------------------------------------------------------- concepts


def concepts() -> list[str]:
    """Metadata entries for balancing: every colour (objects' and the gray background), every
    shape, every "colour shape" combo; matched as MetaCLIP does, space-padded substrings."""
    combos = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    return list(COLOURS) + list(BACKGROUNDS[2:]) + list(SHAPES) + combos


def combo_probs(rng: np.random.Generator, exponent: float = ZIPF_EXPONENT) -> np.ndarray:
    """Zipf probabilities over colour x shape combos, ranks shuffled by `rng`.

    Index `k` is combo (COLOURS[k // len(SHAPES)], SHAPES[k % len(SHAPES)]). A long-tailed
    concept distribution is what MetaCLIP balancing flattens (arXiv 2309.16671, sec. 3).
    """
    n = len(COLOURS) * len(SHAPES)
    ranks = rng.permutation(n)
    weights = 1.0 / (ranks + 1.0) ** exponent
    return weights / weights.sum()


# --------------------------------------------------------------------------- scenes


def _make_scene(rng: np.random.Generator, combos: list[int]) -> Scene:
    """A scene whose objects have the given colour x shape combos, in distinct grid cells."""
    cells = rng.choice(len(POSITIONS), size=len(combos), replace=False)
    objects = tuple(
        Obj(
            shape=SHAPES[k % len(SHAPES)],
            colour=COLOURS[k // len(SHAPES)],
            size=SIZES[int(rng.integers(len(SIZES)))],
            position=POSITIONS[int(cell)],
        )
        for k, cell in zip(combos, cells, strict=True)
    )
    used = {o.colour for o in objects}
    backgrounds = [b for b in BACKGROUNDS if b not in used]
    return Scene(backgrounds[int(rng.integers(len(backgrounds)))], objects)


def sample_scenes(
    rng: np.random.Generator, n: int, probs: np.ndarray | None, seen: set[Scene]
) -> list[Scene]:
    """`n` new scenes of 1-3 objects, none already in `seen` (which is updated).

    `probs=None` samples combos uniformly and stratifies the first object's combo, so every
    combo appears (nearly) equally often: the evaluation set's uniform concept distribution.
    Scenes are unique across the whole world, so evaluation images never occur in the web set.
    """
    n_combos = len(COLOURS) * len(SHAPES)
    strata = rng.permutation(n_combos)
    scenes: list[Scene] = []
    while len(scenes) < n:
        k = int(rng.integers(1, 4))
        if probs is None:
            first = int(strata[len(scenes) % n_combos])
            combos = [first, *rng.integers(n_combos, size=k - 1).tolist()]
        else:
            combos = rng.choice(n_combos, size=k, p=probs).tolist()
        scene = _make_scene(rng, combos)
        if scene not in seen:
            seen.add(scene)
            scenes.append(scene)
    return scenes


# --------------------------------------------------------------------------- drawing


def _polygon(cx: float, cy: float, radii: list[float], start_deg: float = -90.0) -> list:
    """Points at equal angles around (cx, cy), one radius per point."""
    step = 2 * np.pi / len(radii)
    start = np.deg2rad(start_deg)
    return [
        (cx + r * np.cos(start + i * step), cy + r * np.sin(start + i * step))
        for i, r in enumerate(radii)
    ]


def _draw_heart(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill) -> None:
    h = r / 2
    for dx in (-h, h):
        draw.ellipse([cx + dx - h, cy - 0.35 * r - h, cx + dx + h, cy - 0.35 * r + h], fill=fill)
    draw.polygon([(cx - r, cy - 0.25 * r), (cx + r, cy - 0.25 * r), (cx, cy + r)], fill=fill)


def _draw_cross(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, fill) -> None:
    t = 0.3 * r
    draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
    draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill):
    """Draw one filled shape of 'radius' r centred at (cx, cy)."""
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(0.35 * r)))
    elif shape == "square":
        draw.rectangle([cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r], fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, [r, r, r]), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, [r, 0.45 * r] * 5), fill=fill)
    elif shape == "diamond":
        draw.polygon(
            [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=fill
        )
    elif shape == "cross":
        _draw_cross(draw, cx, cy, r, fill)
    elif shape == "heart":
        _draw_heart(draw, cx, cy, r, fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene, width: int, height: int) -> Image.Image:
    """Draw the scene: each object centred in its grid cell; large fills 90% of the cell."""
    img = Image.new("RGB", (width, height), RGB[scene.background])
    draw = ImageDraw.Draw(img)
    cell = min(width, height) / 3
    for obj in scene.objects:
        row, col = divmod(POSITIONS.index(obj.position), 3)
        cx, cy = (col + 0.5) * width / 3, (row + 0.5) * height / 3
        r = cell * (0.45 if obj.size == "large" else 0.25)
        _draw_shape(draw, obj.shape, cx, cy, r, RGB[obj.colour])
    return img


def encode_jpeg(img: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buf = BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --------------------------------------------------------------------------- grammar: render


def _article(first_word: str) -> str:
    return "an" if first_word[0] in "aeiou" else "a"


def render_mention(m: Mention) -> str:
    words = [w for w in (m.size, m.colour, m.shape) if w is not None]
    text = " ".join([_article(words[0]), *words])
    return f"{text} {POSITION_PHRASES[m.position]}" if m.position else text


def render_caption(d: Description) -> str:
    """The caption text of a description (inverse of `parse_caption`)."""
    parts = [d.prefix] if d.prefix else []
    if d.count is not None:
        word = [w for w, n in NUMBERS.items() if n == d.count][0]
        parts.append(f"{word} {'shape' if d.count == 1 else 'shapes'}:")
    if d.background and d.background_first:
        parts.append(f"a {d.background} background with")
    mentions = [render_mention(m) for m in d.mentions]
    head = ", ".join(mentions[:-1])
    parts.append(f"{head} and {mentions[-1]}" if head else mentions[-1])
    if d.background and not d.background_first:
        parts.append(f"on a {d.background} background")
    return " ".join(parts)


# --------------------------------------------------------------------------- grammar: parse


class _NoParse(Exception):
    """The text is outside the world's grammar."""


def _tokens(text: str) -> list[str]:
    words = re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()
    return [SYNONYMS.get(w, w) for w in words]


def _at(toks: list[str], i: int, *options: str) -> bool:
    return i < len(toks) and toks[i] in options


def _parse_position(toks: list[str], i: int) -> tuple[int, str | None]:
    """`("on"|"in"|"at") "the" POSITION` at i, or no position."""
    if not (_at(toks, i, "on", "in", "at") and _at(toks, i + 1, "the")):
        return i, None
    if _at(toks, i + 2, "top", "bottom") and _at(toks, i + 3, "left", "right"):
        return i + 4, f"{toks[i + 2]} {toks[i + 3]}"
    if _at(toks, i + 2, "top", "bottom", "left", "right", "center"):
        return i + 3, toks[i + 2]
    raise _NoParse


def _parse_mention(toks: list[str], i: int) -> tuple[int, Mention]:
    if not _at(toks, i, "a", "an", "one"):
        raise _NoParse
    i += 1
    size = toks[i] if _at(toks, i, *SIZES) else None
    i += size is not None
    colour = toks[i] if _at(toks, i, *COLOURS, *BACKGROUNDS) else None
    i += colour is not None
    if not _at(toks, i, *SHAPES):
        raise _NoParse
    shape = toks[i]
    i, position = _parse_position(toks, i + 1)
    return i, Mention(shape, colour, size, position)


def _parse_head(toks: list[str]) -> tuple[int, str | None, int | None, str | None]:
    """Optional PREFIX, NUMBER "shape(s)", BG_FIRST: (next index, prefix, count, background)."""
    i, prefix, count, background = 0, None, None, None
    if _at(toks, 0, "a", "an") and _at(toks, 1, "photo", "picture", "image", "drawing"):
        if not _at(toks, 2, "of"):
            raise _NoParse
        i, prefix = 3, " ".join(toks[:3])
    if _at(toks, i, *NUMBERS) and _at(toks, i + 1, "shape", "shapes"):
        i, count = i + 2, NUMBERS[toks[i]]
    if _at(toks, i, "a") and _at(toks, i + 2, "background") and _at(toks, i + 3, "with"):
        if not _at(toks, i + 1, *COLOURS, *BACKGROUNDS):
            raise _NoParse
        i, background = i + 4, toks[i + 1]
    return i, prefix, count, background


def _parse_tail(toks: list[str], i: int) -> str | None:
    """Optional BG_TAIL, which must end the caption."""
    if i == len(toks):
        return None
    ok = _at(toks, i, "on") and _at(toks, i + 1, "a") and _at(toks, i + 3, "background")
    if not ok or not _at(toks, i + 2, *COLOURS, *BACKGROUNDS) or i + 4 != len(toks):
        raise _NoParse
    return toks[i + 2]


def parse_caption(text: str) -> Description | None:
    """Parse a caption in the world's grammar (module docstring); None if it is outside it."""
    toks = _tokens(text)
    try:
        i, prefix, count, bg_first = _parse_head(toks)
        i, first = _parse_mention(toks, i)
        mentions = [first]
        while _at(toks, i, "a", "an", "one", "and"):
            i, m = _parse_mention(toks, i + _at(toks, i, "and"))
            mentions.append(m)
        bg_tail = _parse_tail(toks, i)
    except _NoParse:
        return None
    if bg_first and bg_tail:
        return None
    return Description(tuple(mentions), bg_first or bg_tail, count, prefix, bool(bg_first))


def _mention_fits(m: Mention, obj: Obj) -> bool:
    return all(
        stated is None or stated == actual
        for stated, actual in (
            (m.shape, obj.shape),
            (m.colour, obj.colour),
            (m.size, obj.size),
            (m.position, obj.position),
        )
    )


def description_is_true(d: Description, scene: Scene) -> bool:
    """Every stated attribute holds; mentions go to distinct objects (any assignment)."""
    if d.background is not None and d.background != scene.background:
        return False
    if d.count is not None and d.count != len(scene.objects):
        return False
    if not d.mentions or len(d.mentions) > len(scene.objects):
        return False
    return any(
        all(_mention_fits(m, o) for m, o in zip(d.mentions, objs, strict=True))
        for objs in itertools.permutations(scene.objects, len(d.mentions))
    )


def caption_is_true(caption: str, scene: Scene) -> bool:
    """True when `caption` parses in the world's grammar and everything it states holds.

    Used for synthetic-caption accuracy (share of model captions fully true of their scene);
    a caption with unknown words or no object is not true.
    """
    d = parse_caption(caption)
    return d is not None and description_is_true(d, scene)


# --------------------------------------------------------------------------- true captions

STYLES = ("full", "count", "single", "background_first", "prefixed", "short")


def _mention(obj: Obj, rng: np.random.Generator | None = None) -> Mention:
    """All attributes, or (with rng) shape plus a random subset of the others."""
    if rng is None:
        return Mention(obj.shape, obj.colour, obj.size, obj.position)
    keep = rng.random(3) < 0.5
    return Mention(
        obj.shape,
        obj.colour if keep[0] else None,
        obj.size if keep[1] else None,
        obj.position if keep[2] else None,
    )


def describe(scene: Scene, style: str, rng: np.random.Generator) -> Description:
    """A true description of `scene` in one of STYLES.

    full: "a large red circle on the left and a small blue square at the top on a white
    background"; count: "two shapes: a red circle and a blue square"; single: one object, all
    attributes; background_first: "a white background with a red circle"; prefixed: "a picture
    of ..." with random objects and attributes (the captioner's prompt); short: colour + shape.
    """
    objs = scene.objects
    short = tuple(Mention(o.shape, o.colour) for o in objs)
    if style == "full":
        return Description(tuple(_mention(o) for o in objs), scene.background)
    if style == "count":
        return Description(short, count=len(objs))
    if style == "single":
        return Description((_mention(objs[int(rng.integers(len(objs)))]),))
    if style == "background_first":
        return Description(short, scene.background, background_first=True)
    if style == "prefixed":
        k = int(rng.integers(1, len(objs) + 1))
        picked = rng.choice(len(objs), size=k, replace=False)
        prefix = PREFIXES[int(rng.integers(len(PREFIXES)))]
        return Description(tuple(_mention(objs[int(j)], rng) for j in picked), prefix=prefix)
    if style == "short":
        return Description(short)
    raise ValueError(f"unknown caption style {style!r}; use one of {STYLES}")


def true_captions(scene: Scene, rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct-style true captions of `scene` (fewer if two styles render the same)."""
    styles = rng.permutation(len(STYLES))[:n]
    captions = [render_caption(describe(scene, STYLES[int(s)], rng)) for s in styles]
    return list(dict.fromkeys(captions))


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


# --------------------------------------------------------------------------- writing


def _image_sizes(rng: np.random.Generator, n: int, image_size: tuple[int, int]) -> np.ndarray:
    lo, hi = image_size
    if not 12 <= lo <= hi:
        raise ValueError(f"image_size must be (min_side, max_side) with 12 <= min <= max: {lo, hi}")
    return rng.integers(lo, hi + 1, size=(n, 2))  # [n, (width, height)]


def _write_web(root: Path, scenes: list[Scene], sizes, mix, rng) -> None:
    """images/web_*.jpg and web.parquet (what the pipeline sees), truth.parquet (what not)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    files, captions, truth = [], [], []
    for i, (scene, kind) in enumerate(
        zip(scenes, assign_kinds(len(scenes), mix, rng), strict=True)
    ):
        file = f"images/web_{i:06d}.jpg"
        (root / file).write_bytes(encode_jpeg(render_scene(scene, *map(int, sizes[i]))))
        caption = web_caption(kind, scenes, i, rng)
        files.append(file)
        captions.append(caption)
        full = render_caption(describe(scene, "full", rng))
        truth.append((kind, not caption_is_true(caption, scene), full, scene.to_json()))
    write_parquet(pa.table({"file": files, "caption": captions}), root / "web.parquet", WEB)
    kinds, noisy, full, scene_json = map(list, zip(*truth, strict=True))
    table = pa.table(
        {"file": files, "kind": kinds, "is_noisy": noisy, "true_caption": full, "scene": scene_json}
    )
    write_parquet(table, root / "truth.parquet", TRUTH)


def captioned_table(scenes: list[Scene], sizes, rng: np.random.Generator) -> pa.Table:
    """CLEAN-format rows: 2-3 true phrasings per image, `image_id` = index in `scenes`."""
    images, captions, ids = [], [], []
    for i, scene in enumerate(scenes):
        jpeg = encode_jpeg(render_scene(scene, *map(int, sizes[i])))
        lo, hi = CAPTIONS_PER_IMAGE
        for caption in true_captions(scene, rng, int(rng.integers(lo, hi + 1))):
            images.append(jpeg)
            captions.append(caption)
            ids.append(i)
    return pa.table({"image": images, "caption": captions, "image_id": ids}, schema=CLEAN)


def object_labels(scene: Scene) -> list[str]:
    """The labelled set's classes for a scene: each object's colour, shape and "colour shape".

    Object classes only, as ImageNet's are: sizes, positions, counts and backgrounds are left for
    image-text pre-training to learn from captions.
    """
    found = {label for o in scene.objects for label in (o.colour, o.shape, f"{o.colour} {o.shape}")}
    return sorted(found)


def labelled_table(scenes: list[Scene], sizes) -> pa.Table:
    """LABELLED-format rows, one per scene."""
    images = [encode_jpeg(render_scene(s, *map(int, sizes[i]))) for i, s in enumerate(scenes)]
    labels = [object_labels(scene) for scene in scenes]
    return pa.table({"image": images, "labels": labels}, schema=LABELLED)


def write_world(
    out_dir: str | Path,
    n_web: int = 2000,
    clean_frac: float = 0.08,
    n_eval: int = 200,
    seed: int = 0,
    image_size: tuple[int, int] = (64, 96),
    noise_mix: dict[str, float] | None = None,
    n_labelled: int | None = None,
) -> WorldPaths:
    """Write a synthetic web (images + alt-text + truth), a clean set and an eval set.

    Deterministic in `seed`. `image_size` = (min_side, max_side): each image's width and
    height are drawn in that range. The clean set has round(clean_frac * n_web) images drawn
    from the web's long-tailed distribution; the eval set is uniform over colour x shape
    combos. The labelled set (the image encoder's ImageNet analog) has `n_labelled` images
    (default 2 * n_web), uniform over combos, drawn with its own RNG so that the other sets do
    not depend on it. No scene occurs twice across the four sets.
    """
    if n_web < 2 or n_eval < 1 or not 0 < clean_frac <= 1:
        raise ValueError("need n_web >= 2, n_eval >= 1 and 0 < clean_frac <= 1")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    probs, seen = combo_probs(rng), set()
    n_clean = max(1, round(clean_frac * n_web))
    web = sample_scenes(rng, n_web, probs, seen)
    clean = sample_scenes(rng, n_clean, probs, seen)
    evals = sample_scenes(rng, n_eval, None, seen)
    _write_web(root, web, _image_sizes(rng, n_web, image_size), noise_mix or NOISE_MIX, rng)
    for name, scenes in (("clean", clean), ("eval", evals)):
        table = captioned_table(scenes, _image_sizes(rng, len(scenes), image_size), rng)
        write_parquet(table, root / f"{name}.parquet", CLEAN)
    ids = pa.array(range(len(evals)), pa.int64())
    eval_truth = pa.table({"image_id": ids, "scene": [s.to_json() for s in evals]})
    write_parquet(eval_truth, root / "eval_truth.parquet", EVAL_TRUTH)
    own_rng = np.random.default_rng([seed, 1])
    n_labelled = 2 * n_web if n_labelled is None else n_labelled
    labelled = sample_scenes(own_rng, n_labelled, None, seen)
    sizes = _image_sizes(own_rng, n_labelled, image_size)
    write_parquet(labelled_table(labelled, sizes), root / "labelled.parquet", LABELLED)
    (root / "concepts.txt").write_text("\n".join(concepts()) + "\n")
    return world_paths(root)


def world_paths(root: str | Path) -> WorldPaths:
    """The file layout of a world written by `write_world` under `root`."""
    root = Path(root)
    names = ("web", "truth", "clean", "eval", "eval_truth", "labelled")
    files = {name: root / f"{name}.parquet" for name in names}
    return WorldPaths(root=root, images=root / "images", concepts=root / "concepts.txt", **files)


def url_list(world_dir: str | Path, base_url: str) -> pa.Table:
    """The web set as a URL list (`url`, `caption`), for a server whose document root is
    `world_dir` (so `base_url/images/web_000000.jpg` serves the first image)."""
    web = pq.read_table(world_paths(world_dir).web)
    base = base_url.rstrip("/")
    urls = [f"{base}/{file}" for file in web.column("file").to_pylist()]
    return pa.table({"url": urls, "caption": web.column("caption")})
