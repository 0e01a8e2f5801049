"""`[capfilt] itm_threshold = "auto"`: a threshold chosen on held-out pairs for a target
precision, and the held-out split it is chosen on."""

import numpy as np
import pytest

from curation.config import ConfigError, from_dict
from curation.pipeline import calibration
from curation.pipeline.run import RunSpec
from curation.training.holdout import split_holdout


def balanced_precision(positives, negatives, threshold: float) -> float:
    tpr = np.mean(np.asarray(positives) >= threshold)
    fpr = np.mean(np.asarray(negatives) >= threshold)
    return tpr / (tpr + fpr)


def scores(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """ITM-like probabilities: true pairs mostly high, false pairs mostly low, overlapping."""
    return rng.beta(5, 2, n), rng.beta(2, 5, n)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_the_calibrated_threshold_reaches_its_precision_on_another_split(target):
    rng = np.random.default_rng(0)
    found = calibration.threshold_for_precision(*scores(rng, 4000), target)
    assert found["reached"] and found["precision"] >= target
    held_out = balanced_precision(*scores(rng, 20000), found["itm_threshold"])
    assert held_out >= target - 0.01  # sampling error of 4,000 pairs per class is ~0.005


def test_the_threshold_keeps_as_many_true_pairs_as_the_target_allows():
    positives, negatives = [0.2, 0.5, 0.7, 0.9], [0.1, 0.3, 0.6, 0.8]
    found = calibration.threshold_for_precision(positives, negatives, 0.6)
    # t = 0.5: tpr 0.75, fpr 0.5 -> 0.6 exactly; t = 0.2 would give 1 / (1 + 0.75) = 0.57
    assert found == {"itm_threshold": 0.5, "precision": 0.6, "recall": 0.75, "reached": True}
    stricter = calibration.threshold_for_precision(positives, negatives, 0.7)
    assert stricter["itm_threshold"] > 0.5 and stricter["recall"] < 0.75


def test_an_unreachable_target_falls_back_to_the_most_precise_threshold():
    found = calibration.threshold_for_precision([0.4, 0.5, 0.6], [0.35, 0.55, 0.9], 0.99)
    # precision 0.6 at t = 0.4, 0.5 at 0.5 and at 0.6
    assert found == {"itm_threshold": 0.4, "precision": 0.6, "recall": 1.0, "reached": False}


def test_auto_needs_a_calibrated_filter_and_is_refused_before_any_work(tmp_path):
    config = {"capfilt": {"itm_threshold": "auto", "filter": str(tmp_path)}}
    spec = RunSpec("urls.parquet", str(tmp_path / "run"), config=config)
    with pytest.raises(ConfigError, match="calibration_holdout > 0, or give a number"):
        calibration.calibrated(spec)
    with pytest.raises(ConfigError, match='itm_threshold must be float or "auto"'):
        from_dict({"capfilt": {"itm_threshold": "manual"}})
    with pytest.raises(ConfigError, match="calibration_target must be in"):
        from_dict({"capfilt": {"calibration_target": 1.0}})
    with pytest.raises(ConfigError, match="calibrate_for must be recall or precision"):
        from_dict({"capfilt": {"calibrate_for": "f1"}})
    with pytest.raises(ConfigError, match="calibration_holdout must be in"):
        from_dict({"train": {"calibration_holdout": 1.0}})


@pytest.mark.parametrize("goal", ["recall", "precision"])
def test_auto_is_replaced_by_the_threshold_of_the_calibration_target(tmp_path, goal):
    rng = np.random.default_rng(1)
    positives, negatives = scores(rng, 500)
    half = len(negatives) // 2
    kinds = {"web_text": negatives[:half].tolist(), "other_caption": negatives[half:].tolist()}
    calibration.write(tmp_path, positives.tolist(), kinds)
    thresholds = []
    for target in (0.7, 0.9):
        capfilt = {"itm_threshold": "auto", "filter": str(tmp_path)}
        capfilt |= {"calibrate_for": goal, "calibration_target": target}
        spec = calibration.calibrated(RunSpec("u.parquet", "out", config={"capfilt": capfilt}))
        found = spec.calibration
        assert from_dict(spec.config).capfilt.itm_threshold == found["itm_threshold"]
        assert found["held_out_negatives"] == 500 and found[goal] >= target
        assert calibration.calibrated(spec) == spec  # a number stays as it is
        thresholds.append(found["itm_threshold"])
    # calibrate_for and calibration_target have an effect: higher recall, lower threshold
    assert (thresholds[0] > thresholds[1]) == (goal == "recall")
    assert f"(auto for {goal} 0.90: on 500 true and 500 false" in calibration.describe(found)


def test_the_recall_threshold_keeps_the_target_share_of_true_pairs_on_another_split():
    rng = np.random.default_rng(2)
    found = calibration.threshold_for_recall(scores(rng, 4000)[0], 0.85)
    assert found["recall"] >= 0.85
    assert np.mean(scores(rng, 20000)[0] >= found["itm_threshold"]) == pytest.approx(0.85, abs=0.01)
    exact = calibration.threshold_for_recall([0.1, 0.2, 0.3, 0.4], 0.5)
    assert exact == {"itm_threshold": 0.3, "recall": 0.5, "reached": True}


def test_the_holdout_is_whole_images_chosen_by_seed_not_by_row_order():
    pairs = [(bytes([i]), f"caption {i} {j}") for i in range(50) for j in range(2)]
    train, held = split_holdout(pairs, 0.2, seed=0)
    assert len({image for image, _ in held}) == 10 and len(train) + len(held) == 100
    assert not {image for image, _ in held} & {image for image, _ in train}
    assert split_holdout(pairs[::-1], 0.2, seed=0)[1] == held[::-1]
    assert split_holdout(pairs, 0.2, seed=1)[1] != held
    assert split_holdout(pairs, 0.0, seed=0) == (pairs, [])


def test_a_calibration_without_true_pairs_or_negatives_is_refused(tmp_path):
    config = {"capfilt": {"itm_threshold": "auto", "filter": str(tmp_path)}}
    spec = RunSpec("u.parquet", "out", config=config)
    calibration.write(tmp_path, [], {"web_text": [0.1]})
    with pytest.raises(ConfigError, match="no held-out true pair"):
        calibration.calibrated(spec)
    calibration.write(tmp_path, [0.9], {"web_text": []})
    assert calibration.calibrated(spec).calibration["itm_threshold"] == 0.9  # recall needs none
    config["capfilt"]["calibrate_for"] = "precision"
    with pytest.raises(ConfigError, match='no held-out negatives; use calibrate_for = "recall"'):
        calibration.calibrated(RunSpec("u.parquet", "out", config=config))
