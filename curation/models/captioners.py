"""CapFilt's captioner families, chosen by the checkpoint's `model_type`.

- `blip`: BLIP's image-grounded decoder (`curation.models.blip.Captioner`), continuing
  `[capfilt] prompt` ("a picture of", BLIP arXiv 2201.12086).
- any other transformers image-text-to-text model that loads without remote code
  (`AutoModelForImageTextToText`: BLIP-2 `Blip2ForConditionalGeneration`, Li et al. 2023,
  arXiv 2301.12597; LLaVA-1.5, Liu et al. 2023, arXiv 2310.03744; both tested):
  `PromptedCaptioner`. The prompt goes through the processor's chat template when it has one
  (then it is an instruction, e.g. "Describe the image in one sentence."), else it is the
  text the model continues (BLIP-2's captioning prompt: "a photo of").

Every family samples alike: nucleus sampling (top_p), K captions per image, each image's
captions from its own random stream (`blip.PerRowSampler`), so a caption does not depend on
its batch, shard or worker. Only fixed-resolution models are served: the image processor must
give (N, 3, H, W) pixel_values and every image the same prompt tokens (models with
per-image patch grids, e.g. Qwen2-VL or LLaVA-NeXT, are refused before any work).
"""

from dataclasses import dataclass, field

import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from curation.config import ConfigError, Sampling
from curation.models import blip

# What a fixed-resolution model's processor returns for one image and one prompt.
# InstructBLIP's Q-Former reads the prompt too.
FIXED_INPUTS = {"input_ids", "attention_mask", "pixel_values", "token_type_ids"}
FIXED_INPUTS |= {"qformer_input_ids", "qformer_attention_mask"}


def family(id_or_dir: str) -> str:
    """The captioner's model_type (`blip.check_family`: refused in one line when no captioner
    family loads it)."""
    return blip.check_family(id_or_dir, "captioner")


def load_captioner(id_or_dir: str, device: torch.device, dtype: torch.dtype):
    """The captioner of the checkpoint's family, in eval mode on device/dtype:
    `blip.Captioner` for BLIP, `PromptedCaptioner` for the others."""
    kind = family(id_or_dir)
    if kind == "blip":
        return blip.load_captioner(id_or_dir, device, dtype)
    model = blip.load_model(AutoModelForImageTextToText, id_or_dir, device, dtype)
    processor = AutoProcessor.from_pretrained(blip._resolve(id_or_dir))
    return PromptedCaptioner(model=model, processor=processor, family=kind)


def check_captioner(id_or_dir: str, sampling: Sampling) -> None:
    """Refuse, in one line and before any work, a captioner that cannot serve `sampling`:
    a family no captioner loads, a model that needs per-image inputs or whose processor puts
    no image tokens in the prompt, or a `max_new_tokens` that does not fit its text
    positions. Reads config and processor files, no weights."""
    if family(id_or_dir) == "blip":
        blip.check_caption_length(*blip.captioner_text_limits(id_or_dir), sampling)
        return
    source = blip._resolve(id_or_dir)
    config = AutoConfig.from_pretrained(source, local_files_only=True)
    try:
        processor = AutoProcessor.from_pretrained(source, local_files_only=True)
        inputs = prompt_inputs(processor, sampling.prompt, image_token(config), id_or_dir)
    except ConfigError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as err:  # no processor, or not this kind
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"captioner {id_or_dir!r}: its processor cannot prepare an image and a prompt ({first})"
        ) from None
    text = config.get_text_config()
    positions = getattr(text, "max_position_embeddings", None)  # None: relative (T5)
    prompt = 0 if text.is_encoder_decoder else inputs["input_ids"].shape[1]
    if positions and prompt + sampling.max_new_tokens > positions:
        raise ConfigError(
            f"[capfilt] max_new_tokens = {sampling.max_new_tokens} does not fit the captioner: "
            f"it reads {positions} positions and the image and prompt take {prompt}, so at "
            f"most {positions - prompt}"
        )


def image_token(config) -> int | None:
    """The id of the placeholder a model's image features replace (None: it has none)."""
    return getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)


def prompt_inputs(
    processor, prompt: str, image_token_id: int | None, name: str = "captioner"
) -> dict[str, torch.Tensor]:
    """The text inputs (1, L) every image shares: `prompt` through the processor's chat
    template (a user turn of the image and the prompt) when it has one, else as it is, and the
    processor places the image tokens (BLIP-2: before the prompt); a processor that wants them
    marked in the text gets its image token first, on a line of its own.

    Raises ConfigError (one line) for a processor that gives per-image inputs beyond
    (N, 3, H, W) pixel_values (a dynamic-resolution model), or a prompt without the model's
    `image_token_id` (a BLIP-2 processor saved without num_query_tokens: the model would
    caption without seeing the image).
    """
    special = True
    if getattr(processor, "chat_template", None):
        turn = [{"type": "image"}, {"type": "text", "text": prompt}]
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": turn}], add_generation_prompt=True
        )
        bos = getattr(processor.tokenizer, "bos_token", None)
        special = not (bos and prompt.startswith(bos))  # the template wrote it: not twice
    probe = [Image.new("RGB", (64, 64), (127, 127, 127))]  # any image: the resolution is fixed
    try:  # BLIP-2's processor places the image tokens itself
        inputs = processor(
            images=probe, text=[prompt], add_special_tokens=special, return_tensors="pt"
        )
    except ValueError:  # others want the image's place marked in the text: first, as LLaVA
        marked = f"{getattr(processor, 'image_token', '')}\n{prompt}"
        inputs = processor(
            images=probe, text=[marked], add_special_tokens=special, return_tensors="pt"
        )
    inputs = {k: v for k, v in inputs.items() if k != "labels"}  # PaliGemma adds labels
    extra = sorted(set(inputs) - FIXED_INPUTS)
    pixels = inputs.get("pixel_values")
    if extra or pixels is None or pixels.dim() != 4:
        found = (
            ", ".join(extra) or f"pixel_values {None if pixels is None else tuple(pixels.shape)}"
        )
        raise ConfigError(
            f"captioner {name!r} takes per-image inputs ({found}); "
            "only fixed-resolution image-text-to-text models can caption here"
        )
    if image_token_id is not None and image_token_id not in inputs["input_ids"]:
        raise ConfigError(
            f"captioner {name!r}: its processor puts no image token (id {image_token_id}) in the "
            "prompt, so the model would not see the image (a BLIP-2 processor needs "
            "num_query_tokens)"
        )
    return {k: v for k, v in inputs.items() if k != "pixel_values"}


@dataclass
class PromptedCaptioner(blip.OnDevice):
    """An image-text-to-text model (BLIP-2, LLaVA, ...) as CapFilt's captioner."""

    model: torch.nn.Module
    processor: object  # its AutoProcessor: image processor, tokenizer, chat template
    family: str  # the checkpoint's model_type ("blip-2", "llava", ...)
    prompts: dict = field(default_factory=dict, repr=False)  # prompt -> `prompt_inputs`

    def to_device(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values.to(self.device, self.dtype, non_blocking=True)

    def generate(
        self, pixel_values: torch.Tensor, sampling: Sampling, seed: int | list[int] = 0
    ) -> list[list[str]]:
        """`sampling.num_captions` nucleus-sampled captions per image, as
        `blip.Captioner.generate` (same arguments, same per-image streams): the new tokens
        only, special tokens dropped, whitespace normalised.

        pixel_values: (images, 3, H, W). Each caption row runs the vision tower on its own
        image copy (HF's generate expands the image inputs per row), so K captions cost K
        image encodings, where BLIP's path encodes an image once.
        """
        num_images, num_captions = pixel_values.shape[0], sampling.num_captions
        if num_captions <= 0 or num_images == 0:
            return [[] for _ in range(num_images)]
        keys = blip.caption_keys(num_images, num_captions, seed)
        rows = len(keys)
        # Every row starts from the same prompt of the same length, so the sampler's step
        # (input_ids' length) counts generated tokens plus a constant, whatever the batch.
        if sampling.prompt not in self.prompts:
            token = image_token(self.model.config)
            self.prompts[sampling.prompt] = prompt_inputs(self.processor, sampling.prompt, token)
        text = {
            k: v.to(self.device).expand(rows, -1) for k, v in self.prompts[sampling.prompt].items()
        }
        pixels = self.to_device(pixel_values).repeat_interleave(num_captions, dim=0)
        sampler = blip.PerRowSampler(keys, sampling.top_p, self.device)
        with torch.inference_mode():
            sequences = self.model.generate(
                **text,
                pixel_values=pixels,
                do_sample=False,  # PerRowSampler draws; greedy decoding then takes its pick
                num_beams=1,
                repetition_penalty=sampling.repetition_penalty,
                min_new_tokens=sampling.min_new_tokens,
                max_new_tokens=sampling.max_new_tokens,
                logits_processor=[sampler],
            )
        if not self.model.config.get_text_config().is_encoder_decoder:
            sequences = sequences[:, text["input_ids"].shape[1] :]  # the prompt comes back too
        decoded = self.processor.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        captions = [" ".join(t.split()) for t in decoded]
        return [captions[i * num_captions : (i + 1) * num_captions] for i in range(num_images)]
