"""`curate report`: one self-contained HTML page that shows a run to a person.

Sections: what ran (models, thresholds, counts); the funnel from input to curated with the
rows each step dropped, by reject reason; score histograms (ITM, ITC and, when the run has
annotations, DFN) with the thresholds marked; the concept distribution by rank before and after
MetaCLIP balancing (log-log: balancing flattens the head, arXiv 2309.16671); and kept and
rejected samples side by side, each with its thumbnail, texts, ITM scores and reject reason.

Self-contained: plots are PNGs drawn by matplotlib on an Agg canvas (no pyplot, no global
backend), thumbnails are small JPEGs, both embedded as data: URIs, and a Content-Security-Policy
forbids the page to load anything else. Every string from the run (alt-text, URLs, captions) is
HTML-escaped: web text is hostile input. Numbers come from DuckDB (sql/report_*.sql, the
funnel from sql/stats_*.sql); histograms are binned in SQL, so a page costs the same for a
thousand rows or a billion. Sections whose data a run lacks (DFN scores, concepts) are left out.

Over 400 lines on purpose: one page, its sections in page order, each a short function; split
across files, a reader would lose the page's order.
"""

import base64
import html
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from curation import io, schema, sql
from curation.config import CapFiltConfig, ConfigError
from curation.outputs import stats
from curation.outputs.export import has_annotations
from curation.pipeline import calibration
from curation.pipeline.images import decode_image
from curation.rundir import RunDir

# Funnel steps in order: (label, reject reasons that drop rows on the way to it, stage name
# that does when the reason is unknown). Whatever matches no step drops on the last one.
# (label, reasons that drop rows there, stage of its rejects): schema.GATES, then the curated.
FUNNEL = [(g.label, set(g.reasons), g.stage) for g in schema.GATES] + [("curated", set(), None)]
BINS = 40  # histogram bins
SAMPLES = 8  # kept and rejected samples shown, each
THUMB = 96  # thumbnail side in pixels
THUMB_QUALITY = 70  # JPEG quality of thumbnails: small pages
TOP_CONCEPTS = 12  # most matched concept entries listed beside the rank plot
TEXT_LIMIT = 240  # characters of a text shown (alt-text can be kilobytes)
PLOT_SIZE = (4.1, 2.7)  # inches at 100 dpi: three plots side by side in a 1280px window


def esc(value) -> str:
    """HTML-escaped text (quotes too: it may land in an attribute)."""
    return html.escape("" if value is None else str(value), quote=True)


def short(text: str | None, limit: int = TEXT_LIMIT) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class RunInfo:
    """What the report needs to know about the run besides its tables."""

    run_dir: Path
    manifest: dict  # RUN_DIR/manifest.json ({} while the run is unfinished)
    selection: dict  # RUN_DIR/selection.json ({} when selection did not run)
    annotated: bool  # the annotations view has rows (DFN score, concepts)
    calibration: dict | None = None  # run.json's: how itm_threshold = "auto" was resolved

    @property
    def capfilt(self) -> dict:
        return self.manifest.get("config", {}).get("capfilt", {})

    @property
    def itm_threshold(self) -> float | None:
        return self.capfilt.get("itm_threshold")

    @property
    def dfn_threshold(self) -> float | None:
        return (self.selection.get("score") or {}).get("threshold")

    @property
    def t(self) -> int | None:
        return (self.selection.get("balance") or {}).get("t")

    @property
    def order(self) -> str:
        return self.selection.get("order", "score_then_balance")

    @property
    def max_pixels(self) -> int:
        return self.capfilt.get("max_image_pixels", CapFiltConfig().max_image_pixels)


class ReportError(ConfigError):
    """RUN_DIR is not a curation run."""


def write_report(run_dir: str | Path, out_file: str | Path | None = None) -> Path:
    """Write the report of RUN_DIR to `out_file` (default RUN_DIR/report.html), atomically."""
    run = RunDir.of(run_dir)
    if not run.is_run():  # an unfinished run is fine: a progress view
        raise ReportError(f"{run.root} is not a curation run (no run.json)")
    out = Path(out_file) if out_file else run.report
    if run.holds_data(out):
        raise ReportError(f"--out {out} is inside the run's data; write the report elsewhere")
    page = render(run_dir)
    io.write_text(page, out)
    return out


def render(run_dir: str | Path, con=None) -> str:
    """The report as one HTML string; `con` defaults to `sql.connect(run_dir)`."""
    run = RunDir.of(run_dir)
    con = con or sql.connect(run.root)
    info = RunInfo(
        run.root,
        run.read_json(run.manifest),
        run.read_json(run.selection),
        has_annotations(con),
        run.read_json(run.run_json).get("calibration"),
    )
    counts = dict(zip(*_one(con, "stats_funnel"), strict=True))
    body = [
        header_html(info, counts),
        funnel_html(con, info, counts),
        scores_html(con, info),
        concepts_html(con, info),
        dedup_html(con),
        samples_html(con, info, counts),
    ]
    return page_html(f"CapFilt report: {run.root.resolve().name}", "\n".join(b for b in body if b))


def _one(con, name: str, **params) -> tuple[list[str], tuple]:
    columns, rows = sql.query(con, name, **params)
    return columns, rows[0]


# ---------------------------------------------------------------------------------------------
# Header and funnel
# ---------------------------------------------------------------------------------------------


def header_html(info: RunInfo, counts: dict) -> str:
    """Title, the three headline counts and the settings that shaped the run."""
    total = counts["input_rows"] or 1
    kpis = [
        ("input rows", f"{counts['input_rows']:,}"),
        ("curated", f"{counts['curated']:,} ({100 * counts['curated'] / total:.1f}%)"),
        ("rejected", f"{counts['rejected']:,} ({100 * counts['rejected'] / total:.1f}%)"),
    ]
    kpi_html = "".join(f'<div class="kpi"><b>{esc(v)}</b>{esc(k)}</div>' for k, v in kpis)
    settings = [(k, v) for k, v in _settings(info) if v not in (None, "")]
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in settings)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return (
        f"<header><h1>CapFilt curation report</h1><p class=sub>{esc(info.run_dir.resolve())}"
        f" &middot; generated {esc(now)}</p><div class=kpis>{kpi_html}</div>"
        f"<table class=settings>{rows}</table></header>"
    )


def _threshold_setting(info: RunInfo) -> float | str | None:
    """The ITM threshold, and how it was calibrated when it was "auto"."""
    return calibration.describe(info.calibration) if info.calibration else info.itm_threshold


def _settings(info: RunInfo) -> list[tuple[str, object]]:
    models = info.manifest.get("models", {})
    score, balance = info.selection.get("score") or {}, info.selection.get("balance") or {}
    wall = info.manifest.get("timings", {}).get("wall")
    return [
        ("captioner", models.get("captioner")),
        ("filter", models.get("filter")),
        ("ITM threshold", _threshold_setting(info)),
        ("synthetic captions per image", info.capfilt.get("num_captions")),
        ("DFN scorer", score.get("scorer")),
        ("DFN threshold", None if info.dfn_threshold is None else f"{info.dfn_threshold:.4f}"),
        ("MetaCLIP t", info.t),
        ("concept list", balance.get("metadata")),
        ("selection order", info.order if info.selection else None),
        ("shards", info.manifest.get("shards")),
        ("wall time", None if wall is None else f"{wall:,.1f} s"),
    ]


@dataclass
class Step:
    label: str
    rows: int  # rows left after the step
    dropped: list[tuple[str, int]]  # (reason, rows) dropped by the step
    ran: bool = True


def _step_of(stage: str, reason: str, labels: list[str]) -> str:
    """The funnel step that dropped a reject: by reason, else by stage, else the last step."""
    steps = {label: (reasons, stage_name) for label, reasons, stage_name in FUNNEL}
    for label in labels:
        if reason in steps[label][0]:
            return label
    for label in reversed(labels):  # a stage's last step: e.g. CapFilt, not decontamination
        if stage == steps[label][1]:
            return label
    return labels[-1]


def funnel(input_rows: int, rejects: list[tuple], info: RunInfo) -> list[Step]:
    """Rows left after each step, from `rejects` (stage, reason, rows) and the input count."""
    labels = [label for label, _, _ in FUNNEL]
    if info.order == "balance_then_score":
        scored, balanced = labels.index("scored"), labels.index("balanced")
        labels[scored], labels[balanced] = labels[balanced], labels[scored]
    dropped: dict[str, list] = {label: [] for label in labels}
    for stage, reason, rows in rejects:
        dropped[_step_of(stage, reason, labels)].append((reason, rows))
    ran = {
        "scored": bool(info.selection.get("score")),
        "balanced": bool(info.selection.get("balance")),
    }
    steps, left = [Step("input", input_rows, [])], input_rows
    for label in labels:
        left -= sum(n for _, n in dropped[label])
        steps.append(
            Step(label, left, dropped[label], ran.get(label, True) or bool(dropped[label]))
        )
    return steps


def funnel_html(con, info: RunInfo, counts: dict) -> str:
    """The funnel as a table with bars; a warning when the rows do not add up."""
    _, rejects = sql.query(con, "stats_rejects")
    steps = funnel(counts["input_rows"], rejects, info)
    total = counts["input_rows"] or 1
    rows = "".join(_funnel_row(step, total) for step in steps)
    check = ""
    if steps[-1].rows != counts["curated"]:
        check = (
            f"<p class=warn>Rows do not add up: {counts['input_rows']:,} input, "
            f"{counts['curated']:,} curated, {counts['rejected']:,} rejected.</p>"
        )
    return (
        "<section><h2>Funnel</h2><table class=funnel><tr><th>step</th><th>rows</th>"
        f"<th>of input</th><th></th><th>dropped at this step</th></tr>{rows}</table>{check}"
        "</section>"
    )


def _funnel_row(step: Step, total: int) -> str:
    share = 100 * step.rows / total
    if not step.ran:
        drops = '<span class="muted">not run</span>'
    else:
        drops = (
            ", ".join(
                f'<span class="reason">{esc(reason)}</span> {n:,}' for reason, n in step.dropped
            )
            or '<span class="muted">none</span>'
        )
    bar = f'<div class=bar><div style="width:{share:.2f}%"></div></div>'
    return (
        f"<tr><td>{esc(step.label)}</td><td class=num>{step.rows:,}</td>"
        f"<td class=num>{share:.1f}%</td><td>{bar}</td><td>{drops}</td></tr>"
    )


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def _png(fig: Figure) -> str:
    """A figure as a data: URI (PNG)."""
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _figure() -> tuple[Figure, object]:
    fig = Figure(figsize=PLOT_SIZE, dpi=100)
    return fig, fig.subplots()


def _span(lo: float, hi: float, mark: float | None) -> tuple[float, float]:
    """The histogram range: the data and the threshold mark, never empty."""
    if mark is not None:
        lo, hi = min(lo, mark), max(hi, mark)
    if hi - lo < 1e-9:
        pad = max(abs(lo) * 0.01, 1e-3)
        lo, hi = lo - pad, hi + pad
    return lo, hi


@dataclass
class Histogram:
    values_sql: str  # sql/NAME.sql that defines report_values (grp, value)
    title: str
    xlabel: str
    ylabel: str
    mark: float | None = None  # threshold to draw
    mark_label: str = ""


def histogram_png(con, spec: Histogram) -> str | None:
    """A histogram of the values `spec.values_sql` defines, binned in DuckDB; None if empty."""
    con.execute(sql.load(spec.values_sql))
    _, (lo, hi, n) = _one(con, "report_range")
    if not n:
        return None
    lo, hi = _span(lo, hi, spec.mark)
    _, rows = sql.query(con, "report_histogram", lo=lo, hi=hi, bins=BINS)
    counts: dict[str, np.ndarray] = {}
    for grp, b, count in rows:
        counts.setdefault(grp, np.zeros(BINS))[b] = count
    fig, ax = _figure()
    edges = np.linspace(lo, hi, BINS + 1)
    for grp in sorted(counts):
        ax.stairs(counts[grp], edges, label=f"{grp} ({int(counts[grp].sum()):,})", linewidth=1.5)
    if spec.mark is not None:
        label = f"{spec.mark_label} {spec.mark:.4g}"
        ax.axvline(spec.mark, color="crimson", linestyle="--", linewidth=1.2, label=label)
    ax.set(title=spec.title, xlabel=spec.xlabel, ylabel=spec.ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(5))  # tiny ranges have long tick labels
    ax.ticklabel_format(axis="x", useOffset=False)
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def scores_html(con, info: RunInfo) -> str:
    """ITM and ITC histograms per text source, DFN when the run has scores."""
    specs = [
        Histogram(
            "report_values_itm",
            "ITM match probability",
            "P(match)",
            "texts",
            info.itm_threshold,
            "ITM threshold",
        ),
        Histogram("report_values_itc", "ITC similarity", "cosine", "texts"),
    ]
    if info.annotated:
        specs.append(
            Histogram(
                "report_values_dfn",
                "DFN score",
                "cosine (image, caption)",
                "images",
                info.dfn_threshold,
                "DFN threshold",
            )
        )
    figures = [(spec.title, histogram_png(con, spec)) for spec in specs]
    imgs = "".join(f'<img src="{uri}" alt="{esc(title)}">' for title, uri in figures if uri)
    if not imgs:
        return "<section><h2>Scores</h2><p class=muted>No text was scored.</p></section>"
    return f"<section><h2>Scores</h2><div class=plots>{imgs}</div></section>"


def concepts_png(con, info: RunInfo) -> str | None:
    """Matches per concept entry by rank, log-log, before and after balancing; None if none."""
    threshold = info.dfn_threshold if info.order == "score_then_balance" else None
    data = con.execute(sql.load("report_concept_counts"), {"threshold": threshold}).fetchnumpy()
    if not len(data["n"]):
        return None
    fig, ax = _figure()
    styles = {"before": dict(linewidth=2.5, alpha=0.6), "after": dict(linewidth=1, marker=".")}
    for stage, label in (("before", "before balancing"), ("after", "after (curated)")):
        counts = np.asarray(data["n"][data["stage"] == stage], dtype=float)
        if len(counts):
            ranks = np.arange(1, len(counts) + 1)
            ax.loglog(
                ranks,
                counts,
                label=f"{label}: {len(counts):,} entries, {int(counts.sum()):,} matches",
                **styles[stage],
            )
    if info.t:
        ax.axhline(info.t, color="crimson", linestyle="--", linewidth=1.2, label=f"t = {info.t:,}")
    ax.set(title="Concept frequency by rank", xlabel="rank", ylabel="matches")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers; minor ticks labelled on short ranges
        axis.set_major_formatter(LogFormatter())
        axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))
    ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def top_concepts_html(con, info: RunInfo) -> str:
    """The most matched entries before balancing and how many of their matches were kept."""
    threshold = info.dfn_threshold if info.order == "score_then_balance" else None
    _, rows = sql.query(con, "report_concepts_top", threshold=threshold, limit=TOP_CONCEPTS)
    cells = "".join(
        f"<tr><td>{esc(short(entry, 40))}</td><td class=num>{before:,}</td>"
        f"<td class=num>{after:,}</td><td class=num>{100 * after / before:.0f}%</td></tr>"
        for entry, before, after in rows
    )
    return (
        "<table class=top><tr><th>entry</th><th>before</th><th>after</th><th>kept</th></tr>"
        f"{cells}</table>"
    )


def concepts_html(con, info: RunInfo) -> str:
    uri = concepts_png(con, info) if info.annotated else None
    if uri is None:
        return ""
    return (
        "<section><h2>Concepts (MetaCLIP balancing)</h2><div class=plots>"
        f'<img src="{uri}" alt="concept frequency by rank">{top_concepts_html(con, info)}'
        "</div></section>"
    )


def dedup_html(con) -> str:
    """What the dedup stage removed, by reason with an example; which rows leaked eval images;
    the most repeated alt-texts. Empty when there is none of the three."""
    parts = []
    for title, name, params in stats.DEDUP_SECTIONS:
        columns, rows = sql.query(con, name, **params)
        if rows:
            head = "".join(f"<th>{esc(c)}</th>" for c in columns)
            body = "".join(
                "<tr>" + "".join(f"<td>{esc(short(str(v)))}</td>" for v in row) + "</tr>"
                for row in rows
            )
            parts.append(f"<h3>{esc(title)}</h3><table><tr>{head}</tr>{body}</table>")
    return f"<section><h2>Duplicates and eval leaks</h2>{''.join(parts)}</section>" if parts else ""


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------


def thumbnail(data: bytes | None, max_pixels: int) -> str | None:
    """A small JPEG data: URI of image bytes (upright, as CapFilt saw it); None if undecodable."""
    if not data:
        return None
    decoded = decode_image(data, 1, max_pixels)
    if decoded.image is None:
        return None
    image = decoded.image
    image.thumbnail((THUMB, THUMB))
    buffer = BytesIO()
    image.save(buffer, "JPEG", quality=THUMB_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _thumb_html(data: bytes | None, max_pixels: int, why: str) -> str:
    uri = thumbnail(data, max_pixels)
    if uri is None:
        return f'<div class="thumb none">no image<br>{esc(why)}</div>'
    return f'<img class=thumb src="{uri}" alt="thumbnail">'


def _texts_html(rec: dict) -> str:
    """Every candidate text with source, ITM and whether it passed; the chosen one marked."""
    candidates = rec.get("candidates")
    if not candidates:
        web = short(rec.get("web_text")) or "(empty)"
        return f'<ul class=texts><li><span class="src web">web</span> {esc(web)}</li></ul>'
    items = []
    for c in candidates:
        chosen = c["text"] == rec.get("caption") and c["source"] == rec.get("caption_source")
        mark = "★" if chosen else ("✓" if c["kept"] else "✗")
        cls = "chosen" if chosen else ("pass" if c["kept"] else "fail")
        itm = "–" if c["itm"] is None else f"{c['itm']:.4f}"
        text = short(c["text"]) or "(empty)"
        items.append(
            f'<li class={cls}><span class="src {esc(c["source"])}">{esc(c["source"])}</span> '
            f'<span class=itm title="ITM probability">{mark} {itm}</span> {esc(text)}</li>'
        )
    return f"<ul class=texts>{''.join(items)}</ul>"


def card_html(rec: dict, info: RunInfo, kept: bool) -> str:
    """One sample: thumbnail, key, size, URL, reject reason, texts with scores."""
    why = "" if kept else rec.get("reason")
    thumb = _thumb_html(rec.get("image"), info.max_pixels, why)
    size = f" &middot; {rec['width']}×{rec['height']}" if rec.get("width") else ""
    meta = f"#{rec['sample_id']}{size} &middot; <span class=url>{esc(short(rec['url'], 90))}</span>"
    reason = ""
    if not kept:
        reason = (
            f"<div class=why><span class=reason>{esc(rec['reason'])}</span> "
            f"<span class=muted>({esc(rec['stage'])})</span> {esc(short(rec['detail']))}</div>"
        )
    body = f"<div class=meta>{meta}</div>{reason}{_texts_html(rec)}"
    cls = "kept" if kept else "rejected"
    return f'<div class="card {cls}">{thumb}<div class=body>{body}</div></div>'


def _records(con, name: str, **params) -> list[dict]:
    columns, rows = sql.query(con, name, **params)
    return [dict(zip(columns, row, strict=True)) for row in rows]


def raw_images(con, run_dir: Path, recs: list[dict]) -> dict[int, bytes]:
    """Downloaded bytes of rejected samples, read from the raw shards that hold them only."""
    shards = {r["shard"] for r in recs if r.get("shard") is not None}
    files = [RunDir(run_dir).shard_file("raw", s) for s in sorted(shards)]
    files = [sql.literal_path(f) for f in files if f.exists()]
    if not files:
        return {}
    ids = [r["sample_id"] for r in recs]
    _, rows = sql.query(con, "report_raw_images", files=files, ids=ids)
    return dict(rows)


def samples_html(con, info: RunInfo, counts: dict) -> str:
    """Kept and rejected samples side by side."""
    kept = _records(con, "report_kept_samples", n=SAMPLES)
    rejected = _records(con, "report_rejected_samples", n=SAMPLES)
    images = raw_images(con, info.run_dir, rejected)
    for rec in rejected:
        rec["image"] = images.get(rec["sample_id"])
    columns = [
        (f"Kept ({len(kept)} of {counts['curated']:,})", [card_html(r, info, True) for r in kept]),
        (
            f"Rejected ({len(rejected)} of {counts['rejected']:,})",
            [card_html(r, info, False) for r in rejected],
        ),
    ]
    html_columns = "".join(
        f"<div><h3>{esc(title)}</h3>{''.join(cards) or '<p class=muted>none</p>'}</div>"
        for title, cards in columns
    )
    legend = (
        "<p class=legend>★ chosen caption &middot; ✓ passed the ITM threshold &middot; "
        "✗ below it &middot; scores are ITM match probabilities</p>"
    )
    return f"<section><h2>Samples</h2>{legend}<div class=samples>{html_columns}</div></section>"


# ---------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1240px}
h1{margin:0;font-size:24px}h2{margin:28px 0 8px;font-size:18px;border-bottom:1px solid #ddd}
h3{margin:8px 0;font-size:15px}.sub,.muted{color:#777}.warn{color:#b00;font-weight:bold}
.kpis{display:flex;gap:12px;margin:12px 0}
.kpi{background:#f4f6f8;padding:8px 14px;border-radius:6px}
.kpi b{display:block;font-size:20px}
table{border-collapse:collapse}th,td{padding:3px 10px 3px 0;text-align:left;vertical-align:top}
.settings th{font-weight:normal;color:#666}.num{text-align:right}
.funnel td{border-top:1px solid #eee}.bar{width:260px;height:12px;background:#eef1f4}
.bar div{height:12px;background:#4a7fb5}
.reason{font-family:monospace;background:#fdecea;color:#8a1c1c;padding:0 4px;border-radius:3px}
.plots{display:flex;flex-wrap:wrap;gap:8px}.plots img{max-width:410px}
.top{font-size:12px;margin-left:16px;align-self:flex-start}.top td{border-top:1px solid #eee}
.samples{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.card{display:flex;gap:10px;border:1px solid #e3e3e3;border-left:4px solid #3a9a5b;
border-radius:4px;padding:8px;margin-bottom:8px;overflow-wrap:anywhere}
.card.rejected{border-left-color:#c0392b}
.thumb{width:96px;height:96px;flex:none;object-fit:contain;background:#f4f4f4;
image-rendering:pixelated}
.thumb.none{display:flex;align-items:center;justify-content:center;text-align:center;
font-size:11px;color:#888;border:1px dashed #ccc}
.body{min-width:0;font-size:13px}.meta{color:#666;font-size:12px}.url{font-family:monospace}
.why{margin:2px 0}.texts{list-style:none;margin:4px 0 0;padding:0}.texts li{margin:2px 0}
.src{font-size:11px;padding:0 4px;border-radius:3px;background:#e8eef9;color:#2c4f8a}
.src.synthetic{background:#efe8f9;color:#5b2c8a}.itm{font-family:monospace;font-size:12px}
li.chosen{font-weight:600}li.fail{color:#888}.legend{color:#666;font-size:12px}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def page_html(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
