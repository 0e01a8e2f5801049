"""Dedup core: pHash, exact Hamming search vs brute force, groups, representatives, SemDeDup."""

import io

import numpy as np
import pytest
from PIL import Image

from curation.pipeline import dedup
from curation.world.drawing import render_scene
from curation.world.scenes import Obj, Scene

D = dedup.NEAR_DUPLICATE_DISTANCE


def brute_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    distance = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    i, j = np.nonzero(np.triu(distance <= max_distance, k=1))
    return np.stack([i, j], axis=1).astype(np.int64)


def flip_bits(value: np.uint64, count: int, rng: np.random.Generator) -> np.uint64:
    bits = rng.choice(64, size=count, replace=False).astype(np.uint64)
    return value ^ np.bitwise_or.reduce(np.uint64(1) << bits, initial=np.uint64(0))


def planted_hashes(max_distance: int, n_base: int = 1500, seed: int = 0) -> np.ndarray:
    """Random hashes, neighbours at every distance 0..max_distance+2, and one value 30 times."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64, size=n_base, dtype=np.uint64)
    near = [flip_bits(base[i], i % (max_distance + 3), rng) for i in rng.integers(0, n_base, 1500)]
    return np.concatenate([base, np.array(near, dtype=np.uint64), np.full(30, base[7])])


@pytest.fixture
def multi_index(monkeypatch):
    """Force the multi-index search (small inputs would take the all-pairs path) and small
    candidate chunks, so that chunking is exercised too."""
    monkeypatch.setattr(dedup, "_BRUTE_FORCE_PAIRS", 0)
    monkeypatch.setattr(dedup, "_MAX_CANDIDATES", 256)


# ----------------------------------------------------------------------------------------------
# Exact Hamming search
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_distance", [0, 1, 3, D, 10, 16])
def test_near_duplicate_pairs_equal_brute_force(multi_index, max_distance):
    hashes = planted_hashes(max_distance, seed=max_distance)
    pairs = dedup.near_duplicate_pairs(hashes, max_distance)
    assert pairs.dtype == np.int64
    np.testing.assert_array_equal(pairs, brute_pairs(hashes, max_distance))


def test_searched_bands_equal_brute_force(multi_index, monkeypatch):
    monkeypatch.setattr(dedup, "_MAX_TABLE_BITS", 4)  # no direct tables: binary search per probe
    hashes = planted_hashes(D, seed=1)
    np.testing.assert_array_equal(dedup.near_duplicate_pairs(hashes, D), brute_pairs(hashes, D))


def test_all_pairs_path_equals_brute_force():
    hashes = planted_hashes(D, n_base=500, seed=2)[:1200]
    assert len(hashes) ** 2 <= dedup._BRUTE_FORCE_PAIRS
    np.testing.assert_array_equal(dedup.near_duplicate_pairs(hashes, D), brute_pairs(hashes, D))


def test_equal_hashes_pair_up_exactly(multi_index):
    hashes = np.array([5, 9, 5, 5, 2**63, 9], dtype=np.uint64)
    pairs = dedup.near_duplicate_pairs(hashes, 0)
    assert pairs.tolist() == [[0, 2], [0, 3], [1, 5], [2, 3]]
    # 5 and 9 differ in two bits: every copy of one pairs with every copy of the other
    assert len(dedup.near_duplicate_pairs(hashes, 2)) == 4 + 3 * 2


def test_empty_and_single_inputs():
    for hashes in (np.array([], dtype=np.uint64), np.array([3], dtype=np.uint64)):
        assert dedup.near_duplicate_pairs(hashes, D).shape == (0, 2)
        assert dedup.match_pairs(hashes, hashes, D).tolist() == [[0, 0]] * len(hashes)
    empty = np.array([], dtype=np.uint64)
    assert dedup.match_pairs(np.array([3], dtype=np.uint64), empty, D).shape == (0, 2)


def test_signed_round_trip():
    hashes = np.array([0, 1, 2**63, 2**64 - 1], dtype=np.uint64)
    signed = dedup.to_signed(hashes)
    assert signed.dtype == np.int64 and signed.tolist() == [0, 1, -(2**63), -1]
    np.testing.assert_array_equal(dedup.to_unsigned(signed), hashes)


# ----------------------------------------------------------------------------------------------
# Groups and representatives
# ----------------------------------------------------------------------------------------------


def test_duplicate_groups_follow_chains():
    pairs = np.array([[2, 5], [0, 2], [3, 4]], dtype=np.int64)  # 0~2, 2~5: one group
    assert dedup.duplicate_groups(7, pairs).tolist() == [0, 1, 0, 3, 3, 0, 6]
    assert dedup.duplicate_groups(3, np.empty((0, 2), np.int64)).tolist() == [0, 1, 2]
    assert dedup.duplicate_groups(0, np.empty((0, 2), np.int64)).tolist() == []


def test_representatives_lowest_rank_then_lowest_index():
    labels = np.array([0, 0, 0, 3, 3, 5, 0])
    rank = np.array([2.0, 1.0, 1.0, 0.5, 0.5, 9.0, 3.0])
    assert dedup.representatives(labels, rank).tolist() == [1, 1, 1, 3, 3, 5, 1]
    text_rank = np.array(["b", "a", "c", "z", "y", "x", "a"])  # any sortable rank
    assert dedup.representatives(labels, text_rank).tolist() == [1, 1, 1, 4, 4, 5, 1]


# ----------------------------------------------------------------------------------------------
# Semantic duplicates
# ----------------------------------------------------------------------------------------------


def test_semantic_pairs_find_planted_duplicates_only():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((40, 32)).astype(np.float32)
    copies = base[:10] * 3.0 + 0.01 * rng.standard_normal((10, 32)).astype(np.float32)
    embeddings = np.concatenate([base, copies])  # copy k (row 40 + k) duplicates row k
    pairs = dedup.semantic_duplicate_pairs(embeddings, 0.95, clusters=4, seed=0)
    assert pairs.tolist() == [[k, 40 + k] for k in range(10)]
    again = dedup.semantic_duplicate_pairs(embeddings, 0.95, clusters=4, seed=0)
    np.testing.assert_array_equal(pairs, again)


def test_semantic_pairs_none_for_orthogonal_embeddings():
    embeddings = np.eye(16, dtype=np.float32)
    assert dedup.semantic_duplicate_pairs(embeddings, 0.5, clusters=3, seed=1).shape == (0, 2)
    assert len(dedup.semantic_duplicate_pairs(embeddings, -1.0, clusters=1, seed=1)) == 120


# ----------------------------------------------------------------------------------------------
# Perceptual hash
# ----------------------------------------------------------------------------------------------


def scene(background: str, *objects: tuple[str, str, str]) -> Image.Image:
    drawn = tuple(Obj(shape, colour, "large", where) for shape, colour, where in objects)
    return render_scene(Scene(background, drawn), 240, 180)


def reloaded(image: Image.Image, fmt: str, **options) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def distance(a: Image.Image, b: Image.Image) -> int:
    return (dedup.perceptual_hash(a) ^ dedup.perceptual_hash(b)).bit_count()


def test_perceptual_hash_survives_reencoding_but_tells_scenes_apart():
    objects = (("circle", "blue", "top left"), ("star", "black", "center"))
    busy = scene("white", *objects, ("square", "red", "bottom right"))
    other = scene("black", ("heart", "yellow", "top right"), ("cross", "white", "bottom left"))
    value = dedup.perceptual_hash(busy)
    assert isinstance(value, int) and 0 <= value < 2**64
    assert distance(busy, reloaded(busy, "JPEG", quality=40)) <= D
    assert distance(busy, busy.resize((120, 90), Image.Resampling.BICUBIC)) <= D
    assert distance(busy, reloaded(busy, "PNG")) == 0
    assert distance(busy, other) > D


def test_perceptual_hash_rejects_non_images():
    with pytest.raises(TypeError, match="PIL image"):
        dedup.perceptual_hash(np.zeros((8, 8)))


# ----------------------------------------------------------------------------------------------
# Thumbnails, verification, match_pairs
# ----------------------------------------------------------------------------------------------


def thumbs(*images: Image.Image) -> np.ndarray:
    return np.stack([np.frombuffer(dedup.thumbnail(image), dtype=np.uint8) for image in images])


def cropped5(image: Image.Image) -> Image.Image:
    """95% of each side, centred, resized back: the bench's 5% crop at its median offset (a
    corner crop of a synthetic scene correlates at ~0.8, below the threshold: see dedup.py)."""
    width, height = image.size
    left, top = round(width * 0.025), round(height * 0.025)
    box = (left, top, left + round(width * 0.95), top + round(height * 0.95))
    return reloaded(image.crop(box).resize((width, height), Image.Resampling.BICUBIC), "JPEG")


def test_thumbnail_is_side_by_side_rgb_bytes():
    side = dedup.THUMBNAIL_SIDE
    for image in (scene("white", ("circle", "red", "center")), Image.new("L", (31, 7), 9)):
        data = dedup.thumbnail(image)
        assert isinstance(data, bytes) and len(data) == side * side * 3
    assert dedup.thumbnail(Image.new("RGB", (40, 20), (1, 2, 3))) == bytes([1, 2, 3]) * side**2
    with pytest.raises(TypeError, match="PIL image"):
        dedup.thumbnail(np.zeros((8, 8, 3), dtype=np.uint8))


def test_verification_keeps_copies_and_rejects_other_scenes():
    objects = (("circle", "blue", "top left"), ("star", "black", "center"))
    busy = scene("white", *objects, ("square", "red", "bottom right"))
    red = scene("white", ("circle", "red", "center"))
    blue = scene("white", ("circle", "blue", "center"))  # pHash 2 bits from `red`
    assert distance(red, blue) <= D
    images = thumbs(busy, reloaded(busy, "JPEG", quality=40), cropped5(busy), red, blue)
    pairs = np.array([[0, 1], [0, 2], [3, 4]], dtype=np.int64)
    kept = dedup.verified_pairs(pairs, images, dedup.NEAR_DUPLICATE_SIMILARITY)
    assert kept.tolist() == [[0, 1], [0, 2]]


def test_thumbnail_similarity_bounds_and_flat_thumbnails():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (50, 192), dtype=np.uint8)
    assert np.allclose(dedup.thumbnail_similarity(a, a), 1.0)
    assert np.allclose(dedup.thumbnail_similarity(a, 255 - a), -1.0)
    flat = np.full((2, 192), 200, dtype=np.uint8)
    other = np.stack([np.full(192, 149, dtype=np.uint8), a[0]])
    assert dedup.thumbnail_similarity(flat, other).tolist() == [1 - 51 / 255, 0.0]


@pytest.mark.parametrize("force_index", [False, True])
def test_match_pairs_equal_brute_force(monkeypatch, force_index):
    if force_index:
        monkeypatch.setattr(dedup, "_BRUTE_FORCE_PAIRS", 0)
        monkeypatch.setattr(dedup, "_MAX_CANDIDATES", 256)
    rng = np.random.default_rng(6)
    references = planted_hashes(D, n_base=600, seed=6)  # with repeats
    near = [flip_bits(references[i], i % (D + 3), rng) for i in range(0, len(references), 4)]
    queries = np.concatenate([np.array(near), references[:40], references[-5:]])
    pairs = dedup.match_pairs(queries, references, D)
    distance = np.bitwise_count(queries[:, None] ^ references[None, :])
    expected = np.argwhere(distance <= D).astype(np.int64)  # row-major: sorted by query
    assert pairs.dtype == np.int64
    np.testing.assert_array_equal(pairs, expected)


# ----------------------------------------------------------------------------------------------
# Bad arguments
# ----------------------------------------------------------------------------------------------


HASHES = np.array([1, 2, 3], dtype=np.uint64)
THUMBS = np.zeros((3, 192), dtype=np.uint8)


@pytest.mark.parametrize(
    "call",
    [
        lambda: dedup.near_duplicate_pairs(HASHES, -1),
        lambda: dedup.near_duplicate_pairs(HASHES, 65),
        lambda: dedup.near_duplicate_pairs(HASHES, 2.0),
        lambda: dedup.near_duplicate_pairs(HASHES.astype(np.int64), 2),
        lambda: dedup.near_duplicate_pairs(HASHES.reshape(3, 1), 2),
        lambda: dedup.match_pairs(HASHES, HASHES.astype(np.int64), 2),
        lambda: dedup.match_pairs(HASHES, HASHES, 70),
        lambda: dedup.match_pairs(HASHES, HASHES, -1),
        lambda: dedup.match_pairs(HASHES.astype(np.int64), HASHES, 2),
        lambda: dedup.thumbnail_similarity(THUMBS, THUMBS[:1]),
        lambda: dedup.thumbnail_similarity(THUMBS.astype(np.float64), THUMBS),
        lambda: dedup.verified_pairs(np.array([[0, 3]]), THUMBS, 0.9),
        lambda: dedup.verified_pairs(np.array([[0, 1]]), THUMBS, 1.5),
        lambda: dedup.verified_pairs(np.array([[0, 1]]), THUMBS[0], 0.9),
        lambda: dedup.to_signed(np.array([1], dtype=np.int64)),
        lambda: dedup.to_unsigned(np.array([1], dtype=np.uint64)),
        lambda: dedup.duplicate_groups(3, np.array([[0, 3]])),
        lambda: dedup.duplicate_groups(3, np.array([0, 1])),
        lambda: dedup.duplicate_groups(-1, np.empty((0, 2), np.int64)),
        lambda: dedup.representatives(np.array([0, 0]), np.array([1.0])),
        lambda: dedup.semantic_duplicate_pairs(np.eye(3, dtype=np.float32), 1.5, 2, 0),
        lambda: dedup.semantic_duplicate_pairs(np.eye(3, dtype=np.float32), 0.9, 0, 0),
        lambda: dedup.semantic_duplicate_pairs(np.ones(3, dtype=np.float32), 0.9, 2, 0),
        lambda: dedup.semantic_duplicate_pairs(np.eye(3, dtype=np.int64), 0.9, 2, 0),
    ],
)
def test_bad_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
