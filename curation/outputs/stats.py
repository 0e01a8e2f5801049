"""`curate stats`: the run's funnel and scores, every number from a query in sql/."""

from pathlib import Path

from curation import schema, sql
from curation.pipeline import calibration
from curation.rundir import SHARD_STEPS, RunDir

FUNNEL = {"stages": list(schema.REJECT_STAGES)}
DEDUP = {"reasons": [r.value for g in schema.GATES if g.name == "dedup" for r in g.reasons]}
DEDUP_SECTIONS = [
    ("Removed by the dedup stage ([dedup]), by reason", "stats_dedup", DEDUP),
    (
        "Eval overlaps (--decontaminate): web rows that copy an eval image",
        "stats_eval_overlap",
        {"limit": 10},
    ),
    ("Alt-text repeated on several images (downloaded)", "stats_repeated_texts", {"limit": 5}),
]
SECTIONS = [
    ("Rows: input = curated + rejected", "stats_funnel", {}),
    ("Funnel: rows in, rejected (by reason) and out of each step", "stats_funnel_steps", FUNNEL),
    ("Rejects by stage and reason", "stats_rejects", {}),
    ("Caption sources", "stats_sources", {}),
    ("ITM probability / ITC similarity by source", "stats_itm", {}),
    ("Image sizes (curated)", "stats_sizes", {}),
    ("Duplicates by sha256 (curated)", "stats_duplicates", {}),
    *DEDUP_SECTIONS,
    ("Per shard: counts and CapFilt throughput", "stats_shards", {}),
]


def format_table(columns: list[str], rows: list[tuple]) -> str:
    """Plain aligned text table (numbers right-aligned)."""
    cells = [columns] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    numeric = [all(isinstance(row[i], int | float) for row in rows) for i in range(len(columns))]

    def line(values):
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]] or ["(none)"])


def selection_sections(run_dir: Path) -> list[tuple[str, str, dict]]:
    """The concept and score sections, with their parameters from the run's selection plan."""
    run = RunDir.of(run_dir)
    plan = run.read_json(run.selection)
    sections = []
    if plan.get("balance"):
        t = plan["balance"]["t"]
        sections += [
            (f"Concepts before (pool) and after balancing (t = {t})", "stats_concepts", {"t": t}),
            ("Most matched concepts", "stats_concepts_top", {"limit": 10}),
        ]
    if plan.get("score"):
        threshold = plan["score"]["threshold"]
        sections.append(("DFN scores and threshold", "stats_scores", {"threshold": threshold}))
    return sections


def progress(run: RunDir) -> str | None:
    """One line for a run that has not finished (stopped, or still going): the shards each
    step has done, so the tables below read as "so far". None for a finished run."""
    if run.manifest.exists():
        return None
    shards = run.read_json(run.run_json).get("shards", "?")
    done = ", ".join(f"{step} {len(run.markers(step))}/{shards}" for step in SHARD_STEPS)
    return f"Run not finished; shards done per step: {done}. The numbers below cover those."


def models_line(run: RunDir) -> str | None:
    """The line "Models: captioner SOURCE (family), filter SOURCE (family)" of a finished run."""
    models = run.read_json(run.manifest).get("models")
    if not models:
        return None
    roles = [
        f"{role} {models[role]} ({', '.join(models.get(f'{role}_family', [])) or '?'})"
        for role in ("captioner", "filter")
    ]
    return "Models: " + ", ".join(roles)


def report(run_dir: str | Path) -> str:
    """All sections as text."""
    con = sql.connect(run_dir)
    run = RunDir.of(run_dir)
    calibrated = run.read_json(run.run_json).get("calibration")
    parts = [line] if (line := progress(run)) else []
    if attempts := run.read_json(run.retries).get("attempts"):
        retried, recovered = (sum(a[k] for a in attempts) for k in ("retried", "recovered"))
        parts.append(
            f"Retried downloads (--retry-failed, {len(attempts)} time(s)): "
            f"{retried} fetched again, {recovered} recovered"
        )
    parts += [line] if (line := models_line(run)) else []
    parts += [f"ITM threshold: {calibration.describe(calibrated)}"] if calibrated else []
    for title, name, params in SECTIONS + selection_sections(run_dir):
        columns, rows = sql.query(con, name, **params)
        body = format_table(columns, rows) if rows else "(none)"
        parts.append(f"{title}\n{body}")
    return "\n\n".join(parts)
