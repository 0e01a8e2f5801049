"""Metrics on tiny cases computed by hand."""

import math

import numpy as np
import pytest

from curation.training.metrics import bleu4, cider_d, retrieval_recall, tokenize


def test_perfect_retrieval_is_100_with_several_texts_per_image():
    image_ids = [10, 20, 30]
    text_ids = [10, 10, 20, 20, 30, 30]
    sim = np.array([[1.0 if t == i else 0.0 for t in text_ids] for i in image_ids])
    out = retrieval_recall(sim, text_ids, image_ids, ks=(1, 5))
    assert out == {
        "i2t_r1": 100.0,
        "t2i_r1": 100.0,
        "i2t_r5": 100.0,
        "t2i_r5": 100.0,
        "r_mean": 100.0,
    }


def test_known_permutation():
    # Texts 0..2 describe images 0..2, but each image's best text is the next image's text
    # (cyclic shift), and its own text comes second.
    sim = np.array(
        [
            [0.5, 0.9, 0.1],
            [0.1, 0.5, 0.9],
            [0.9, 0.1, 0.5],
        ]
    )
    out = retrieval_recall(sim, [0, 1, 2], [0, 1, 2], ks=(1, 2))
    assert out["i2t_r1"] == 0.0 and out["i2t_r2"] == 100.0
    # Text 0's column is (0.5, 0.1, 0.9): its image is second too.
    assert out["t2i_r1"] == 0.0 and out["t2i_r2"] == 100.0


def test_partial_retrieval_counts_any_correct_text_for_i2t():
    # image 0 has texts 0 and 1; only text 1 ranks first. Image 1 has text 2, ranked last.
    sim = np.array([[0.2, 0.9, 0.1], [0.8, 0.7, 0.1]])
    out = retrieval_recall(sim, [0, 0, 1], [0, 1], ks=(1,))
    assert out["i2t_r1"] == 50.0
    # t2i columns: text 0 -> image 1 first (wrong), text 1 -> image 0 (right), text 2 -> tie,
    # broken by lower index: image 0 (wrong).
    assert out["t2i_r1"] == pytest.approx(100 / 3)


def test_retrieval_rejects_a_transposed_matrix():
    with pytest.raises(ValueError, match="n_images, n_texts"):
        retrieval_recall(np.zeros((3, 2)), [0, 1, 2], [0, 1])


def test_tokenize_lowercases_and_strips_punctuation():
    assert tokenize("Two shapes: a Red circle, IMG_0423.jpg!") == [
        "two",
        "shapes",
        "a",
        "red",
        "circle",
        "img",
        "0423",
        "jpg",
    ]


def test_bleu_of_identical_captions_is_one():
    refs = [["a red circle on the left"], ["two shapes: a blue star and a heart"]]
    assert bleu4([r[0] for r in refs], refs) == pytest.approx(1.0)


def test_bleu_hand_computed_precisions():
    # 1-4 gram precisions 5/6, 4/5, 3/4, 2/3; equal lengths so no brevity penalty.
    score = bleu4(["a red circle on the left"], [["a red circle on the right"]])
    assert score == pytest.approx((1 / 3) ** 0.25)


def test_bleu_is_corpus_level_not_a_mean_of_sentences():
    cands = ["a red circle on the left", "a red circle on the left"]
    refs = [["a red circle on the left"], ["a red circle on the right"]]
    expected = (11 / 12 * 9 / 10 * 7 / 8 * 5 / 6) ** 0.25  # summed matches / summed guesses
    assert bleu4(cands, refs) == pytest.approx(expected)


def test_bleu_brevity_penalty_uses_the_closest_reference():
    short = "a red circle on"
    assert bleu4([short], [["a red circle on the left"]]) == pytest.approx(math.exp(1 - 6 / 4))
    # A 3-token reference is closer to 4 tokens than the 6-token one: no penalty.
    both = [["a red circle", "a red circle on the left"]]
    assert bleu4([short], both) == pytest.approx(1.0)


def test_cider_hand_computed():
    # Two images, one-word references: idf = log 2 for each word, cosine 1 for unigrams and 0
    # for n = 2..4 -> mean 0.25, x10 = 2.5.
    assert cider_d(["red", "blue"], [["red"], ["blue"]]) == pytest.approx(2.5)
    # "a" occurs in every image's references: idf 0, so it neither helps nor hurts; unigram
    # and bigram cosines are 1 -> mean 0.5, x10 = 5.0.
    assert cider_d(["a red", "a blue"], [["a red"], ["a blue"]]) == pytest.approx(5.0)


def test_cider_identical_beats_unrelated_and_length_is_penalised():
    refs = [
        ["a red circle on the left", "a large red circle"],
        ["a blue star at the top", "two shapes: a blue star and a heart"],
        ["a green ring in the center", "a small green ring"],
    ]
    identical = cider_d([r[0] for r in refs], refs)
    unrelated = cider_d(["free shipping", "click to enlarge", "IMG_0423.jpg"], refs)
    longer = cider_d([r[0] + " and a pink heart at the bottom" for r in refs], refs)
    assert identical > 0 and unrelated == 0.0
    assert identical > longer > unrelated


def test_caption_metrics_need_aligned_inputs():
    with pytest.raises(ValueError, match="one list of references per candidate"):
        bleu4(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="at least one reference"):
        cider_d(["a", "b"], [["a"], []])
