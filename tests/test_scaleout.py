"""`curate run --workers 2`: the same run on a local Dask cluster gives the same output."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_argv, textured_image

from curation.world.webserver import Routes, Server
from flows import cli


def image(i: int, size: tuple[int, int] | None = None, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    textured_image(i, size or (16 + 2 * i, 20)).save(buffer, fmt)
    return buffer.getvalue()


# 9 images and 3 rejects (not an image, too small, 404) in 4 shards of 3: every shard has
# images for CapFilt, three have a reject of the download or decode step.
ROUTES = Routes({f"/{i}.jpg": (200, "image/jpeg", image(i)) for i in range(9)})
ROUTES["/page.jpg"] = (200, "image/jpeg", b"<html><body>not found</body></html>")
ROUTES["/pixel.png"] = (200, "image/png", image(0, (1, 1), "PNG"))
PATHS = [
    "/0.jpg",
    "/1.jpg",
    "/page.jpg",
    "/2.jpg",
    "/3.jpg",
    "/pixel.png",
    "/4.jpg",
    "/5.jpg",
    "/gone.jpg",
    "/6.jpg",
    "/7.jpg",
    "/8.jpg",
]
CONFIG = """
[sharding]
shard_size = 3
torch_threads = 1
[capfilt]
num_captions = 2
batch_size = 2
max_new_tokens = 6
min_new_tokens = 2
[download]
timeout = 5
[select]
metadata = ""
"""
# Every table a run writes after download: what CapFilt and selection decided.
OUTPUTS = ["capfilt", "annotations", "decisions", "shards", "rejects"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_models, prefect_harness):
    """(single-process run dir, Dask run dir): the same URL list and configuration."""
    root = tmp_path_factory.mktemp("scaleout")
    web = Server(ROUTES)
    try:
        rows = [{"url": web.base_url + path, "caption": f"picture {path[1:]}"} for path in PATHS]
        pq.write_table(pa.Table.from_pylist(rows), root / "urls.parquet")
        (root / "cfg.toml").write_text(CONFIG)
        assert cli.main(run_argv(root, root / "single", tiny_models)) == 0
        assert cli.main([*run_argv(root, root / "dask", tiny_models), "--workers", "2"]) == 0
    finally:
        web.close()
    return root / "single", root / "dask"


def tables(run_dir) -> dict[str, list[dict]]:
    """Every output table of the run by file name, as rows."""
    return {
        str(path.relative_to(run_dir)): pq.read_table(path).to_pylist()
        for kind in OUTPUTS
        for path in sorted((run_dir / kind).glob("*.parquet"))
    }


def test_dask_run_writes_what_the_single_process_run_writes(two_runs):
    single, dask = tables(two_runs[0]), tables(two_runs[1])
    assert sorted(single) == sorted(dask) and len(single) == 4 * 6  # capfilt/select rejects
    for name, rows in single.items():
        assert rows == dask[name], name  # keys, captions, scores, decisions, reasons
    curated = [row for name, rows in single.items() if name.startswith("shards/") for row in rows]
    assert len(curated) == 9
    counts = [json.loads((d / "manifest.json").read_text())["counts"] for d in two_runs]
    assert counts[0] == counts[1] and counts[0]["rejected"] == 3


def test_model_steps_run_on_the_configured_thread_count_everywhere(two_runs):
    """One `[sharding] torch_threads` in both runs, whatever torch's default in this process
    (the machine's cores) or on a worker: the reason the outputs above are bit-identical."""
    for run_dir in two_runs:
        for step in ("capfilt", "annotate"):
            markers = list((run_dir / "_done" / step).glob("*"))
            assert len(markers) == 4
            assert {json.loads(m.read_text())["torch_threads"] for m in markers} == {1}


def test_torch_threads_sets_the_count_inside_and_restores_it():
    import torch

    from curation.models.blip import torch_threads

    before = torch.get_num_threads()
    with torch_threads(before + 2) as inside:
        assert inside == torch.get_num_threads() == before + 2
    with torch_threads(0) as inside:
        assert inside == before
    assert torch.get_num_threads() == before


def test_each_worker_process_loads_the_models_once(two_runs):
    markers = [json.loads(p.read_text()) for p in (two_runs[1] / "_done" / "capfilt").glob("*")]
    loads = {}  # worker pid -> the model load counts it reported, one per shard it ran
    for marker in markers:
        loads.setdefault(marker["pid"], set()).add(marker["model_loads"])
    assert len(markers) == 4 and len(loads) < len(markers)  # a process ran several shards...
    assert all(seen == {1} for seen in loads.values())  # ...on the models it loaded once


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "0"], "--workers must be >= 1"),
        (["--workers", "2", "--cluster", "tcp://127.0.0.1:1"], "not both"),
        (["--cluster", "tcp://127.0.0.1:1"], "no Dask scheduler at tcp://127.0.0.1:1"),
    ],
)
def test_bad_scale_out_options_stop_before_work(tmp_path, prefect_harness, capsys, args, message):
    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\nhttp://example.com/a.jpg,a\n")
    argv = ["run", "--urls", str(urls), "--out", str(tmp_path / "run"), *args]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
