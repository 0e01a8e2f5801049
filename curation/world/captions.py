"""The synthetic world's caption grammar: rendering, parsing, truth, and true captions of a scene.

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
"""

import itertools
import re
from dataclasses import dataclass

import numpy as np

from curation.world.scenes import BACKGROUNDS, COLOURS, SHAPES, SIZES, Obj, Scene

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
