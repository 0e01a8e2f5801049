"""The contrastive families on tiny checkpoints built from config (CLIP, SigLIP, our BLIP
retrieval folder): as DFN scorer, as CapFilt's filter, and the checks of what each role loads."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import run_argv, textured_image
from PIL import Image
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipProcessor,
)

from curation import config
from curation.models import blip as models
from curation.models import captioners, tiny
from curation.models import scorer as scoring
from curation.pipeline import capfilt
from curation.world.webserver import Routes, Server
from flows import cli

CPU = torch.device("cpu")
TEXTS = ["a red circle", "", "free shipping click here", "two blue stars on a green field"]


TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
VISION = dict(TOWER, image_size=32, patch_size=8)  # 32 px, 2 layers


def text_tower(tokenizer, positions: int, **ids) -> dict:
    """A 2-layer text tower over the shipped WordPiece tokenizer."""
    return dict(TOWER, vocab_size=len(tokenizer), max_position_embeddings=positions, **ids)


def save_spread(model, folder) -> None:
    """Save `model` with weights larger than the init, so pair scores spread out."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.eval().save_pretrained(folder)


def save_tiny_clip(folder, seed: int = 0):
    """A random CLIPModel + CLIPProcessor with the shipped WordPiece tokenizer.

    CLIP pools the text at its EOS token; with a BERT tokenizer that is [SEP].
    """
    tokenizer = tiny.load_tokenizer()
    ids = dict(
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    text = text_tower(tokenizer, 64, **ids)
    save_spread(
        CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16)), folder
    )
    crop = {"height": 32, "width": 32}
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size=crop)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def save_tiny_siglip(folder, seed: int = 0):
    """A random SiglipModel + SiglipProcessor with the shipped tokenizer."""
    tokenizer = tiny.load_tokenizer()
    torch.manual_seed(seed)
    text = text_tower(tokenizer, 24, pad_token_id=tokenizer.pad_token_id)
    save_spread(SiglipModel(SiglipConfig(text_config=text, vision_config=VISION)), folder)
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return save_tiny_siglip(tmp_path_factory.mktemp("siglip"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def blip_dirs(tmp_path_factory):
    return tiny.save_blip_checkpoints(tmp_path_factory.mktemp("blip"), size="tiny", seed=0)


def images(n: int) -> list[Image.Image]:
    """n distinct RGB images of different sizes and colours."""
    return [
        Image.new("RGB", (20 + 7 * i, 30 - 3 * i), (60 * i, 200 - 40 * i, 90)) for i in range(n)
    ]


def test_detects_kind_from_config(clip_dir, blip_dirs):
    assert scoring.scorer_kind(str(clip_dir)) == "clip"
    assert scoring.scorer_kind(str(blip_dirs[1])) == "blip_itc"
    assert isinstance(scoring.load_scorer(str(clip_dir), CPU, torch.float32), scoring.ClipScorer)


def test_clip_scores_equal_model_forward(clip_dir):
    scorer = scoring.load_scorer(str(clip_dir), CPU, torch.float32)
    assert not scorer.model.training and scorer.max_text_tokens == 64
    scores = scorer.score(images(4), TEXTS, batch_size=3)  # two batches
    pixels = scorer.preprocess(images(4))
    assert pixels.shape == (4, 3, 32, 32)
    with torch.no_grad():
        out = scorer.model(pixel_values=pixels, **scorer.tokenize(TEXTS))
    reference = (out.image_embeds * out.text_embeds).sum(dim=-1)  # unit vectors: the cosine
    logits = out.logits_per_image.diagonal() / scorer.model.logit_scale.exp()
    assert reference.std() > 1e-2  # pairs are told apart
    torch.testing.assert_close(torch.tensor(scores), reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(scores), logits, rtol=1e-5, atol=1e-6)
    assert all(-1.0 <= s <= 1.0 for s in scores)


def test_siglip_scores_are_the_cosines_its_sigmoid_logits_are_made_of(siglip_dir):
    """SigLIP (arXiv 2303.15343): logits = cosine * exp(logit_scale) + logit_bias; the DFN score
    is the cosine, texts padded to the model's 24 positions as SigLIP was trained."""
    assert scoring.scorer_kind(str(siglip_dir)) == "siglip"
    scorer = scoring.load_scorer(str(siglip_dir), CPU, torch.float32)
    assert isinstance(scorer, scoring.SiglipScorer) and scorer.max_text_tokens == 24
    scores = scorer.score(images(4), TEXTS, batch_size=3)
    tokens = scorer.tokenize(TEXTS)
    assert tokens["input_ids"].shape == (4, 24)
    with torch.no_grad():
        out = scorer.model(pixel_values=scorer.preprocess(images(4)), **tokens)
    model = scorer.model
    cosine = (out.logits_per_image.diagonal() - model.logit_bias) / model.logit_scale.exp()
    assert cosine.std() > 1e-2
    torch.testing.assert_close(torch.tensor(scores), cosine, rtol=1e-5, atol=1e-5)


def test_blip_itc_scores_equal_model_forward(blip_dirs):
    scorer = scoring.load_scorer(str(blip_dirs[1]), CPU, torch.float32)
    assert isinstance(scorer, scoring.BlipItcScorer) and scorer.max_text_tokens == 35
    with torch.no_grad():  # larger weights, so the cosines spread out
        torch.manual_seed(3)
        for p in scorer.model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    pixels = scorer.preprocess(images(4))
    scores = scorer.score(pixels, TEXTS, batch_size=2)
    with torch.no_grad():
        out = scorer.model(pixel_values=pixels, **scorer.tokenize(TEXTS), use_itm_head=False)
    reference = out.itm_score.diagonal()  # (N, N) image i vs text j: pairs on the diagonal
    assert reference.std() > 1e-2
    torch.testing.assert_close(torch.tensor(scores), reference, rtol=1e-5, atol=1e-6)
    assert all(-1.0 <= s <= 1.0 for s in scores)


def test_pil_and_pixels_batches_agree(clip_dir):
    scorer = scoring.load_scorer(str(clip_dir), CPU, torch.float32)
    from_pil = scorer.score(images(4), TEXTS)
    one_by_one = scorer.score(scorer.preprocess(images(4)), TEXTS, batch_size=1)
    assert one_by_one == pytest.approx(from_pil, abs=1e-6)
    assert scorer.score([], []) == []
    assert scorer.preprocess([]).shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="one text per image"):
        scorer.score(images(2), ["only one"])


def test_bfloat16_close_to_float32(blip_dirs):
    full = scoring.load_scorer(str(blip_dirs[1]), CPU, torch.float32)
    half = scoring.load_scorer(str(blip_dirs[1]), CPU, torch.bfloat16)
    assert half.dtype == torch.bfloat16
    pixels = full.preprocess(images(3))  # float32 on CPU; score moves it to the model's dtype
    assert half.score(pixels, TEXTS[:3]) == pytest.approx(full.score(pixels, TEXTS[:3]), abs=0.03)


def test_bad_sources_fail_in_one_line(tmp_path, blip_dirs):
    with pytest.raises(models.ModelSourceError, match="not found"):
        scoring.load_scorer(str(tmp_path / "missing"), CPU, torch.float32)
    with pytest.raises(models.ModelSourceError, match="BlipForImageTextRetrieval"):
        scoring.load_scorer(str(blip_dirs[0]), CPU, torch.float32)  # the captioner
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(models.ModelSourceError, match="model_type 'bert'") as err:
        scoring.scorer_kind(str(other))
    assert "\n" not in str(err.value)
    with pytest.raises(models.ModelSourceError, match="local Hugging Face cache"):
        scoring.scorer_kind("capfilt-tests/no-such-scorer")


@pytest.mark.parametrize(("family", "captioner_family"), [("clip", "blip-2"), ("siglip", "llava")])
def test_a_run_with_each_model_family_exports(
    family, captioner_family, tmp_path, tiny_models, prefect_harness, clip_dir, siglip_dir
):
    """`curate run` with a CLIP or SigLIP folder as CapFilt's filter and as `[select] scorer`
    (its image embeddings also drive SemDeDup) and a BLIP-2 or LLaVA captioner, then `curate
    export`: every row is accounted for, each image got the family's own caption, the texts
    were judged by the family's own match score, the top half is exported."""
    build = {"blip-2": tiny.save_blip2_captioner, "llava": tiny.save_llava_captioner}
    captioner = build[captioner_family](tmp_path / captioner_family)
    served = {}
    for i in range(6):
        buffer = io.BytesIO()
        textured_image(i, (48, 40)).save(buffer, "JPEG")
        served[f"/{i}.jpg"] = buffer.getvalue()
    web = Server(Routes({p: (200, "image/jpeg", body) for p, body in served.items()}))
    scorer = clip_dir if family == "clip" else siglip_dir
    try:
        rows = [{"url": web.base_url + p, "caption": f"picture {p}"} for p in served]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
        (tmp_path / "cfg.toml").write_text(
            "[capfilt]\nitm_threshold = 0.0\nnum_captions = 1\nmax_new_tokens = 4\n"
            f'min_new_tokens = 1\n[select]\nmetadata = ""\nscorer = "{scorer}"\n'
            "score_keep_fraction = 0.5\n[dedup]\nsemantic_threshold = 0.9999\n"
        )
        out = tmp_path / "run"
        models_argv = ["--filter", str(scorer), "--captioner", str(captioner)]
        assert cli.main([*run_argv(tmp_path, out, tiny_models), *models_argv]) == 0
    finally:
        web.close()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["filter_family"] == [family]
    assert manifest["models"]["captioner_family"] == [captioner_family]
    own = captioners.load_captioner(str(captioner), CPU, torch.float32)
    model = scoring.load_scorer(str(scorer), CPU, torch.float32).model
    passed = pa.concat_tables(pq.read_table(p) for p in (out / "capfilt").glob("*.parquet"))
    settings = config.load(str(tmp_path / "cfg.toml")).capfilt
    for row in passed.to_pylist():
        pixels = models.preprocess(own.processor, [Image.open(io.BytesIO(row["image"]))])
        seed = capfilt.image_seed(settings.seed, row["sample_id"])
        [[caption]] = own.generate(pixels, settings.sampling(), seed)
        synthetic = [c["text"] for c in row["candidates"] if c["source"] == "synthetic"]
        assert synthetic == [caption]
    for candidate in (c for row in passed["candidates"].to_pylist() for c in row):
        cosine = torch.tensor(candidate["itc"])
        match = (
            cosine
            if family == "clip"
            else torch.sigmoid(cosine * model.logit_scale.exp() + model.logit_bias)
        )
        assert candidate["itm"] == pytest.approx(float(match.detach()), abs=1e-5)
    notes = pa.concat_tables(pq.read_table(p) for p in (out / "annotations").glob("*.parquet"))
    assert notes["dfn"].null_count == 0 and notes["embedding"].null_count == 0
    kept = pa.concat_tables(pq.read_table(p) for p in (out / "shards").glob("*.parquet"))
    rejects = pa.concat_tables(pq.read_table(p) for p in (out / "rejects").glob("*.parquet"))
    assert len(kept) + len(rejects) == 6 and 1 <= len(kept) <= 3
    allowed = {"no_matching_text", "below_score_quantile", "semantic_duplicate"}
    assert set(rejects["reason"].to_pylist()) <= allowed  # a random CLIP's cosines can be < 0
    assert cli.main(["export", str(out), "--out", str(tmp_path / "wds")]) == 0
    assert (tmp_path / "wds" / "00000.tar").stat().st_size > 0


def test_a_checkpoint_a_role_cannot_load_is_refused_before_any_work(
    tmp_path, tiny_models, clip_dir, capsys
):
    """Unsupported model_type, remote code (auto_map), a filter given as captioner: one line,
    exit 2, nothing written."""
    pq_path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.jpg"], "caption": ["a"]}), pq_path)
    (tmp_path / "cfg.toml").write_text("")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (bert / "model.safetensors").write_bytes(b"")
    remote = tmp_path / "remote"
    remote.mkdir()
    config = json.loads((clip_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "model.safetensors").write_bytes(b"")
    cases = [
        (["--filter", str(bert)], "model_type 'bert'"),
        (["--filter", str(remote)], "remote code"),
        (["--captioner", str(clip_dir)], "a captioner is BLIP or a transformers image-text"),
        (["--captioner", str(tiny_models[1])], "not a BlipForConditionalGeneration"),
    ]
    for extra, message in cases:
        out = tmp_path / "run"
        assert cli.main([*run_argv(tmp_path, out, tiny_models), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
        assert not out.exists()
