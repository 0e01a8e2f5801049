"""What the ITM threshold trades on the synthetic world: curated noise vs clean web pairs kept.

Reads a finished bootstrap RUN_DIR (e.g. the demo's) and re-applies CapFilt's keep rule (ITM
probability >= threshold) to the texts its round-R pass scored, judging every text by the
world's stored truth; no model runs. Images the pass rejected for reasons other than the filter
(a later selection stage, say) are left out.

    .venv/bin/python bench/filter_threshold.py demo_run/run demo_run/world/truth.parquet
"""

import argparse
from pathlib import Path

from curation import bootstrap as loop
from curation import sql

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def judged_texts(capfilt_run: Path, truth_parquet: Path) -> list[tuple[str, str, bool, float]]:
    """(kind, source, wrong for its image, ITM probability) of every scored text; kind is the
    web text's noise kind, or "synthetic true" / "synthetic wrong"."""
    truth = loop._truth_by_url(truth_parquet)
    rows = sql.connect(capfilt_run).execute(sql.load("bootstrap_scored_texts")).fetchall()
    judged = []
    for url, source, text, _, _, itm, reason in rows:
        if reason not in (None, "no_matching_text"):
            continue
        scene = truth[loop._file_of(url)]
        wrong = scene["is_noisy"] if source == "web" else not loop._true(text, scene["scene"])
        kind = scene["kind"] if source == "web" else f"synthetic {'wrong' if wrong else 'true'}"
        judged.append((kind, source, wrong, itm))
    return judged


def at_threshold(judged, threshold: float) -> dict:
    kept = [row for row in judged if row[3] >= threshold]
    kept_web = [row for row in kept if row[1] == "web"]
    clean_web = [row[3] for row in judged if row[1] == "web" and not row[2]]  # their ITM
    return {
        "threshold": threshold,
        "kept texts": len(kept),
        "synthetic kept": len(kept) - len(kept_web),
        "curated noise %": loop._pct(sum(row[2] for row in kept), len(kept)),
        "kept web noise %": loop._pct(sum(row[2] for row in kept_web), len(kept_web)),
        "clean web kept %": loop._pct(sum(p >= threshold for p in clean_web), len(clean_web)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished `curate bootstrap` RUN_DIR")
    parser.add_argument("truth", type=Path, help="the world's truth.parquet")
    parser.add_argument("--round", type=int, default=1)
    args = parser.parse_args()
    judged = judged_texts(loop.layout(args.run_dir, args.round)["capfilt"], args.truth)
    rows = [at_threshold(judged, t) for t in THRESHOLDS]
    print("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(value) for value in row.values()) + " |")
    print("\n| text kind | texts | kept at 0.5 % | mean ITM |\n|---|---|---|---|")
    for kind in sorted({row[0] for row in judged}):
        itm = [row[3] for row in judged if row[0] == kind]
        kept = loop._pct(sum(p >= 0.5 for p in itm), len(itm))
        print(f"| {kind} | {len(itm)} | {kept} | {sum(itm) / len(itm):.3f} |")


if __name__ == "__main__":
    main()
