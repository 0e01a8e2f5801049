"""Evaluation: grouping by image, caption truth, and a trained model that beats chance."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.config import TrainConfig
from curation.io import write_parquet
from curation.training import evaluate, train
from curation.training.data import pairs_from_clean
from curation.world import synthetic
from curation.world.drawing import encode_jpeg, render_scene
from curation.world.scenes import Obj, Scene
from flows import cli

RED = Scene("white", (Obj("circle", "red", "large", "center"),))
BLUE = Scene("black", (Obj("star", "blue", "small", "top left"),))


def jpeg(scene: Scene) -> bytes:
    return encode_jpeg(render_scene(scene, 32, 32))


def write_eval(tmp_path):
    """Two images, three captions, ids 7 and 3 (not in order), and their truth."""
    table = pa.table(
        {
            "image": [jpeg(RED), jpeg(RED), jpeg(BLUE)],
            "caption": ["a red circle", "a large red circle", "a small blue star"],
            "image_id": [7, 7, 3],
        },
        schema=synthetic.CLEAN,
    )
    write_parquet(table, tmp_path / "eval.parquet", synthetic.CLEAN)
    truth = pa.table({"image_id": [7, 3], "scene": [RED.to_json(), BLUE.to_json()]})
    write_parquet(truth, tmp_path / "truth.parquet", synthetic.EVAL_TRUTH)
    return tmp_path / "eval.parquet", tmp_path / "truth.parquet"


def test_eval_set_groups_captions_by_image(tmp_path):
    eval_path, _ = write_eval(tmp_path)
    data = evaluate.load_eval_set(eval_path)
    assert data.image_ids == [7, 3]
    assert data.images == [jpeg(RED), jpeg(BLUE)]
    assert data.text_image_ids == [7, 7, 3]
    assert evaluate._references(data) == [
        ["a red circle", "a large red circle"],
        ["a small blue star"],
    ]


def test_caption_truth_checks_each_caption_against_its_own_scene(tmp_path):
    _, truth = write_eval(tmp_path)
    captions = ["a red circle in the center", "a red circle", "a blue star at the top"]
    # image 7 is the red circle; image 3's star is in the top left, so "at the top" is false
    assert evaluate.caption_truth(captions, [7, 3, 3], truth) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="image_id 5"):
        evaluate.caption_truth(["a red circle"], [5], truth)


def test_evaluate_reports_every_metric_with_the_prompt_removed(tmp_path, tiny_models):
    eval_path, truth = write_eval(tmp_path)
    model_dir = tiny_models[0].parent  # captioner/ and filter/, random weights
    result = evaluate.evaluate(model_dir, eval_path, truth, num_beams=2, max_new_tokens=6)
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "r_mean"):
        assert 0.0 <= result[key] <= 100.0
    assert result["i2t_r5"] == result["t2i_r5"] == 100.0  # 2 images, 3 texts: all in the top 5
    assert 0.0 <= result["bleu4"] <= 1.0 and result["cider"] >= 0.0
    assert 0.0 <= result["caption_true"] <= 1.0
    assert (result["images"], result["texts"]) == (2, 3)
    captions = [s["caption"] for s in result["samples"]]
    assert len(captions) == 2 and not any(c.startswith("a picture of") for c in captions)


def write_eval_without_ids(tmp_path, columns=("image", "caption")):
    """The README's format at its smallest: one image with two captions, one with one."""
    rows = {
        "image": [jpeg(BLUE), jpeg(RED), jpeg(BLUE)],
        "caption": ["a small blue star", "a red circle", "a blue star"],
    }
    pq.write_table(pa.table({c: rows[c] for c in columns}), tmp_path / "eval3.parquet")
    return tmp_path / "eval3.parquet"


def test_an_eval_set_without_image_id_groups_identical_images(tmp_path, tiny_models):
    data = evaluate.load_eval_set(write_eval_without_ids(tmp_path))
    assert data.image_ids == [0, 1] and data.images == [jpeg(BLUE), jpeg(RED)]
    assert data.text_image_ids == [0, 1, 0]
    result = evaluate.evaluate(
        tiny_models[0].parent, tmp_path / "eval3.parquet", None, num_beams=2, max_new_tokens=4
    )
    assert (result["images"], result["texts"]) == (2, 3)


@pytest.mark.parametrize("command", ["finetune", "bootstrap"])
def test_a_set_without_captions_is_refused_before_any_work(tmp_path, capsys, command):
    bad = write_eval_without_ids(tmp_path, columns=("image",))
    out = tmp_path / "out"
    argv = {
        "finetune": ["finetune", "--clean", str(bad), "--init", str(tmp_path), "--out", str(out)],
        "bootstrap": [
            "bootstrap",
            "--urls",
            str(write_urls(tmp_path)),
            "--clean",
            str(bad),
            "--out",
            str(out),
        ],
    }[command]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"curate: error: clean set {bad} lacks column(s) caption (needs image, caption; has image)"
    ]
    assert not out.exists()


def test_bootstrap_refuses_a_caption_length_its_captioners_cannot_decode(tmp_path, capsys):
    """The loop's captioners get the `[train] size` preset's 64 text positions."""
    clean = write_eval_without_ids(tmp_path)
    (tmp_path / "cfg.toml").write_text("[capfilt]\nmax_new_tokens = 100\n")
    out = tmp_path / "out"
    argv = ["bootstrap", "--urls", str(write_urls(tmp_path)), "--clean", str(clean)]
    assert cli.main([*argv, "--out", str(out), "--config", str(tmp_path / "cfg.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_new_tokens = 100 does not fit" in err[0]
    assert not out.exists()


def write_urls(tmp_path):
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.jpg"], "caption": ["a"]}), path)
    return path


# A tiny model on 81 pairs (30 images), 300 steps: ~10 s on one CPU core (measured: recall@1
# 15-17% on those 30 images, chance 3.3%). Held-out images need the small preset and minutes:
# that is the experiment in the README, not a unit test.
TRAIN = dict(
    size="tiny",
    batch_size=8,
    epochs=30,
    lr=1e-3,
    warmup=5,
    temperature=0.2,
    itm_hard_negatives=False,
    log_every=50,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model pretrained on a small world's clean set, and that world."""
    root = tmp_path_factory.mktemp("world")
    world = synthetic.write_world(root, n_web=60, clean_frac=0.5, n_eval=8, image_size=(32, 40))
    train.pretrain(pairs_from_clean(world.clean), root / "model", TrainConfig(**TRAIN))
    return root / "model", world


def test_trained_model_retrieves_its_pairs_well_above_chance(trained):
    """Train -> save -> load -> ITC ranking end to end: a filter whose saved projections or
    features did not match what training optimised would rank at chance."""
    model_dir, world = trained
    result = evaluate.evaluate(model_dir, world.clean, max_new_tokens=8)
    chance = 100.0 / result["images"]  # one right image among n (t2i); ~1 in n texts (i2t)
    assert result["images"] == 30 and "caption_true" not in result
    assert result["t2i_r1"] > 3 * chance, result
    assert result["i2t_r1"] > 3 * chance, result
