"""MetaCLIP balancing math: probabilities, t from the tail share, deterministic keep draws."""

import math
import random

import numpy as np
import pytest

from curation.pipeline.balance import (
    count_matches,
    entry_probabilities,
    gini,
    head_share,
    keep_probability,
    keep_sample,
    keep_samples,
    keep_uniform,
    probabilities_by_entry,
    t_from_tail_share,
    tail_share,
)


def test_entry_probabilities_raise_rare_entries_to_t():
    probs = entry_probabilities([0, 1, 10, 20, 40, 1000], t=20)
    assert probs.tolist() == [1.0, 1.0, 1.0, 1.0, 0.5, 0.02]
    with pytest.raises(ValueError, match="positive"):
        entry_probabilities([1], t=0)
    with pytest.raises(ValueError, match="non-negative"):
        entry_probabilities([-1], t=1)


def test_tail_and_head_share():
    counts = [1, 2, 3, 4, 10]  # 20 matches
    assert tail_share(counts, 4) == pytest.approx(6 / 20)
    assert head_share(counts, 4) == pytest.approx(14 / 20)
    assert tail_share([0, 0], 5) == 0.0 and head_share([], 5) == 0.0


def test_t_from_tail_share_hand_example():
    counts = [10, 3, 1, 4, 2]  # order does not matter
    assert t_from_tail_share(counts, 0.3) == 4  # 1 + 2 + 3 = 6 = 30% of 20
    assert t_from_tail_share(counts, 0.31) == 5  # needs the 4 too: 10/20
    assert t_from_tail_share(counts, 0.05) == 2  # the single 1 is 5%
    assert t_from_tail_share(counts, 1.0) == 11  # everything in the tail: nothing balanced
    assert t_from_tail_share(counts, 0.0) == 1
    assert t_from_tail_share([0, 0], 0.5) == 1
    with pytest.raises(ValueError, match="share"):
        t_from_tail_share(counts, 1.5)


def test_t_from_tail_share_is_the_smallest_t_reaching_the_share():
    rng = np.random.default_rng(7)
    for _ in range(50):
        counts = rng.zipf(1.5, size=rng.integers(1, 300)).clip(max=10**6)
        share = float(rng.choice([0.06, 0.1, 0.25, 0.5, 0.9, 0.1 * rng.integers(1, 10)]))
        t = t_from_tail_share(counts, share)
        assert tail_share(counts, t) >= share
        assert t == 1 or tail_share(counts, t - 1) < share


def test_gini():
    assert gini([5, 5, 5, 5]) == pytest.approx(0.0)
    assert gini([0, 0, 0, 8]) == pytest.approx(3 / 4)
    assert gini([1, 2, 3, 4]) == pytest.approx(0.25)
    assert gini([]) == 0.0 and gini([0, 0]) == 0.0


def test_count_matches():
    assert count_matches([0, 2, 2, 3], n_entries=5).tolist() == [1, 0, 2, 1, 0]


def test_keep_uniform_is_deterministic_and_in_unit_interval():
    draws = [keep_uniform(f"sample-{i}", "cat", seed=3) for i in range(2000)]
    assert draws == [keep_uniform(f"sample-{i}", "cat", seed=3) for i in range(2000)]
    assert all(0.0 <= u < 1.0 for u in draws)
    assert len(set(draws)) == len(draws)
    assert keep_uniform("s", "cat", 3) != keep_uniform("s", "cat", 4)
    assert keep_uniform("s", "cat", 3) != keep_uniform("s", "dog", 3)
    assert keep_uniform("ab", "c", 0) != keep_uniform("a", "bc", 0)  # no concatenation clash
    assert keep_uniform("\ud800", "x", 0) == keep_uniform("\ud800", "x", 0)  # any str


def test_keep_uniform_looks_uniform():
    draws = np.array([keep_uniform(str(i), "entry", seed=0) for i in range(20_000)])
    histogram = np.histogram(draws, bins=10, range=(0, 1))[0]
    assert np.abs(histogram - 2000).max() < 5 * math.sqrt(2000 * 0.9)


def test_keep_sample_does_not_depend_on_order_shards_or_workers():
    probs = {"cat": 0.3, "dog": 0.5, "sky": 0.05}
    samples = [(f"url-{i}", ["cat", "dog", "sky"][: 1 + i % 3]) for i in range(500)]
    whole = {key: keep_sample(m, probs, key, seed=1) for key, m in samples}
    shuffled = samples[:]
    random.Random(0).shuffle(shuffled)
    for shard in (shuffled[:123], shuffled[123:]):  # two "workers", another order
        for key, matched in shard:
            assert keep_sample(list(reversed(matched)), probs, key, seed=1) == whole[key]
    keys, matched = zip(*samples, strict=True)
    assert keep_samples(keys, matched, probs, seed=1).tolist() == [whole[k] for k in keys]


def test_keep_sample_edge_cases():
    probs = {"always": 1.0, "rare": 1e-9}
    assert keep_sample([], probs, "x", 0) is False  # matches nothing: never kept
    assert all(keep_sample(["always"], probs, str(i), 0) for i in range(200))
    assert not any(keep_sample(["rare"], probs, str(i), 0) for i in range(200))


@pytest.mark.parametrize("matched", [["a"], ["a", "b"], ["a", "b", "c"], ["c", "c2"]])
def test_empirical_keep_rate_is_one_minus_product(matched):
    probs = {"a": 0.2, "b": 0.5, "c": 0.05, "c2": 0.05}
    expected = keep_probability(matched, probs)
    assert expected == pytest.approx(1 - math.prod(1 - probs[e] for e in matched))
    n = 20_000
    kept = sum(keep_sample(matched, probs, f"key-{i}", seed=42) for i in range(n))
    tolerance = 4 * math.sqrt(expected * (1 - expected) / n)  # 4 binomial standard deviations
    assert abs(kept / n - expected) < tolerance


def test_probabilities_by_entry():
    assert probabilities_by_entry(["cat", "dog"], [40, 5], t=20) == {"cat": 0.5, "dog": 1.0}
