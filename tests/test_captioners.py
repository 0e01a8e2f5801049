"""Captioner families beyond BLIP on tiny random checkpoints built from config: BLIP-2 (a prompt
the model continues) and LLaVA (a prompt through its chat template), and what is refused."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from transformers import LlavaNextConfig, LlavaNextImageProcessorPil, LlavaNextProcessor

from curation.config import ConfigError, Sampling
from curation.models import blip, captioners, tiny

CPU = torch.device("cpu")
SAMPLING = Sampling(num_captions=3, min_new_tokens=4, max_new_tokens=6)
BUILDERS = {"blip-2": tiny.save_blip2_captioner, "llava": tiny.save_llava_captioner}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def captioner(request, tmp_path_factory):
    folder = BUILDERS[request.param](tmp_path_factory.mktemp(request.param))
    return captioners.load_captioner(str(folder), CPU, torch.float32)


def pixels(captioner, n: int) -> torch.Tensor:
    images = [Image.new("RGB", (40 + 9 * i, 30), (50 * i, 120, 200 - 30 * i)) for i in range(n)]
    return blip.preprocess(captioner.processor, images)


def test_k_captions_per_image_each_from_its_own_stream(captioner):
    """An image's captions depend on its seed and pixels alone, not on its batch."""
    batch = pixels(captioner, 4)
    together = captioner.generate(batch, SAMPLING, seed=[11, 12, 13, 14])
    assert [len(c) for c in together] == [3, 3, 3, 3]
    assert captioner.generate(batch[2:3], SAMPLING, seed=[13]) == [together[2]]
    assert captioner.generate(batch[2:3], SAMPLING, seed=[99]) != [together[2]]
    assert len({c for per in together for c in per}) > 6  # sampled, not one greedy caption
    assert captioner.generate(batch, Sampling(num_captions=0), seed=1) == [[]] * 4
    empty = blip.preprocess(captioner.processor, [])  # a batch whose images all failed
    assert empty.shape == (0, 3, 32, 32) and captioner.generate(empty, SAMPLING, []) == []


def test_the_captions_follow_the_image(captioner):
    """Same seed, a black and a white image: the image reaches the decoder."""
    black, white = (Image.new("RGB", (40, 30), (v, v, v)) for v in (0, 255))
    pixels = blip.preprocess(captioner.processor, [black, white])
    on_black, on_white = captioner.generate(pixels, SAMPLING, seed=[5, 5])
    assert on_black != on_white


def test_the_prompt_and_top_p_change_the_captions(captioner):
    batch = pixels(captioner, 2)
    base = captioner.generate(batch, SAMPLING, seed=[1, 2])
    prompt = Sampling(**{**SAMPLING.__dict__, "prompt": "a drawing of a small"})
    assert captioner.generate(batch, prompt, seed=[1, 2]) != base
    greedy = captioner.generate(batch, Sampling(**{**SAMPLING.__dict__, "top_p": 1e-6}), [1, 2])
    assert len(set(greedy[0])) == 1 and greedy != base  # the nucleus of one token: argmax


def test_blip2_places_its_query_tokens_and_llava_uses_its_chat_template(captioner):
    token = captioners.image_token(captioner.model.config)
    ids = captioners.prompt_inputs(captioner.processor, "a picture of", token)["input_ids"][0]
    ids = ids.tolist()
    tokenizer = captioner.processor.tokenizer
    image = tokenizer.convert_tokens_to_ids("<image>")
    text = tokenizer.decode([i for i in ids if i != image], skip_special_tokens=True)
    if captioner.family == "blip-2":
        assert ids[:4] == [image] * 4 and image not in ids[4:]  # 4 query tokens, then the text
        assert text == "a picture of"
    else:
        assert ids.count(image) == 16  # 4 x 4 patches, CLIP's class token dropped
        assert text.startswith("user :") and text.endswith("a picture of assistant :")


def test_a_captioner_that_cannot_serve_is_refused_in_one_line(tmp_path):
    folder = tiny.save_blip2_captioner(tmp_path / "blip2")
    captioners.check_captioner(str(folder), SAMPLING)
    with pytest.raises(ConfigError, match="at most 119") as err:  # 128 positions, 9 prompt
        captioners.check_captioner(str(folder), Sampling(max_new_tokens=120))
    assert "\n" not in str(err.value)
    settings = json.loads((folder / "processor_config.json").read_text())
    del settings["num_query_tokens"]  # as older BLIP-2 processors were saved
    (folder / "processor_config.json").write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match="would not see the image") as err:
        captioners.check_captioner(str(folder), SAMPLING)
    assert "\n" not in str(err.value)
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()  # weights and config alone: nothing prepares the prompt
    with pytest.raises(ConfigError, match="processor cannot prepare") as err:
        captioners.check_captioner(str(folder), SAMPLING)
    assert "\n" not in str(err.value)


def test_a_dynamic_resolution_model_is_refused_in_one_line(tmp_path):
    """LLaVA-NeXT tiles each image by its size (`image_sizes`): no fixed prompt length."""
    folder = tmp_path / "llava_next"
    tokenizer, image_token = tiny.tokenizer_with_image_token(tiny.TOKENIZER_DIR)
    LlavaNextConfig(image_token_index=image_token).save_pretrained(folder)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = LlavaNextProcessor(
        image_processor, tokenizer, patch_size=8, vision_feature_select_strategy="default"
    )
    processor.save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llava_next"
    with pytest.raises(ConfigError, match="takes per-image inputs \\(image_sizes\\)") as err:
        captioners.check_captioner(str(folder), SAMPLING)
    assert "\n" not in str(err.value) and "cannot prepare" not in str(err.value)


def test_a_hub_id_loads_from_the_local_hugging_face_cache(tmp_path):
    """The hub-id path, offline: a BLIP-2 checkpoint laid out as the Hugging Face cache keeps a
    downloaded model (models--ORG--NAME/snapshots/REVISION, refs/main) is checked and loaded by
    its id, in a child process that sees only that cache; an id not in it is refused."""
    repo = tmp_path / "hub" / "models--capfilt-tests--tiny-blip2"
    tiny.save_blip2_captioner(repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    script = (
        "import torch\n"
        "from curation.config import Sampling\n"
        "from curation.models import blip, captioners\n"
        "blip.check_model_source('capfilt-tests/tiny-blip2')\n"
        "captioners.check_captioner('capfilt-tests/tiny-blip2', Sampling())\n"
        "c = captioners.load_captioner('capfilt-tests/tiny-blip2', torch.device('cpu'), "
        "torch.float32)\n"
        "print(c.family, len(c.generate(torch.zeros(2, 3, 32, 32), Sampling(), [1, 2])[1]))\n"
        "blip.check_model_source('capfilt-tests/not-cached')\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.stdout.splitlines() == ["blip-2 3"], done.stderr[-2000:]
    assert "'capfilt-tests/not-cached' is neither a local folder nor in the local" in done.stderr
