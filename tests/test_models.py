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


def sampler_noise(keys: list[tuple[int, int]], step: int, vocab: int) -> torch.Tensor:
    """What PerRowSampler adds to flat scores at `step` tokens so far (top_p 1: no nucleus)."""
    sampler = models.PerRowSampler(keys, top_p=1.0)
    return sampler(torch.zeros(len(keys), step, dtype=torch.long), torch.zeros(len(keys), vocab))


def test_per_row_sampler_noise_does_not_depend_on_the_batch():
    """A row's noise is a function of its key and step: alone, among 99 others, or reordered."""
    rng = torch.Generator().manual_seed(0)
    keys = [(int(s), int(k)) for s, k in torch.randint(0, 2**40, (100, 2), generator=rng)]
    for step in (1, 4, 30):
        together = sampler_noise(keys, step, 500)
        alone = sampler_noise([keys[37]], step, 500)
        assert torch.equal(together[37], alone[0])
        assert torch.equal(sampler_noise(keys[::-1], step, 500).flip(0), together)
    with pytest.raises(ValueError, match="3 row keys but got scores for 2 rows"):
        models.PerRowSampler([(0, 0), (0, 1), (0, 2)], top_p=0.9)(
            torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 10)
        )


def test_hashed_mixer_equals_its_unsigned_32_bit_reference():
    """mix32 on int64 tensors (no product overflows) is lowbias32 in uint32 arithmetic."""
    edges = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 0xDEADBEEF]
    rng = torch.Generator().manual_seed(1)
    values = edges + torch.randint(0, 2**32, (2000,), generator=rng).tolist()
    mixed = models.mix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert mixed == [models.mix32_int(v) for v in values]
    assert models.mix32_int(1) == 0x688990C0  # lowbias32(1): its C code in numpy uint32
    assert len(set(mixed)) == len(set(values))  # a bijection


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hashed_noise_is_the_same_on_cpu_and_cuda():
    keys = torch.tensor([models._row_key(seed, 0) for seed in range(64)])
    on_cpu = models.hashed_uniforms(keys, 3, 30_522)
    assert torch.equal(models.hashed_uniforms(keys.cuda(), 3, 30_522).cpu(), on_cpu)
    gumbel = models.gumbel_noise(keys.cuda(), 3, 30_522).cpu()
    torch.testing.assert_close(gumbel, models.gumbel_noise(keys, 3, 30_522))


def test_hashed_uniforms_are_uniform_open_and_24_bit():
    """Mean, variance and a Kolmogorov-Smirnov bound over 1M uniforms of 20 rows x 50k tokens."""
    keys = torch.tensor([models._row_key(seed, k) for seed in range(10) for k in range(2)])
    u = models.hashed_uniforms(keys, step=5, vocab=50_000).flatten().double()
    n = u.numel()
    assert 0 < u.min() and u.max() < 1  # open: Gumbel noise stays finite
    assert torch.isfinite(models.gumbel_noise(keys, 5, 50_000)).all()
    grid = u * 2**24  # k / 2**24, k = 0 raised to 0.5
    assert ((grid == grid.round()) | (grid == 0.5)).all()
    assert abs(u.mean() - 0.5) < 4 * (1 / 12 / n) ** 0.5  # 4 standard errors
    assert abs(u.var() - 1 / 12) < 1e-3
    ranks = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = (ranks - u.sort().values).abs().max()
    assert ks < 1.63 / n**0.5  # KS critical value at alpha = 0.01
    assert u.unique().numel() > 0.97 * n  # 24 bits: few repeats among 1M draws


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1].item()


def test_different_keys_steps_and_tokens_give_uncorrelated_noise():
    """Pearson correlation below 0.02 over 100k draws (noise alone: about 0.003) between
    neighbouring keys, captions, steps and tokens."""
    vocab = 100_000
    base = models.hashed_uniforms(torch.tensor([models._row_key(7, 0)]), 3, vocab)[0]
    others = {
        "next seed": models.hashed_uniforms(torch.tensor([models._row_key(8, 0)]), 3, vocab)[0],
        "next caption": models.hashed_uniforms(torch.tensor([models._row_key(7, 1)]), 3, vocab)[0],
        "next step": models.hashed_uniforms(torch.tensor([models._row_key(7, 0)]), 4, vocab)[0],
        "next token": torch.roll(base, 1),
    }
    for name, other in others.items():
        assert not torch.equal(base, other), name
        assert abs(correlation(base, other)) < 0.02, name
        assert (base == other).float().mean() < 0.01, name


def test_per_row_sampler_draws_from_the_nucleus():
    """Gumbel-max over top-p-filtered logits: over 20,000 keys at two steps, token frequencies
    follow the renormalised nucleus (chi-square, 3 degrees of freedom, p = 0.001: 16.27) and
    tokens outside it are never drawn."""
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])  # top_p 0.85: the first four
    keys = [(seed, k) for seed in range(10_000) for k in range(2)]
    sampler = models.PerRowSampler(keys, top_p=0.85)
    expected = probs[:4] / probs[:4].sum() * len(keys)
    for step in (1, 9):
        logits = probs.log().expand(len(keys), -1).clone()
        picks = sampler(torch.zeros(len(keys), step, dtype=torch.long), logits).argmax(dim=1)
        counts = torch.bincount(picks, minlength=6).double()
        assert counts[4:].sum() == 0  # outside the 0.85 nucleus
        chi_square = ((counts[:4] - expected) ** 2 / expected).sum()
        assert chi_square < 16.27, (step, counts.tolist())


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
