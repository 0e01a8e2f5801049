"""What the ITM threshold and the caption choice trade on the synthetic world: curated noise vs
clean web pairs kept.

Reads a finished bootstrap RUN_DIR (e.g. the demo's) and re-applies CapFilt's keep rule (ITM
probability >= threshold) and its choice of caption (`capfilt.judge`, each `[capfilt]
caption_choice`) to the texts its round-R pass scored, judging every text by the world's stored
truth (`curation.training.bootstrap.judged_texts`); no model runs. Images the pass rejected for
reasons other than the filter (a later selection stage, say) are left out.

    .venv/bin/python bench/filter_threshold.py demo_run/run demo_run/world/truth.parquet
"""

import argparse
from collections import defaultdict
from pathlib import Path

from curation.config import CAPTION_CHOICES
from curation.pipeline.capfilt import judge
from curation.rundir import LoopDir
from curation.training import bootstrap as loop

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def filter_judged(capfilt_run: Path, truth_parquet: Path) -> list[dict]:
    """The judged texts of the images the filter alone decided."""
    judged = loop.judged_texts(capfilt_run, truth_parquet)
    return [t for t in judged if t["reason"] in (None, "no_matching_text")]


def at_threshold(judged: list[dict], threshold: float) -> dict:
    kept = [t for t in judged if t["itm"] >= threshold]
    kept_web = [t for t in kept if t["source"] == "web"]
    clean_web = [t["itm"] for t in judged if t["source"] == "web" and not t["wrong"]]
    return {
        "threshold": threshold,
        "kept texts": len(kept),
        "synthetic kept": len(kept) - len(kept_web),
        "curated noise %": loop.pct(sum(t["wrong"] for t in kept), len(kept)),
        "kept web noise %": loop.pct(sum(t["wrong"] for t in kept_web), len(kept_web)),
        "clean web kept %": loop.pct(sum(p >= threshold for p in clean_web), len(clean_web)),
        **{f"chosen noise % ({c})": chosen_noise(judged, threshold, c) for c in CAPTION_CHOICES},
    }


def chosen_noise(judged: list[dict], threshold: float, choice: str) -> float | None:
    """Share of curated images whose chosen caption is wrong, had the pass used `threshold`
    and `choice`."""
    by_image = defaultdict(list)
    for text in judged:
        by_image[text["file"]].append(dict(text))
    chosen = [judge(texts, threshold, choice)[1] for texts in by_image.values()]
    wrong = [best["wrong"] for best in chosen if best is not None]
    return loop.pct(sum(wrong), len(wrong))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished `curate bootstrap` RUN_DIR")
    parser.add_argument("truth", type=Path, help="the world's truth.parquet")
    parser.add_argument("--round", type=int, default=1)
    args = parser.parse_args()
    judged = filter_judged(LoopDir(args.run_dir).capfilt(args.round).root, args.truth)
    rows = [at_threshold(judged, t) for t in THRESHOLDS]
    print("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(value) for value in row.values()) + " |")
    print("\n| text kind | texts | kept at 0.5 % | mean ITM |\n|---|---|---|---|")
    for kind in sorted({t["kind"] for t in judged}):
        itm = [t["itm"] for t in judged if t["kind"] == kind]
        kept = loop.pct(sum(p >= 0.5 for p in itm), len(itm))
        print(f"| {kind} | {len(itm)} | {kept} | {sum(itm) / len(itm):.3f} |")


if __name__ == "__main__":
    main()
