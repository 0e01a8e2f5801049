"""The house rules the code's structure keeps: one step table, one reason enumeration, one owner
of run paths, imports that run one way (docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

from curation import schema
from curation.config import SelectConfig
from curation.pipeline import select, steps
from curation.rundir import LoopDir, RunDir

ROOT = Path(__file__).resolve().parent.parent


def test_every_reason_belongs_to_exactly_one_gate():
    listed = [reason for gate in schema.GATES for reason in gate.reasons]
    assert sorted(listed) == sorted(schema.Reason)
    assert schema.REJECT_STAGES == ("download", "decode", "capfilt", "select")


def test_steps_declare_every_reason_once():
    declared = [r for step in steps.STEPS for r in step.reasons]
    assert sorted(declared) == sorted(schema.Reason)
    assert [s.name for s in steps.STEPS if not s.per_shard] == ["plan"]
    assert steps.BEFORE_PLAN + (steps.STEPS[steps.PLAN],) + steps.AFTER_PLAN == steps.STEPS


def test_a_step_writing_an_undeclared_reason_is_refused():
    capfilt, select_step = steps.BY_NAME["capfilt"], steps.BY_NAME["select"]
    steps.check_rejects(capfilt, {"rejects": {"download_failed": 3, "no_matching_text": 1}})
    with pytest.raises(ValueError, match="undeclared reject reasons.*balanced_out"):
        steps.check_rejects(capfilt, {"rejects": {"balanced_out": 1}})
    with pytest.raises(ValueError, match="not_a_reason"):
        steps.check_rejects(select_step, {"rejects": {"not_a_reason": 1}})


def test_run_paths_follow_the_layout(tmp_path):
    run = RunDir(tmp_path)
    assert run.shard_file("input", 3) == tmp_path / "input" / "00003.parquet"
    assert (
        run.shard_file("rejects", 12, "capfilt") == tmp_path / "rejects" / "capfilt-00012.parquet"
    )
    assert run.marker("select", 0) == tmp_path / "_done" / "select" / "00000.json"
    assert RunDir.of(run) is run and RunDir.of(str(tmp_path)) == run
    with pytest.raises(ValueError, match="unknown shard kind 'shard'"):
        run.shard_file("shard", 0)
    loop = LoopDir(tmp_path)
    assert loop.capfilt(2).root == tmp_path / "round2" / "capfilt"
    assert loop.web.shard_file("raw", 1) == tmp_path / "web" / "raw" / "00001.parquet"


def test_selection_plan_round_trips_through_its_json(tmp_path):
    con = select.connect(tmp_path)  # no annotations: an empty pool
    plan = select.global_plan(con, SelectConfig(metadata="", scorer="s", min_score=0.2))
    plan.write(tmp_path / "selection.json")
    again = select.SelectionPlan.read(tmp_path / "selection.json")
    assert again == plan and again.score["min_score"] == 0.2 and again.balance is None


def _imports(path: Path) -> set[str]:
    """The curation/flows modules a file imports (at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_imports_run_one_way():
    """No module imports, directly or through others, a module that imports it back."""
    files = [*ROOT.glob("curation/**/*.py"), *ROOT.glob("flows/*.py")]
    names = {".".join(f.relative_to(ROOT).with_suffix("").parts): f for f in files}
    names = {n.removesuffix(".__init__"): f for n, f in names.items()}
    graph = {n: {m for m in _imports(f) if m in names and m != n} for n, f in names.items()}

    def reaches(start: str, goal: str, seen: set) -> bool:
        for nxt in graph[start] - seen:
            seen.add(nxt)
            if nxt == goal or reaches(nxt, goal, seen):
                return True
        return False

    circles = [n for n in graph if reaches(n, n, set())]
    assert circles == []
