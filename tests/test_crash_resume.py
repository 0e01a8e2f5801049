"""SIGKILL a real `curate run` at several points, rerun it, and get an uninterrupted run's output.

The run is a child process killed with its whole process group (as when a machine dies): during
download, during CapFilt, during the global selection plan and while curated shards are written.
Each kill fires when the run directory shows that phase under way; after each one the same
command is run again, and the last rerun must produce exactly what a run never killed produces.
"""

import json
import signal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_argv, run_cli_until

from curation.world import synthetic
from curation.world.webserver import Server, routes_from_dir
from flows import cli

CONFIG = """
[sharding]
shard_size = 8
[download]
timeout = 5
[capfilt]
itm_threshold = 0.4
num_captions = 2
batch_size = 4
max_new_tokens = 6
min_new_tokens = 2
[select]
metadata = "{metadata}"
scorer = ""
t = 2
"""


def shards_done(run_dir: Path, step: str) -> int:
    return len(list((run_dir / "_done" / step).glob("*.json")))


def plan_under_way(run_dir: Path, shards: int) -> bool:
    return shards_done(run_dir, "annotate") == shards and not (run_dir / "selection.json").exists()


# (phase, condition on RUN_DIR that says the phase is under way), in the order a run meets them
KILL_POINTS = [
    ("download", lambda d, n: shards_done(d, "download") >= 1),
    ("capfilt", lambda d, n: (d / "capfilt" / "00001.parquet").exists()),
    ("global selection", plan_under_way),
    ("shard writing", lambda d, n: any((d / "shards").glob("*.parquet"))),
]


@pytest.fixture(scope="module")
def world_run(tmp_path_factory, tiny_models, prefect_harness):
    """A small synthetic web served over loopback, its URL list and the `curate run` argv."""
    root = tmp_path_factory.mktemp("crash")
    world = synthetic.write_world(root / "world", n_web=40, n_eval=4, image_size=(32, 40))
    server = Server(routes_from_dir(world.images, prefix="/images"))
    pq.write_table(synthetic.url_list(world.root, server.base_url), root / "urls.parquet")
    (root / "cfg.toml").write_text(CONFIG.format(metadata=world.concepts))

    def argv(out: Path) -> list[str]:
        return run_argv(root, out, tiny_models)

    yield root, argv
    server.close()


def contents(run_dir: Path) -> dict[str, pa.Table]:
    """Every data file of a run (what a user reads), by path; markers and timings excluded."""
    kinds = ("raw", "capfilt", "annotations", "decisions", "shards", "rejects")
    return {
        str(path.relative_to(run_dir)): pq.read_table(path)
        for kind in kinds
        for path in sorted((run_dir / kind).glob("*"))
    }


def test_a_run_killed_at_every_phase_resumes_to_the_uninterrupted_output(world_run):
    root, argv = world_run
    reference = root / "reference"
    assert cli.main(argv(reference)) == 0
    shards = len(list((reference / "input").glob("*.parquet")))
    assert shards == 5

    resumed = root / "resumed"
    for phase, condition in KILL_POINTS:
        code = run_cli_until(argv(resumed), lambda c=condition: c(resumed, shards))
        assert code == -signal.SIGKILL, f"the run ended ({code}) before the {phase} kill point"
    assert run_cli_until(argv(resumed), lambda: False) == 0

    expected, got = contents(reference), contents(resumed)
    assert got.keys() == expected.keys()
    for path, table in expected.items():
        assert got[path].equals(table), f"{path} differs from the uninterrupted run"
    assert not list(resumed.rglob(".*.tmp-*")), "a partial file was left behind"

    curated = pa.concat_tables(t for p, t in got.items() if p.startswith("shards/"))
    rejects = pa.concat_tables(t for p, t in got.items() if p.startswith("rejects/"))
    ids = curated["sample_id"].to_pylist() + rejects["sample_id"].to_pylist()
    assert sorted(ids) == list(range(40))  # every input once: no duplicates, nothing lost
    assert len(curated) > 0 and len(rejects) > 0  # both outcomes exercised


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_with_everything_it_started_and_a_rerun_resumes(
    tmp_path, tiny_models, prefect_harness, signum
):
    """Ctrl-C (to `curate` alone) ran a slow download to its end; SIGTERM left Prefect's API
    server running. The signal arrives while img2dataset waits on a server that answers after
    two minutes, with its own Prefect server (no PREFECT_API_URL), as a user runs it."""
    import os
    import subprocess
    import sys

    import psutil
    from hostile_corpus import BLUE
    from prefect.settings import PREFECT_API_URL  # noqa: F401 -- the harness's, not the child's

    from curation.world.webserver import Routes

    paths = [f"/{i}.jpg" for i in range(3)]
    routes = Routes({p: (200, "image/jpeg", BLUE, 120) for p in paths})
    web = Server(routes)
    try:
        rows = [{"url": web.base_url + p, "caption": "a blue square"} for p in paths]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
        (tmp_path / "cfg.toml").write_text('[download]\ntimeout = 300\n[select]\nmetadata = ""\n')
        out = tmp_path / "run"
        argv = run_argv(tmp_path, out, tiny_models)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env["PREFECT_HOME"] = str(tmp_path / "prefect")
        log = tmp_path / "stderr.txt"
        with open(log, "w") as stderr:
            child = subprocess.Popen(
                [sys.executable, "-m", "flows.cli", *argv],
                cwd=Path(__file__).resolve().parent.parent,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        started = descendants_once(child, lambda p: "img2dataset" in " ".join(p.cmdline()))
        child.send_signal(signum)
        assert child.wait(timeout=120) == 128 + signum
        assert f"stopped by {signal.Signals(signum).name}" in log.read_text()
        _, alive = psutil.wait_procs(started, timeout=30)
        assert alive == []  # the downloader, Prefect's API server: nothing left running
        assert not list(out.rglob(".*.tmp-*")) and not (out / ".curate.lock.pid").exists()
        for p in paths:
            routes[p] = (200, "image/jpeg", BLUE)  # the server recovers
        assert cli.main(argv) == 0  # the rerun resumes
    finally:
        web.close()
    assert json.loads((out / "manifest.json").read_text())["counts"]["input"] == 3


def descendants_once(child, wanted, timeout: float = 180.0) -> list:
    """The child's process tree, as soon as one of its processes matches `wanted`."""
    import time

    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        try:
            tree = psutil.Process(child.pid).children(recursive=True)
            if any(wanted(p) for p in tree):
                return tree
        except psutil.Error:
            pass  # a process ended while we looked
        time.sleep(0.05)
    raise AssertionError("the run never started its downloader")
