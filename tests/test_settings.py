"""Every `[capfilt]` and `[download]` setting changes what a run writes or how it runs.

`repetition_penalty` was once stored in run.json and never reached the captioner (issue 13). Each
setting here is changed alone, from a base configuration, and what it governs is observed: the
stage's output for a setting of *what* is curated, the stage's behaviour (batches, threads,
connections) for a setting of *how*, whose output must then stay the same. A new setting without
a case fails `test_every_setting_has_a_case`.
"""

import dataclasses
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest
import torch
from conftest import encode
from PIL import Image
from transformers import BlipForConditionalGeneration

from curation import schema
from curation.config import CapFiltConfig, DownloadConfig
from curation.models.tiny import save_blip_checkpoints
from curation.pipeline import calibration, capfilt, steps
from curation.pipeline.download import download_shard
from curation.pipeline.run import RunSpec
from curation.world.webserver import Routes, Server

IMAGES = 6


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_models):
    """The tiny models, a second pair of other weights, a captioner that wants to stop at once
    ([SEP] far above every other token: only min_new_tokens makes it speak) and a filter folder
    holding held-out calibration scores."""
    root = tmp_path_factory.mktemp("settings")
    other = save_blip_checkpoints(root / "other", size="tiny", seed=1)
    terse, calibrated = root / "terse", root / "calibrated"
    shutil.copytree(tiny_models[0], terse)
    model = BlipForConditionalGeneration.from_pretrained(terse)
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[model.config.text_config.sep_token_id] = 100.0
    model.save_pretrained(terse)
    shutil.copytree(tiny_models[1], calibrated)
    positives = [i / 100 for i in range(40, 100)]
    calibration.write(calibrated, positives, {"web": [i / 100 for i in range(0, 80)]})
    return {"other": other, "terse": terse, "calibrated": calibrated}


def raw_shard() -> pa.Table:
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    return pa.Table.from_pylist(
        [
            {
                "sample_id": i,
                "url": f"http://127.0.0.1/{i}.png",
                "web_text": f"a {c} square",
                "status": "success",
                "error": None,
                "image": encode(Image.new("RGB", (24 + 4 * i, 24), c), "PNG"),
            }
            for i, c in enumerate(colours)
        ],
        schema=schema.RAW,
    )


class Watched:
    """What one CapFilt shard did: its output and how it went (batches handed to the models,
    decoding threads, batches made ahead of the first model call)."""

    def __init__(self, cfg: CapFiltConfig, monkeypatch):
        self.batches, self.decoded_off_caller, self.submitted_ahead = [], set(), None
        caller = threading.current_thread()
        decode, watched = capfilt.decode_image, self

        def watched_decode(*args):
            watched.decoded_off_caller.add(threading.current_thread() is not caller)
            return decode(*args)

        class CountingPool(ThreadPoolExecutor):
            submitted = 0

            def submit(self, *args, **kwargs):
                CountingPool.submitted += 1
                return super().submit(*args, **kwargs)

        monkeypatch.setattr(capfilt, "decode_image", watched_decode)
        monkeypatch.setattr(capfilt, "ThreadPoolExecutor", CountingPool)
        captioner, filt = steps.load_models(cfg.captioner, cfg.filter)
        generate = captioner.generate

        def first_call_notes_the_pool(*args, **kwargs):
            if self.submitted_ahead is None:
                self.submitted_ahead = CountingPool.submitted
            return generate(*args, **kwargs)

        monkeypatch.setattr(captioner, "generate", first_call_notes_the_pool)
        result = capfilt.capfilt_shard(raw_shard(), captioner, filt, cfg, 0, self.batches.append)
        monkeypatch.undo()
        curated, rejects = capfilt.to_tables(result)
        self.output = (
            curated.drop_columns(["image"]).to_pylist(),
            sorted(rejects.to_pylist(), key=lambda r: r["sample_id"]),
        )


def calibrated_threshold(cfg: CapFiltConfig):
    spec = RunSpec("urls.parquet", "out", config={"capfilt": dataclasses.asdict(cfg)})
    return calibration.calibrated(spec).config["capfilt"]["itm_threshold"]


# setting -> (base changes, the change, what it governs: "output" of the stage or a behaviour)
CAPFILT_CASES = {
    "captioner": ({}, {"captioner": "other"}, "output"),
    "filter": ({}, {"filter": "other"}, "output"),
    "num_captions": ({}, {"num_captions": 1}, "output"),
    # a penalty below 1 rewards the tokens already there, the prompt's: they fill the captions
    "prompt": ({"repetition_penalty": 0.01}, {"prompt": "zebra zebra zebra"}, "output"),
    "top_p": ({}, {"top_p": 0.2}, "output"),
    "repetition_penalty": ({}, {"repetition_penalty": 0.01}, "output"),
    "min_new_tokens": (
        {"captioner": "terse", "min_new_tokens": 0},
        {"min_new_tokens": 3},
        "output",
    ),
    "max_new_tokens": ({}, {"max_new_tokens": 4}, "output"),
    "itm_threshold": ({}, {"itm_threshold": 1.0}, "output"),
    "calibrate_for": ({"itm_threshold": "auto"}, {"calibrate_for": "precision"}, "threshold"),
    "calibration_target": ({"itm_threshold": "auto"}, {"calibration_target": 0.5}, "threshold"),
    "caption_choice": ({}, {"caption_choice": "web_first"}, "output"),
    "batch_size": ({}, {"batch_size": 4}, "batches"),
    "num_workers": ({}, {"num_workers": 0}, "decoded_off_caller"),
    "prefetch_batches": ({"batch_size": 1}, {"prefetch_batches": 1}, "submitted_ahead"),
    "min_image_side": ({}, {"min_image_side": 30}, "output"),
    "max_image_pixels": ({}, {"max_image_pixels": 24 * 30}, "output"),
    "seed": ({}, {"seed": 1}, "output"),
}
BASE_CAPFILT = {"num_captions": 2, "max_new_tokens": 8, "itm_threshold": 0.0, "batch_size": 2}


def test_every_setting_has_a_case():
    assert set(CAPFILT_CASES) == {f.name for f in dataclasses.fields(CapFiltConfig)}
    assert set(DOWNLOAD_CASES) == {f.name for f in dataclasses.fields(DownloadConfig)}


@pytest.mark.parametrize("name", CAPFILT_CASES)
def test_each_capfilt_setting_changes_what_it_governs(name, checkpoints, tiny_models, monkeypatch):
    base_changes, change, governs = CAPFILT_CASES[name]

    def config(**changes) -> CapFiltConfig:
        models = {"captioner": str(tiny_models[0]), "filter": str(tiny_models[1])}
        if base_changes.get("itm_threshold") == "auto":
            models["filter"] = str(checkpoints["calibrated"])
        for role in ("captioner", "filter"):
            if changes.get(role) == "other":
                changes[role] = str(checkpoints["other"][0 if role == "captioner" else 1])
            elif changes.get(role) == "terse":
                changes[role] = str(checkpoints["terse"])
        return CapFiltConfig(**{**BASE_CAPFILT, **models, **changes})

    before, after = config(**base_changes), config(**{**base_changes, **change})
    if governs == "threshold":
        assert calibrated_threshold(before) != calibrated_threshold(after)
        return
    seen = Watched(before, monkeypatch), Watched(after, monkeypatch)
    assert getattr(seen[0], governs) != getattr(seen[1], governs)
    if governs != "output":  # a setting of how a shard runs leaves what it writes alone
        assert seen[0].output == seen[1].output


@pytest.fixture(scope="module")
def slow_web():
    png = encode(Image.new("RGB", (32, 32), "red"), "PNG")
    routes = Routes({"/png": (200, "image/png", png), "/slow": (200, "image/png", png, 2.0)})
    server = Server(routes)
    yield server, routes, png
    server.close()


def fetch(server: Server, paths: list[str], **changes) -> dict:
    """Statuses of fetching PATHS with [download] CHANGES, and the server's busiest moment."""
    cfg = DownloadConfig(**{"allow_private_network": True, **changes})
    table = pa.table(
        {
            "sample_id": list(range(len(paths))),
            "url": [server.base_url + p for p in paths],
            "web_text": ["a red square"] * len(paths),
        },
        schema=schema.INPUT,
    )
    server.load.busiest = 0
    raw = download_shard(table, cfg)
    return {"status": raw["status"].to_pylist(), "busiest": server.load.busiest}


def rate_limited_once(routes: Routes, png: bytes) -> str:
    """A fresh path whose first request gets 429 (`Retry-After: 1`), and later ones the image."""
    path = f"/limited-{uuid.uuid4().hex}"
    routes[path] = (200, "image/png", png, {"fail_first": 1})
    return path


# setting -> (base changes, the change, the paths fetched or a function of (routes, png) making
# them, what it governs)
DOWNLOAD_CASES = {
    "timeout": ({}, {"timeout": 1}, ["/slow"], "status"),
    "retries": ({}, {"retries": 1}, rate_limited_once, "status"),
    # one connection at a time, then three: the server sees them at once (each takes 2 s)
    "thread_count": ({"thread_count": 1}, {"thread_count": 3}, ["/slow"] * 3, "busiest"),
    "allow_private_network": ({}, {"allow_private_network": False}, ["/png"], "status"),
    "max_bytes": ({}, {"max_bytes": 64}, ["/png"], "status"),
}


@pytest.mark.parametrize("name", DOWNLOAD_CASES)
def test_each_download_setting_changes_what_it_governs(name, slow_web):
    server, routes, png = slow_web
    base_changes, change, paths, governs = DOWNLOAD_CASES[name]

    def paths_now():
        return [paths(routes, png)] if callable(paths) else paths

    before = fetch(server, paths_now(), **base_changes)
    after = fetch(server, paths_now(), **{**base_changes, **change})
    assert before[governs] != after[governs]
    if governs != "status":  # a setting of how the fetches run leaves what they get alone
        assert before["status"] == after["status"] == ["success"] * len(before["status"])
