"""The `curate run` flow end to end: loopback web of hostile inputs, tiny models, Prefect."""

import hashlib
import json
import subprocess
import sys

import hostile_corpus
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_argv

from curation import sql
from curation.config import Sampling
from curation.models import blip
from curation.pipeline import run
from curation.rundir import RunDir
from flows import cli


@pytest.fixture(scope="module")
def curated_run(hostile_run):
    """The hostile corpus's run (conftest.hostile_run): (run_dir, rows, expected, argv)."""
    return hostile_run


def shard_count(run_dir) -> int:
    return json.loads((run_dir / "run.json").read_text())["shards"]


def outcomes(run_dir) -> dict[int, list[str]]:
    """sample_id -> every outcome recorded for it ('curated' or the reject reason)."""
    con = sql.connect(run_dir)
    got = {}
    for sample_id, outcome in con.execute(
        "SELECT sample_id, 'curated' FROM curated UNION ALL SELECT sample_id, reason FROM rejects"
    ).fetchall():
        got.setdefault(sample_id, []).append(outcome)
    return got


def test_every_input_row_ends_in_exactly_one_place_with_the_right_reason(curated_run):
    run_dir, rows, expected, _ = curated_run
    got = outcomes(run_dir)
    assert got == {i: [outcome] for i, outcome in enumerate(expected)}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["input"] == len(rows) == counts["curated"] + counts["rejected"]
    assert manifest["versions"]["prefect"] and manifest["timings"]["capfilt"] > 0


def test_curated_rows_keep_provenance(curated_run):
    run_dir, rows, _, _ = curated_run
    curated = pa.concat_tables(pq.read_table(p) for p in sorted((run_dir / "shards").glob("*")))
    by_case = {rows[r["sample_id"]]["case"]: r for r in curated.to_pylist()}
    rotated = by_case["exif_rotation"]
    assert (rotated["width"], rotated["height"]) == (12, 24)  # EXIF orientation applied
    sources = [c["source"] for c in rotated["candidates"]]
    assert sources == ["web", "synthetic", "synthetic"]
    assert all(0.0 <= c["itm"] <= 1.0 and c["kept"] for c in rotated["candidates"])
    assert rotated["caption"] in [c["text"] for c in rotated["candidates"]]
    empty = by_case["empty_text"]
    assert [c["source"] for c in empty["candidates"]] == ["synthetic", "synthetic"]
    assert rotated["sha256"] == hashlib.sha256(rotated["image"]).hexdigest()


def test_rerun_skips_finished_shards_and_changes_nothing(curated_run):
    run_dir, _, _, argv = curated_run
    before = {p.name: p.read_bytes() for p in (run_dir / "shards").glob("*.parquet")}
    markers = {p: p.stat().st_mtime_ns for p in run_dir.glob("_done/*/*.json")}
    assert cli.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("_done/*/*.json")} == markers  # none ran
    after = {p.name: p.read_bytes() for p in (run_dir / "shards").glob("*.parquet")}
    assert before == after and len(before) == shard_count(run_dir) > 1
    assert not list(run_dir.rglob(".*.tmp-*"))  # no temporary files left behind


@pytest.mark.parametrize(
    "make_out, message",
    [
        (lambda root: (root / "afile").write_text("x") and root / "afile", "is a file"),
        (lambda root: (root / "afile").write_text("x") and root / "afile" / "run", "cannot write"),
        (lambda root: root, "holds the input"),
        (lambda root: foreign_folder(root / "mine"), "holds files that are not a curation run"),
    ],
)
def test_an_out_folder_the_run_must_not_write_is_refused_in_one_line(
    tmp_path, tiny_models, capsys, make_out, message
):
    pq.write_table(
        pa.table({"url": ["http://127.0.0.1:9/a.jpg"], "caption": ["a"]}), tmp_path / "urls.parquet"
    )
    (tmp_path / "cfg.toml").write_text("")
    out = make_out(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    assert cli.main(run_argv(tmp_path, out, tiny_models)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written, nothing removed


def test_a_second_writer_of_a_run_is_refused_naming_the_first(tmp_path, tiny_models, capsys):
    """Two runs on one --out at once: one's start-up cleanup deleted the other's live files."""
    import os

    pq.write_table(
        pa.table({"url": ["http://127.0.0.1:9/a"], "caption": ["a"]}), tmp_path / "urls.parquet"
    )
    (tmp_path / "cfg.toml").write_text("")
    out = tmp_path / "run"
    out.mkdir()
    with run.exclusive(out):  # as a live `curate run` holds it
        assert cli.main(run_argv(tmp_path, out, tiny_models)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"another curate process (pid {os.getpid()})" in err[0]
    assert sorted(p.name for p in out.iterdir()) == [RunDir.LOCK]  # nothing written, pid file gone


def foreign_folder(root):
    """A folder of the user's: a note, a Parquet file and two temporary files of other tools."""
    (root / "shards").mkdir(parents=True)
    (root / "important.txt").write_text("keep")
    pq.write_table(pa.table({"x": [1]}), root / "shards" / "foreign.parquet")
    (root / ".cache.tmp-1").write_text("theirs")
    (root / "sub").mkdir()
    (root / "sub" / ".draft.tmp-7").write_text("theirs")
    return root


def test_a_rerun_removes_only_its_own_partial_files(curated_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(curated_run[0], run_dir)
    theirs = [run_dir / "notes" / ".draft.tmp-7", run_dir / "shards" / ".mine.tmp-x"]
    ours = [
        run_dir / "shards" / ".00000.parquet.tmp-123",
        run_dir / "_done" / "capfilt" / ".00000.json.tmp-9",
    ]
    for path in theirs + ours:
        path.parent.mkdir(exist_ok=True)
        path.write_text("partial")
    argv = list(curated_run[3])
    argv[argv.index("--out") + 1] = str(run_dir)
    assert cli.main(argv) == 0
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)


def test_stats_of_a_run_stopped_after_its_downloads_shows_how_far_it_got(
    curated_run, tmp_path, capsys
):
    """Such a run crashed `curate stats` (Binder Error: "passed" not found)."""
    import shutil

    run_dir = tmp_path / "stopped"
    shutil.copytree(curated_run[0], run_dir)
    (run_dir / "manifest.json").unlink()
    (run_dir / "selection.json").unlink()
    for later in ("capfilt", "annotations", "decisions", "shards", "rejects"):
        shutil.rmtree(run_dir / later)
    for step in ("capfilt", "annotate", "select"):
        shutil.rmtree(run_dir / "_done" / step, ignore_errors=True)
    n = shard_count(run_dir)
    assert cli.main(["stats", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Run not finished; shards done per step: download {n}/{n}, capfilt 0/")
    assert f"{len(curated_run[1])}        0         0     False" in out


def test_shard_steps_of_the_run_layout_are_the_pipelines():
    from curation.pipeline.steps import STEPS
    from curation.rundir import SHARD_STEPS

    assert SHARD_STEPS == tuple(step.name for step in STEPS if step.per_shard)


def test_stats_shows_balanced_funnel(curated_run, tiny_models, capsys):
    run_dir, _, _, _ = curated_run
    assert cli.main(["stats", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "input_rows" in out and "True" in out  # balanced = true
    assert "image_too_small" in out and "decode_error" in out and "synthetic" in out
    captioner, filt = tiny_models
    assert f"Models: captioner {captioner} (blip), filter {filt} (blip_itm)" in out


def test_a_different_url_list_in_the_same_run_dir_is_refused(curated_run, tmp_path, capsys):
    run_dir, _, _, argv = curated_run
    other = tmp_path / "other.csv"
    other.write_text("url,caption\nhttp://127.0.0.1/x.jpg,x\n")
    argv = list(argv)
    argv[argv.index("--urls") + 1] = str(other)
    assert cli.main(argv) == 2
    assert "another URL list" in capsys.readouterr().err


def test_private_network_refused_by_default(tmp_path, web):
    table = pa.table({"sample_id": [0], "url": [web.base_url + "/good.jpg"], "web_text": ["x"]})
    from curation.config import DownloadConfig
    from curation.pipeline.download import download_shard

    raw = download_shard(table.cast(run.schema.INPUT), DownloadConfig())
    assert raw["status"].to_pylist() == ["blocked_address"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--urls", "nope.parquet"], "URL list not found: nope.parquet"),
        (["--url-col", "link"], "no column 'link'"),
        (["--captioner", "./no/such/model"], "no/such/model"),
        (["--config", "missing.toml"], "config file not found"),
    ],
)
def test_bad_configuration_stops_before_work_with_one_line(tmp_path, args, message):
    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\nhttp://example.com/a.jpg,a\n")
    argv = ["run", "--urls", str(urls), "--out", str(tmp_path / "run"), *args]
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "run").exists()


def test_a_caption_length_the_captioner_cannot_decode_is_refused_before_work(
    tmp_path, tiny_models, capsys
):
    """The tiny captioner has 64 text positions: 100 new tokens died mid-CapFilt with an
    IndexError, after the downloads, its shard's rows never accounted for."""
    (tmp_path / "urls.csv").write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a\n")
    (tmp_path / "cfg.toml").write_text("[capfilt]\nmax_new_tokens = 100\n")
    argv = run_argv(tmp_path, tmp_path / "run", tiny_models)
    argv[argv.index("--urls") + 1] = str(tmp_path / "urls.csv")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_new_tokens = 100 does not fit the captioner" in err[0]
    assert "reads 64 positions" in err[0] and not (tmp_path / "run").exists()
    limits = blip.captioner_text_limits(str(tiny_models[0]))
    blip.check_caption_length(*limits, Sampling(max_new_tokens=60))  # the prompt's 4 + 60 fit


def test_sql_views_over_runs_and_output_formats(curated_run, tmp_path, capsys):
    run_dir, rows, expected, _ = curated_run
    query = "SELECT run_id, count(*) AS n FROM samples GROUP BY run_id"
    assert cli.main(["sql", str(run_dir), query, "--format", "json"]) == 0
    curated = expected.count("curated")
    assert json.loads(capsys.readouterr().out) == {"run_id": run_dir.name, "n": curated}
    out = tmp_path / "texts.parquet"
    assert (
        cli.main(
            ["sql", str(run_dir), "SELECT * FROM texts", "--format", "parquet", "--out", str(out)]
        )
        == 0
    )
    assert set(pq.read_table(out)["source"].to_pylist()) == {"web", "synthetic"}
    steps = "SELECT step, count(*) AS n FROM shards GROUP BY step ORDER BY step"
    assert cli.main(["sql", str(run_dir), steps, "--format", "csv"]) == 0
    steps_seen = capsys.readouterr().out.splitlines()[1:]
    n = shard_count(run_dir)
    assert steps_seen == [f'"{step}",{n}' for step in ("annotate", "capfilt", "download", "select")]


def test_a_long_query_is_a_query_not_a_file_name(curated_run, capsys):
    """A query over 255 characters crashed `curate sql` (the query was tried as a folder)."""
    run_dir = curated_run[0]
    query = "SELECT count(*) AS n FROM samples WHERE " + " OR ".join(
        f"sample_id = {i}" for i in range(60)
    )
    assert len(query) > 255
    assert cli.main(["sql", str(run_dir), query, "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == '"n"'


def test_sql_sees_the_views_only_unless_files_are_allowed(curated_run, tmp_path, capsys):
    run_dir = curated_run[0]
    (tmp_path / "secret.csv").write_text("a\n42\n")
    read = f"SELECT a FROM read_csv('{tmp_path / 'secret.csv'}')"
    copy = f"COPY (SELECT 1) TO '{tmp_path / 'written.csv'}'"
    for query in (read, copy, f"ATTACH '{tmp_path / 'x.duckdb'}'"):
        assert cli.main(["sql", str(run_dir), query]) == 1
        assert "Permission Error" in capsys.readouterr().err
    assert not (tmp_path / "written.csv").exists() and not (tmp_path / "x.duckdb").exists()
    assert cli.main(["sql", str(run_dir), read, "--format", "csv", "--allow-files"]) == 0
    assert capsys.readouterr().out.splitlines() == ['"a"', "42"]


def test_csv_holds_nested_values_as_json_and_bytes_as_base64(curated_run, tmp_path, capsys):
    import base64
    import csv

    run_dir = curated_run[0]
    query = "SELECT sample_id, candidates, image FROM samples ORDER BY sample_id LIMIT 2"
    out = tmp_path / "b.csv"
    assert cli.main(["sql", str(run_dir), query, "--format", "csv", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    first = sql.connect(run_dir).execute(query).fetchone()
    assert len(rows) == 2 and json.loads(rows[0]["candidates"]) == first[1]
    assert base64.b64decode(rows[0]["image"]) == first[2]


def test_a_failed_query_leaves_no_out_file(curated_run, tmp_path, capsys):
    out = tmp_path / "r.csv"
    query = "SELECT 1 / 0 AS x, error('stop') AS y FROM samples"
    assert cli.main(["sql", str(curated_run[0]), query, "--format", "csv", "--out", str(out)]) == 1
    assert list(tmp_path.iterdir()) == []


def test_bad_query_gives_duckdbs_message_and_nonzero_exit(curated_run, capsys):
    run_dir = curated_run[0]
    assert cli.main(["sql", str(run_dir), "SELEC 1"]) == 1
    captured = capsys.readouterr()
    assert "syntax error" in captured.err and captured.out == ""


def test_catalog_file_opens_in_a_fresh_duckdb(curated_run, tmp_path):
    import duckdb

    run_dir, rows, _, _ = curated_run
    assert cli.main(["sql", str(run_dir), "--catalog", str(tmp_path / "c.duckdb")]) == 0
    con = duckdb.connect(str(tmp_path / "c.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM inputs").fetchone()[0] == len(rows)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_runs_lists_status_and_counts(curated_run, capsys):
    run_dir, rows, _, _ = curated_run
    assert cli.main(["runs", "--out-root", str(run_dir.parent)]) == 0
    lines = capsys.readouterr().out.splitlines()[2:]  # below the header and its rule
    line = [x for x in lines if x.startswith(run_dir.name)][0]
    assert "done" in line and str(len(rows)) in line


def test_export_and_report_from_the_cli(curated_run, tmp_path, capsys):
    import webdataset as wds

    run_dir = curated_run[0]
    out = tmp_path / "wds"
    argv = ["export", str(run_dir), "--out", str(out), "--where", "width >= 20"]
    assert cli.main(argv) == 0
    samples = list(
        wds.WebDataset(str(out / "00000.tar"), shardshuffle=False)
        .decode("pil")
        .to_tuple("__key__", "jpg", "txt")
    )
    assert samples and all(image.width >= 20 for _, image, _ in samples)
    assert cli.main(["export", str(run_dir), "--out", str(tmp_path / "x"), "--where", "1 +"]) == 2
    assert not (tmp_path / "x").exists()
    assert cli.main(["report", str(run_dir)]) == 0
    assert "<html" in (run_dir / "report.html").read_text().lower()


def test_retry_failed_fetches_only_transient_failures_and_redoes_what_they_change(
    tmp_path, tiny_models, prefect_harness, capsys
):
    """`--retry-failed`: a 429 is fetched again and recovered, a 404 is left as it was, the
    untouched shard's CapFilt is not redone, and every input row is still in one place."""
    from curation.world.webserver import Routes, Server

    jpeg = hostile_corpus.BLUE
    web = Server(
        Routes(
            {
                "/a.jpg": (200, "image/jpeg", jpeg),
                "/busy.jpg": (200, "image/jpeg", jpeg, {"fail_first": 1}),
                "/b.jpg": (200, "image/jpeg", jpeg),
            }
        )
    )
    try:
        paths = ["/a.jpg", "/busy.jpg", "/gone.jpg", "/b.jpg"]  # shards of 2: busy in shard 0
        rows = [{"url": web.base_url + p, "caption": p} for p in paths]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
        (tmp_path / "cfg.toml").write_text(
            "[sharding]\nshard_size = 2\n[capfilt]\nitm_threshold = 0.0\nnum_captions = 1\n"
            'max_new_tokens = 4\nmin_new_tokens = 1\n[select]\nmetadata = ""\n'
            "[dedup]\nexact = false\nnear_duplicates = false\n"  # one image under three URLs
        )
        out = tmp_path / "run"
        argv = run_argv(tmp_path, out, tiny_models)
        assert cli.main(argv) == 0
        assert outcomes(out) == {
            0: ["curated"],
            1: ["download_failed"],
            2: ["download_failed"],
            3: ["curated"],
        }
        untouched = (out / "_done" / "capfilt" / "00001.json").stat().st_mtime_ns
        capsys.readouterr()
        assert cli.main([*argv, "--retry-failed"]) == 0
    finally:
        web.close()
    captured = capsys.readouterr()
    assert "[retry] shard 0: 1 failed downloads fetched again, 1 recovered" in captured.err
    assert "[retry] shard 1" not in captured.err  # the 404 is no transient failure
    assert "1 fetched again, 1 recovered" in captured.out  # curate stats
    assert outcomes(out) == {0: ["curated"], 1: ["curated"], 2: ["download_failed"], 3: ["curated"]}
    assert (out / "_done" / "capfilt" / "00001.json").stat().st_mtime_ns == untouched
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert (counts["input"], counts["curated"], counts["rejected"]) == (4, 3, 1)


def test_a_damaged_output_is_named_by_stats_and_redone_by_the_rerun(curated_run, tmp_path, capsys):
    """A truncated shard was trusted by reruns, and stats / export / report crashed on it."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(curated_run[0], run_dir)
    argv = list(curated_run[3])
    argv[argv.index("--out") + 1] = str(run_dir)
    shard, raw = run_dir / "shards" / "00000.parquet", run_dir / "raw" / "00000.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    good_raw = raw.read_bytes()
    assert cli.main(["stats", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shards/00000.parquet" in err[0]
    raw.write_bytes(good_raw[: len(good_raw) // 2])  # and the downloads under it
    assert cli.main(argv) == 0  # the rerun sees both, downloads shard 0 again, redoes the rest
    assert cli.main(["stats", str(run_dir)]) == 0
    again, before = outcomes(run_dir), outcomes(curated_run[0])
    busy = [c.name for c in hostile_corpus.WEB].index("rate_limited")  # its server recovered
    assert again.pop(busy) == ["curated"] and before.pop(busy) == ["download_failed"]
    assert again == before


def test_readers_count_only_the_files_the_run_wrote(curated_run, tmp_path, capsys):
    """A stray or linked Parquet file in shards/ was counted by stats and exported."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(curated_run[0], run_dir)
    first = run_dir / "shards" / "00000.parquet"
    shutil.copy(first, run_dir / "shards" / "foreign.parquet")  # not a name the run gives
    shutil.copy(first, run_dir / "shards" / "00077.parquet")  # its naming, but no marker's
    (run_dir / "shards" / "00078.parquet").symlink_to(first)
    curated = sql.connect(curated_run[0]).execute("SELECT count(*) FROM samples").fetchone()
    assert sql.connect(run_dir).execute("SELECT count(*) FROM samples").fetchone() == curated
    assert (
        cli.main(["export", str(run_dir), "--out", str(tmp_path / "out"), "--format", "jsonl"]) == 0
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["rows"] == curated[0]
