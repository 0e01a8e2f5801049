"""The synthetic world: determinism, known noise, disjoint splits, and the caption grammar."""

import hashlib
from collections import Counter
from io import BytesIO

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.world import synthetic as syn
from curation.world.captions import (
    STYLES,
    Mention,
    caption_is_true,
    describe,
    parse_caption,
    render_caption,
    render_mention,
    true_captions,
)
from curation.world.drawing import RGB, encode_jpeg, render_scene
from curation.world.noise import (
    NOISE_KINDS,
    NOISE_MIX,
    assign_kinds,
    boilerplate,
    buried,
    wrong_caption,
)
from curation.world.scenes import SHAPES, Obj, Scene, combo_probs, concepts, sample_scenes

SCENE = Scene(
    "white",
    (Obj("circle", "red", "large", "left"), Obj("square", "blue", "small", "top")),
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return syn.write_world(out, n_web=300, clean_frac=0.1, n_eval=40, seed=0)


def _read(path):
    return pq.read_table(path).to_pylist()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_same_seed_same_world_other_seed_other_world(tmp_path):
    worlds = [
        syn.write_world(tmp_path / d, n_web=30, n_eval=5, seed=s)
        for d, s in (("a", 3), ("b", 3), ("c", 4))
    ]
    for name in ("web", "truth", "clean", "eval", "eval_truth", "labelled"):
        a, b = (pq.read_table(getattr(w, name)) for w in worlds[:2])
        assert a.equals(b), name
    for i in range(30):
        file = f"web_{i:06d}.jpg"
        assert (worlds[0].images / file).read_bytes() == (worlds[1].images / file).read_bytes()
    assert _read(worlds[0].truth) != _read(worlds[2].truth)


def test_noise_rate_in_band_and_every_kind_present(world):
    truth = _read(world.truth)
    noisy = sum(r["is_noisy"] for r in truth) / len(truth)
    assert 0.40 <= noisy <= 0.50
    kinds = Counter(r["kind"] for r in truth)
    assert set(kinds) == set(NOISE_KINDS)
    assert kinds["clean"] == round(0.55 * 300)


def test_is_noisy_is_the_truth_of_the_alt_text(world):
    web = {r["file"]: r["caption"] for r in _read(world.web)}
    for row in _read(world.truth):
        scene = Scene.from_json(row["scene"])
        caption = web[row["file"]]
        assert row["is_noisy"] == (row["kind"] != "clean"), row
        assert row["is_noisy"] == (not caption_is_true(caption, scene)), row
        assert caption_is_true(row["true_caption"], scene)
        if row["kind"] == "empty":
            assert caption == ""


def test_truth_covers_every_web_image_and_images_match_sizes(world):
    web, truth = _read(world.web), _read(world.truth)
    assert [r["file"] for r in web] == [r["file"] for r in truth]
    assert web[0]["file"] == "images/web_000000.jpg"
    for row in web[:20]:
        with Image.open(world.root / row["file"]) as img:
            assert img.format == "JPEG" and 64 <= min(img.size) <= max(img.size) <= 96


def test_clean_and_eval_are_disjoint_from_web_and_each_other(world):
    web = {_sha((world.root / r["file"]).read_bytes()) for r in _read(world.web)}
    clean = {_sha(r["image"]) for r in _read(world.clean)}
    evals = {_sha(r["image"]) for r in _read(world.eval)}
    assert len(clean) == 30 and len(evals) == 40
    assert not (web & clean) and not (web & evals) and not (clean & evals)


def test_labelled_set_is_disjoint_and_leaves_the_other_sets_alone(world, tmp_path):
    labelled = _read(world.labelled)
    assert len(labelled) == 600  # 2 x n_web by default
    images = {_sha(r["image"]) for r in labelled}
    others = {_sha(r["image"]) for r in _read(world.clean) + _read(world.eval)}
    others |= {_sha((world.root / r["file"]).read_bytes()) for r in _read(world.web)}
    assert len(images) == 600 and not images & others
    small = syn.write_world(tmp_path, n_web=300, clean_frac=0.1, n_eval=40, seed=0, n_labelled=7)
    for name in ("web", "truth", "clean", "eval", "eval_truth"):
        assert pq.read_table(getattr(small, name)).equals(pq.read_table(getattr(world, name)))
    assert len(_read(small.labelled)) == 7


def test_labels_are_the_object_classes_of_the_scene(world):
    assert syn.object_labels(SCENE) == [
        "blue",
        "blue square",
        "circle",
        "red",
        "red circle",
        "square",
    ]
    combos = Counter(x for r in _read(world.labelled) for x in r["labels"] if " " in x)
    assert len(combos) == 80 and min(combos.values()) >= 5  # uniform: every class well seen


def test_clean_format_has_two_or_three_true_captions_per_image(world):
    rows = _read(world.eval)
    scenes = {r["image_id"]: Scene.from_json(r["scene"]) for r in _read(world.eval_truth)}
    per_image = Counter(r["image_id"] for r in rows)
    assert set(per_image) == set(range(40))
    assert set(per_image.values()) <= {2, 3} and 3 in per_image.values()
    for r in rows:
        assert caption_is_true(r["caption"], scenes[r["image_id"]]), r["caption"]
    assert set(pq.read_schema(world.clean).names) == {"image", "caption", "image_id"}


def test_concepts_file_and_long_tailed_web(world):
    assert world.concepts.read_text().split("\n")[:-1] == concepts()
    assert "red circle" in concepts() and "circle" in concepts()
    combos = Counter(
        f"{o.colour} {o.shape}"
        for r in _read(world.truth)
        for o in Scene.from_json(r["scene"]).objects
    )
    counts = sorted(combos.values(), reverse=True)
    # Zipf: the head combo is far more frequent than the median one.
    assert counts[0] >= 8 * counts[len(counts) // 2]


def test_eval_scenes_are_uniform_over_combos():
    rng = np.random.default_rng(0)
    scenes = sample_scenes(rng, 160, None, set())
    firsts = Counter((s.objects[0].colour, s.objects[0].shape) for s in scenes)
    assert len(firsts) == 80 and set(firsts.values()) == {2}


def test_url_list_points_into_the_world(world):
    table = syn.url_list(world.root, "http://127.0.0.1:8000/")
    assert table.column_names == ["url", "caption"] and table.num_rows == 300
    first = table.to_pylist()[0]
    assert first["url"] == "http://127.0.0.1:8000/images/web_000000.jpg"
    assert first["caption"] == _read(world.web)[0]["caption"]


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("a large red circle on the left", True),
        ("A red circle and a small blue square, on a white background.", True),
        ("two shapes: a red circle and a blue square", True),
        ("a picture of a blue square at the top", True),
        ("a white background with a square and a big circle", True),
        ("a small red circle", False),  # wrong size
        ("a red circle on the right", False),  # wrong position
        ("a red circle on a black background", False),  # wrong background
        ("three shapes: a red circle and a blue square", False),  # wrong count
        ("a red circle and a red circle", False),  # only one red circle
        ("a red circle and a green triangle", False),  # no triangle
        ("a red circle with a hat", False),  # outside the grammar
        ("IMG_0423.jpg | a red circle", False),  # buried: not a clean caption
        ("", False),
        ("on a white background", False),  # no object
    ],
)
def test_caption_is_true_hand_cases(caption, expected):
    assert caption_is_true(caption, SCENE) is expected


def _random_scenes(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    return rng, sample_scenes(rng, n, combo_probs(rng), set())


def test_every_style_is_true_and_round_trips():
    rng, scenes = _random_scenes(100)
    for scene in scenes:
        for style in STYLES:
            d = describe(scene, style, rng)
            text = render_caption(d)
            assert parse_caption(text) == d, text
            assert caption_is_true(text, scene), (style, text, scene)


def test_noisy_generators_are_false():
    rng, scenes = _random_scenes(100, seed=2)
    for scene in scenes:
        wrong = wrong_caption(scene, rng)
        assert parse_caption(wrong) is not None, wrong  # in the grammar, but false
        assert not caption_is_true(wrong, scene), wrong
        junk = boilerplate(rng)
        assert not caption_is_true(junk, scene)
        assert not any(f" {c} " in f" {junk.lower()} " for c in concepts()), junk
        assert not caption_is_true(buried(true_captions(scene, rng, 1)[0], rng), scene)


def test_drawn_shapes_have_their_colour_at_the_centre():
    for shape in SHAPES:
        scene = Scene("white", (Obj(shape, "red", "large", "center"),))
        img = render_scene(scene, 90, 90)
        centre, corner = img.getpixel((45, 45)), img.getpixel((1, 1))
        assert corner == RGB["white"]
        assert centre == (RGB["white"] if shape == "ring" else RGB["red"]), shape
    decoded = Image.open(BytesIO(encode_jpeg(img)))
    assert decoded.size == (90, 90)


def test_assign_kinds_is_exact_and_checks_the_mix():
    kinds = assign_kinds(1000, NOISE_MIX, np.random.default_rng(0))
    assert Counter(kinds) == {k: round(v * 1000) for k, v in NOISE_MIX.items()}
    with pytest.raises(ValueError, match="sum to 1"):
        assign_kinds(10, {"clean": 0.5}, np.random.default_rng(0))


def test_mention_render_uses_an_before_vowels():
    assert render_mention(Mention("star", "orange")) == "an orange star"
    assert render_mention(Mention("star", "orange", "small", "top left")) == (
        "a small orange star in the top left"
    )
