"""Shared fixtures: tiny real images, a loopback web, tiny BLIP checkpoints, a Prefect harness."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import hostile_corpus
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hostile_corpus import encode, exif_rotated_jpeg  # noqa: F401 -- shared with the tests

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see curation/__init__.py


def textured_image(seed: int, size: tuple[int, int] = (96, 96)):
    """A distinct image with structure, as photos have (flat images all share one pHash, and
    pHash of a too smooth one moves under JPEG): a random 8x8 colour field, upscaled."""
    import numpy as np
    from PIL import Image

    cells = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize(size, Image.Resampling.BICUBIC)


def hostile_web() -> dict[str, tuple]:
    """path -> (HTTP status, content type, body[, delay]) of every web case of the corpus."""
    return hostile_corpus.routes()


def run_cli_until(argv: list[str], condition) -> int:
    """`curate ARGV` in a child process group, SIGKILLed (with every child) once `condition()`
    holds, as when the machine dies; its exit code (-SIGKILL when the kill came first).
    Needs the Prefect harness: the child talks to the harness's API server."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    child = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *argv],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while child.poll() is None:
        if condition():
            os.killpg(child.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    return child.wait()


def run_argv(root: Path, out: Path, tiny_models) -> list[str]:
    """`curate run` of ROOT/urls.parquet with ROOT/cfg.toml and the tiny models into OUT."""
    captioner, filt = tiny_models
    inputs = ["--urls", str(root / "urls.parquet"), "--config", str(root / "cfg.toml")]
    models = ["--captioner", str(captioner), "--filter", str(filt)]
    return ["run", *inputs, "--out", str(out), *models, "--allow-private-network"]


def closed_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def web():
    from curation.world.webserver import Routes, Server

    server = Server(Routes(hostile_web()))
    yield server
    server.close()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """(captioner_dir, filter_dir): tiny random BLIP checkpoints saved with save_pretrained."""
    from curation.models.tiny import save_blip_checkpoints

    return save_blip_checkpoints(tmp_path_factory.mktemp("tiny"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def hostile_run(tmp_path_factory, web, tiny_models, prefect_harness):
    """One real `curate run` over every WEB case of the corpus, on the loopback web.

    Returns (run_dir, rows, expected, argv): rows[i] is sample i's URL list row (url, caption,
    case name), expected[i] its outcome. itm_threshold 0 lets every decodable image through,
    so each outcome is the input's doing, not the random tiny filter's; dedup is off, as many
    cases serve the same image (tests/test_dedup_run.py plants its copies).
    """
    from flows import cli

    root = tmp_path_factory.mktemp("hostile")
    closed = str(closed_port())
    rows = [
        {
            "url": c.url and c.url.replace("{base}", web.base_url).replace("{closed}", closed),
            "caption": c.text,
            "case": c.name,
        }
        for c in hostile_corpus.WEB
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "urls.parquet")
    (root / "cfg.toml").write_text(
        "[sharding]\nshard_size = 20\n[capfilt]\nitm_threshold = 0.0\nnum_captions = 2\n"
        "batch_size = 3\nmax_new_tokens = 6\nmin_new_tokens = 2\n"
        f"max_image_pixels = {hostile_corpus.MAX_PIXELS}\n"
        f"[download]\ntimeout = {hostile_corpus.TIMEOUT}\nmax_bytes = {hostile_corpus.MAX_BYTES}\n"
        '[select]\nmetadata = ""\n[dedup]\nexact = false\nnear_duplicates = false\n'
    )
    argv = run_argv(root, root / "run", tiny_models)
    assert cli.main(argv) == 0
    return root / "run", rows, [c.expected for c in hostile_corpus.WEB], argv
