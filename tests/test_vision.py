"""Image-encoder pre-training on a labelled set (`curate pretrain-vision`, [train] vision_init)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import BlipVisionModel

from curation import schema
from curation.config import ConfigError, TrainConfig
from curation.io import write_parquet
from curation.training import vision
from curation.training.checkpoints import training_fingerprint
from curation.training.modeling import build_models
from curation.training.vision_init import LOG_FILE
from curation.world import synthetic
from flows import cli

# 32 px tiny models, 40 epochs over 540 images (1,360 steps): about 7 s on one core; held-out
# label AUC 0.84-0.85 over seeds 0-2 (10 epochs: 0.61-0.63).
CFG = TrainConfig(
    size="tiny", warmup=5, vision_epochs=40, vision_batch_size=16, vision_lr=5e-3, log_every=50
)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    return synthetic.write_world(
        root, n_web=20, n_eval=4, n_labelled=600, image_size=(32, 40)
    ).labelled


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, labelled):
    out = tmp_path_factory.mktemp("vision") / "encoder"
    return out, vision.pretrain_vision(labelled, out, CFG)


def test_loss_falls_and_held_out_labels_beat_chance(encoder):
    _, log = encoder
    bce = [entry["bce"] for entry in log["log"]]
    assert bce[-1] < 0.6 * bce[0]
    assert log["held_out"] == 60 and log["images"] == 540
    assert log["held_out_scores"]["label_auc"] > 0.7  # chance: 0.5


def test_label_auc_is_one_zero_and_one_half_where_it_should_be():
    truth = torch.tensor([[True, False, True], [False, True, True], [False, False, True]])
    assert vision.label_auc(torch.tensor([[2.0, 0, 0], [1, 3, 0], [0, 1, 0]]), truth) == 1.0
    assert vision.label_auc(torch.tensor([[0.0, 2, 0], [3, 1, 0], [4, 3, 0]]), truth) == 0.0
    # label 0 ranked right, label 1 wrong; label 2 (on every image) left out
    assert vision.label_auc(torch.tensor([[2.0, 2, 9], [1, 0, 0], [0, 1, 5]]), truth) == 0.5


def test_a_from_scratch_model_starts_from_the_encoder(encoder):
    out, _ = encoder
    _, filt, _ = build_models(TrainConfig(size="tiny", vision_init=str(out)))
    saved = BlipVisionModel.from_pretrained(out).state_dict()
    loaded = filt.vision_model.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    _, random_filt, _ = build_models(TrainConfig(size="tiny"))
    key = "embeddings.patch_embedding.weight"
    assert not torch.equal(random_filt.vision_model.state_dict()[key], loaded[key])


def test_vision_init_is_part_of_the_training_fingerprint(encoder, tmp_path):
    out, _ = encoder

    def fingerprint(vision_init: str) -> str:
        return training_fingerprint(
            "pretrain", TrainConfig(size="tiny", vision_init=vision_init), "data", None
        )

    moved = tmp_path / "moved"
    moved.symlink_to(out)  # the same weights under another path: the same training
    assert fingerprint("") != fingerprint(str(out)) == fingerprint(str(moved))


def test_finished_pretraining_is_not_redone(encoder, labelled, capsys):
    out, log = encoder
    assert vision.pretrain_vision(labelled, out, CFG) == json.loads(json.dumps(log))
    assert "already finished" in capsys.readouterr().err


def test_other_sizes_and_unfinished_folders_are_refused(encoder, tmp_path):
    out, _ = encoder
    with pytest.raises(ConfigError, match="other sizes"):
        build_models(TrainConfig(size="mini", vision_init=str(out)))
    with pytest.raises(ConfigError, match="no finished"):
        build_models(TrainConfig(size="tiny", vision_init=str(tmp_path)))


def test_settings_that_cannot_train_fail_before_any_work(labelled, tmp_path):
    for bad in (dict(vision_epochs=0), dict(vision_batch_size=0), dict(vision_lr=0.0)):
        with pytest.raises(ConfigError, match="vision_"):
            vision.pretrain_vision(labelled, tmp_path / "out", TrainConfig(size="tiny", **bad))
    assert not (tmp_path / "out").exists()


def test_undecodable_images_are_counted_not_raised(labelled, tmp_path):
    rows = pa.table({"image": [b"not an image"] * 3, "labels": [["red"]] * 3})
    good = vision.load_labelled(labelled)
    table = pa.concat_tables([rows, pa.table({"image": good[0][:40], "labels": good[1][:40]})])
    write_parquet(table, tmp_path / "mixed.parquet", schema.LABELLED)
    cfg = TrainConfig(size="tiny", warmup=1, vision_epochs=1, vision_batch_size=8)
    log = vision.pretrain_vision(tmp_path / "mixed.parquet", tmp_path / "out", cfg)
    assert log["skipped"] == 3 and log["images"] + log["held_out"] == 40


def test_cli_writes_the_encoder_and_refuses_a_set_without_labels(labelled, tmp_path, capsys):
    (tmp_path / "cfg.toml").write_text('[train]\nsize = "tiny"\nvision_epochs = 1\n')
    argv = [
        "pretrain-vision",
        "--labelled",
        str(labelled),
        "--out",
        str(tmp_path / "enc"),
        "--config",
        str(tmp_path / "cfg.toml"),
    ]
    assert cli.main(argv) == 0
    assert (tmp_path / "enc" / LOG_FILE).is_file()
    assert "vision_init" in capsys.readouterr().out
    pq.write_table(pa.table({"image": [b"x"], "caption": ["a"]}), tmp_path / "c.parquet")
    argv[2] = str(tmp_path / "c.parquet")
    assert cli.main(argv) == 2
    assert "needs columns image, labels" in capsys.readouterr().err
