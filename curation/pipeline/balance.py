"""MetaCLIP balancing math: per-entry keep probabilities, the threshold t, deterministic draws.

MetaCLIP (Xu et al. 2023, "Demystifying CLIP Data", arXiv 2309.16671, Algorithm 1): count, over
the whole pool, the texts matching each metadata entry; an entry with count above ``t`` gets
probability ``t / count``, the others 1 (the paper's t is 20k for a 400M-pair curated set); a
pair is kept when any of its matched entries draws a keep, i.e. with probability
``1 - prod(1 - p_e)``; a pair matching nothing is dropped. This flattens the head of the
concept distribution and keeps its tail.

MetaCLIP 2 (Chuang et al. 2025, arXiv 2507.22062) carries ``t`` across languages (and so
across pool sizes) through the share of matches that falls in the tail (entries with
count < t): :func:`tail_share` and its inverse :func:`t_from_tail_share`.

Draws are a hash of (seed, sample key, entry), not a random generator, so a sample's fate
never depends on shard size, row order or the number of workers, and a rerun reproduces it.
All functions are pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from hashlib import blake2b
from itertools import repeat

import numpy as np


def _counts(counts) -> np.ndarray:
    array = np.asarray(counts, dtype=np.float64)
    if array.ndim != 1 or (array < 0).any():
        raise ValueError("counts must be a 1-d sequence of non-negative numbers")
    return array


def entry_probabilities(counts, t: float) -> np.ndarray:
    """Per-entry keep probability ``t / max(count, t)``: 1 for entries with count <= t.

    ``counts``: shape (n_entries,), matches per entry over the whole pool; ``t`` > 0.
    """
    if not t > 0:
        raise ValueError(f"t must be positive, got {t!r}")
    return t / np.maximum(_counts(counts), t)


def tail_share(counts, t: float) -> float:
    """Share of all matches made by entries with count < t (MetaCLIP 2's tail proportion)."""
    array = _counts(counts)
    total = array.sum()
    return float(array[array < t].sum() / total) if total else 0.0


def head_share(counts, t: float) -> float:
    """Share of all matches made by entries with count >= t: the part balancing thins."""
    array = _counts(counts)
    return 1.0 - tail_share(array, t) if array.sum() else 0.0


def t_from_tail_share(counts, share: float) -> int:
    """Smallest integer t >= 1 whose tail (entries with count < t) holds ``share`` of matches.

    MetaCLIP 2 measures the English tail share at t_en = 170k (its ``t_to_p``, our
    :func:`tail_share`) and gives every other language the t with the same share. The tail
    share is a step function of t that jumps after each distinct count, so the answer is
    (the smallest count c whose cumulative matches, counting every entry with count <= c,
    reach ``share`` of all) + 1; hence ``tail_share(counts, t) >= share`` always holds
    (MetaCLIP 2's ``p_to_t`` instead returns the count whose cumulative share is nearest).
    Returns 1 when ``share`` is 0 or there are no matches. Example: counts (1, 2, 3, 4, 10),
    share 0.3: 1 + 2 + 3 = 6 = 30% of 20, so t = 4.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be within [0, 1], got {share!r}")
    array = np.sort(_counts(counts))
    cumulative = np.cumsum(array)
    if share == 0.0 or not len(array) or cumulative[-1] == 0:
        return 1
    # Compare shares computed as tail_share does (exact integer sums / total), not share * total.
    first = int(np.searchsorted(cumulative / cumulative[-1], share, side="left"))
    return int(array[min(first, len(array) - 1)]) + 1


def gini(counts) -> float:
    """Gini coefficient of the per-entry counts: 0 when all are equal, (n-1)/n for one entry
    holding everything. A summary of how head-heavy the concept distribution is."""
    array = np.sort(_counts(counts))
    n, total = len(array), array.sum()
    if n == 0 or total == 0:
        return 0.0
    rank = np.arange(1, n + 1)
    return float(2.0 * (rank * array).sum() / (n * total) - (n + 1) / n)


def count_matches(entry_ids, n_entries: int) -> np.ndarray:
    """Matches per entry from the flat matched entry ids of all texts, shape (n_entries,).

    Each text lists an entry at most once (matches are sets), as MetaCLIP counts."""
    return np.bincount(np.asarray(entry_ids, dtype=np.int64), minlength=n_entries)


def keep_uniform(sample_key: str, entry: str, seed: int) -> float:
    """A uniform draw in [0, 1) fixed by (seed, sample key, entry): blake2b, 53 bits.

    The key's length is hashed before it, so no two (key, entry) pairs give the same input.
    """
    payload = f"{seed}\x00{len(sample_key)}\x00{sample_key}\x00{entry}"
    digest = blake2b(payload.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)


def keep_sample(
    matched_entries: Iterable[str], probs: Mapping[str, float], sample_key: str, seed: int
) -> bool:
    """MetaCLIP's keep decision: True when any matched entry e draws
    ``keep_uniform(sample_key, e, seed) < probs[e]``, i.e. with probability 1 - prod(1 - p_e).

    A sample matching nothing is not kept; the caller tells that case (``no_concept_match``)
    from a lost draw (``balanced_out``) by whether ``matched_entries`` is empty.
    """
    return any(keep_uniform(sample_key, e, seed) < probs[e] for e in matched_entries)


def keep_samples(
    sample_keys: Sequence[str],
    matched_entries: Sequence[Iterable[str]],
    probs: Mapping[str, float],
    seed: int,
) -> np.ndarray:
    """:func:`keep_sample` for many samples: a bool array, shape (len(sample_keys),)."""
    decisions = map(keep_sample, matched_entries, repeat(probs), sample_keys, repeat(seed))
    return np.fromiter(decisions, dtype=bool, count=len(sample_keys))


def keep_probability(matched_entries: Iterable[str], probs: Mapping[str, float]) -> float:
    """Probability that :func:`keep_sample` keeps a sample: 1 - prod(1 - p_e)."""
    return 1.0 - float(np.prod([1.0 - probs[e] for e in matched_entries]))


def probabilities_by_entry(entries: Sequence[str], counts, t: float) -> dict[str, float]:
    """``{entry: p}`` for :func:`keep_sample`, from the list and its per-entry counts."""
    return dict(zip(entries, entry_probabilities(counts, t).tolist(), strict=True))
