"""The synthetic world's vocabulary and scenes: what an image shows, and drawing scenes at random.

A scene is a background colour plus 1-3 coloured shapes, each with a size and a 3x3-grid position.
Web colour x shape combos follow a Zipf law (`combo_probs`); `concepts` lists the metadata entries
for MetaCLIP balancing (Xu et al. 2023, arXiv 2309.16671).
"""

import json
from dataclasses import asdict, dataclass

import numpy as np

COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
BACKGROUNDS = ("white", "black", "gray")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "heart", "ring")
SIZES = ("small", "large")
# Row-major 3x3 grid: index = row * 3 + col.
POSITIONS = ("top left", "top", "top right", "left", "center", "right")
POSITIONS += ("bottom left", "bottom", "bottom right")

ZIPF_EXPONENT = 1.0  # web colour x shape combo frequency ~ 1 / rank^s: a MetaCLIP-like head


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
