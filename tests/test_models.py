"""The model layer on tiny BLIP checkpoints built from config and saved to a temporary folder."""

import copy
import dataclasses
import importlib.util
import string
from pathlib import Path

import pytest
import torch
from PIL import Image

from curation.config import Sampling
from curation.models import blip as models
from curation.models import tiny

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    return tiny.save_blip_checkpoints(tmp_path_factory.mktemp("blip"), size="tiny", seed=0)


@pytest.fixture(scope="module")
def captioner(checkpoints) -> models.Captioner:
    return models.load_captioner(str(checkpoints[0]), CPU, torch.float32)


@pytest.fixture(scope="module")
def filt(checkpoints) -> models.Filter:
    return models.load_filter(str(checkpoints[1]), CPU, torch.float32)


def images(n: int, side: int = 20) -> list[Image.Image]:
    """n distinct solid-colour RGB images."""
    return [Image.new("RGB", (side, side + i), (40 * i, 200 - 30 * i, 90)) for i in range(n)]


def flat(scores: list[list[float]]) -> list[float]:
    return [x for per_image in scores for x in per_image]


def pixels(loaded, n: int) -> torch.Tensor:
    return loaded.to_device(models.preprocess(loaded.processor, images(n)))


def test_pick_device_matches_hardware():
    device, dtype = models.pick_device()
    if torch.cuda.is_available():
        assert (device.type, dtype) == ("cuda", torch.bfloat16)
    else:
        assert (device.type, dtype) == ("cpu", torch.float32)


def test_checkpoints_round_trip(checkpoints, captioner, filt):
    for folder in checkpoints:
        assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
        models.check_model_source(str(folder))  # a real checkpoint passes the check
    tokenizer = tiny.load_tokenizer()
    for loaded in (captioner, filt):
        text_config = loaded.model.config.text_config
        assert text_config.vocab_size == len(tokenizer)
        assert text_config.bos_token_id == tokenizer.convert_tokens_to_ids("[DEC]")
        assert text_config.sep_token_id == tokenizer.sep_token_id
        assert not loaded.model.training
        assert (loaded.device.type, loaded.dtype) == ("cpu", torch.float32)
    # the saved weights are the ones loaded: same seed -> same parameters
    fresh = tiny.config_for_tokenizer("tiny", tokenizer)
    torch.manual_seed(1)  # save_blip_checkpoints seeds the filter with seed + 1
    rebuilt = models.BlipForImageTextRetrieval(fresh)
    assert torch.equal(rebuilt.itm_head.weight, filt.model.itm_head.weight)


def test_same_preprocessing_detected(captioner, filt):
    same = models.image_processor_config(captioner.processor)
    assert same == models.image_processor_config(filt.processor)
    other = tiny.make_processor("small", tiny.load_tokenizer())
    assert models.image_processor_config(other) != same


def test_preprocess_shapes_and_modes(captioner):
    mixed = [Image.new("L", (9, 13), 7), Image.new("RGBA", (30, 5)), images(1)[0]]
    pv = models.preprocess(captioner.processor, mixed)
    assert pv.shape == (3, 3, 32, 32) and pv.dtype == torch.float32
    assert models.preprocess(captioner.processor, []).shape == (0, 3, 32, 32)


def test_generate_shape_prompt_and_determinism(captioner):
    pv = pixels(captioner, 2)
    rng_before = torch.get_rng_state()
    sampling = Sampling(num_captions=3, max_new_tokens=8, min_new_tokens=3)
    first = captioner.generate(pv, sampling, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    assert [len(c) for c in first] == [3, 3]
    for caption in (c for per_image in first for c in per_image):
        assert caption and caption == " ".join(caption.split())
        assert not caption.startswith("a picture of")
        assert "[" not in caption  # no [DEC] / [SEP] / [PAD] left
    assert captioner.generate(pv, sampling, seed=7) == first
    assert captioner.generate(pv, sampling, seed=8) != first
    assert captioner.generate(pv, Sampling(num_captions=0)) == [[], []]


def test_an_images_captions_do_not_depend_on_its_batch(captioner):
    pv = pixels(captioner, 4)
    sampling = Sampling(num_captions=2, max_new_tokens=8, min_new_tokens=3)
    together = captioner.generate(pv, sampling, seed=[11, 12, 13, 14])
    alone = [captioner.generate(pv[i : i + 1], sampling, seed=[11 + i])[0] for i in range(4)]
    reordered = captioner.generate(pv[[2, 0]], sampling, seed=[13, 11])
    assert together == alone
    assert reordered == [together[2], together[0]]
    assert len({tuple(c) for c in together}) > 1  # the seeds matter


def test_per_row_sampler_draws_from_the_nucleus():
    """Gumbel-max over top-p-filtered logits: frequencies follow the renormalised nucleus."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    picks = torch.zeros(4)
    for seed in range(4000):
        sampler = models.PerRowSampler([(seed, 0)], top_p=0.9)
        picks[sampler(torch.zeros(1, 1, dtype=torch.long), logits.clone()).argmax()] += 1
    assert picks[3] == 0  # outside the 0.9 nucleus
    expected = torch.tensor([0.5, 0.3, 0.15]) / 0.95
    assert torch.allclose(picks[:3] / 4000, expected, atol=0.03)


@pytest.fixture(scope="module")
def perturbed(checkpoints) -> models.Filter:
    """A filter with larger random weights, so pair scores differ enough for comparisons to bite."""
    filt = models.load_filter(str(checkpoints[1]), CPU, torch.float32)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in filt.model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return filt


def test_fast_score_equals_model_forward(perturbed):
    filt = perturbed
    texts = [["a red circle", "", "free shipping click to enlarge"], ["two blue stars", "img"]]
    pv = pixels(filt, 2)
    itm, itc = filt.score(pv, texts)

    tokens = filt.tokenize(flat(texts), 35)
    pair_pixels = pv.repeat_interleave(torch.tensor([3, 2]), dim=0)  # one image per text
    with torch.no_grad():
        out = filt.model(pixel_values=pair_pixels, **tokens, use_itm_head=True)
        ref_itm = out.itm_score.softmax(dim=-1)[:, 1]
        out = filt.model(pixel_values=pair_pixels, **tokens, use_itm_head=False)
        ref_itc = out.itm_score.diagonal()  # (T, T) image i vs text j; pairs on the diagonal
    fast_itm, fast_itc = torch.tensor(flat(itm)), torch.tensor(flat(itc))
    assert ref_itm.std() > 1e-3 and ref_itc.std() > 1e-3  # the check can tell pairs apart
    torch.testing.assert_close(fast_itm, ref_itm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_itc, ref_itc, rtol=1e-5, atol=1e-6)


def test_score_ranges_and_empty_images(filt):
    pv = pixels(filt, 3)
    itm, itc = filt.score(pv, [["a", ""], [], ["three green squares"]])
    assert [len(x) for x in itm] == [2, 0, 1] and [len(x) for x in itc] == [2, 0, 1]
    assert all(0.0 <= p <= 1.0 for per_image in itm for p in per_image)
    assert all(-1.0 <= s <= 1.0 for per_image in itc for s in per_image)
    # skipping the text-less image does not change the others' scores
    alone, _ = filt.score(pv[[2]], [["three green squares"]])
    assert alone[0][0] == pytest.approx(itm[2][0], abs=1e-6)
    assert filt.score(pv[:2], [[], []]) == ([[], []], [[], []])


def test_score_in_bfloat16_close_to_float32(checkpoints, perturbed):
    loaded = models.load_filter(str(checkpoints[1]), CPU, torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and loaded.to_device(torch.zeros(1)).dtype == loaded.dtype
    half = models.Filter(copy.deepcopy(perturbed.model).to(torch.bfloat16), perturbed.processor)
    texts = [["a small red circle", "free shipping"], ["a photo", "two dogs"]]
    itm32, itc32 = perturbed.score(pixels(perturbed, 2), texts)
    itm16, itc16 = half.score(pixels(half, 2), texts)
    assert max(flat(itc32)) - min(flat(itc32)) > 0.05  # differences larger than the tolerance
    assert flat(itm16) == pytest.approx(flat(itm32), abs=0.02)
    assert flat(itc16) == pytest.approx(flat(itc32), abs=0.02)


@pytest.mark.parametrize("source", ["./no/such/model", "/no/such/dir", "~/no-such-ckpt", "a/b/c"])
def test_check_model_source_missing_path(source):
    with pytest.raises(models.ModelSourceError, match="not found") as err:
        models.check_model_source(source)
    assert source in str(err.value) and "\n" not in str(err.value)


def test_check_model_source_folder_without_checkpoint(tmp_path):
    with pytest.raises(models.ModelSourceError, match="config.json"):
        models.check_model_source(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(models.ModelSourceError, match="safetensors"):
        models.check_model_source(str(tmp_path))


def test_check_model_source_uncached_hub_id():
    with pytest.raises(models.ModelSourceError, match="local Hugging Face cache") as err:
        models.check_model_source("capfilt-tests/not-a-real-model")
    assert "capfilt-tests/not-a-real-model" in str(err.value)
    with pytest.raises(models.ModelSourceError, match="empty"):
        models.check_model_source(" ")


def test_tokenizer_covers_ascii_and_special_ids():
    tokenizer = tiny.load_tokenizer()
    assert 1000 <= len(tokenizer) <= 2000
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")]
    assert ids == [0, 1, 2, 3] and tokenizer.bos_token == "[DEC]"
    text = string.printable + " Qzxj IMG_2034.JPG wibbly-wobbly 42%"
    assert tokenizer.unk_token_id not in tokenizer(text).input_ids
    assert tokenizer.tokenize("Red Zebras") == ["red", "zebra", "##s"]


def test_tokenizer_build_is_deterministic_and_shipped(tmp_path):
    spec = importlib.util.spec_from_file_location("bt", ROOT / "scripts" / "build_tokenizer.py")
    build_tokenizer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_tokenizer)
    build_tokenizer.build(ROOT / "data" / "tokenizer_corpus.txt", tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == (ROOT / "data" / "tokenizer" / name).read_bytes()


def test_blip_config_sizes():
    config = tiny.blip_config("small", vocab_size=500, bos_token_id=5, sep_token_id=3)
    assert config.vision_config.image_size == 64 and config.text_config.vocab_size == 500
    assert config.text_config.encoder_hidden_size == config.vision_config.hidden_size
    with pytest.raises(ValueError, match="unknown model size"):
        tiny.blip_config("huge", vocab_size=500, bos_token_id=5, sep_token_id=3)


def test_a_checkpoint_of_the_other_model_is_refused_not_loaded_half_random(checkpoints):
    captioner_dir, filter_dir = checkpoints
    with pytest.raises(models.ModelSourceError, match="not a BlipForImageTextRetrieval"):
        models.load_filter(str(captioner_dir), CPU, torch.float32)
    with pytest.raises(models.ModelSourceError, match="not a BlipForConditionalGeneration"):
        models.load_captioner(str(filter_dir), CPU, torch.float32)


def test_every_sampling_setting_reaches_the_decoder(captioner):
    """Sampling settings change the captions (a positional call once dropped one). A random
    model's logits are nearly flat, so its samples follow the noise, not the prompt, and it
    rarely samples [SEP]: prompt and min_new_tokens show no effect here."""
    pv = pixels(captioner, 4)
    base = Sampling(num_captions=2, max_new_tokens=30, min_new_tokens=30)
    first = captioner.generate(pv, base, seed=[1, 2, 3, 4])
    # a penalty below 1 rewards repeating a token whose logit is positive: the captions repeat
    changes = [{"repetition_penalty": 0.01}, {"top_p": 0.3}, {"max_new_tokens": 31}]
    for change in changes:
        again = captioner.generate(pv, dataclasses.replace(base, **change), seed=[1, 2, 3, 4])
        assert again != first, change


def test_a_long_text_is_cut_before_tokenizing_without_changing_what_the_model_reads(filt):
    """Texts are cut to `readable_chars` before the tokenizer sees them (a 10 MB alt-text took
    seconds and gigabytes to tokenize): the first max_tokens tokens stay the same for texts
    of any word lengths, and the score of a huge text is that of its head."""
    rng = torch.Generator().manual_seed(0)
    letters = string.ascii_lowercase
    for _ in range(20):
        lengths = torch.randint(1, models.MAX_WORD_CHARS + 1, (60,), generator=rng).tolist()
        text = " ".join(letters[n % 26] * n for n in lengths)
        whole = filt.processor.tokenizer(text, truncation=True, max_length=12)["input_ids"]
        assert filt.tokenize([text], 12)["input_ids"][0].tolist() == whole
    head = "a red circle on a white background " * 20
    pv = pixels(filt, 1)
    huge = head + "x" * 10_000_000
    assert filt.score(pv, [[huge]]) == filt.score(pv, [[head + "and more words"]])
