"""The ITM threshold for a target precision (`[capfilt] itm_threshold = "auto"`).

BLIP keeps a text when its ITM match probability is >= 0.5, a threshold fit for BLIP's own
filter; a filter fine-tuned on a few hundred clean pairs scores on another scale. Fine-tuning
(`curation.training.train.finetune`, `[train] calibration_holdout`) therefore holds part of
the clean set out and stores, in FILTER_DIR/calibration.json, the ITM probabilities of those
held-out true pairs and of held-out negatives (each held-out image with a web text of another
image, a caption of another held-out image and a compositional negative of its own caption).
A run with `itm_threshold = "auto"` picks the lowest threshold whose held-out precision reaches
`[capfilt] target_precision`: as many true texts kept as that precision allows.

Precision is measured with the positives and negatives weighted equally (half of the judged
texts true), so it does not depend on how many negatives were drawn: a web whose texts are
mostly noise gets a lower precision than this at the same threshold.
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
    return json.loads(path.read_text())


def calibrated(spec):
    """`spec` (a RunSpec) with `itm_threshold = "auto"` replaced by the calibrated threshold
    and the calibration recorded in `spec.calibration`; unchanged for a numeric threshold."""
    cfg = from_dict(spec.config)
    if cfg.capfilt.itm_threshold != AUTO:
        return spec
    scores = load(cfg.capfilt.filter)
    negatives = [s for kind in scores["negatives"].values() for s in kind]
    found = threshold_for_precision(scores["positives"], negatives, cfg.capfilt.target_precision)
    capfilt = {**spec.config.get("capfilt", {}), "itm_threshold": found["itm_threshold"]}
    record = {
        **found,
        "target_precision": cfg.capfilt.target_precision,
        "held_out_positives": len(scores["positives"]),
        "held_out_negatives": len(negatives),
    }
    return replace(spec, config={**spec.config, "capfilt": capfilt}, calibration=record)


def describe(record: dict) -> str:
    """One line for `curate stats` and the report: how the threshold was chosen."""
    met = ">=" if record["reached"] else "< (not reached)"
    return (
        f"{record['itm_threshold']:.4f} (auto: held-out precision {record['precision']:.2f} "
        f"{met} target {record['target_precision']:.2f}, recall {record['recall']:.2f}; "
        f"{record['held_out_positives']} true and {record['held_out_negatives']} false "
        "held-out pairs)"
    )
