"""`curate export`: WebDataset / Parquet / JSONL shards of a run's curated rows.

The run is built directly as Parquet files with the schemas of curation/schema.py: a few rows,
tiny images made with Pillow, hostile alt-text. Shards are read back with the libraries a
trainer would use (webdataset, pyarrow, json).
"""

import hashlib
import io
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from curation import schema, sql
from curation.outputs import export as ex

HOSTILE = "\"><img src=http://evil.example/x.png onerror=alert(1)><script>alert('x')</script>"


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def rotated_jpeg() -> bytes:
    """24x12 pixels whose EXIF says 'rotate 90°': upright it is 12x24."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.new("RGB", (24, 12), (200, 30, 30)), "JPEG", exif=exif)


IMAGES = {
    0: encode(Image.new("RGB", (16, 12), (220, 20, 20)), "JPEG"),
    1: encode(Image.new("RGBA", (10, 10), (0, 255, 0, 80)), "PNG"),
    3: rotated_jpeg(),
    5: encode(Image.new("RGB", (20, 20), (0, 0, 255)), "JPEG"),
    6: encode(Image.new("L", (14, 14), 128), "JPEG"),
}
SIZES = {0: (16, 12), 1: (10, 10), 3: (12, 24), 6: (14, 14)}


def cand(text, source, itm, itc, kept):
    return {"text": text, "source": source, "itm": itm, "itc": itc, "kept": kept}


# sample_id -> (web text, candidates, chosen caption, its source, its ITM) of curated rows
CURATED = {
    0: (
        "a red square",
        [
            cand("a red square", "web", 0.9, 0.4, True),
            cand("a picture of a red box", "synthetic", 0.7, 0.3, True),
        ],
        "a red square",
        "web",
        0.9,
    ),
    1: (
        HOSTILE,
        [
            cand(HOSTILE, "web", 0.1, 0.0, False),
            cand("a picture of a green square", "synthetic", 0.8, 0.35, True),
        ],
        "a picture of a green square",
        "synthetic",
        0.8,
    ),
    3: ("a red bar", [cand("a red bar", "web", 0.6, 0.2, True)], "a red bar", "web", 0.6),
    6: (
        "grey",
        [
            cand("grey", "web", 0.55, 0.1, True),
            cand("a picture of fog & <mist>", "synthetic", 0.3, 0.05, False),
        ],
        "grey",
        "web",
        0.55,
    ),
}
# sample_id -> (web text, stage, reason, detail, candidates, raw status) of rejected rows
REJECTED = {
    2: ("a dog", "download", "download_failed", "HTTP 404", None, "failed_to_download"),
    4: (
        "<b>html</b> saved as jpg",
        "decode",
        "decode_error",
        "cannot identify image",
        None,
        "success",
    ),
    5: (
        HOSTILE,
        "capfilt",
        "no_matching_text",
        "no text reached ITM 0.5",
        [cand(HOSTILE, "web", 0.2, 0.0, False), cand("a blue tile", "synthetic", 0.4, 0.1, False)],
        "success",
    ),
}
SHARD_OF = {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 6: 1}


def curated_row(sid: int, image: bytes | None = None) -> dict:
    web, candidates, caption, source, itm = CURATED[sid]
    image = IMAGES[sid] if image is None else image
    width, height = SIZES[sid]
    return {
        "sample_id": sid,
        "key": schema.sample_key(sid),
        "url": f"http://x.test/{sid}.jpg",
        "web_text": web,
        "candidates": candidates,
        "caption": caption,
        "caption_source": source,
        "caption_itm": itm,
        "image": image,
        "width": width,
        "height": height,
        "sha256": hashlib.sha256(image).hexdigest(),
        "shard": SHARD_OF[sid],
    }


def reject_row(sid: int) -> dict:
    web, stage, reason, detail, candidates, _ = REJECTED[sid]
    return {
        "sample_id": sid,
        "url": f"http://x.test/{sid}.jpg",
        "web_text": web,
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "candidates": candidates,
        "shard": SHARD_OF[sid],
    }


def raw_row(sid: int) -> dict:
    url = f"http://x.test/{sid}.jpg"
    if sid in CURATED:
        return {
            "sample_id": sid,
            "url": url,
            "web_text": CURATED[sid][0],
            "status": "success",
            "error": None,
            "image": IMAGES[sid],
        }
    web, _, _, detail, _, status = REJECTED[sid]
    image = {4: b"<html>not an image</html>"}.get(sid, IMAGES.get(sid))
    error = detail if status != "success" else None
    return {
        "sample_id": sid,
        "url": url,
        "web_text": web,
        "status": status,
        "error": error,
        "image": image,
    }


def write(rows: list[dict], table_schema: pa.Schema, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=table_schema), path)


def make_run(root: Path, damaged: int | None = None) -> Path:
    """A two-shard run: 7 inputs, 4 curated, 3 rejected (one per stage); `damaged` replaces
    that curated sample's image with bytes that do not decode."""
    run = root / "run"
    for shard in (0, 1):
        ids = [s for s, sh in SHARD_OF.items() if sh == shard]
        name = f"{shard:05d}.parquet"
        inputs = [
            {"sample_id": s, "url": raw_row(s)["url"], "web_text": raw_row(s)["web_text"]}
            for s in ids
        ]
        write(inputs, schema.INPUT, run / "input" / name)
        write([raw_row(s) for s in ids], schema.RAW, run / "raw" / name)
        curated = [
            curated_row(s, b"damaged" if s == damaged else None) for s in ids if s in CURATED
        ]
        write(curated, schema.CURATED, run / "shards" / name)
        write([reject_row(s) for s in ids if s in REJECTED], schema.REJECTS, run / "rejects" / name)
    config = {"capfilt": {"itm_threshold": 0.5, "num_captions": 2, "max_image_pixels": 10**8}}
    counts = {
        "input": 7,
        "curated": 4,
        "rejected": 3,
        "rejects_by_reason": {"decode_error": 1, "download_failed": 1, "no_matching_text": 1},
    }
    models = {"captioner": "tiny-cap", "filter": "tiny-itm"}
    manifest = {"config": config, "counts": counts, "models": models, "timings": {"wall": 1.5}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "run.json").write_text(json.dumps({"fingerprint": "f00d", "urls": "urls.parquet"}))
    return run


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path)


def read_wds(out: Path) -> list[tuple]:
    urls = [str(p) for p in sorted(out.glob("*.tar"))]
    dataset = wds.WebDataset(urls, shardshuffle=False).decode("pil")
    return list(dataset.to_tuple("__key__", "jpg", "txt", "json"))


def test_webdataset_shards_read_back_with_the_webdataset_library(run_dir, tmp_path):
    out = tmp_path / "wds"
    manifest = ex.export(run_dir, out, fmt="webdataset", shard_size=3)
    assert sorted(p.name for p in out.iterdir()) == [
        "00000.tar",
        "00001.tar",
        "manifest.json",
        "sizes.json",
    ]
    samples = read_wds(out)
    assert [s[0] for s in samples] == [schema.sample_key(i) for i in (0, 1, 3, 6)]
    for key, image, text, meta in samples:
        sid = int(key)
        assert text == CURATED[sid][2] and meta["caption"] == text
        assert image.size == SIZES[sid]  # EXIF rotation applied, PNG flattened to JPEG
        assert meta["url"] == f"http://x.test/{sid}.jpg" and meta["web_text"] == CURATED[sid][0]
        assert meta["scores"]["itm"] == pytest.approx(CURATED[sid][4])
        assert "candidates" not in meta and "dfn" not in meta["scores"]
    assert samples[0][3]["scores"]["itc"] == pytest.approx(0.4)
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 3, "00001.tar": 1}
    assert manifest["reencoded_images"] == 2  # the PNG and the EXIF-rotated JPEG
    assert manifest["train_data"].endswith("{00000..00001}.tar")


def test_plain_jpegs_pass_through_byte_for_byte(run_dir, tmp_path):
    ex.export(run_dir, tmp_path / "wds", shard_size=10)
    import tarfile

    with tarfile.open(tmp_path / "wds" / "00000.tar") as tar:
        names = tar.getnames()
        assert tar.extractfile(f"{schema.sample_key(0)}.jpg").read() == IMAGES[0]
    assert names[:3] == [f"{schema.sample_key(0)}.{e}" for e in ("jpg", "txt", "json")]


def test_caption_all_keeps_one_sample_per_image_with_every_kept_text(run_dir, tmp_path):
    ex.export(run_dir, tmp_path / "wds", caption="all")
    samples = {int(k): (text, meta) for k, _, text, meta in read_wds(tmp_path / "wds")}
    text, meta = samples[0]
    assert text == "a red square"
    assert meta["captions"] == ["a red square", "a picture of a red box"]
    assert [c["source"] for c in meta["candidates"]] == ["web", "synthetic"]
    assert samples[6][1]["captions"] == ["grey"]  # the unkept synthetic text is not a caption


def test_parquet_round_trip_keeps_original_image_bytes(run_dir, tmp_path):
    manifest = ex.export(run_dir, tmp_path / "pq", fmt="parquet", caption="all")
    table = pq.read_table(tmp_path / "pq" / "00000.parquet")
    assert table.schema == ex.export_schema(manifest["columns"])
    rows = table.to_pylist()
    assert [r["sample_id"] for r in rows] == [0, 1, 3, 6]
    assert [r["image"] for r in rows] == [IMAGES[i] for i in (0, 1, 3, 6)]
    assert rows[1]["web_text"] == HOSTILE and rows[1]["captions"] == [CURATED[1][2]]
    assert rows[0]["caption_itc"] == pytest.approx(0.4)


def test_jsonl_round_trip_has_captions_and_scores_but_no_image(run_dir, tmp_path):
    manifest = ex.export(run_dir, tmp_path / "jl", fmt="jsonl", shard_size=2)
    lines = [
        json.loads(line)
        for p in sorted((tmp_path / "jl").glob("*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    assert manifest["counts"] == {"rows": 4, "shards": 2}
    assert [r["sample_id"] for r in lines] == [0, 1, 3, 6]
    assert all("image" not in r for r in lines)
    assert lines[1]["web_text"] == HOSTILE and lines[1]["caption_source"] == "synthetic"
    assert lines[3]["scores"]["itm"] == pytest.approx(0.55)


@pytest.mark.parametrize(
    ("where", "ids"),
    [
        ("caption_itm >= 0.8", [0, 1]),
        ("caption_source = 'web' AND height > width", [3]),
        ("len(list_filter(candidates, lambda c: NOT c.kept)) > 0", [1, 6]),
        ("caption LIKE '%zebra%'", []),
    ],
)
def test_predicate_selects_rows(run_dir, tmp_path, where, ids):
    manifest = ex.export(run_dir, tmp_path / "out", where=where, fmt="jsonl")
    rows = [
        json.loads(x)
        for p in sorted((tmp_path / "out").glob("*.jsonl"))
        for x in p.read_text().splitlines()
    ]
    assert [r["sample_id"] for r in rows] == ids
    assert manifest["where"] == where and manifest["counts"]["rows"] == len(ids)


@pytest.mark.parametrize(
    "where",
    [
        "nosuch_column > 1",  # unknown column
        "caption_itm >",  # syntax
        "true; DROP VIEW curated",  # a second statement
        "web_text",  # not boolean
        "caption_itm > 0.5, width > 1",  # two expressions
        "count(*) > 1",  # aggregate
    ],
)
def test_invalid_predicate_is_refused_before_anything_is_written(run_dir, tmp_path, where):
    out = tmp_path / "out"
    with pytest.raises(ex.ExportError, match="--where"):
        ex.export(run_dir, out, where=where)
    assert not out.exists()


@pytest.mark.parametrize(
    "where",
    [
        "(SELECT count(*) FROM read_text('{secret}')) > 0",
        "(SELECT count(*) FROM read_blob('{secret}')) > 0",
        "(SELECT count(*) FROM glob('{folder}/*')) > 0",
        "(SELECT count(*) FROM read_csv('{secret}')) > 0",
        "(SELECT count(*) FROM read_parquet('{folder}/*.parquet')) > 0",
    ],
)
def test_a_predicate_cannot_reach_the_file_system(run_dir, tmp_path, where):
    """A predicate from a config or a schedule could read any local file one yes/no at a time."""
    folder = tmp_path / "private"
    folder.mkdir()
    (folder / "secret.txt").write_text("a,b\n1,2\n")
    out = tmp_path / "out"
    where = where.format(secret=folder / "secret.txt", folder=folder)
    with pytest.raises(ex.ExportError, match="Permission Error"):
        ex.export(run_dir, out, where=where)
    assert not out.exists()


@pytest.mark.parametrize("inside", ["_done/exp", "shards/new", "input/more"])
def test_an_export_inside_the_runs_data_is_refused(run_dir, inside):
    with pytest.raises(ex.ExportError, match="inside the run's data"):
        ex.export(run_dir, run_dir / inside)
    assert not (run_dir / inside).exists()


def test_bad_output_folder_run_folder_or_format_is_refused(run_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ex.ExportError, match="is a file"):
        ex.export(run_dir, tmp_path / "file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "00000.tar").write_bytes(b"old")
    with pytest.raises(ex.ExportError, match="not empty"):
        ex.export(run_dir, tmp_path / "full")
    assert (tmp_path / "full" / "00000.tar").read_bytes() == b"old"
    with pytest.raises(ex.ExportError, match="format"):
        ex.export(run_dir, tmp_path / "new", fmt="tfrecord")
    with pytest.raises(ex.ExportError, match="not a curation run"):
        ex.export(tmp_path / "typo", tmp_path / "new")
    (run_dir / "manifest.json").unlink()  # a run still going
    with pytest.raises(ex.ExportError, match="not finished"):
        ex.export(run_dir, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_failure_mid_export_leaves_no_shard_under_a_final_name(tmp_path):
    """Sample 6's image was damaged after CapFilt: shard 0 (samples 0, 1, 3) is committed,
    then re-encoding sample 6 fails; the export removes everything it wrote."""
    run = make_run(tmp_path, damaged=6)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="does not decode"):
        ex.export(run, out, shard_size=3)
    assert list(out.iterdir()) == []


def test_predicate_failing_at_run_time_leaves_nothing(run_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ex.ExportError, match="Conversion Error"):
        ex.export(run_dir, out, where="CAST(web_text AS INTEGER) > 0", shard_size=1)
    assert list(out.iterdir()) == []


def test_manifest_records_predicate_format_counts_and_source(run_dir, tmp_path):
    out = tmp_path / "out"
    ex.export(run_dir, out, where="width < 16", fmt="parquet", shard_size=2)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["where"] == "width < 16" and manifest["format"] == "parquet"
    assert manifest["counts"] == {"rows": 3, "shards": 2} and manifest["shard_size"] == 2
    source = manifest["source"]
    assert source["run_dir"] == str(run_dir.resolve()) and source["fingerprint"] == "f00d"
    assert source["itm_threshold"] == 0.5 and source["counts"]["curated"] == 4
    assert manifest["created"] and manifest["caption"] == "chosen"
    for shard in manifest["shards"]:
        data = (out / shard["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]


def test_annotations_add_dfn_and_concepts_and_can_be_filtered_on(run_dir, tmp_path):
    con = sql.connect(run_dir)
    con.register(
        "annotations",
        pa.table(
            {
                "sample_id": [0, 1, 3, 6],
                "dfn": pa.array([0.3, 0.1, 0.25, 0.05], pa.float32()),
                "concepts": [["red", "square"], ["green"], ["red"], []],
            }
        ),
    )
    plan = ex.make_plan(con, run_dir, "dfn >= 0.25", "jsonl", "chosen")
    assert plan.annotated and "dfn" in plan.columns
    out = tmp_path / "out"
    out.mkdir()
    ex.write_shards(ex.selected_batches(con, plan), out, plan, 10)
    rows = [json.loads(x) for x in (out / "00000.jsonl").read_text().splitlines()]
    assert [(r["sample_id"], r["concepts"]) for r in rows] == [(0, ["red", "square"]), (3, ["red"])]
    assert rows[0]["scores"]["dfn"] == pytest.approx(0.3)


@pytest.mark.parametrize("name", ["exp[1]", "exp*", "exp?"])
def test_run_folders_with_glob_characters_mean_themselves(tmp_path, name):
    """DuckDB globs the paths it reads: `exp[1]` beside `exp1` showed and exported exp1's rows."""
    import shutil

    from curation import sql
    from curation.pipeline import select

    ours = make_run(tmp_path / "a")
    other = make_run(tmp_path / "b")
    (other / "shards" / "00001.parquet").unlink()  # the neighbour has fewer curated rows
    shutil.move(ours, tmp_path / name)
    shutil.move(other, tmp_path / "exp1")
    run = tmp_path / name
    con = sql.connect(run)
    assert con.execute("SELECT count(*), any_value(run_id) FROM samples").fetchone() == (4, name)
    assert ex.export(run, tmp_path / "out")["counts"]["rows"] == 4
    write([], schema.ANNOTATIONS, run / "annotations" / "00000.parquet")
    write(
        [{"sample_id": 0}], schema.ANNOTATIONS, tmp_path / "exp1" / "annotations" / "00000.parquet"
    )
    assert select.connect(run).execute("SELECT count(*) FROM annotations").fetchone() == (0,)


def test_empty_stand_in_tables_live_in_one_private_folder_per_user(tmp_path, monkeypatch):
    """A folder per process leaked on every kill; another user's folder must not be trusted."""
    from curation import sql

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first = sql._empty_folder()
    assert first == sql._empty_folder() and first.parent == tmp_path
    assert first.stat().st_mode & 0o777 == 0o700
    first.chmod(0o777)  # as if someone else could write there
    assert sql._empty_folder() != first
