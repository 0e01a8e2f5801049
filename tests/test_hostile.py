"""The hostile and broken input corpus (tests/hostile_corpus.py) through the real pipeline.

WEB cases: one real `curate run` over all of them (conftest.hostile_run); each row ends in
exactly one place with the corpus's outcome, and its URL and web text come out exactly as given.
LIST cases: `curate run` stops before any work, exit 2, one line naming the problem.
MODEL cases: only safetensors weights load, and a checkpoint's own code never runs.
"""

import json
import shutil
from pathlib import Path

import hostile_corpus
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from curation.models import blip as models
from curation.pipeline import urls
from flows import cli

ROOT = Path(__file__).resolve().parent.parent
WEB = hostile_corpus.WEB
CPU = torch.device("cpu")


def outputs(run_dir: Path) -> dict[int, list[dict]]:
    """sample_id -> its rows in the curated shards and the rejects table, with an outcome."""
    got = {}
    for kind in ("shards", "rejects"):
        for path in sorted((run_dir / kind).glob("*.parquet")):
            for row in pq.read_table(path).to_pylist():
                outcome = "curated" if kind == "shards" else row["reason"]
                got.setdefault(row["sample_id"], []).append({**row, "outcome": outcome})
    return got


@pytest.fixture(scope="module")
def results(hostile_run):
    run_dir, rows, _, _ = hostile_run
    return outputs(run_dir), rows


def test_every_row_is_accounted_for(results):
    got, rows = results
    assert sorted(got) == list(range(len(rows)))


@pytest.mark.parametrize("case", WEB, ids=[c.name for c in WEB])
def test_web_case(results, case):
    got, rows = results
    sample_id = WEB.index(case)
    [row] = got[sample_id]  # exactly one place
    assert row["outcome"] == case.expected, row.get("detail")
    assert case.detail in (row.get("detail") or ""), row["detail"]
    assert row["url"] == rows[sample_id]["url"]
    assert row["web_text"] == case.text  # byte for byte: NULs, RTL, emoji, 10,000 chars


def curated(results, name: str) -> dict:
    got, _ = results
    return got[[c.name for c in WEB].index(name)][0]


def test_duplicate_urls_are_two_curated_rows_of_one_image(results):
    first, second = curated(results, "good"), curated(results, "duplicate_url")
    assert first["sha256"] == second["sha256"] and first["key"] != second["key"]


@pytest.mark.parametrize("name", ["exif_rotation", "corrupt_exif_rotation"])
def test_exif_orientation_is_applied(results, name):
    row = curated(results, name)
    assert (row["width"], row["height"]) == (12, 24)


def test_long_web_text_is_scored_and_kept_whole(results):
    row = curated(results, "long_text")
    web = row["candidates"][0]
    assert (web["source"], web["text"]) == ("web", row["web_text"].strip())
    assert len(row["web_text"]) == 10_000


def test_docs_table_is_the_corpus():
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    assert hostile_corpus.markdown() in docs, "regenerate: .venv/bin/python tests/hostile_corpus.py"


@pytest.mark.parametrize("case", hostile_corpus.LISTS, ids=[c.name for c in hostile_corpus.LISTS])
def test_bad_url_list_stops_before_any_work(case, tmp_path, capsys):
    path = tmp_path / case.file
    if case.content is not None:
        path.write_bytes(case.content)
    out = tmp_path / "run"
    assert cli.main(["run", "--urls", str(path), "--out", str(out), *case.args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and case.message in lines[0], lines
    assert not out.exists()


def test_odd_but_valid_url_lists_are_read(tmp_path):
    # A byte-order mark, a caption that looks like a number, a pandas categorical column.
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfurl,caption\nhttp://x/a.jpg,007\n")
    assert urls.read_url_list(tmp_path / "bom.csv").to_pylist() == [
        {"sample_id": 0, "url": "http://x/a.jpg", "web_text": "007"}
    ]
    categorical = pa.array(["http://x/a.jpg"]).dictionary_encode()
    pq.write_table(pa.table({"url": categorical, "caption": pa.nulls(1)}), tmp_path / "c.parquet")
    table = urls.read_url_list(tmp_path / "c.parquet")
    assert table["url"].to_pylist() == ["http://x/a.jpg"] and table["web_text"].null_count == 1


def test_pickle_weights_are_refused(tmp_path, tiny_models, capsys):
    """pytorch_model.bin is a pickle, which can run code when loaded: only safetensors load."""
    from safetensors.torch import load_file

    folder = tmp_path / "bin_only"
    shutil.copytree(tiny_models[0], folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    (tmp_path / "urls.csv").write_text("url,caption\nhttp://example.com/a.jpg,a\n")
    argv = [
        "run",
        "--urls",
        str(tmp_path / "urls.csv"),
        "--out",
        str(tmp_path / "run"),
        "--captioner",
        str(folder),
        "--filter",
        str(tiny_models[1]),
    ]
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no .safetensors weights" in lines[0]
    with pytest.raises(OSError, match="safetensors"):  # the loader refuses it on its own too
        models.load_captioner(str(folder), CPU, torch.float32)


def test_remote_code_is_never_run(tmp_path, tiny_models):
    """A checkpoint whose configs point at its own Python code (auto_map) loads with the
    library's classes; the code is never imported (it would leave a marker file)."""
    marker = tmp_path / "code-ran"
    evil = f"open({str(marker)!r}, 'w').close()\nfrom transformers import BlipConfig as Evil\n"
    folders = []
    for source in tiny_models:
        folder = tmp_path / source.name
        shutil.copytree(source, folder)
        (folder / "evil.py").write_text(evil)
        for name in ("config.json", "tokenizer_config.json", "processor_config.json"):
            config = json.loads((folder / name).read_text())
            auto = ["AutoConfig", "AutoModel", "AutoTokenizer", "AutoProcessor"]
            config["auto_map"] = dict.fromkeys(auto, "evil.Evil")
            (folder / name).write_text(json.dumps(config))
        folders.append(folder)
    models.load_captioner(str(folders[0]), CPU, torch.float32)
    models.load_filter(str(folders[1]), CPU, torch.float32)
    assert not marker.exists()
