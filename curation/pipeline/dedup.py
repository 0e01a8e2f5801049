"""Duplicates and evaluation leaks: perceptual hashes, exact Hamming search, semantic pairs.

The compute core of the dedup stage; pure numpy, no I/O (the stage reads and writes tables).
- Near duplicates (the same picture re-encoded, resized, slightly cropped): a 64-bit pHash per
  image (Zauner 2010; imagehash's DCT hash after hackerfactor.com's "Looks Like It") and every
  pair within a Hamming distance. The search is exact multi-index hashing (Norouzi, Punjani and
  Fleet 2012, "Fast Search in Hamming Space with Multi-Index Hashing"): split the 64 bits into
  m bands; two hashes within distance d agree within distance d // m on at least one band
  (pigeonhole), so probing each band's table with every flip of up to d // m bits finds every
  candidate, and a popcount keeps the true ones. Equal hashes (a placeholder image served
  10,000 times) are one group first, so the search runs among distinct hashes only.
- Decontamination: the nearest evaluation-set hash of each web image, by the same search.
- Semantic duplicates: SemDeDup (Abbas et al. 2023, arXiv 2303.09540), k-means over normalised
  embeddings, then every pair within a cluster above a cosine threshold.

Hashes are uint64 here; Arrow and DuckDB store them as int64 (`to_signed`, `to_unsigned`).
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image
from scipy.cluster.vq import kmeans2
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_BITS = 64
# Two stages (bench/dedup.py, 2,000 distinct originals per set, 400 copied once each by JPEG
# q30-70, a 0.5-2x resize, a 5% crop resized back or a PNG re-save): pHash within
# NEAR_DUPLICATE_DISTANCE proposes candidate pairs (recall), then the Pearson correlation of
# THUMBNAIL_SIDE-pixel colour thumbnails >= NEAR_DUPLICATE_SIMILARITY keeps the true ones
# (precision). CC3M photos, pHash alone vs verified at side 8 / similarity 0.9:
#   distance   pHash: recall crop5 %, precision % (false pairs)   verified: crop5 %, precision
#       8           73, 97.6 (9)                                      72, 99.2 (3)
#      12           95, 90.4 (42)                                     92, 99.2 (3)
#      14           98, 70.6 (166)                                    95, 99.2 (3)
# jpeg, resize and png copies: >= 99% at every distance; the 3 false pairs are CC3M's own
# duplicates (one picture under another overlay text). 14 is the only distance meeting 95%
# recall per transformation; its cost: the exact search of 1M realistic hashes (788k distinct)
# takes 16.5 s at 8 (+8.6 s to verify 1.45M candidates), 96 s at 10 and minutes at 14 on 2
# cores. The default is 8, the largest distance measured within the 60 s target: every
# re-encoded, resized and re-saved copy, 72% of 5% crops ([dedup] hash_distance = 14 for 95%,
# at minutes per million images).
# Side 8 beats 12, 16 and 24 on crops: a 5% crop shifts content by up to 5.3% of the side,
# which a coarser grid averages away (crop5 correlation p5: 0.92 at 8, 0.81 at 16).
# Synthetic scenes miss the targets at every setting; what limits them: (1) pHash itself, JPEG
# copies of flat scenes are up to 36 bits away (DCT coefficients near the median flip), 8% lie
# beyond 14; (2) crops: correlation p5 0.82 at side 8; (3) distinct scenes differing only in
# one small shape (a small orange square vs circle, ~3 px at side 16) correlate at 0.99+.
NEAR_DUPLICATE_DISTANCE = 8
THUMBNAIL_SIDE = 8  # stored per image: 8 * 8 * 3 = 192 bytes
NEAR_DUPLICATE_SIMILARITY = 0.9

# Below this many query x reference pairs, a blockwise all-pairs popcount beats building tables.
_BRUTE_FORCE_PAIRS = 1 << 22
_MAX_CANDIDATES = 1 << 23  # candidate pairs verified at once (bounds memory: ~8 arrays of this)
_MAX_TABLE_BITS = 24  # a band this wide or narrower gets a direct-address table, else a search
_PROBE_OVERHEAD = 20_000  # fixed cost of one probe pass, in element operations (numpy calls)

Pairs = tuple[np.ndarray, np.ndarray]  # (query indices, reference indices), int64 [K] each


# ----------------------------------------------------------------------------------------------
# Hashes
# ----------------------------------------------------------------------------------------------


def perceptual_hash(image: Image.Image) -> int:
    """The 64-bit pHash of `image` as an unsigned int in [0, 2**64), first DCT bit highest.

    imagehash.phash with hash_size=8: greyscale, 32x32, 2-D DCT, the 8x8 lowest frequencies
    thresholded at their median (Zauner 2010; hackerfactor.com, "Looks Like It"). Any PIL mode
    is accepted (it is converted to greyscale); TypeError if `image` is not a PIL image.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"perceptual_hash takes a PIL image, not {type(image).__name__}")
    bits = imagehash.phash(image, hash_size=8).hash.reshape(-1)  # bool [64]
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def thumbnail(image: Image.Image) -> bytes:
    """The image as THUMBNAIL_SIDE x THUMBNAIL_SIDE RGB, uint8 row-major (y, x, channel) bytes of
    length side * side * 3: the verification signal for pHash candidates (colour, which pHash's
    greyscale drops, and positions). Resampled by BOX (the area mean of each cell), so it does
    not depend on the source size beyond rounding; the aspect ratio is not kept. TypeError if
    `image` is not a PIL image."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"thumbnail takes a PIL image, not {type(image).__name__}")
    side = THUMBNAIL_SIDE
    return image.convert("RGB").resize((side, side), Image.Resampling.BOX).tobytes()


def to_signed(hashes: np.ndarray) -> np.ndarray:
    """uint64 [N] -> int64 [N], the same bits (a view): how Arrow and DuckDB store them."""
    return _check_array(hashes, np.uint64, "hashes").view(np.int64)


def to_unsigned(hashes: np.ndarray) -> np.ndarray:
    """int64 [N] -> uint64 [N], the same bits (a view): the inverse of `to_signed`."""
    return _check_array(hashes, np.int64, "hashes").view(np.uint64)


def _check_array(values: np.ndarray, dtype, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype != dtype or values.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D {np.dtype(dtype).name} array, got {values.dtype} {values.shape}"
        )
    return values


def _check_distance(max_distance: int) -> int:
    if isinstance(max_distance, bool) or not isinstance(max_distance, int | np.integer):
        raise ValueError(f"max_distance must be an int, got {type(max_distance).__name__}")
    if not 0 <= max_distance <= HASH_BITS:
        raise ValueError(f"max_distance must be in [0, {HASH_BITS}], got {max_distance}")
    return int(max_distance)


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Exact Hamming search among distinct hashes
# ----------------------------------------------------------------------------------------------


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
    """concat(arange(c) for c in counts), vectorised: int64 [sum(counts)]."""
    ends = np.cumsum(counts)
    return np.arange(ends[-1] if len(ends) else 0) - np.repeat(ends - counts, counts)


def _bands(n_bands: int) -> list[tuple[int, int]]:
    """(shift, width) of each band: 64 bits split as evenly as possible."""
    widths = [HASH_BITS // n_bands + (b < HASH_BITS % n_bands) for b in range(n_bands)]
    shifts = np.cumsum([0, *widths[:-1]])
    return [(int(s), w) for s, w in zip(shifts, widths, strict=True)]


def _flips(width: int, radius: int) -> np.ndarray:
    """Every width-bit mask with at most `radius` bits set, fewest bits first: int64 [F]."""
    masks = [
        sum(1 << bit for bit in bits)
        for k in range(min(radius, width) + 1)
        for bits in itertools.combinations(range(width), k)
    ]
    return np.array(masks, dtype=np.int64)


def _probe_cost(n_query: int, n_ref: int, n_bands: int, max_distance: int) -> float:
    """Element operations to search with `n_bands` bands, for uniform hashes (a model)."""
    bands = _bands(n_bands)
    radius = max_distance // n_bands
    widest, narrowest = bands[0][1], bands[-1][1]
    probes = sum(math.comb(widest, k) for k in range(radius + 1))
    lookup = 1 if widest <= _MAX_TABLE_BITS else 20  # a binary search costs ~log2(N) steps
    candidates = n_query * n_ref / 2.0**narrowest
    return n_bands * probes * (n_query * lookup + _PROBE_OVERHEAD + 3 * candidates)


def _best_band_count(n_query: int, n_ref: int, max_distance: int) -> int:
    options = range(1, min(max_distance + 1, 16) + 1)
    return min(options, key=lambda m: _probe_cost(n_query, n_ref, m, max_distance))


def _brute_force(queries: np.ndarray, refs: np.ndarray, max_distance: int) -> Iterator[Pairs]:
    """Every (query, reference) pair within `max_distance`, blockwise all-pairs."""
    rows = max(1, _BRUTE_FORCE_PAIRS // max(len(refs), 1))
    for start in range(0, len(queries), rows):
        block = queries[start : start + rows, None] ^ refs[None, :]  # uint64 [rows, R]
        q, r = np.nonzero(np.bitwise_count(block) <= max_distance)
        yield q + start, r


@dataclass(frozen=True)
class _BandTable:
    """References sorted by one band's key, and where each key's run starts and ends."""

    order: np.ndarray  # int64 [R]: reference indices by band key
    bounds: np.ndarray  # int64 [2**width + 1] (direct address) or the sorted keys [R] (search)
    occupied: np.ndarray | None  # bool [2**width]: some reference has this key (direct only)

    @staticmethod
    def build(keys: np.ndarray, width: int) -> _BandTable:
        order = np.argsort(keys, kind="stable")
        if width > _MAX_TABLE_BITS:
            return _BandTable(order, keys[order], None)
        counts = np.bincount(keys, minlength=1 << width)
        return _BandTable(order, np.concatenate([[0], np.cumsum(counts)]), counts > 0)

    def lookup(self, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probes, starts, counts): the probes some reference's key equals, and where in
        `order` those references are. The bool table (1 byte a key, cache-resident) screens
        the probes first: most find nothing, and the bounds table is 8x larger."""
        if self.occupied is None:
            low = np.searchsorted(self.bounds, probe, side="left")
            counts = np.searchsorted(self.bounds, probe, side="right") - low
            hit = np.flatnonzero(counts)
            return hit, low[hit], counts[hit]
        hit = np.flatnonzero(self.occupied[probe])
        starts = self.bounds[probe[hit]]
        return hit, starts, self.bounds[probe[hit] + 1] - starts


def _chunks(counts: np.ndarray) -> Iterator[np.ndarray]:
    """Index runs of `counts` whose counts sum to about _MAX_CANDIDATES at most."""
    ends = np.cumsum(counts)
    limits = np.arange(_MAX_CANDIDATES, ends[-1] if len(ends) else 0, _MAX_CANDIDATES)
    yield from np.split(np.arange(len(counts)), np.unique(np.searchsorted(ends, limits)))


def _multi_index(queries: np.ndarray, refs: np.ndarray, max_distance: int) -> Iterator[Pairs]:
    """Every (query, reference) pair within `max_distance`, each once, by multi-index hashing.

    A pair is reported by the first band where its band distance is <= radius (pigeonhole: one
    exists), found there by exactly one flip; earlier bands' checks drop the repeats.
    """
    bands = _bands(_best_band_count(len(queries), len(refs), max_distance))
    radius = max_distance // len(bands)
    for b, (shift, width) in enumerate(bands):
        mask = np.uint64((1 << width) - 1)
        table = _BandTable.build(((refs >> np.uint64(shift)) & mask).astype(np.int64), width)
        query_keys = ((queries >> np.uint64(shift)) & mask).astype(np.int64)
        by_key = np.argsort(query_keys, kind="stable")  # probes in key order: cache-friendly
        query_keys = query_keys[by_key]
        for flip in _flips(width, radius):
            hit, starts, counts = table.lookup(query_keys ^ flip)
            for part in _chunks(counts):
                positions = np.repeat(starts[part], counts[part]) + _ragged_arange(counts[part])
                q, r = by_key[np.repeat(hit[part], counts[part])], table.order[positions]
                keep = _verified(queries[q] ^ refs[r], max_distance, bands[:b], radius)
                yield q[keep], r[keep]


def _verified(xor: np.ndarray, max_distance: int, earlier, radius: int) -> np.ndarray:
    """Within distance, and not already reported by an earlier band: bool [K]."""
    keep = np.bitwise_count(xor) <= max_distance
    for shift, width in earlier:
        band = (xor >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        keep &= np.bitwise_count(band) > radius
    return keep


def _matches(queries: np.ndarray, refs: np.ndarray, max_distance: int) -> Iterator[Pairs]:
    """Every (query, reference) index pair within `max_distance`, each once, in chunks."""
    if len(queries) * len(refs) <= _BRUTE_FORCE_PAIRS:
        return _brute_force(queries, refs, max_distance)
    return _multi_index(queries, refs, max_distance)


# ----------------------------------------------------------------------------------------------
# Near duplicates and decontamination
# ----------------------------------------------------------------------------------------------


def _groups_of_equal(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(distinct, members, starts, sizes): the members of distinct hash k, ascending, are
    members[starts[k] : starts[k] + sizes[k]]."""
    distinct, inverse, sizes = np.unique(hashes, return_inverse=True, return_counts=True)
    members = np.argsort(inverse, kind="stable")
    return distinct, members, np.cumsum(sizes) - sizes, sizes


def _pairs_within_groups(members, starts, sizes) -> np.ndarray:
    """Every pair of items with equal hashes: int64 [P, 2]."""
    later = np.repeat(sizes, sizes) - 1 - _ragged_arange(sizes)  # members after each member
    left = np.repeat(np.arange(len(members)), later)
    right = left + 1 + _ragged_arange(later)
    return np.stack([members[left], members[right]], axis=1)


def _pairs_across_groups(u, v, members, starts, sizes) -> np.ndarray:
    """Every pair of items, one with hash u[k] and one with hash v[k]: int64 [P, 2]."""
    products = sizes[u] * sizes[v]
    offset = _ragged_arange(products)
    u, v = np.repeat(u, products), np.repeat(v, products)
    left = members[starts[u] + offset // sizes[v]]
    right = members[starts[v] + offset % sizes[v]]
    return np.stack([np.minimum(left, right), np.maximum(left, right)], axis=1)


def _sorted_pairs(pairs: list[np.ndarray], n: int) -> np.ndarray:
    pairs = np.concatenate([np.empty((0, 2), np.int64), *pairs]).astype(np.int64)
    key = np.sort(pairs[:, 0] * n + pairs[:, 1])
    return np.stack([key // max(n, 1), key % max(n, 1)], axis=1)


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """Every pair of hashes within Hamming distance `max_distance`, exactly.

    hashes: uint64 [N] (`perceptual_hash` values). Returns int64 [P, 2], rows (i, j) with
    i < j, sorted. Equal hashes form one group first (all their pairs are returned, so a hash
    repeated k times alone gives k(k-1)/2 rows); distinct hashes are searched by multi-index
    hashing (Norouzi et al. 2012). ValueError for a non-uint64 or non-1-D `hashes` or
    `max_distance` outside [0, 64].
    """
    hashes = _check_array(hashes, np.uint64, "hashes")
    max_distance = _check_distance(max_distance)
    distinct, members, starts, sizes = _groups_of_equal(hashes)
    found = [_pairs_within_groups(members, starts, sizes)]
    for u, v in _matches(distinct, distinct, max_distance):
        keep = u < v  # each unordered pair of distinct hashes comes as (u, v) and (v, u)
        found.append(_pairs_across_groups(u[keep], v[keep], members, starts, sizes))
    return _sorted_pairs(found, len(hashes))


def match_pairs(queries: np.ndarray, references: np.ndarray, max_distance: int) -> np.ndarray:
    """Every (query index, reference index) pair within Hamming distance `max_distance`.

    queries: uint64 [Q], references: uint64 [R]. Returns int64 [P, 2], sorted by query then
    reference; for decontamination, where each candidate is verified (`verified_pairs` on
    thumbnails) before the nearest is picked. Equal hashes are searched once and expanded, so
    a hash repeated k times on each side gives k * k rows. ValueError for bad dtypes, shapes or
    `max_distance`.
    """
    queries = _check_array(queries, np.uint64, "queries")
    references = _check_array(references, np.uint64, "references")
    max_distance = _check_distance(max_distance)
    q_distinct, q_members, q_starts, q_sizes = _groups_of_equal(queries)
    r_distinct, r_members, r_starts, r_sizes = _groups_of_equal(references)
    found = []
    for u, v in _matches(q_distinct, r_distinct, max_distance):
        products = q_sizes[u] * r_sizes[v]
        offset = _ragged_arange(products)
        u, v = np.repeat(u, products), np.repeat(v, products)
        left = q_members[q_starts[u] + offset // r_sizes[v]]
        right = r_members[r_starts[v] + offset % r_sizes[v]]
        found.append(np.stack([left, right], axis=1))
    pairs = np.concatenate([np.empty((0, 2), np.int64), *found]).astype(np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


# ----------------------------------------------------------------------------------------------
# Verification of candidate pairs by colour thumbnails
# ----------------------------------------------------------------------------------------------


def _check_thumbnails(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype != np.uint8 or values.ndim != 2:
        raise ValueError(f"{name} must be a uint8 [N, L] array, got {values.dtype} {values.shape}")
    return values


def thumbnail_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of paired thumbnails' colour values: float64 [P] in [-1, 1].

    a, b: uint8 [P, L] (rows of `thumbnail` bytes, row k of a against row k of b). Correlation
    ignores brightness and contrast changes (re-encoding, resampling) but not colour or layout.
    Chosen by bench/dedup.py over 1 - mean |a - b| / 255 and RMS variants: those accept most
    pHash collisions of flat synthetic scenes, where shapes cover a few % of the pixels. A flat
    thumbnail (zero variance) has no correlation: two flat ones score 1 - max |a - b| / 255
    (equal colours), a flat one against a textured one 0. ValueError for mismatched shapes.
    """
    a, b = _check_thumbnails(a, "a"), _check_thumbnails(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one shape, got {a.shape} and {b.shape}")
    x = a - a.mean(axis=1, keepdims=True, dtype=np.float64)
    y = b - b.mean(axis=1, keepdims=True, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x) * np.einsum("ij,ij->i", y, y))
    flat = norms == 0
    similarity = np.einsum("ij,ij->i", x, y) / np.where(flat, 1.0, norms)
    gap = np.abs(a.astype(np.int16) - b).max(axis=1, initial=0) / 255.0
    both_flat = (x == 0).all(axis=1) & (y == 0).all(axis=1)
    return np.where(flat, np.where(both_flat, 1.0 - gap, 0.0), np.clip(similarity, -1.0, 1.0))


def verified_pairs(pairs: np.ndarray, thumbnails: np.ndarray, min_similarity: float) -> np.ndarray:
    """The candidate pairs whose thumbnails correlate at >= min_similarity: int64 [K, 2].

    pairs: integer [P, 2] (`near_duplicate_pairs` or `match_pairs` rows, same index space);
    thumbnails: uint8 [N, L], one `thumbnail` per item. Order is kept. Verified in chunks of
    _MAX_CANDIDATES // 8 pairs to bound memory. ValueError for malformed pairs or thumbnails or
    min_similarity outside [-1, 1].
    """
    thumbnails = _check_thumbnails(thumbnails, "thumbnails")
    pairs = _check_pairs(len(thumbnails), pairs)
    if not -1.0 <= min_similarity <= 1.0:
        raise ValueError(f"min_similarity must be in [-1, 1], got {min_similarity}")
    step = _MAX_CANDIDATES // 8
    keep = np.concatenate(
        [np.empty(0, dtype=bool)]
        + [
            thumbnail_similarity(thumbnails[p[:, 0]], thumbnails[p[:, 1]]) >= min_similarity
            for p in (pairs[start : start + step] for start in range(0, len(pairs), step))
        ]
    )
    return pairs[keep]


# ----------------------------------------------------------------------------------------------
# Groups
# ----------------------------------------------------------------------------------------------


def _check_pairs(n: int, pairs: np.ndarray) -> np.ndarray:
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"pairs must be an integer [P, 2] array, got {pairs.dtype} {pairs.shape}")
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(f"pairs must index items in [0, {n}), got [{pairs.min()}, {pairs.max()}]")
    return pairs.astype(np.int64)


def duplicate_groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of the duplicate graph: int64 [n], each item's group label.

    pairs: integer [P, 2] edges between items in [0, n) (from `near_duplicate_pairs` or
    `semantic_duplicate_pairs`); chains join (a~b, b~c: one group). The label is the group's
    smallest member index; an item in no pair is its own label. ValueError for a negative `n`
    or malformed pairs.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    pairs = _check_pairs(int(n), pairs)
    ones = np.ones(len(pairs), dtype=np.int8)
    graph = coo_matrix((ones, (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    count, component = connected_components(graph, directed=False)
    smallest = np.full(count, n, dtype=np.int64)
    np.minimum.at(smallest, component, np.arange(n, dtype=np.int64))
    return smallest[component]


def representatives(labels: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each item, the index of its group's best item: int64 [N].

    labels: int64 [N] (`duplicate_groups`); rank: any sortable [N] array, lower is better
    (e.g. minus the resolution, or a quality score's negation); ties go to the lower index.
    ValueError when the shapes differ or labels are not 1-D integers.
    """
    labels, rank = np.asarray(labels), np.asarray(rank)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if rank.shape != labels.shape:
        raise ValueError(f"rank must have the shape of labels {labels.shape}, got {rank.shape}")
    order = np.lexsort((np.arange(len(labels)), rank, labels))  # by group, rank, then index
    first = np.ones(len(order), dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    best_of_run = order[first][np.cumsum(first) - 1]  # each sorted item's group head
    result = np.empty(len(labels), dtype=np.int64)
    result[order] = best_of_run
    return result


# ----------------------------------------------------------------------------------------------
# Semantic duplicates
# ----------------------------------------------------------------------------------------------


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
        raise ValueError(
            f"embeddings must be a float [N, D] array, got {embeddings.dtype} {embeddings.shape}"
        )
    x = embeddings.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError("embeddings must be finite (no NaN or inf)")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _cluster_pairs(x: np.ndarray, members: np.ndarray, threshold: float) -> Iterator[np.ndarray]:
    """Pairs of `members` (ascending item indices) with cosine >= threshold, in row blocks."""
    rows = max(1, (1 << 24) // len(members))  # at most 16M similarities at once
    for start in range(0, len(members), rows):
        block = x[members[start : start + rows]] @ x[members].T  # float32 [rows, S]
        i, j = np.nonzero(block >= threshold)
        i += start
        later = i < j
        yield np.stack([members[i[later]], members[j[later]]], axis=1)


def semantic_duplicate_pairs(
    embeddings: np.ndarray, threshold: float, clusters: int, seed: int
) -> np.ndarray:
    """SemDeDup (Abbas et al. 2023, arXiv 2303.09540): pairs of semantic duplicates.

    embeddings: float [N, D], L2-normalised here. k-means (scipy kmeans2, k-means++ start,
    `seed`) into min(clusters, N) clusters, then every pair inside a cluster whose cosine is
    >= threshold; pairs split across clusters are not searched (the paper's trade for speed).
    Returns int64 [P, 2], i < j, sorted; the same for the same seed. ValueError for a bad shape
    or dtype, threshold outside [-1, 1] or clusters < 1.
    """
    x = _normalised(embeddings)
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold}")
    if isinstance(clusters, bool) or not isinstance(clusters, int | np.integer) or clusters < 1:
        raise ValueError(f"clusters must be an int >= 1, got {clusters!r}")
    n = len(x)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    with warnings.catch_warnings():  # empty clusters are harmless here: they hold no pairs
        warnings.simplefilter("ignore")
        _, assignment = kmeans2(
            x.astype(np.float64), min(int(clusters), n), minit="++", rng=np.random.default_rng(seed)
        )
    order = np.argsort(assignment, kind="stable")
    bounds = np.flatnonzero(np.diff(assignment[order])) + 1
    groups = np.split(order, bounds)
    found = [pairs for members in groups for pairs in _cluster_pairs(x, members, threshold)]
    return _sorted_pairs(found, n)
