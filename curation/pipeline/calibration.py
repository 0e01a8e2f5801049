"""The ITM threshold chosen on held-out clean pairs (`[capfilt] itm_threshold = "auto"`).

BLIP keeps a text when its ITM match probability is >= 0.5, a threshold fit for BLIP's own
filter; a filter fine-tuned on a few hundred clean pairs scores on another scale. Fine-tuning
(`curation.training.train.finetune`, `[train] calibration_holdout`) therefore holds part of
the clean set out and stores, in FILTER_DIR/calibration.json, the ITM probabilities of those
held-out true pairs and of held-out negatives (each held-out image with a web text of another
image, a caption of another held-out image and a compositional negative of its own caption).
A run with `itm_threshold = "auto"` picks its threshold from them (`[capfilt] calibrate_for`):

- "recall": the highest threshold that keeps `calibration_target` of the held-out true pairs.
  It estimates the share of clean web pairs kept and needs no guess of the web's noise.
- "precision": the lowest threshold whose precision reaches `calibration_target`, measured
  with positives and negatives weighted equally (half of the judged texts true) so it does not
  depend on how many negatives were drawn; a web noisier than that, or whose noise is harder
  than these negatives, gets a lower precision at the same threshold.
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from curation import io
from curation.config import AUTO, ConfigError, from_dict

CALIBRATION_FILE = "calibration.json"


def threshold_for_precision(positives, negatives, target: float) -> dict:
    """The lowest ITM threshold whose class-balanced precision on held-out pairs is >= target.

    positives, negatives: ITM probabilities (P,), (N,) of true and false pairs, P, N >= 1.
    Returns {itm_threshold, precision, recall (share of positives kept), reached}; when no
    threshold reaches `target`, the one of highest precision (ties: the lowest), reached False.
    Precision at t is tpr / (tpr + fpr), tpr and fpr the shares of positives and negatives
    scoring >= t.
    """
    pos, neg = np.sort(np.asarray(positives, float)), np.sort(np.asarray(negatives, float))
    if not len(pos) or not len(neg):
        raise ValueError("calibration needs at least one positive and one negative score")
    candidates = np.unique(pos)  # (C,) ascending: lowering t below a positive adds no recall
    tpr = 1.0 - np.searchsorted(pos, candidates, side="left") / len(pos)  # share >= t
    fpr = 1.0 - np.searchsorted(neg, candidates, side="left") / len(neg)
    precision = tpr / (tpr + fpr)  # tpr > 0 for every candidate
    reached = precision >= target
    best = int(np.argmax(reached)) if reached.any() else int(np.argmax(precision))
    return {
        "itm_threshold": float(candidates[best]),
        "precision": round(float(precision[best]), 4),
        "recall": round(float(tpr[best]), 4),
        "reached": bool(reached.any()),
    }


def threshold_for_recall(positives, target: float) -> dict:
    """The highest ITM threshold keeping at least `target` of the held-out true pairs.

    positives: ITM probabilities (P,), P >= 1. Returns {itm_threshold, recall, reached}."""
    pos = np.sort(np.asarray(positives, float))[::-1]  # descending
    if not len(pos):
        raise ValueError("calibration needs at least one positive score")
    keep = min(len(pos), int(np.ceil(target * len(pos) - 1e-9)))  # pairs to keep, >= target
    threshold = float(pos[max(keep, 1) - 1])
    return {
        "itm_threshold": threshold,
        "recall": round(float(np.mean(pos >= threshold)), 4),
        "reached": True,
    }


def write(filter_dir: Path, positives: list[float], negatives: dict[str, list[float]]) -> Path:
    """Store held-out ITM probabilities: positives, and negatives by kind."""
    path = Path(filter_dir) / CALIBRATION_FILE
    io.write_json({"positives": positives, "negatives": negatives}, path)
    return path


def load(filter_source: str) -> dict:
    """The filter's stored calibration scores.

    Raises:
        ConfigError: the filter is not a folder with calibration.json (a hub id, or a folder
            fine-tuned with [train] calibration_holdout = 0).
    """
    path = Path(filter_source) / CALIBRATION_FILE
    if not path.is_file():
        raise ConfigError(
            f'[capfilt] itm_threshold = "auto" needs {path}: a filter fine-tuned by curate '
            "finetune / bootstrap with [train] calibration_holdout > 0, or give a number"
        )
    scores = json.loads(path.read_text())
    if not scores["positives"]:
        raise ConfigError(f"{path} holds no held-out true pair: fine-tune on more clean images")
    return scores


def calibrated(spec):
    """`spec` (a RunSpec) with `itm_threshold = "auto"` replaced by the calibrated threshold
    and the calibration recorded in `spec.calibration`; unchanged for a numeric threshold."""
    capfilt = from_dict(spec.config).capfilt
    if capfilt.itm_threshold != AUTO:
        return spec
    scores = load(capfilt.filter)
    negatives = [s for kind in scores["negatives"].values() for s in kind]
    target = capfilt.calibration_target
    if capfilt.calibrate_for == "recall":
        found = threshold_for_recall(scores["positives"], target)
    elif negatives:
        found = threshold_for_precision(scores["positives"], negatives, target)
    else:
        raise ConfigError(f'{capfilt.filter}: no held-out negatives; use calibrate_for = "recall"')
    found["precision"] = threshold_precision(scores["positives"], negatives, found["itm_threshold"])
    record = {
        **found,
        "calibrate_for": capfilt.calibrate_for,
        "target": target,
        "held_out_positives": len(scores["positives"]),
        "held_out_negatives": len(negatives),
    }
    config = {**spec.config.get("capfilt", {}), "itm_threshold": found["itm_threshold"]}
    return replace(spec, config={**spec.config, "capfilt": config}, calibration=record)


def threshold_precision(positives, negatives, threshold: float) -> float | None:
    """Class-balanced precision at `threshold`: tpr / (tpr + fpr); None when nothing passes."""
    tpr = float(np.mean(np.asarray(positives) >= threshold))
    fpr = float(np.mean(np.asarray(negatives) >= threshold)) if len(negatives) else 0.0
    return round(tpr / (tpr + fpr), 4) if tpr + fpr else None


def describe(record: dict) -> str:
    """One line for `curate stats` and the report: how the threshold was chosen."""
    goal = record["calibrate_for"]
    met = "" if record["reached"] else " (not reached)"
    precision = record["precision"]
    return (
        f"{record['itm_threshold']:.4f} (auto for {goal} {record['target']:.2f}{met}: on "
        f"{record['held_out_positives']} true and {record['held_out_negatives']} false "
        f"held-out pairs, recall {record['recall']:.2f}, precision "
        f"{'-' if precision is None else f'{precision:.2f}'})"
    )
