"""`curate bootstrap` end to end on a tiny synthetic world, uninterrupted and SIGKILLed.

The killed run is stopped inside round 0's pre-training (after a checkpoint), between steps
(after the CapFilt pass, before the next pre-training) and inside round 1's pre-training; the
reruns must end with the uninterrupted run's metrics and weights.
"""

import json
import signal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli_until
from test_train import all_weights

from curation.training import ablate
from curation.training import bootstrap as loop
from curation.world import synthetic
from curation.world.captions import caption_is_true
from curation.world.scenes import Scene
from curation.world.webserver import Server, routes_from_dir
from flows import cli, demo

CONFIG = """
[sharding]
shard_size = 20
[download]
timeout = 5
[capfilt]
itm_threshold = 0.0
num_captions = 1
batch_size = 8
max_new_tokens = 6
min_new_tokens = 2
[select]
metadata = "{metadata}"
scorer = ""
[train]
size = "tiny"
epochs = 2
batch_size = 8
warmup = 2
finetune_epochs = 2
checkpoint_every = 3
vision_epochs = 2
"""
METRICS = {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "bleu4", "cider", "caption_true"}


def checkpointed(job_dir: str):
    """Kill condition: a resumable checkpoint of `job_dir`'s pre-training exists."""
    return lambda out: any((out / job_dir / "checkpoints" / "pretrain").glob("step_*"))


# (where, condition on RUN_DIR), in the order a run meets them
KILL_POINTS = [
    ("inside round 0 pre-training", checkpointed("round0/model")),
    (
        "between CapFilt and pre-training",
        lambda out: (out / "round1/capfilt/manifest.json").exists(),
    ),
    ("inside round 1 pre-training", checkpointed("round1/model")),
]


@pytest.fixture(scope="module")
def world_loop(tmp_path_factory, tiny_models, prefect_harness):
    root = tmp_path_factory.mktemp("loop")
    world = synthetic.write_world(
        root / "world", n_web=48, clean_frac=0.25, n_eval=8, image_size=(32, 40)
    )
    server = Server(routes_from_dir(world.images, prefix="/images"))
    pq.write_table(synthetic.url_list(world.root, server.base_url), root / "urls.parquet")
    (root / "cfg.toml").write_text(CONFIG.format(metadata=world.concepts))

    def argv(out: Path) -> list[str]:
        return [
            "bootstrap",
            "--urls",
            str(root / "urls.parquet"),
            "--clean",
            str(world.clean),
            "--eval",
            str(world.eval),
            "--out",
            str(out),
            "--config",
            str(root / "cfg.toml"),
            "--truth",
            str(world.truth),
            "--eval-truth",
            str(world.eval_truth),
            "--labelled",
            str(world.labelled),
            "--allow-private-network",
        ]

    reference = root / "reference"
    assert cli.main(argv(reference)) == 0
    yield root, argv, reference
    server.close()


def test_bootstrap_writes_a_complete_metrics_file(world_loop):
    _, _, out = world_loop
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"round0", "round1"}
    for found in metrics["models"].values():
        assert METRICS <= set(found)
        assert all(0.0 <= found[k] <= 100.0 for k in ("i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5"))
    capfilt = metrics["capfilt"]["round1"]
    assert {
        "web_rejected_pct",
        "synthetic_rejected_pct",
        "raw_noise_pct",
        "curated_noise_pct",
        "synthetic_true_pct",
    } <= set(capfilt)
    for model in ("round0/model", "round1/finetuned", "round1/model"):
        for part in ("captioner", "filter", "scorer"):
            assert (out / model / part / "model.safetensors").is_file()
    for model in ("round0/model", "round1/model"):  # both start from the labelled-set encoder
        log = json.loads((out / model / "train_log.json").read_text())
        assert log["config"]["vision_init"] == str(out / "vision")
    assert (out / "vision" / "model.safetensors").is_file()


def test_chosen_caption_noise_is_judged_by_the_worlds_truth(world_loop):
    root, _, out = world_loop
    found = json.loads((out / "metrics.json").read_text())["capfilt"]["round1"]
    truth = pq.read_table(root / "world" / "truth.parquet").to_pylist()
    truth = {row["file"]: row for row in truth}
    shards = sorted((out / "round1" / "capfilt" / "shards").glob("*.parquet"))
    wrong = []
    for row in pa.concat_tables(pq.read_table(p) for p in shards).to_pylist():
        scene = truth["/".join(row["url"].rsplit("/", 2)[-2:])]
        if row["caption_source"] == "web":
            wrong.append(scene["is_noisy"])
        else:
            wrong.append(not caption_is_true(row["caption"], Scene.from_json(scene["scene"])))
    assert found["curated_images"] == len(wrong) > 0
    assert found["chosen_noise_pct"] == pytest.approx(100 * sum(wrong) / len(wrong), abs=0.01)


def test_the_synthetic_gate_compares_pass_rates(world_loop):
    _, _, out = world_loop
    capfilt_run = out / "round1" / "capfilt"  # ITM threshold 0: every text passed
    assert loop.synthetic_gate(capfilt_run, 0.0)["synthetic_withheld"] is False
    assert loop.synthetic_gate(capfilt_run, 1.0)["synthetic_withheld"] is False  # 100% vs 100%
    gate = loop.synthetic_gate(capfilt_run, 1.5)
    assert gate == {
        "web_pass_pct": 100.0,
        "held_out_clean_pass_pct": 100.0,  # the fine-tuned filter's held-out pairs, threshold 0
        "synthetic_pass_pct": 100.0,
        "synthetic_withheld": True,
    }


def test_a_withheld_round_trains_on_web_texts_only(world_loop, tmp_path):
    root, argv, _ = world_loop
    config = tmp_path / "gate.toml"
    config.write_text((root / "cfg.toml").read_text() + "synthetic_gate = 1.5\n")  # [train] last
    args = argv(tmp_path / "out")
    args[args.index("--config") + 1] = str(config)
    assert cli.main(args) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["capfilt"]["round1"]["synthetic_withheld"] is True
    web_only = tmp_path / "out" / "round1" / "capfilt-web-only" / "shards"
    rows = pa.concat_tables(pq.read_table(p) for p in sorted(web_only.glob("*.parquet")))
    sources = {c["source"] for cands in rows["candidates"].to_pylist() for c in cands}
    assert len(rows) > 0 and sources == {"web"}
    log = json.loads((tmp_path / "out" / "round1" / "model" / "train_log.json").read_text())
    assert log["pairs"] == len(rows)  # one kept web text per curated image


def test_the_verdict_says_in_plain_words_whether_curation_cleaned():
    web = {"raw_noise_pct": 40.0, "clean_web_kept_pct": 90.0}
    cleaner = loop.verdict({**web, "chosen_noise_pct": 20.0, "curated_noise_pct": 30.0})
    assert "is much cleaner than" in cleaner and "20% of chosen captions" in cleaner
    some = loop.verdict({**web, "chosen_noise_pct": 21.0, "curated_noise_pct": 3})
    assert "cleaner, but not half as noisy" in some
    assert "NOT cleaner" in loop.verdict({**web, "chosen_noise_pct": 9.0, "curated_noise_pct": 40})
    assert "NOT cleaner" in loop.verdict({**web, "chosen_noise_pct": 41.0, "curated_noise_pct": 9})


def without_timings(metrics_file: Path) -> dict:
    metrics = json.loads(metrics_file.read_text())
    for found in metrics["models"].values():
        found.pop("seconds")
    return metrics


def test_a_killed_bootstrap_resumes_to_the_uninterrupted_result(world_loop):
    root, argv, reference = world_loop
    out = root / "killed"
    for where, condition in KILL_POINTS:
        code = run_cli_until(argv(out), lambda c=condition: c(out))
        assert code == -signal.SIGKILL, f"the run ended ({code}) before the kill {where}"
    assert run_cli_until(argv(out), lambda: False) == 0

    got, expected = (without_timings(d / "metrics.json") for d in (out, reference))
    assert got["models"] == expected["models"] and got["capfilt"] == expected["capfilt"]
    for model in ("round0/model", "round1/model"):
        a, b = all_weights(out / model), all_weights(reference / model)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), model
    assert not list(out.rglob(".*.tmp-*")), "a partial file was left behind"


def test_ablation_trains_one_model_per_variant_on_the_same_budget(world_loop):
    _, argv, out = world_loop
    assert cli.main([*argv(out), "--ablate"]) == 0  # rounds 0 and 1 are done: only the variants
    found = json.loads((out / "ablation.json").read_text())["rows"]
    names = [name for name, _ in ablate.variants("concepts", "scorer")]
    assert [row["data"] for row in found] == names
    rows = {row["data"]: row for row in found}
    raw = rows["raw web"]
    for name, row in rows.items():
        assert row["pairs"] > 0, name
        budget = row["epochs"] * row["pairs"]  # examples seen, rounded to whole epochs
        if name != "raw web":  # the budget every other row is held to
            assert abs(budget - raw["epochs"] * raw["pairs"]) <= row["pairs"] / 2, name
        assert 0 <= row["tail_i2t_r1"] <= 100 and row["tail_images"] > 0, name
        assert {"i2t_r1", "t2i_r1", "cider"} <= set(row), name
    assert rows["+captioner"]["pairs"] > rows["+filter"]["pairs"]  # captions add pairs
    assert rows["+balancing"]["gini"] < rows["+captioner+filter"]["gini"]  # flatter concepts
    assert rows["+balancing"]["pairs"] <= rows["+captioner+filter"]["pairs"]
    table = (out / "ablation.md").read_text().splitlines()
    assert len(table) == 2 + len(names) and table[2].startswith("| raw web |")


def test_threshold_sweep_agrees_with_the_run_and_keeps_less_as_it_rises(world_loop):
    from test_bench_smoke import load_script

    root, _, out = world_loop
    sweep = load_script("filter_threshold")
    judged = sweep.filter_judged(out / "round1" / "capfilt", root / "world" / "truth.parquet")
    rows = [sweep.at_threshold(judged, t) for t in (0.0, 0.5, 1.01)]
    found = json.loads((out / "metrics.json").read_text())["capfilt"]["round1"]
    assert rows[0]["curated noise %"] == found["curated_noise_pct"]  # the run's threshold is 0
    assert rows[0]["chosen noise % (itm)"] == found["chosen_noise_pct"]  # and its choice itm
    assert rows[0]["kept texts"] == found["curated_texts"] >= rows[1]["kept texts"]
    assert rows[2]["kept texts"] == 0 and rows[2]["clean web kept %"] == 0.0


def test_demo_settings_can_be_replaced_and_bad_ones_fail_before_any_work(tmp_path, capsys):
    config = demo.demo_config({"train": {"epochs": 30}})
    assert config["train"] == {**demo.DEMO_CONFIG["train"], "epochs": 30}
    assert config["capfilt"] == demo.DEMO_CONFIG["capfilt"]
    (tmp_path / "bad.toml").write_text('[train]\nepochs = "many"\n')
    argv = ["demo", "--out", str(tmp_path / "demo"), "--config", str(tmp_path / "bad.toml")]
    assert cli.main(argv) == 2
    assert "[train] epochs must be int" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_finetuning_holds_out_clean_images_and_auto_uses_their_scores(world_loop, tmp_path, capsys):
    root, _, out = world_loop
    finetuned = out / "round1" / "finetuned"
    log = json.loads((finetuned / "train_log.json").read_text())
    held = log["calibration"]["held_out_pairs"]
    assert held > 0 and set(log["calibration"]["negatives"]) == {
        "web_text",
        "other_caption",
        "compositional",
    }
    scores = json.loads((finetuned / "filter" / "calibration.json").read_text())
    assert len(scores["positives"]) == held and len(scores["negatives"]["web_text"]) == held
    config = tmp_path / "auto.toml"
    config.write_text(
        (root / "cfg.toml")
        .read_text()
        .replace("itm_threshold = 0.0", 'itm_threshold = "auto"\ncalibration_target = 0.6')
        .replace(
            "[capfilt]",
            f'[capfilt]\ncaptioner = "{finetuned}/captioner"\nfilter = "{finetuned}/filter"',
        )
    )
    argv = ["run", "--urls", str(root / "urls.parquet"), "--out", str(tmp_path / "run")]
    assert cli.main([*argv, "--config", str(config), "--allow-private-network"]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    threshold = run["config"]["capfilt"]["itm_threshold"]
    assert run["calibration"]["itm_threshold"] == threshold and 0.0 <= threshold <= 1.0
    assert run["calibration"]["target"] == 0.6 and run["calibration"]["recall"] >= 0.6
    gate = loop.synthetic_gate(tmp_path / "run", 1.0)  # the bar: held-out human captions
    assert gate["held_out_clean_pass_pct"] == pytest.approx(100 * run["calibration"]["recall"])
    assert f"ITM threshold: {threshold:.4f} (auto for recall 0.60" in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report.html")]) == 0
    assert f"{threshold:.4f} (auto for recall 0.60" in (tmp_path / "report.html").read_text()


def test_the_quality_benchmark_runs_a_tiny_world_through_the_loop(tmp_path, world_loop):
    from test_bench_smoke import load_script

    from curation.config import read_toml

    root, _, _ = world_loop
    bench = load_script("capfilt_quality")
    base = {"n_web": 24, "clean_frac": 0.25, "n_eval": 6, "n_labelled": 24, "image_size": (32, 40)}
    config = read_toml(root / "cfg.toml") | {"select": {"metadata": "", "scorer": ""}}
    config["download"] = {"allow_private_network": True}
    row = bench.run_one(tmp_path / "noisy", "noisy", 2, config, base)
    assert row["web"] == 48 and row["clean"] == 12 and row["world"] == "noisy"
    truth = pq.read_table(tmp_path / "noisy" / "world" / "truth.parquet")
    assert row["raw noise %"] == row["capfilt"]["raw_noise_pct"] > 45  # the 60%-noisy mix
    assert sum(truth["is_noisy"].to_pylist()) / len(truth) > 0.45
    table = bench.markdown([row]).splitlines()
    assert len(table) == 3 and table[2].startswith("| noisy | 2x | 48 | 12 |")


def test_the_filter_error_analysis_reads_a_pass_and_its_truth(world_loop, capsys, monkeypatch):
    from test_bench_smoke import load_script

    root, _, out = world_loop
    bench = load_script("filter_errors")
    truth = root / "world" / "truth.parquet"
    monkeypatch.setattr("sys.argv", ["x", str(out / "round1" / "capfilt"), str(truth)])
    bench.main()
    lines = capsys.readouterr().out.splitlines()
    web = sum(1 for r in pq.read_table(truth).to_pylist() if r["kind"] != "empty")
    assert 0 < int(lines[0].split()[0]) <= web  # the scored web texts (some fail download)
    assert lines[2].startswith("ITM ") and "clean" in "\n".join(lines)
    assert 0.0 <= float(lines[2].split()[1]) <= 1.0  # the AUC


def test_finetune_takes_web_negatives_from_a_run_and_refuses_half_the_pair(
    world_loop, tmp_path, capsys
):
    from curation.training.data import pairs_from_raw, web_texts

    root, _, out = world_loop
    assert web_texts(out / "web") == [text for _, text in pairs_from_raw(out / "web")]
    config = tmp_path / "web.toml"
    config.write_text((root / "cfg.toml").read_text() + "web_negatives = 1\n")  # [train] last
    base = ["finetune", "--clean", str(root / "world" / "clean.parquet")]
    base += ["--init", str(out / "round0" / "model")]
    web, cfg = ["--web", str(out / "web")], ["--config", str(config)]
    for name, extra, error in [
        ("a", web, "together"),  # --web without web_negatives
        ("b", cfg, "together"),  # web_negatives without --web
        ("c", [*cfg, "--web", str(tmp_path)], "holds no downloaded shards"),
    ]:
        assert cli.main([*base, "--out", str(tmp_path / name), *extra]) == 2
        assert error in capsys.readouterr().err and not (tmp_path / name).exists()
    assert cli.main([*base, "--out", str(tmp_path / "web"), *cfg, *web]) == 0
    plain = [*base, "--out", str(tmp_path / "plain"), "--config", str(root / "cfg.toml")]
    assert cli.main(plain) == 0
    a, b = all_weights(tmp_path / "web"), all_weights(tmp_path / "plain")
    assert any(not (a[k] == b[k]).all() for k in a if "captioner" not in k)  # the filter changed
