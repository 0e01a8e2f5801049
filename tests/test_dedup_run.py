"""The dedup stage of a run (curation/pipeline/duplicates.py): which survivors are copies or
eval leaks, which copy is kept, and a real `curate run` with planted copies and --decontaminate."""

import dataclasses
import io as bytes_io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import textured_image
from PIL import Image

from curation import schema
from curation.config import DedupConfig
from curation.models.blip import preprocess
from curation.pipeline import dedup, duplicates, steps
from curation.pipeline.images import decode_image


def smooth_image(seed: int, side: int = 96) -> Image.Image:
    return textured_image(seed, (side, side))


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    out = bytes_io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def survivors(images: list[bytes], itm: list[float], captions: list[str] | None = None):
    """The rows the dedup stage judges, as the run's plan reads them (sql/dedup_rows.sql)."""
    decoded = [decode_image(b, 1, 1 << 40).image for b in images]
    hashes = np.array([dedup.perceptual_hash(im) for im in decoded], np.uint64)
    return pa.table(
        {
            "sample_id": pa.array(range(len(images)), pa.int64()),
            "sha256": [str(hash(b)) for b in images],
            "caption": captions or [f"caption {i}" for i in range(len(images))],
            "caption_itm": pa.array(itm, pa.float32()),
            "phash": pa.array(dedup.to_signed(hashes), pa.int64()),
            "thumbnail": [dedup.thumbnail(im) for im in decoded],
            "embedding": pa.array([None] * len(images), pa.list_(pa.float32())),
        }
    )


def removed(rows: pa.Table, cfg: DedupConfig) -> dict[int, tuple[str, str]]:
    table = duplicates.removals(rows, cfg)
    return {r["sample_id"]: (r["reason"], r["detail"]) for r in table.to_pylist()}


def test_an_exact_copy_goes_and_the_best_itm_copy_stays_named_in_the_detail():
    a, b = jpeg(smooth_image(1)), jpeg(smooth_image(2))
    rows = survivors([a, b, a, a], itm=[0.6, 0.9, 0.8, 0.8])
    got = removed(rows, DedupConfig(near_duplicates=False))
    # row 2 and 3 tie on ITM: the smaller key (row 2) is kept
    assert got == {
        0: ("duplicate", f"copy of {schema.sample_key(2)} kept (sha256 {hash(a)})"),
        3: ("duplicate", f"copy of {schema.sample_key(2)} kept (sha256 {hash(a)})"),
    }


def test_re_encoded_and_resized_copies_are_near_duplicates_distinct_images_are_not():
    originals = [smooth_image(seed) for seed in range(12)]
    images = [jpeg(im) for im in originals]
    images += [jpeg(originals[0], 40), jpeg(originals[1].resize((72, 72)))]
    rows = survivors(images, itm=[0.5] * 12 + [0.9, 0.1])
    got = removed(rows, DedupConfig())
    assert set(got) == {0, 13}  # the better copy of each pair stays
    assert got[0][0] == got[13][0] == "near_duplicate"
    assert got[0][1].startswith(f"copy of {schema.sample_key(12)} kept (pHash distance ")
    assert removed(rows, DedupConfig(near_duplicates=False)) == {}


def test_images_with_one_phash_but_other_colours_are_not_copies():
    """Flat graphics have nearly one pHash (greyscale, little structure): the thumbnail tells a
    red logo from a blue one, and still finds the red one's re-encoded copy."""
    red, blue = Image.new("RGB", (80, 80), "red"), Image.new("RGB", (80, 80), "blue")
    for image in (red, blue):
        image.paste((255, 255, 255), (30, 30, 50, 50))  # the same white square on each
    rows = survivors([jpeg(red), jpeg(blue), jpeg(red, 60)], itm=[0.9, 0.5, 0.5])
    hashes = dedup.to_unsigned(rows["phash"].to_numpy())
    assert int(hashes[0] ^ hashes[1]).bit_count() <= DedupConfig().hash_distance  # a candidate
    assert {i: reason for i, (reason, _) in removed(rows, DedupConfig()).items()} == {
        2: "near_duplicate"
    }


def test_a_copy_of_an_eval_image_is_found_and_names_it(tmp_path):
    originals = [smooth_image(seed) for seed in range(6)]
    eval_file = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"image": [jpeg(originals[4]), b"<html>not an image"]}), eval_file)
    cfg = DedupConfig(decontaminate=[str(eval_file)])
    evals = duplicates.eval_hashes(cfg.decontaminate)
    assert evals["files"][str(eval_file)]["undecodable"] == 1
    copies = [decode_image(jpeg(im, 70), 1, 1 << 40).image for im in originals]
    details = duplicates.eval_copy_details(copies, evals, cfg)
    assert [d is not None for d in details] == [i == 4 for i in range(6)]
    assert details[4].startswith("near duplicate of eval.parquet:0 (pHash distance ")
    web = [jpeg(im, 50) for im in originals] + [b"not an image"]
    assert duplicates.eval_copies(web, cfg) == [i == 4 for i in range(7)]


def test_a_caption_on_too_many_images_keeps_its_best_images():
    images = [jpeg(smooth_image(seed)) for seed in range(5)]
    captions = ["image not found"] * 4 + ["a red fox"]
    rows = survivors(images, itm=[0.2, 0.9, 0.5, 0.7, 0.1], captions=captions)
    got = removed(rows, DedupConfig(max_images_per_caption=2))
    assert {i: reason for i, (reason, _) in got.items()} == {
        0: "repeated_caption",
        2: "repeated_caption",
    }
    assert schema.sample_key(1) in got[0][1]


def test_semantic_duplicates_by_embedding_cosine():
    images = [jpeg(smooth_image(seed)) for seed in range(4)]
    rows = survivors(images, itm=[0.5, 0.6, 0.5, 0.5])
    basis = np.eye(8, dtype=np.float32)
    vectors = [basis[0], basis[0] + 0.01 * basis[1], basis[2], basis[3]]
    rows = rows.set_column(6, "embedding", pa.array([v.tolist() for v in vectors]))
    got = removed(rows, DedupConfig(near_duplicates=False, semantic_threshold=0.95))
    assert list(got) == [0] and got[0][0] == "semantic_duplicate"
    assert got[0][1].startswith(f"copy of {schema.sample_key(1)} kept (cosine 1.000")


def test_semdedup_without_a_scorer_embeds_with_the_filter_capfilt_loaded(tiny_models):
    """No second copy of the filter's weights: the embedder is the loaded filter's ITC half,
    and its embeddings are that model's own (BlipForImageTextRetrieval's vision_proj)."""
    captioner_dir, filter_dir = map(str, tiny_models)
    _, filt = steps.load_models(captioner_dir, filter_dir)
    embedder = steps.load_embedder(filter_dir)
    assert embedder.model is filt.model
    pixels = preprocess(filt.processor, [textured_image(0, (40, 40))])
    with torch.inference_mode():
        hidden = filt.model.vision_model(pixel_values=pixels)[0][:, 0, :]
        expected = torch.nn.functional.normalize(filt.model.vision_proj(hidden), dim=-1)
    [got] = embedder.embed_images(pixels)
    assert got == pytest.approx(expected[0].tolist(), abs=1e-6)


# [dedup] setting -> (config that shows it, the change): each changes what is removed
DEDUP_CASES = {
    "exact": ({"near_duplicates": False}, {"exact": False}),
    "near_duplicates": ({}, {"near_duplicates": False}),
    "hash_distance": ({}, {"hash_distance": 0}),
    "thumbnail_similarity": ({}, {"thumbnail_similarity": 1.0}),
    "semantic_threshold": ({"exact": False, "near_duplicates": False}, {"semantic_threshold": 0.5}),
    "max_images_per_caption": ({}, {"max_images_per_caption": 1}),
    "decontaminate": ({}, {"decontaminate": ["EVAL"]}),
}


def test_every_dedup_setting_has_a_case():
    assert set(DEDUP_CASES) == {f.name for f in dataclasses.fields(DedupConfig)}


@pytest.mark.parametrize("name", DEDUP_CASES)
def test_each_dedup_setting_changes_what_is_removed(name, tmp_path):
    base, change = DEDUP_CASES[name]
    original, other = smooth_image(7), smooth_image(8)
    images = [
        jpeg(original),
        jpeg(original),
        jpeg(original, 35),
        jpeg(other),
        jpeg(smooth_image(9)),
    ]
    rows = survivors(images, itm=[0.9, 0.5, 0.5, 0.5, 0.5], captions=["same"] * 5)
    rows = rows.set_column(6, "embedding", pa.array([[1.0, 0.0]] * 5, pa.list_(pa.float32())))
    eval_file = tmp_path / "eval.parquet"
    pq.write_table(pa.table({"image": [jpeg(other)]}), eval_file)
    change = {k: [str(eval_file)] if v == ["EVAL"] else v for k, v in change.items()}
    before, after = DedupConfig(**base), DedupConfig(**{**base, **change})

    def outcome(cfg):
        leaks = duplicates.eval_copies(images, cfg) if cfg.decontaminate else None
        return removed(rows, cfg), leaks

    assert outcome(before) != outcome(after)


def test_a_run_removes_planted_copies_and_eval_leaks_and_accounts_for_every_row(
    tmp_path, tiny_models, prefect_harness, capsys
):
    """`curate run --decontaminate`: an exact copy, a re-encoded copy and a re-encoded eval
    image among distinct web images; every row ends curated or rejected once, the copies with
    their reasons, and `curate stats` shows them."""
    from conftest import run_argv

    from curation.world.webserver import Routes, Server
    from flows import cli

    originals = [smooth_image(seed) for seed in range(8)]
    served = {f"/{i}.jpg": jpeg(im) for i, im in enumerate(originals)}
    served["/copy.jpg"] = served["/1.jpg"]  # the same bytes under another URL
    served["/recoded.jpg"] = jpeg(originals[2], 50)
    eval_image = smooth_image(100)
    served["/leak.jpg"] = jpeg(eval_image, 60)
    pq.write_table(pa.table({"image": [jpeg(eval_image)]}), tmp_path / "eval.parquet")
    web = Server(Routes({path: (200, "image/jpeg", body) for path, body in served.items()}))
    try:
        rows = [{"url": web.base_url + p, "caption": p} for p in served]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
        (tmp_path / "cfg.toml").write_text(
            "[sharding]\nshard_size = 4\n[capfilt]\nitm_threshold = 0.0\nnum_captions = 1\n"
            'max_new_tokens = 4\nmin_new_tokens = 1\n[select]\nmetadata = ""\n'
        )
        out = tmp_path / "run"
        argv = run_argv(tmp_path, out, tiny_models)
        assert cli.main([*argv, "--decontaminate", str(tmp_path / "eval.parquet")]) == 0
    finally:
        web.close()
    curated = pa.concat_tables(pq.read_table(p) for p in sorted((out / "shards").glob("*")))
    rejects = pa.concat_tables(pq.read_table(p) for p in sorted((out / "rejects").glob("*")))
    outcome = {r["sample_id"]: "curated" for r in curated.select(["sample_id"]).to_pylist()}
    for r in rejects.to_pylist():
        assert r["sample_id"] not in outcome
        outcome[r["sample_id"]] = r["reason"]
    assert sorted(outcome) == list(range(len(served)))
    by_path = {p: outcome[i] for i, p in enumerate(served)}
    assert by_path["/leak.jpg"] == "eval_overlap"
    assert sorted([by_path["/1.jpg"], by_path["/copy.jpg"]]) == ["curated", "duplicate"]
    assert sorted([by_path["/2.jpg"], by_path["/recoded.jpg"]]) == ["curated", "near_duplicate"]
    assert [by_path[f"/{i}.jpg"] for i in (0, 3, 4, 5, 6, 7)] == ["curated"] * 6
    printed = capsys.readouterr().out
    assert "Removed by the dedup stage" in printed and "eval.parquet:0" in printed


def test_the_pool_view_leaves_out_every_dedup_reason():
    """sql/views/pool.sql lists the dedup gate's reasons as literals: the same set."""
    from curation import sql

    text = (sql.SQL_DIR / "views" / "pool.sql").read_text()
    gate = next(g for g in schema.GATES if g.name == "dedup")
    assert {r.value for r in gate.reasons} == {
        r.value for r in schema.Reason if f"'{r.value}'" in text
    }


def test_a_decontaminate_file_without_images_is_refused_before_any_work(
    tmp_path, tiny_models, capsys
):
    from conftest import run_argv

    from flows import cli

    pq.write_table(
        pa.table({"url": ["http://127.0.0.1:9/a.jpg"], "caption": ["a"]}), tmp_path / "urls.parquet"
    )
    (tmp_path / "cfg.toml").write_text("")
    pq.write_table(pa.table({"image": ["not bytes"]}), tmp_path / "strings.parquet")
    (tmp_path / "notes.txt").write_text("not parquet")
    cases = [
        (tmp_path / "missing.parquet", "not a Parquet file with an image column"),
        (tmp_path / "notes.txt", "not a Parquet file with an image column"),
        (tmp_path / "strings.parquet", "image column holds string, not bytes"),
    ]
    for path, message in cases:
        argv = [*run_argv(tmp_path, tmp_path / "run", tiny_models), "--decontaminate", str(path)]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
        assert not (tmp_path / "run").exists()
