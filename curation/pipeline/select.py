"""Selection after CapFilt: a DFN score threshold and MetaCLIP concept balancing, over the run.

Two curation ideas finish what CapFilt starts:
- DFN scoring (Fang et al. 2023, "Data Filtering Networks", arXiv 2309.17425): a contrastive
  model scores every (image, chosen caption) pair by cosine similarity; the run keeps the top
  ``score_keep_fraction`` of the pool (a global quantile, never a per-shard one).
- MetaCLIP balancing (Xu et al. 2023, "Demystifying CLIP Data", arXiv 2309.16671): every
  caption is matched against a concept list; entries are counted over the whole pool; a pair is
  kept when any matched entry draws a keep with probability ``t / max(count, t)``; a pair
  matching nothing is dropped.

Three steps, map-reduce style, so that the selection is an artifact (docs/architecture.md,
style rule 4):
1. ``annotate`` (per shard, models): DFN score and matched concepts of each CapFilt survivor.
2. ``global_plan`` (once, DuckDB over every shard's annotations): the score threshold, the
   entry counts and ``t``; a ``SelectionPlan`` stored as RUN_DIR/selection.json.
3. ``decide`` (per shard, pure): keep or a reject reason per row, from the plan alone.

Draws are ``balance.keep_sample`` keyed by ``schema.sample_key(sample_id)``: ``sample_id`` is
the row's position in the URL list, the key that follows it through every stage, unique per
row (two rows with the same URL still draw independently, so the binomial expectations hold).
A decision is a pure function of (row, plan), whatever the shard size, row order or workers.

Over 400 lines on purpose: the three steps must draw the same MetaCLIP keeps (the plan's
expected counts and ``decide``'s draws are one function), so they stay in one module.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa

from curation import io, schema, sql
from curation.config import SelectConfig
from curation.pipeline import balance, dedup, duplicates
from curation.pipeline.concepts import ConceptMatcher, csr_to_lists, load_metadata
from curation.pipeline.images import decode_image
from curation.rundir import RunDir

if TYPE_CHECKING:
    from curation.models.scorer import Scorer

METADATA_DIR = Path(__file__).resolve().parents[2] / "data" / "metadata"
R = schema.Reason
SELECT_REASONS = (R.BELOW_SCORE_QUANTILE, R.NO_CONCEPT_MATCH, R.BALANCED_OUT)
PLAN_VERSION = 1
ROWS_PER_BATCH = 65536  # rows streamed from DuckDB per batch of balancing draws

# Declared once, in schema.py: per CapFilt survivor, sample_id, dfn (cosine of the image and the
# chosen caption; null without a scorer), concepts (matched entries; null without balancing).
ANNOTATIONS = schema.ANNOTATIONS
# One decision per annotated row: sample_id, keep, reason (null or SELECT_REASONS), detail.
DECISIONS = schema.DECISIONS


def _min_score(cfg: SelectConfig) -> float | None:
    """The absolute threshold, or None when the keep fraction decides (min_score = -1)."""
    return None if cfg.min_score <= -1.0 else cfg.min_score


def metadata_path(metadata: str) -> Path | None:
    """The concept list ``metadata`` names: an existing file, else data/metadata/NAME.{txt,json};
    None for "" (no balancing). FileNotFoundError naming what was tried otherwise."""
    if not metadata:
        return None
    path = Path(metadata).expanduser()
    if path.is_file():
        return path
    for suffix in (".txt", ".json"):
        if (METADATA_DIR / f"{metadata}{suffix}").is_file():
            return METADATA_DIR / f"{metadata}{suffix}"
    raise FileNotFoundError(
        f"concept list not found: {metadata} (neither a file nor a name in {METADATA_DIR})"
    )


def check_sources(cfg: SelectConfig) -> None:
    """Fail fast at the entry point, in one line: the concept list must exist
    (FileNotFoundError) and the scorer must be a loadable CLIP or BLIP retrieval checkpoint
    (``models.ModelSourceError``). Imports torch only when a scorer is set."""
    metadata_path(cfg.metadata)
    if cfg.scorer:
        from curation.models.scorer import scorer_kind

        scorer_kind(cfg.scorer)


def load_matcher(cfg: SelectConfig) -> ConceptMatcher | None:
    """The MetaCLIP matcher for ``cfg.metadata`` (None when balancing is off). Build it once per
    process: ~3 s for MetaCLIP's 500k entries."""
    path = metadata_path(cfg.metadata)
    return None if path is None else ConceptMatcher(load_metadata(path), casefold=cfg.casefold)


def decision_settings(cfg: SelectConfig) -> dict:
    """The settings a decision depends on (not batch sizes), JSON-able (nan -> None)."""
    settings = dataclasses.asdict(cfg)
    for name in ("batch_size", "num_workers"):
        settings.pop(name)
    settings["min_score"] = _min_score(cfg)
    return settings


# ----------------------------------------------------------------------------------------------
# Step 1, per shard: annotate
# ----------------------------------------------------------------------------------------------


def annotate(
    curated: pa.Table,
    scorer: Scorer | None,
    matcher: ConceptMatcher | None,
    *,
    embedder: Scorer | None = None,
    batch_size: int = 64,
    num_workers: int = 1,
) -> pa.Table:
    """ANNOTATIONS for CapFilt's survivors (``schema.CURATED`` rows): the DFN score of the image
    with its chosen caption, the concept-list entries that caption matches, the image's pHash
    and thumbnail (the dedup stage's look at it) and, with an ``embedder`` (SemDeDup), its
    image embedding.

    Pure except the model calls. Images are decoded (``images.decode_image``, which already
    passed CapFilt's size guards) and preprocessed ``num_workers`` threads ahead of the models.
    """
    captions = curated["caption"]
    notes = _image_notes(
        scorer,
        embedder,
        curated["image"].to_pylist(),
        captions.to_pylist(),
        batch_size,
        num_workers,
    )
    concepts = None if matcher is None else _matched_entries(matcher, captions)
    none = [None] * len(curated)
    return pa.table(
        {
            "sample_id": curated["sample_id"],
            "dfn": pa.array(notes["dfn"], pa.float32()),
            "concepts": pa.array(concepts or none, pa.list_(pa.string())),
            "phash": pa.array(notes["phash"], pa.int64()),
            "thumbnail": pa.array(notes["thumbnail"], pa.binary()),
            "embedding": pa.array(notes["embedding"], pa.list_(pa.float32())),
        },
        schema=ANNOTATIONS,
    )


def _matched_entries(matcher: ConceptMatcher, captions: pa.ChunkedArray) -> list[list[str]]:
    """Distinct matched entries per caption, in concept-list order (MetaCLIP counts a text once
    per entry; equal entries, e.g. after case folding, count once)."""
    entries = matcher.entries
    per_text = csr_to_lists(*matcher.match_csr(captions))
    return [list(dict.fromkeys(entries[i] for i in ids)) for ids in per_text]


def _image_notes(
    scorer: Scorer | None,
    embedder: Scorer | None,
    images: list[bytes],
    texts: list[str],
    batch_size: int,
    num_workers: int,
) -> dict[str, list]:
    """Per row: DFN score, pHash (signed int64 bits), thumbnail and embedding; None for an image
    that no longer decodes (kept as data, not raised) and for what no model computes."""
    notes = {name: [None] * len(images) for name in ("dfn", "phash", "thumbnail", "embedding")}
    models = {id(m): m for m in (scorer, embedder) if m is not None}.values()  # each once

    def prepare(start: int):
        decoded = [decode_image(b, 0, sys.maxsize) for b in images[start : start + batch_size]]
        rows = [start + i for i, d in enumerate(decoded) if d.image is not None]
        good = [d.image for d in decoded if d.image is not None]
        hashes = dedup.to_signed(np.array([dedup.perceptual_hash(im) for im in good], np.uint64))
        looks = {"phash": hashes.tolist(), "thumbnail": [dedup.thumbnail(im) for im in good]}
        return rows, looks, {id(m): m.preprocess(good) for m in models}

    for rows, looks, pixels in _ahead(prepare, range(0, len(images), batch_size), num_workers):
        columns = dict(looks)
        if scorer is not None and rows:
            columns["dfn"] = scorer.score(pixels[id(scorer)], [texts[r] for r in rows])
        if embedder is not None and rows:
            columns["embedding"] = embedder.embed_images(pixels[id(embedder)])
        for name, values in columns.items():
            for row, value in zip(rows, values, strict=True):
                notes[name][row] = value
    return notes


def _ahead(fn: Callable, items: Iterable, num_workers: int, depth: int = 2) -> Iterable:
    """``map(fn, items)`` in order, run on ``num_workers`` threads up to ``depth`` items ahead
    per worker (threads: Pillow and torch release the GIL; forking under Prefect is unsafe)."""
    if num_workers == 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(num_workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > num_workers * depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# ----------------------------------------------------------------------------------------------
# Step 2, once per run: the plan
# ----------------------------------------------------------------------------------------------


def connect(run_dir: RunDir | str | Path) -> duckdb.DuckDBPyConnection:
    """DuckDB over the run's CapFilt survivors: ``annotated`` (every annotation), ``survivors``
    (their CapFilt rows, without image bytes), ``removed`` (the dedup stage's REMOVALS, empty
    until ``exclude``) and ``annotations``: the annotations of the rows dedup did not remove,
    the pool that scoring and balancing see."""
    con = duckdb.connect()
    run_dir = RunDir.of(run_dir)
    views = {"annotated": ("annotations", ANNOTATIONS), "survivors": ("capfilt", schema.CURATED)}
    for view, (kind, table_schema) in views.items():
        files = [sql.literal_path(p) for p in run_dir.shard_files(kind)]
        if files:
            con.read_parquet(files).create_view(view)
        else:
            con.register(view, table_schema.empty_table())
    exclude(con, duplicates.REMOVALS.empty_table())
    con.sql(sql.load("select_pool"))
    return con


def exclude(con: duckdb.DuckDBPyConnection, removed: pa.Table) -> None:
    """Take the dedup stage's REMOVALS out of the ``annotations`` pool of ``connect``."""
    con.register("removed", removed)


def _one(con: duckdb.DuckDBPyConnection, name: str, **params) -> dict:
    """The single row of sql/NAME.sql as a dict."""
    columns, rows = sql.query(con, name, **params)
    return dict(zip(columns, rows[0], strict=True))


@dataclass
class SelectionPlan:
    """The run's selection decision, made once over every shard and stored as
    RUN_DIR/selection.json: all that ``decide`` needs, whatever the shard or worker."""

    settings: dict  # decision_settings(cfg): a plan is only applied with the same settings
    order: str  # "score_then_balance" | "balance_then_score"
    seed: int  # of the balancing draws
    rows: int  # annotated rows in the pool
    score: dict | None = None  # DFN threshold and score statistics; None: no scorer
    balance: dict | None = None  # MetaCLIP t, head entry counts and statistics; None: no list
    dedup: dict | None = None  # the dedup stage: settings, removals by reason, eval sets
    sample_key: str = "schema.sample_key(sample_id)"  # what the draws are keyed by
    version: int = PLAN_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, plan: SelectionPlan | dict) -> SelectionPlan:
        return plan if isinstance(plan, SelectionPlan) else cls(**plan)

    def write(self, path: Path) -> None:
        io.write_json(self.to_dict(), path)

    @classmethod
    def read(cls, path: Path) -> SelectionPlan:
        return cls(**json.loads(Path(path).read_text()))


def global_plan(
    source: RunDir | str | Path | duckdb.DuckDBPyConnection, cfg: SelectConfig
) -> SelectionPlan:
    """The run's selection plan: DFN threshold, MetaCLIP counts and t, and their statistics.

    ``source``: a run directory, or a DuckDB connection with an ``annotations`` view
    (ANNOTATIONS). score_then_balance: the threshold is a quantile over every annotated row, and
    entries are counted over the rows at or above it. balance_then_score: entries are counted
    over every row, the draws are made, and the threshold is a quantile over the rows balancing
    kept.
    """
    con = source if isinstance(source, duckdb.DuckDBPyConnection) else connect(source)
    rows = con.sql("SELECT count(*) FROM annotations").fetchall()[0][0]
    plan = SelectionPlan(decision_settings(cfg), cfg.order, cfg.seed, rows)
    scoring, balancing = bool(cfg.scorer), metadata_path(cfg.metadata) is not None
    if cfg.order == "score_then_balance":
        if scoring:
            _set_score_population(con, "all")
            plan.score = _score_plan(con, cfg, "every annotated row")
        if balancing:
            threshold = plan.score["threshold"] if scoring else None
            if scoring and threshold is None:  # nothing was scored: nothing passes
                threshold = math.inf
            plan.balance = _balance_plan(con, cfg, threshold)
    else:
        if balancing:
            plan.balance = _balance_plan(con, cfg, None)
        if scoring:
            _register_score_population(con, plan.balance, cfg.seed)
            plan.score = _score_plan(con, cfg, "rows kept by balancing")
    return plan


def _score_plan(con: duckdb.DuckDBPyConnection, cfg: SelectConfig, population: str) -> dict:
    """Threshold and score statistics over ``score_population`` (DFN, arXiv 2309.17425)."""
    min_score = _min_score(cfg)
    stats = _one(
        con, "select_score_threshold", keep_fraction=cfg.score_keep_fraction, min_score=min_score
    )
    return {
        **stats,
        "source": "score_keep_fraction" if min_score is None else "min_score",
        "keep_fraction": cfg.score_keep_fraction if min_score is None else None,
        "min_score": min_score,
        "population": population,
        "scorer": cfg.scorer,
    }


def _balance_plan(con: duckdb.DuckDBPyConnection, cfg: SelectConfig, threshold) -> dict:
    """Entry counts over the pool being balanced, t, and the per-entry caps (MetaCLIP)."""
    query = sql.load("select_entry_counts")
    counts = con.sql(query, params={"threshold": threshold}).to_arrow_table()
    t = cfg.t or balance.t_from_tail_share(counts["matches"].to_numpy(), cfg.tail_share)
    con.register("entry_counts", counts)
    population = _one(con, "select_balance_population", threshold=threshold)
    expected = _one(con, "select_expected_kept", threshold=threshold, t=t)
    con.unregister("entry_counts")
    entries, matches = counts["entry"].to_pylist(), counts["matches"].to_numpy()
    head = matches > t
    return {
        **population,
        **expected,
        **_count_stats(matches, t),
        "t": int(t),
        "t_source": "t" if cfg.t else "tail_share",
        "tail_share_target": None if cfg.t else cfg.tail_share,
        "population": "every annotated row"
        if threshold is None
        else "rows at or above the DFN threshold",
        "metadata": cfg.metadata,
        "casefold": cfg.casefold,
        # entries above t: p = t / count; every other entry has p = 1
        "head_counts": dict(
            zip(np.array(entries, dtype=object)[head].tolist(), matches[head].tolist(), strict=True)
        ),
    }


def _count_stats(matches: np.ndarray, t: int) -> dict:
    """Shape of the concept distribution before and after capping each count at t."""
    capped = np.minimum(matches, t)
    return {
        "entries_matched": int(len(matches)),
        "capped_entries": int((matches > t).sum()),  # entries balancing thins (p < 1)
        "head_share": balance.head_share(matches, t),  # matches of entries with count >= t
        "tail_share": balance.tail_share(matches, t),
        "gini": balance.gini(matches),  # over matched entries
        "matches_after_cap": int(capped.sum()),  # MetaCLIP's expected flat-top counts
        "gini_after_cap": balance.gini(capped),
        "max_count": int(matches.max()) if len(matches) else 0,
    }


def _register_score_population(con, balance_plan: dict | None, seed: int) -> None:
    """``score_population`` = the rows balancing keeps (every row when balancing is off),
    drawn by the same function ``decide`` uses, batch by batch."""
    if balance_plan is None:
        return _set_score_population(con, "all")
    probs = probabilities(balance_plan)
    columns = pa.schema([("sample_id", pa.int64()), ("dfn", pa.float32())])
    kept = [columns.empty_table()]
    for batch in con.sql(sql.load("select_balance_rows")).to_arrow_reader(ROWS_PER_BATCH):
        ids, entries = batch["sample_id"].to_pylist(), batch["concepts"].to_pylist()
        mask = [balance_keep(i, e, probs, seed) for i, e in zip(ids, entries, strict=True)]
        rows = pa.Table.from_batches([batch]).select(columns.names).cast(columns)
        kept.append(rows.filter(pa.array(mask, pa.bool_())))
    survivors = pa.concat_tables(kept)
    balance_plan["kept_rows"] = len(survivors)
    con.register("balance_survivors", survivors)
    _set_score_population(con, "balanced")


def _set_score_population(con: duckdb.DuckDBPyConnection, rows: str) -> None:
    """Point select_score_threshold's ``score_population`` at ``rows``: "all" or "balanced"."""
    con.execute(sql.load(f"select_population_{rows}"))


# ----------------------------------------------------------------------------------------------
# Step 3, per shard: decide
# ----------------------------------------------------------------------------------------------


class Probabilities(dict):
    """``{entry: p}`` for the capped entries; every other entry has p = 1 (count <= t)."""

    def __missing__(self, entry: str) -> float:
        return 1.0


def probabilities(balance_plan: dict) -> Probabilities:
    """MetaCLIP's p = t / max(count, t) from a plan's ``balance`` part."""
    heads = balance_plan["head_counts"]
    probs = balance.probabilities_by_entry(list(heads), list(heads.values()), balance_plan["t"])
    return Probabilities(probs)


def balance_keep(sample_id: int, entries: Sequence[str], probs: Probabilities, seed: int) -> bool:
    """MetaCLIP's draw for one row: ``balance.keep_sample`` keyed by ``schema.sample_key``.
    An entry with p = 1 keeps the row without a draw (a uniform draw in [0, 1) always wins)."""
    if any(probs[e] >= 1.0 for e in entries):
        return True
    return balance.keep_sample(entries, probs, schema.sample_key(sample_id), seed)


def decide(
    annotations: pa.Table,
    plan: SelectionPlan | dict,
    cfg: SelectConfig | None = None,
    removed: pa.Table | None = None,
) -> pa.Table:
    """DECISIONS for a shard's ANNOTATIONS from the run's plan: pure, no I/O, row by row.

    A row the dedup stage removed (``removed``: REMOVALS, any rows of the run) gets its reason;
    the others run the checks in the plan's order and get the reason of the first they fail. When
    ``cfg`` is given it must be the configuration the plan was made with (ValueError otherwise:
    rerun the global step).
    """
    plan = SelectionPlan.of(plan)
    if cfg is not None and decision_settings(cfg) != plan.settings:
        raise ValueError(
            "selection plan was made with another [select] configuration; "
            "rerun the global selection step"
        )
    checks = _checks(plan)
    ids = annotations["sample_id"].to_pylist()
    copies = {} if removed is None else {r["sample_id"]: r for r in removed.to_pylist()}
    columns = (annotations[c].to_pylist() for c in ("dfn", "concepts"))
    verdicts = [
        (copies[row[0]]["reason"], copies[row[0]]["detail"])
        if row[0] in copies
        else _verdict(checks, *row)
        for row in zip(ids, *columns, strict=True)
    ]
    reasons = [reason for reason, _ in verdicts]
    return pa.table(
        {
            "sample_id": ids,
            "keep": [r is None for r in reasons],
            "reason": reasons,
            "detail": [detail for _, detail in verdicts],
        },
        schema=DECISIONS,
    )


def _verdict(checks: list[Callable], sample_id: int, dfn, concepts) -> tuple[str | None, str]:
    """(reason of the first failed check or None, the details of the checks that ran)."""
    reason, details = None, []
    for check_row in checks:
        reason, detail = check_row(sample_id, dfn, concepts)
        details.append(detail)
        if reason is not None:
            break
    return reason, "; ".join(details) or None


def _checks(plan: SelectionPlan) -> list[Callable]:
    """The row checks of the plan, in its order: each returns (reason or None, detail)."""
    checks = []
    if plan.score is not None:
        checks.append(_score_check(plan.score))
    if plan.balance is not None:
        checks.append(_balance_check(plan.balance, plan.seed))
    return checks if plan.order == "score_then_balance" else checks[::-1]


def _score_check(score_plan: dict) -> Callable:
    threshold = score_plan["threshold"]
    if score_plan["source"] == "min_score":
        bar = f"min_score {threshold:.4f}"
    else:
        bar = f"threshold {_fmt(threshold)} (top {score_plan['keep_fraction']:.0%} of the run)"

    def check_row(sample_id, dfn, concepts):
        if dfn is None or threshold is None:
            return R.BELOW_SCORE_QUANTILE.value, f"no DFN score to compare with {bar}"
        if dfn >= threshold:
            return None, f"DFN {dfn:.4f} >= {bar}"
        return R.BELOW_SCORE_QUANTILE.value, f"DFN {dfn:.4f} < {bar}"

    return check_row


def _balance_check(balance_plan: dict, seed: int) -> Callable:
    probs, t = probabilities(balance_plan), balance_plan["t"]

    def check_row(sample_id, dfn, concepts):
        if not concepts:
            return (
                R.NO_CONCEPT_MATCH.value,
                f"caption matches no entry of {balance_plan['metadata']}",
            )
        listed = _fmt_entries(concepts, probs)
        if balance_keep(sample_id, concepts, probs, seed):
            return None, f"kept by MetaCLIP draw (t={t}): {listed}"
        chance = balance.keep_probability(concepts, probs)
        return (
            R.BALANCED_OUT.value,
            f"lost MetaCLIP draw, keep chance {chance:.4f} (t={t}): {listed}",
        )

    return check_row


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def _fmt_entries(entries: Sequence[str], probs: Probabilities, limit: int = 8) -> str:
    """``'dog' p=1, 'a' p=0.0012`` for the first ``limit`` matched entries, then a count."""
    shown = ", ".join(f"{e!r} p={probs[e]:.4g}" for e in entries[:limit])
    return shown + (f" (+{len(entries) - limit} more)" if len(entries) > limit else "")
