"""What a CapFilt pass's filter still lets through, on a synthetic world whose truth is known.

Reads a capfilt run (a bootstrap round's `ROUND/capfilt`) and the world's truth; no model runs.
For the web texts it prints the AUC of clean vs noisy texts and the noise among kept texts at
the thresholds that keep 80% and 85% of the clean pairs, for the ITM probability, the ITC
similarity and their sum as logits (logit ITM + ITC / 0.07, BLIP's ITC temperature at init);
then, at the 80% threshold, the share kept of each noise kind, and of the one-attribute errors
by what the wrong word names (a colour, shape or size absent from the scene, else a wrong
binding or position, or the background).

    .venv/bin/python bench/filter_errors.py RUN/round1/capfilt WORLD/truth.parquet
"""

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from curation import sql
from curation.training import bootstrap as loop
from curation.world.scenes import COLOURS, SHAPES, SIZES

WEB_SCORES = """
SELECT s.url, t.text, t.itm, t.itc FROM texts AS t
JOIN (SELECT run_id, sample_id, url FROM curated
      UNION ALL SELECT run_id, sample_id, url FROM rejects) AS s USING (run_id, sample_id)
WHERE t.source = 'web' AND t.itm IS NOT NULL
"""


def auc(score: np.ndarray, wrong: np.ndarray) -> float:
    """P(a clean text scores above a noisy one), by ranks (Mann-Whitney U)."""
    ranks = np.argsort(np.argsort(np.r_[score[~wrong], score[wrong]])) + 1
    n_pos, n_neg = (~wrong).sum(), wrong.sum()
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def noise_at(score: np.ndarray, wrong: np.ndarray, clean_kept: float) -> float:
    kept = score >= np.quantile(score[~wrong], 1 - clean_kept)
    return 100 * float(wrong[kept].mean())


def wrong_word(text: str, scene: dict) -> str:
    """What a one-attribute error changed, as far as the words tell."""
    words = set(text.replace(",", " ").split())
    background = text.split(" on a ")[-1].split()[0] if " on a " in text else None
    if background and background != scene["background"]:
        return "background"
    present = {f: {o[f] for o in scene["objects"]} for f in ("colour", "shape", "size")}
    for field, vocabulary in (("colour", COLOURS), ("shape", SHAPES), ("size", SIZES)):
        if any(w in vocabulary and w not in present[field] and w != background for w in words):
            return f"{field} absent"
    return "binding or position"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("capfilt_run", type=Path)
    parser.add_argument("truth", type=Path)
    args = parser.parse_args()
    truth = loop._truth_by_url(args.truth)
    rows = sql.connect(args.capfilt_run).execute(WEB_SCORES).fetchall()
    scenes = [truth[loop._file_of(url)] for url, *_ in rows]
    wrong = np.array([s["is_noisy"] for s in scenes])
    itm = np.clip([r[2] for r in rows], 1e-6, 1 - 1e-6)
    itc = np.array([r[3] for r in rows])
    scores = {"ITM": itm, "ITC": itc, "logit ITM + ITC/0.07": np.log(itm / (1 - itm)) + itc / 0.07}
    print(f"{len(rows)} web texts, {100 * wrong.mean():.1f}% noisy")
    print("score                  AUC    noise @80% clean kept   @85%")
    for name, score in scores.items():
        line = f"{name:22s} {auc(score, wrong):.3f}  {noise_at(score, wrong, 0.8):5.1f}%"
        print(line + f"                {noise_at(score, wrong, 0.85):5.1f}%")
    kept = itm >= np.quantile(itm[~wrong], 0.2)
    kinds, errors = Counter(), Counter()
    for scene, (_, text, *_), keep in zip(scenes, rows, kept, strict=True):
        kinds[(scene["kind"], keep)] += 1
        if scene["kind"] == "wrong_attribute":
            errors[(wrong_word(text, json.loads(scene["scene"])), keep)] += 1
    print("\nkept at the ITM threshold keeping 80% of clean pairs:")
    for table in (kinds, errors):
        for name in sorted({k for k, _ in table}):
            n = table[(name, True)] + table[(name, False)]
            print(f"  {name:22s} {n:5d} texts, {100 * table[(name, True)] / n:5.1f}% kept")


if __name__ == "__main__":
    main()
