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

The world is split by topic: `scenes` (vocabulary, `Obj`/`Scene`, `concepts`, scene sampling),
`drawing` (Pillow rendering, JPEG), `captions` (the caption grammar: rendering, `parse_caption`,
`caption_is_true`, true captions; the grammar itself is in its docstring), `noise` (the noise
kinds of web alt-text and their text makers); this module writes a world to disk.

Noise decision: `buried` alt-text (a true caption inside boilerplate) counts as noisy
(`is_noisy=True`), as BLIP would: the text as a whole is not a clean caption, though a captioner
can recover the image. `truth.parquet` keeps the kind so an evaluation can choose otherwise.
By construction ``is_noisy == not caption_is_true(caption, scene)`` for every web row.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import schema
from curation.io import write_parquet
from curation.world.captions import caption_is_true, describe, render_caption, true_captions
from curation.world.drawing import encode_jpeg, render_scene
from curation.world.noise import NOISE_MIX, assign_kinds, web_caption
from curation.world.scenes import Scene, combo_probs, concepts, sample_scenes

CAPTIONS_PER_IMAGE = (2, 3)  # clean/eval: true phrasings per image (inclusive range)

# Arrow schemas of the files `write_world` writes, declared in schema.py with the others.
WEB, TRUTH, CLEAN, EVAL_TRUTH, LABELLED = (
    schema.SYNTH_WEB,
    schema.SYNTH_TRUTH,
    schema.CLEAN,
    schema.SYNTH_EVAL_TRUTH,
    schema.LABELLED,
)


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
