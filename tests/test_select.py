"""Selection: annotate (DFN score + concepts), the run's plan (DuckDB), decide per row."""

import dataclasses
import io
import json
import math
import random
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from curation import config, sql
from curation.config import SelectConfig
from curation.models import scorer as scoring
from curation.models import tiny
from curation.pipeline import balance, select
from curation.pipeline.concepts import ConceptMatcher

ROOT = Path(__file__).resolve().parent.parent
SCORE_ONLY = SelectConfig(scorer="a-scorer", metadata="")  # the plan never loads the scorer
BALANCE_ONLY = SelectConfig(scorer="", metadata="default", t=100)


def annotations(rows: list[tuple]) -> pa.Table:
    """ANNOTATIONS from (sample_id, dfn, concepts[, phash, embedding]) tuples."""
    names = select.ANNOTATIONS.names
    return pa.Table.from_pylist(
        [dict(zip(names[: len(r)], r, strict=True)) for r in rows], schema=select.ANNOTATIONS
    )


def plan_for(table: pa.Table, cfg: SelectConfig) -> dict:
    con = duckdb.connect()
    con.register("annotations", table)
    return select.global_plan(con, cfg).to_dict()


def decisions_by_id(table: pa.Table, cfg: SelectConfig) -> dict[int, dict]:
    decided = select.decide(table, plan_for(table, cfg), cfg)
    return {row["sample_id"]: row for row in decided.to_pylist()}


def pool(n_head: int = 3000, n_tail: int = 50, n_none: int = 20, seed: int = 0) -> pa.Table:
    """Rows matching only the head entry 'a', only the tail entry 'zebra', or nothing; the
    DFN score is random in [-1, 1) and independent of the concepts."""
    rng = random.Random(seed)
    concepts = [["a"]] * n_head + [["zebra"]] * n_tail + [[]] * n_none
    return annotations([(i, rng.uniform(-1, 1), c) for i, c in enumerate(concepts)])


# -- configuration ---------------------------------------------------------------------------


def test_config_defaults_and_checks():
    cfg = SelectConfig()
    assert (cfg.scorer, cfg.score_keep_fraction, cfg.metadata, cfg.t) == ("", 0.3, "default", 0)
    assert cfg.min_score == -1.0 and cfg.order == "score_then_balance"
    assert config.check_select(cfg) == []
    bad = SelectConfig(score_keep_fraction=0.0, min_score=2.0, t=-1, tail_share=0.0, order="x")
    assert len(config.check_select(bad)) == 5
    assert all(m.startswith("[select] ") for m in config.check_select(bad))


def test_metadata_resolves_names_and_files(tmp_path):
    assert select.metadata_path("default") == ROOT / "data" / "metadata" / "default.txt"
    assert (
        select.metadata_path("") is None and select.load_matcher(SelectConfig(metadata="")) is None
    )
    own = tmp_path / "mine.txt"
    own.write_text("dog\ncat\n")
    matcher = select.load_matcher(SelectConfig(metadata=str(own), casefold=True))
    assert matcher.entries == ["dog", "cat"] and matcher.casefold
    with pytest.raises(FileNotFoundError, match="concept list not found: nope"):
        select.metadata_path("nope")


def test_check_sources_fails_fast(tmp_path):
    select.check_sources(SelectConfig())  # the shipped list, no scorer
    with pytest.raises(FileNotFoundError, match="concept list not found"):
        select.check_sources(SelectConfig(metadata=str(tmp_path / "missing.txt")))
    with pytest.raises(ValueError, match="model folder not found"):  # models.ModelSourceError
        select.check_sources(SelectConfig(scorer=str(tmp_path / "no-scorer")))


# -- annotate --------------------------------------------------------------------------------


def png(color, size=(24, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def blip_scorer(tmp_path_factory):
    _, filter_dir = tiny.save_blip_checkpoints(tmp_path_factory.mktemp("blip"), "tiny", seed=0)
    return scoring.load_scorer(str(filter_dir), torch.device("cpu"), torch.float32)


def test_annotate_scores_and_matches(blip_scorer):
    captions = ["a red circle", "Two dogs, a cat.", "nothing here", "a broken image"]
    images = [png((200, 0, 0)), png((0, 90, 200)), png((0, 200, 0)), b"not an image"]
    curated = pa.table(
        {
            "sample_id": pa.array([5, 2, 9, 11], pa.int64()),
            "caption": captions,
            "image": pa.array(images, pa.binary()),
        }
    )
    matcher = ConceptMatcher(["a", "dogs", "cat", "red circle", "dogs"])
    out = select.annotate(curated, blip_scorer, matcher, batch_size=2, num_workers=1)
    assert out.schema == select.ANNOTATIONS
    assert out["sample_id"].to_pylist() == [5, 2, 9, 11]
    assert out["concepts"].to_pylist() == [["a", "red circle"], ["a", "dogs", "cat"], [], ["a"]]
    decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in images[:3]]
    expected = blip_scorer.score(decoded, captions[:3])
    assert out["dfn"].to_pylist()[:3] == pytest.approx(expected, abs=1e-6)
    assert out["dfn"].to_pylist()[3] is None  # bad bytes are data, not an exception
    inline = select.annotate(curated, blip_scorer, None, batch_size=3, num_workers=0)
    assert inline["dfn"].to_pylist()[:3] == pytest.approx(expected, abs=1e-6)
    assert inline["concepts"].null_count == 4
    neither = select.annotate(curated, None, None)
    assert neither["dfn"].null_count == 4 and neither["concepts"].null_count == 4


# -- decide: one test per reason -------------------------------------------------------------


def test_below_score_quantile():
    table = annotations([(i, i / 10, None) for i in range(10)] + [(10, None, None)])
    decided = decisions_by_id(table, dataclasses.replace(SCORE_ONLY, score_keep_fraction=0.5))
    assert decided[2]["reason"] == "below_score_quantile" and not decided[2]["keep"]
    assert "DFN 0.2000 < threshold 0.4500 (top 50% of the run)" in decided[2]["detail"]
    assert decided[9]["keep"] and decided[9]["reason"] is None
    assert decided[10]["reason"] == "below_score_quantile"  # no score: cannot pass the bar
    assert sum(d["keep"] for d in decided.values()) == 5


def test_no_concept_match():
    table = annotations([(0, None, []), (1, None, ["dog"]), (2, None, None)])
    decided = decisions_by_id(table, BALANCE_ONLY)
    assert decided[0]["reason"] == decided[2]["reason"] == "no_concept_match"
    assert "matches no entry of default" in decided[0]["detail"]
    assert decided[1]["keep"] and "'dog' p=1" in decided[1]["detail"]


def test_balanced_out():
    table = pool(n_head=400, n_tail=0, n_none=0)
    decided = decisions_by_id(table, dataclasses.replace(BALANCE_ONLY, t=10))
    dropped = [d for d in decided.values() if d["reason"] == "balanced_out"]
    assert len(dropped) > 350
    assert "keep chance 0.0250 (t=10): 'a' p=0.025" in dropped[0]["detail"]


def test_min_score_is_an_absolute_threshold():
    table = annotations([(i, i / 10, None) for i in range(10)])
    cfg = dataclasses.replace(SCORE_ONLY, min_score=0.65)
    plan = plan_for(table, cfg)
    assert plan["score"]["threshold"] == 0.65 and plan["score"]["source"] == "min_score"
    kept = select.decide(table, plan)["keep"].to_pylist()
    assert kept == [False] * 7 + [True] * 3


def test_decide_refuses_a_plan_of_another_config():
    table = annotations([(0, 0.5, None)])
    plan = plan_for(table, SCORE_ONLY)
    with pytest.raises(ValueError, match="rerun the global selection step"):
        select.decide(table, plan, dataclasses.replace(SCORE_ONLY, score_keep_fraction=0.2))
    select.decide(table, plan, dataclasses.replace(SCORE_ONLY, batch_size=7))  # no effect


# -- the plan --------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.3, 0.15, 1.0])
def test_quantile_threshold_keeps_the_requested_fraction(fraction):
    rng = random.Random(1)
    table = annotations([(i, rng.uniform(-1, 1), None) for i in range(1000)])
    cfg = dataclasses.replace(SCORE_ONLY, score_keep_fraction=fraction)
    plan = plan_for(table, cfg)
    kept = sum(select.decide(table, plan, cfg)["keep"].to_pylist())
    assert kept == plan["score"]["kept_rows"] == round(1000 * fraction)
    assert plan["score"]["population_rows"] == plan["score"]["scored_rows"] == 1000


def test_balancing_caps_the_head_and_keeps_the_tail():
    table = pool(n_head=3000, n_tail=50, n_none=20)
    plan = plan_for(table, BALANCE_ONLY)
    assert plan["balance"]["head_counts"] == {"a": 3000}  # only entries above t are listed
    assert plan["balance"]["capped_entries"] == 1 and plan["balance"]["matched_rows"] == 3050
    decided = select.decide(table, plan, BALANCE_ONLY).to_pylist()
    head = [d for d in decided if d["sample_id"] < 3000]
    kept_head = sum(d["keep"] for d in head)
    p = 100 / 3000
    assert abs(kept_head - 100) < 4 * math.sqrt(3000 * p * (1 - p))  # binomial, 4 sigma
    assert {d["reason"] for d in head} == {None, "balanced_out"}
    assert all(d["keep"] for d in decided[3000:3050])  # tail entries kept whole
    assert {d["reason"] for d in decided[3050:]} == {"no_concept_match"}
    assert plan["balance"]["expected_kept_rows"] == pytest.approx(100 + 50)


def test_t_from_tail_share_and_count_stats():
    rows, sample_id = [], 0
    for entry, n in [("a", 400), ("b", 100), ("c", 30), ("d", 10), ("e", 3)]:
        for _ in range(n):
            rows.append((sample_id, None, [entry]))
            sample_id += 1
    table = annotations(rows)
    counts = [400, 100, 30, 10, 3]
    cfg = SelectConfig(metadata="default", tail_share=0.05)  # 5% of 543 matches: 3 + 10 + 30
    plan = plan_for(table, cfg)["balance"]
    assert plan["t"] == balance.t_from_tail_share(counts, 0.05) == 31
    assert plan["t_source"] == "tail_share" and plan["tail_share"] >= 0.05
    assert plan["head_counts"] == {"a": 400, "b": 100}
    assert plan["gini"] == pytest.approx(balance.gini(counts))
    assert plan["matches_after_cap"] == 31 + 31 + 30 + 10 + 3
    assert plan["entries_matched"] == 5 and plan["max_count"] == 400


def write_shards(run_dir: Path, table: pa.Table, shard_size: int, seed: int) -> None:
    """The annotations cut into shards of ``shard_size`` rows after a shuffle."""
    order = list(range(len(table)))
    random.Random(seed).shuffle(order)
    shuffled = table.take(order)
    for shard, start in enumerate(range(0, len(table), shard_size)):
        path = run_dir / "annotations" / f"{shard:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(shuffled.slice(start, shard_size), path)


@pytest.mark.parametrize("order", config.ORDERS)
def test_decisions_do_not_depend_on_sharding_or_order(tmp_path, order):
    table = pool(n_head=600, n_tail=30, n_none=10)
    cfg = SelectConfig(scorer="a-scorer", metadata="default", t=50, order=order, seed=3)
    outcomes, plans = [], []
    for shard_size, seed in [(7, 1), (250, 2), (1000, 3)]:
        run_dir = tmp_path / f"{order}-{shard_size}"
        write_shards(run_dir, table, shard_size, seed)
        plan = json.loads(json.dumps(select.global_plan(run_dir, cfg).to_dict(), allow_nan=False))
        shards = [pq.read_table(p) for p in sorted((run_dir / "annotations").glob("*.parquet"))]
        decided = pa.concat_tables([select.decide(s, plan, cfg) for s in shards])
        outcomes.append(sorted(decided.to_pylist(), key=lambda d: d["sample_id"]))
        plans.append(plan)
    assert outcomes[0] == outcomes[1] == outcomes[2]
    for plan in plans:  # float sums in a parallel aggregate may differ in the last bits
        plan["balance"]["expected_kept_rows"] = round(plan["balance"]["expected_kept_rows"], 1)
        plan["score"]["mean"] = round(plan["score"]["mean"], 6)
    assert plans[0] == plans[1] == plans[2]
    assert {d["reason"] for d in outcomes[0]} == {None, *select.SELECT_REASONS}


def test_the_two_orders():
    table = pool(n_head=2000, n_tail=200, n_none=100, seed=4)
    first = SelectConfig(scorer="a-scorer", metadata="default", t=100, seed=1)
    later = dataclasses.replace(first, order="balance_then_score")
    con = duckdb.connect()  # one connection for both, as `curate stats` may hold
    con.register("annotations", table)
    score_first = select.global_plan(con, first).to_dict()
    balance_first = select.global_plan(con, later).to_dict()
    assert select.global_plan(con, first).to_dict() == score_first
    # score first: the quantile is over every row; counts only over the rows above it
    assert score_first["score"]["population_rows"] == 2300
    assert score_first["balance"]["population_rows"] == score_first["score"]["kept_rows"] == 690
    # balance first: counts over every row; the quantile over the rows balancing kept
    assert balance_first["balance"]["population_rows"] == 2300
    survivors = balance_first["balance"]["kept_rows"]
    assert balance_first["score"]["population_rows"] == survivors
    assert balance_first["score"]["kept_rows"] == round(0.3 * survivors)
    kept = sum(select.decide(table, balance_first, later)["keep"].to_pylist())
    assert kept == balance_first["score"]["kept_rows"]
    # a row failing both checks gets the reason of the first one in the order
    low = min((r for r in table.to_pylist() if not r["concepts"]), key=lambda r: r["dfn"])
    row = annotations([tuple(low.values())])
    assert select.decide(row, score_first)["reason"][0].as_py() == "below_score_quantile"
    assert select.decide(row, balance_first)["reason"][0].as_py() == "no_concept_match"


def test_plan_is_json_and_draws_are_keyed_by_sample_key():
    table = pool(n_head=200, n_tail=5, n_none=5)
    cfg = dataclasses.replace(BALANCE_ONLY, t=20, seed=9)
    plan = plan_for(table, cfg)
    assert json.loads(json.dumps(plan, allow_nan=False)) == plan
    decided = select.decide(table, plan, cfg)["keep"].to_pylist()
    probs = {"a": 20 / 200, "zebra": 1.0}
    keys = [f"{i:012d}" for i in range(200)]
    assert decided[:200] == balance.keep_samples(keys, [["a"]] * 200, probs, 9).tolist()


def test_nothing_enabled_keeps_everything():
    table = pool(n_head=5, n_tail=0, n_none=2)
    cfg = SelectConfig(metadata="")
    plan = plan_for(table, cfg)
    assert plan["score"] is None and plan["balance"] is None
    decided = select.decide(table, plan, cfg)
    assert all(decided["keep"].to_pylist()) and decided["detail"].null_count == 7


def test_scorer_without_scores_passes_nothing():
    table = annotations([(0, None, ["dog"]), (1, None, ["cat"])])
    cfg = SelectConfig(scorer="a-scorer", metadata="default")
    plan = plan_for(table, cfg)
    assert plan["score"]["threshold"] is None and plan["balance"]["population_rows"] == 0
    reasons = select.decide(table, plan, cfg)["reason"].to_pylist()
    assert reasons == ["below_score_quantile"] * 2


def test_empty_run():
    con = duckdb.connect()
    con.register("annotations", select.ANNOTATIONS.empty_table())
    cfg = SelectConfig(scorer="a-scorer", metadata="default")
    plan = select.global_plan(con, cfg).to_dict()
    assert plan["rows"] == 0 and plan["score"]["threshold"] is None
    assert plan["balance"]["matches"] == 0 and plan["balance"]["t"] == 1
    assert len(select.decide(select.ANNOTATIONS.empty_table(), plan, cfg)) == 0


# -- stats SQL -------------------------------------------------------------------------------


def stats_connection(table: pa.Table, curated_ids: list[int]) -> duckdb.DuckDBPyConnection:
    """What sql.connect will hold: annotations, the pool (here: no dedup removals), curated
    (final shards), and the concepts view."""
    con = duckdb.connect()
    con.register("annotations", table)
    con.register("pool", table)
    con.register("curated", pa.table({"sample_id": pa.array(curated_ids, pa.int64())}))
    view = sql.SQL_DIR / "views" / "concepts.sql"
    con.execute((view if view.exists() else sql.SQL_DIR / "select_concepts_view.sql").read_text())
    return con


def test_stats_sql_matches_the_plan():
    table = pool(n_head=300, n_tail=40, n_none=10, seed=2)
    cfg = SelectConfig(scorer="a-scorer", metadata="default", t=30, seed=5)
    plan = plan_for(table, cfg)
    decided = select.decide(table, plan, cfg)
    kept = decided.filter(decided["keep"])["sample_id"].to_pylist()
    con = stats_connection(table, kept)
    columns, rows = sql.query(con, "stats_concepts", t=plan["balance"]["t"])
    stages = {r[0]: dict(zip(columns, r, strict=True)) for r in rows}
    assert list(stages) == ["pool", "curated"]
    assert stages["pool"]["rows"] == 350 and stages["pool"]["matched_rows"] == 340
    assert stages["pool"]["gini"] == pytest.approx(balance.gini([300, 40]), abs=1e-4)
    assert stages["curated"]["rows"] == len(kept)
    assert stages["pool"]["head_share"] == pytest.approx(balance.head_share([300, 40], 30), 1e-3)
    columns, rows = sql.query(con, "stats_concepts_top", limit=1)
    assert rows[0][:2] == ("a", 300)
    columns, rows = sql.query(con, "stats_scores", threshold=plan["score"]["threshold"])
    scores = {r[0]: dict(zip(columns, r, strict=True)) for r in rows}
    assert scores["pool"]["at_or_above"] == plan["score"]["kept_rows"] == 105
    assert (
        scores["curated"]["rows"] == len(kept)
        and scores["curated"]["min"] >= scores["pool"]["threshold"] - 1e-4
    )
    assert sql.query(con, "stats_scores", threshold=None)[1][0][-1] == 0
