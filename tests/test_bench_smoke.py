"""The benchmark scripts run end to end on tiny inputs (they are not part of the library, but
a benchmark that has silently rotted measures nothing)."""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from PIL import Image

from curation.pipeline import urls

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_script(name: str):
    """Import bench/NAME.py as a module (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def throughput():
    return load_script("capfilt_throughput")


@pytest.fixture(scope="module")
def cc3m():
    return load_script("real_web_run")


@pytest.fixture
def restore_torch_threads():
    """The script sets torch's process-wide thread count; give the next tests theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_bench_images_are_decodable_jpegs_of_the_asked_size(throughput, tmp_path):
    jpegs = throughput.make_jpegs(3, side=48)
    assert len(set(jpegs)) == 3
    for i, data in enumerate(jpegs):
        (tmp_path / f"{i}.jpg").write_bytes(data)
        with Image.open(tmp_path / f"{i}.jpg") as image:
            assert image.format == "JPEG" and image.size == (48, 48)
    assert throughput.raw_table(jpegs)["status"].to_pylist() == ["success"] * 3


def test_throughput_script_times_both_passes_and_outputs_agree(
    throughput, tmp_path, capsys, restore_torch_threads
):
    # One intra-op thread: on a busy 2-core machine two make tiny models ~10x slower.
    sizes = "--size tiny --images 6 --batch-size 4 --num-captions 1 --image-side 40"
    speed = "--min-new-tokens 2 --max-new-tokens 3 --repeat 1 --torch-threads 1"
    argv = [*sizes.split(), *speed.split(), "--workdir", str(tmp_path)]
    assert throughput.main(argv) == 0
    out = capsys.readouterr().out
    assert "preset tiny" in out and "efficiency" in out
    assert "outputs identical in both passes: True" in out


def test_throughput_script_times_both_samplers(throughput, capsys):
    argv = ["--sampler", "--sampler-rows", "2,3", "--vocab", "50", "--repeat", "1"]
    assert throughput.main(argv) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table] == ["| rows", "| 2", "| 3"]


def test_cc3m_script_url_list_reads_back_with_empty_captions(cc3m, tmp_path):
    tsv = tmp_path / "captions.tsv"
    tsv.write_text('file\tcaption\na.jpg\ta "quoted" dog\nb\t\n', encoding="utf-8")
    out = tmp_path / "urls.tsv"
    assert cc3m.write_url_list(tsv, "http://127.0.0.1:1", out) == 2
    table = urls.read_url_list(out)
    assert table["url"].to_pylist() == ["http://127.0.0.1:1/a.jpg", "http://127.0.0.1:1/b"]
    assert table["web_text"].to_pylist() == ['a "quoted" dog', ""]


def test_cc3m_script_skips_without_the_shared_data(cc3m, tmp_path, capsys):
    assert cc3m.main(["--data", str(tmp_path / "absent"), "--workdir", str(tmp_path)]) == 0
    assert "skipped" in capsys.readouterr().out


def test_memory_script_sums_the_process_tree_by_kind():
    memory = load_script("memory_scaling")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "uvicorn"])
    try:
        while "uvicorn" not in psutil.Process(child.pid).cmdline():  # until it has exec'd
            time.sleep(0.01)
        pss = memory.sample_tree(psutil.Process())
        assert pss["prefect_server"] > 0  # the child, classed by its command line
    finally:
        child.kill()
        child.wait()


def test_gpu_check_dry_run_prints_the_three_rows_and_refuses_without_cuda():
    # The whole prepared command (bench/gpu_check.sh --dry-run: CPU, tiny configs), ~15 s here.
    script = BENCH / "gpu_check.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(script), "--dry-run"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dry run" in done.stdout
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ")]
    whats = [cells[0].removeprefix("| ") for cells in rows[1:]]
    starts = ("CapFilt, BLIP-tiny", "BLIP-2 (tiny OPT) captioning", "BLIP-tiny pre-training")
    assert len(whats) == 3 and all(w.startswith(s) for w, s in zip(whats, starts, strict=True))
    rates = [float(cells[2].split()[0]) for cells in rows[1:]]  # "123.4 images/s"
    assert all(rate > 0 for rate in rates) and float(rows[1][3]) > 0  # the naive baseline
    if not torch.cuda.is_available():
        refused = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
        assert refused.returncode == 2 and "no CUDA device" in refused.stderr
