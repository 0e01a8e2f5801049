"""The two CapFilt models: a captioner that samples synthetic captions and a filter that scores
image-text pairs (BLIP, Li et al. 2022, arXiv 2201.12086, sec. 3.3).

- Captioner: BLIP's image-grounded text decoder (`BlipForConditionalGeneration`); captions are
  drawn with nucleus sampling, which the paper found gives more diverse and, after filtering,
  better training data than beam search (sec. 4.3).
- Filter: BLIP's image-grounded text encoder with its ITM head and its unimodal ITC encoders
  (`BlipForImageTextRetrieval`); a text is kept when its match probability passes a threshold.

Both load with `from_pretrained(..., use_safetensors=True)` from a hub id (offline: from the
local Hugging Face cache) or from a folder written by `save_pretrained`. Inputs are
`pixel_values` from `preprocess`; they are moved to the model's device and dtype (`to_device`,
a no-op when the caller already did so, e.g. from pinned memory).
"""

import functools
import hashlib
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.nn.functional import normalize
from transformers import (
    AutoConfig,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipProcessor,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    TopPLogitsWarper,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
from transformers.utils import logging as transformers_logging

from curation.config import ConfigError, Sampling

# "org/name" or a bare legacy name ("bert-base-uncased"): what a Hugging Face hub id looks like.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Image-processor settings that change pixel_values; two processors agreeing on all of them
# produce identical tensors, so the images need preprocessing only once.
PIXEL_KEYS = (
    "do_convert_rgb",
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_pad",
)


class ModelSourceError(ConfigError):
    """A model id or folder that cannot be loaded; the message names it in one line."""


def pick_device() -> tuple[torch.device, torch.dtype]:
    """CUDA with bfloat16 when a GPU is present (BLIP runs well in bf16), else CPU float32."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    return torch.device("cpu"), torch.float32


@contextmanager
def torch_threads(count: int):
    """torch's intra-op thread count set to `count` (0: left as it is) inside the block, then
    restored; the count in use is yielded. See `[sharding] torch_threads` for why."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _looks_like_path(source: str) -> bool:
    """True for strings meant as a local folder rather than a hub id."""
    if source.startswith((".", "/", "~")) or (os.altsep and os.altsep in source):
        return True
    return os.sep in source and not HUB_ID.match(source)


def _resolve(source: str) -> str:
    """`source` with '~' expanded when that names an existing local path, else unchanged."""
    expanded = os.path.expanduser(source)
    return expanded if os.path.exists(expanded) else source


def _check_folder(folder: Path) -> None:
    """A save_pretrained folder must hold config.json and safetensors weights."""
    if not folder.is_dir():
        raise ModelSourceError(f"model path {folder} is a file, not a checkpoint folder")
    if not (folder / "config.json").is_file():
        raise ModelSourceError(f"model folder {folder} has no config.json (not a checkpoint)")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.safetensors.index.json")):
        raise ModelSourceError(f"model folder {folder} has no .safetensors weights")


def check_model_source(id_or_dir: str, allow_download: bool = False) -> None:
    """Fail fast, with one line naming the problem, on a model source that cannot load.

    A local folder must exist and hold a checkpoint; anything else is a hub id, which must be
    in the local Hugging Face cache: there is no network on the machines this runs on, and
    without `allow_download` the check never touches it (a miss would otherwise spend ~25 s
    in huggingface_hub's retries before failing).
    """
    if not id_or_dir.strip():
        raise ModelSourceError("model source is empty: give a hub id or a checkpoint folder")
    local = Path(os.path.expanduser(id_or_dir))
    if local.exists():
        return _check_folder(local)
    if _looks_like_path(id_or_dir) or not HUB_ID.match(id_or_dir):
        raise ModelSourceError(f"model folder not found: {id_or_dir}")
    try:
        AutoConfig.from_pretrained(id_or_dir, local_files_only=not allow_download)
    except (OSError, ValueError, KeyError) as err:
        where = "could not be downloaded" if allow_download else "there is no network"
        raise ModelSourceError(
            f"model {id_or_dir!r} is neither a local folder nor in the local Hugging Face cache, "
            f"and {where}; pass a checkpoint folder instead ({type(err).__name__})"
        ) from None


# What each CapFilt role loads, by the checkpoint's model_type: the architecture it must be.
# Captioners: every transformers image-text-to-text family ("blip" is BLIP's own decoder).
FAMILIES = {
    "captioner": dict(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES),
    "filter": {"blip": "BlipForImageTextRetrieval", "clip": None, "siglip": None},
}
ROLE_FAMILIES = {
    "captioner": "BLIP or a transformers image-text-to-text model (BLIP-2, LLaVA, ...)",
    "filter": "blip, clip or siglip",
}


def check_family(id_or_dir: str, role: str) -> str:
    """The checkpoint's model_type, when `role` ("captioner" | "filter") can load it; after
    `check_model_source`, from config.json alone (no weights read).

    Raises:
        ModelSourceError: one line, for a config that asks for remote code (`auto_map`; never
            run), a model_type the role does not load, or the wrong architecture of a family
            (a captioner given as filter).
    """
    try:
        config = AutoConfig.from_pretrained(_resolve(id_or_dir), local_files_only=True)
    except ValueError as err:  # an unknown model_type: only remote code could load it
        raise ModelSourceError(f"{role} {id_or_dir!r}: {str(err).splitlines()[0]}") from None
    if getattr(config, "auto_map", None):
        raise ModelSourceError(f"{role} {id_or_dir!r} asks for remote code (auto_map); not run")
    families = FAMILIES[role]
    if config.model_type not in families:
        raise ModelSourceError(
            f"{role} {id_or_dir!r} has model_type {config.model_type!r}; a {role} is "
            f"{ROLE_FAMILIES[role]}"
        )
    needed = families[config.model_type]
    if needed and needed not in (config.architectures or [needed]):
        raise ModelSourceError(
            f"{role} {id_or_dir!r} is a {', '.join(config.architectures)}, not a {needed}"
        )
    return config.model_type


def captioner_text_limits(captioner_id: str) -> tuple[int, PreTrainedTokenizerBase]:
    """(text position embeddings, tokenizer) of a captioner, read from its config and
    tokenizer files only; `check_model_source` first."""
    source = _resolve(captioner_id)
    text_config = AutoConfig.from_pretrained(source, local_files_only=True).text_config
    tokenizer = BlipProcessor.from_pretrained(source, local_files_only=True).tokenizer
    return text_config.max_position_embeddings, tokenizer


def check_caption_length(positions: int, tokenizer, sampling: Sampling) -> None:
    """Refuse, in one line, a `max_new_tokens` the captioner cannot decode: the prompt and the
    new tokens must fit its `positions` text position embeddings (beyond them the embedding
    lookup fails with "index out of range" in the middle of CapFilt)."""
    prompt = len(tokenizer(sampling.prompt)["input_ids"]) - 1  # [SEP] is dropped to continue
    if prompt + sampling.max_new_tokens > positions:
        raise ConfigError(
            f"[capfilt] max_new_tokens = {sampling.max_new_tokens} does not fit the captioner: "
            f"it reads {positions} positions and the prompt takes {prompt}, so at most "
            f"{positions - prompt}"
        )


def preprocess(processor: BlipProcessor, pil_images: list[Image.Image]) -> torch.Tensor:
    """RGB PIL images -> pixel_values (N, 3, H, W) float32 on CPU (runs in DataLoader workers),
    with the processor's image settings (any fixed-resolution model's).

    BLIP's preprocessing: bicubic resize to the model's square input, rescale to [0, 1],
    normalise with CLIP's mean/std.
    """
    if not pil_images:  # (0, 3, H, W) at the model's input size, whatever its size settings
        probe = Image.new("RGB", (8, 8))
        return preprocess(processor, [probe])[:0]
    pixel_values = processor.image_processor(images=pil_images, return_tensors="pt")
    return pixel_values["pixel_values"].float()


def image_processor_config(processor: BlipProcessor) -> dict:
    """The settings that determine pixel_values, for comparing two models' preprocessing.

    `image_processor_config(captioner.processor) == image_processor_config(filter.processor)`
    means one preprocessed tensor can feed both models.
    """
    settings = processor.image_processor.to_dict()
    return {key: _plain(settings.get(key)) for key in PIXEL_KEYS}


def _plain(value):
    """Tuples/SizeDicts -> lists/dicts so equal settings compare equal."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if hasattr(value, "items"):
        return {k: v for k, v in dict(value).items() if v is not None}
    return value


class OnDevice:
    """Where the wrapped `self.model` lives (shared by the CapFilt models and the scorers)."""

    model: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


@dataclass
class _Loaded(OnDevice):
    """A BLIP model in eval mode on its device/dtype, with the processor it was saved with."""

    model: torch.nn.Module
    processor: BlipProcessor

    def to_device(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Move CPU float32 pixel_values to the model's device and dtype."""
        return pixel_values.to(self.device, self.dtype, non_blocking=True)

    def tokenize(self, texts: list[str], max_tokens: int) -> dict[str, torch.Tensor]:
        """[CLS] text [SEP], padded to the longest and truncated to max_tokens, on device.

        Each text is first cut to `readable_chars(max_tokens)` characters: the tokenizer would
        read a 10 MB alt-text whole (seconds and gigabytes) to keep its first tokens.
        """
        cut = [t[: readable_chars(max_tokens)] for t in texts]
        tokens = self.processor.tokenizer(
            cut, padding="longest", truncation=True, max_length=max_tokens, return_tensors="pt"
        )
        return {k: tokens[k].to(self.device) for k in ("input_ids", "attention_mask")}


# BERT's WordPiece reads a word of at most 100 characters (longer: one [UNK]), so N tokens
# never span more than N words of 100 characters and their separators (runs of whitespace
# aside, which only make the cut keep fewer tokens).
MAX_WORD_CHARS = 100


def readable_chars(max_tokens: int) -> int:
    """Characters of a text that can reach its first `max_tokens` tokens (an upper bound)."""
    return max_tokens * (MAX_WORD_CHARS + 1)


@dataclass
class Captioner(_Loaded):
    """BLIP's image-grounded text decoder, used to write synthetic captions (CapFilt's Cap)."""

    model: BlipForConditionalGeneration
    family = "blip"  # which model wrote a run's synthetic captions (the others: their model_type)

    def generate(
        self, pixel_values: torch.Tensor, sampling: Sampling, seed: int | list[int] = 0
    ) -> list[list[str]]:
        """`sampling.num_captions` nucleus-sampled captions per image, prompt removed.

        pixel_values: (images, 3, H, W). Sampling follows BLIP's `generate(sample=True)`: top_k
        off, top_p 0.9, repetition penalty 1.1, decoding from "[DEC] a picture of". `seed` is
        one seed per image (an int: the same for all): an image's captions depend on its seed
        alone, not on the other images in the batch (`PerRowSampler`). The global torch RNG is
        not touched.
        """
        num_images, num_captions = pixel_values.shape[0], sampling.num_captions
        if num_captions <= 0 or num_images == 0:  # K = 0: no copy to the device either
            return [[] for _ in range(num_images)]
        pixel_values = self.to_device(pixel_values)  # no-op when already there
        # (1, P): [CLS] .. [SEP]
        prompt_ids = self.tokenize([sampling.prompt], max_tokens=64)["input_ids"]
        keys = caption_keys(num_images, num_captions, seed)
        rows = len(keys)
        sampler = PerRowSampler(keys, sampling.top_p, self.device)
        text = self.model.config.text_config
        input_ids = prompt_ids.repeat(rows, 1)[:, :-1]  # drop [SEP]: the prompt is continued
        input_ids[:, 0] = text.bos_token_id  # [CLS] -> [DEC], as BlipForConditionalGeneration
        with torch.inference_mode():
            image_embeds = self.model.vision_model(pixel_values=pixel_values)[0]
            image_embeds = image_embeds.repeat_interleave(num_captions, dim=0)  # (rows, N, D)
            sequences = self.model.text_decoder.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=torch.ones(
                    image_embeds.shape[:-1], dtype=torch.long, device=self.device
                ),
                eos_token_id=text.sep_token_id,
                pad_token_id=text.pad_token_id,
                do_sample=False,  # PerRowSampler draws; greedy decoding then takes its pick
                repetition_penalty=sampling.repetition_penalty,
                min_new_tokens=sampling.min_new_tokens,
                max_new_tokens=sampling.max_new_tokens,
                logits_processor=LogitsProcessorList([sampler]),
            )  # (rows, P - 1 + new)
        texts = self._strip_prompt(sequences, prompt_ids)
        return [texts[i * num_captions : (i + 1) * num_captions] for i in range(num_images)]

    def _strip_prompt(self, sequences: torch.Tensor, prompt_ids: torch.Tensor) -> list[str]:
        """Decode, drop special tokens and the decoded prompt prefix, normalise whitespace."""
        decode = self.processor.tokenizer.batch_decode
        prompt_text = decode(prompt_ids, skip_special_tokens=True)[0].strip()
        captions = []
        for text in decode(sequences, skip_special_tokens=True):
            text = " ".join(text.split())
            if text.startswith(prompt_text):  # BLIP: caption[len(prompt):]
                text = text[len(prompt_text) :].strip()
            captions.append(text)
        return captions


def caption_keys(num_images: int, num_captions: int, seed: int | list[int]) -> list[tuple]:
    """One (image seed, caption index) per caption row, image-major: image i's captions are
    rows i*K .. i*K+K-1. `seed`: one per image, or an int for all."""
    seeds = [seed] * num_images if isinstance(seed, int) else list(seed)
    return [(s, k) for s in seeds for k in range(num_captions)]


class PerRowSampler(LogitsProcessor):
    """Nucleus sampling with one random stream per generated row, via the Gumbel-max trick.

    HF's sampler draws the whole batch from one generator, so a caption would depend on which
    other images share its batch (and so on shard size and worker). Here row r's noise is a
    counter-based hash of (keys[r], step, token id) (`gumbel_noise`): top-p keeps the nucleus,
    that Gumbel noise is added, and greedy decoding's argmax is then an exact sample from the
    renormalised nucleus (Gumbel-max: Maddison et al. 2014, arXiv 1411.0030; Huijben et al.
    2022 review). Runs after HF's repetition and length processors.

    keys: one (image seed, caption index) per row of the scores it will see (rows in the order
    `generate` builds them). The step is input_ids.shape[1], the position of the token being
    chosen: every row of every batch starts from the same prompt, so it is the number of
    tokens generated so far plus a constant, whatever the batch (no state: a sampler can be
    reused). A row's noise thus depends on its key and step alone, never on the other rows,
    and one step is a fixed handful of batched kernels on the scores' device, whatever the
    batch size (the per-row torch generators it replaces launched ~3 kernels per row).
    An integer hash is device-independent: the uniforms are bit for bit the same on CPU and
    CUDA (torch's CPU and CUDA generators give unrelated streams), so equal scores give the
    same draw on both, short of a near-tie that the last bit of `log` decides. (The models'
    scores themselves differ between devices and dtypes, so captions still may.)

    Raises ValueError when scores has a different number of rows than keys (e.g. beam search,
    whose rows are not one caption each).
    """

    def __init__(
        self, keys: list[tuple[int, int]], top_p: float, device: torch.device | str = "cpu"
    ):
        self.top_p = TopPLogitsWarper(top_p=top_p) if top_p < 1.0 else None
        rows = [_row_key(seed, k) for seed, k in keys]  # hashed once here
        self.row_keys = torch.tensor(rows, dtype=torch.int64, device=device).reshape(-1, 2)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != self.row_keys.shape[0]:
            raise ValueError(
                f"PerRowSampler has {self.row_keys.shape[0]} row keys but got scores for "
                f"{scores.shape[0]} rows (one key per generated sequence; no beam search)"
            )
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        keys = self.row_keys.to(scores.device)  # no-op when built on the scores' device
        noise = gumbel_noise(keys, input_ids.shape[1], scores.shape[1])  # (rows, vocab)
        return noise.add_(scores)  # float32 (bf16 scores promote): -inf outside the nucleus


# Multipliers of Wellons' "lowbias32" integer hash (hash-prospector, 2018: an avalanche bias
# of 0.17, below murmur3's fmix32). The second is above 2**31: it is used as its negative
# residue mod 2**32, so that every product of a 32-bit value fits in int64 without wrapping.
MIX_MUL = (0x7FEB352D, 0x846CA68B - (1 << 32))
MASK32 = 0xFFFF_FFFF
STEP_SALT, TOKEN_SALT = 0x9E3779B9, 0x85EBCA6B  # any constants: keep steps and tokens apart
UNIFORM_BITS = 24  # float32's significand: u = k / 2**24 is exact


def mix32(x: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """lowbias32 in place on int64 values in [0, 2**32): x ^= x >> 16; x *= M1 (mod 2**32); ...

    A bijection of [0, 2**32) in which every output bit depends on every input bit. No step
    overflows int64 (|x * m| < 2**63), so the result is exact and the same on any device;
    `mix32_int` is the reference. `scratch`: a buffer of x's shape for the shifts.
    """
    scratch = torch.empty_like(x) if scratch is None else scratch
    for shift, mul in ((16, MIX_MUL[0]), (15, MIX_MUL[1]), (16, None)):
        x.bitwise_xor_(torch.bitwise_right_shift(x, shift, out=scratch))
        if mul is not None:
            x.mul_(mul).bitwise_and_(MASK32)  # two's complement: the low 32 bits of x * m
    return x


def mix32_int(x: int) -> int:
    """`mix32` of one Python int, in plain unsigned 32-bit arithmetic (the reference)."""
    for shift, mul in ((16, MIX_MUL[0]), (15, MIX_MUL[1]), (16, None)):
        x ^= x >> shift
        if mul is not None:
            x = (x * (mul & MASK32)) & MASK32
    return x


@functools.lru_cache(maxsize=8)
def _token_hashes(vocab: int, device: torch.device) -> torch.Tensor:
    """mix32(token id ^ TOKEN_SALT) for every token id (cached: the same at every step).
    (vocab,) int64"""
    return mix32(torch.arange(vocab, dtype=torch.int64, device=device).bitwise_xor_(TOKEN_SALT))


def gumbel_noise(row_keys: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """Standard Gumbel noise -log(-log(u)) of `hashed_uniforms`. (rows, vocab) float32"""
    return hashed_uniforms(row_keys, step, vocab).log_().neg_().log_().neg_()


def hashed_uniforms(row_keys: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """A uniform in (0, 1) for each (row, token id) at decoding `step`. (rows, vocab) float32

    row_keys: (rows, 2) int64, two 32-bit words per row (`_row_key`). Counter-based: the
    value at (r, t) is a function of (row_keys[r], step, t) alone, mixed in two stages: a
    row-step state s = mix32(hi ^ mix32(lo ^ mix32(step ^ STEP_SALT))) that absorbs all 64
    bits of the key (a 32-bit key would repeat a whole stream for two images in ~2**16), then
    h = mix32(s ^ mix32(t ^ TOKEN_SALT)); that second mix decorrelates rows whose states
    differ in a few bits. The first stage costs O(rows), the second O(rows * vocab).
    The top 24 bits of h make u = k / 2**24 (torch.rand's float32 grid) with k = 0 raised to
    0.5, so u is in (0, 1) open (a Gumbel of 0 would be -inf) and 2**24 - 1 values apart.
    """
    device = row_keys.device
    low, high = row_keys[:, 0], row_keys[:, 1]
    state = mix32(high ^ mix32(low ^ mix32_int((step ^ STEP_SALT) & MASK32)))  # (rows,)
    bits = state[:, None] ^ _token_hashes(vocab, device)[None, :]  # (rows, vocab)
    bits = mix32(bits).bitwise_right_shift_(32 - UNIFORM_BITS)
    return bits.float().clamp_(min=0.5).mul_(2.0**-UNIFORM_BITS)


def _row_key(seed: int, caption_index: int) -> tuple[int, int]:
    """(low, high) 32-bit words of a 64-bit blake2b digest of (image seed, caption index)."""
    digest = hashlib.blake2b(repr((seed, caption_index)).encode(), digest_size=8).digest()
    word = int.from_bytes(digest, "little")
    return word & MASK32, word >> 32


@dataclass
class Filter(_Loaded):
    """BLIP's filter: ITM match probability and ITC cosine similarity per image-text pair."""

    model: BlipForImageTextRetrieval
    family = "blip_itm"  # which model judged a run's texts (the contrastive filters: their own)

    def score(
        self,
        pixel_values: torch.Tensor,
        texts: list[list[str]],
        max_text_tokens: int = 35,
    ) -> tuple[list[list[float]], list[list[float]]]:
        """For image i and each text in texts[i]: (ITM probabilities, ITC cosine similarities).

        Equals `BlipForImageTextRetrieval.forward` with `use_itm_head=True` (softmax, class 1)
        and `use_itm_head=False`, but runs the vision encoder once per image and each text
        encoder once per text, instead of once per pair. Texts are truncated to
        `max_text_tokens` (35 in BLIP's ITM/retrieval code). Images with no texts get [].
        """
        pixel_values = self.to_device(pixel_values)  # no-op when already there
        counts = [len(t) for t in texts]  # texts per image
        flat = [t for per_image in texts for t in per_image]
        if not flat:
            return [[] for _ in texts], [[] for _ in texts]
        with torch.inference_mode():
            used = [i for i, n in enumerate(counts) if n]
            if len(used) < len(counts):
                pixel_values = pixel_values[torch.tensor(used, device=pixel_values.device)]
            image_embeds = self.model.vision_model(pixel_values=pixel_values)[0]
            # (B', 1 + patches, Dv) for the B' images that have texts
            owner = torch.repeat_interleave(
                torch.arange(len(used), device=self.device),
                torch.tensor([n for n in counts if n], device=self.device),
            )  # (T,) index of each text's image in image_embeds
            tokens = self.tokenize(flat, max_text_tokens)  # (T, L)
            itm = self._itm_probs(image_embeds, owner, tokens).tolist()
            itc = self._itc_sims(image_embeds, owner, tokens).tolist()
        return _split(itm, counts), _split(itc, counts)

    def _itm_probs(
        self, image_embeds: torch.Tensor, owner: torch.Tensor, tokens: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """P(match) from the image-grounded text encoder's [CLS] through the ITM head. (T,)"""
        pair_embeds = image_embeds[owner]  # (T, 1 + patches, Dv): repeat_interleave by owner
        pair_mask = torch.ones(pair_embeds.shape[:-1], dtype=torch.long, device=self.device)
        hidden = self.model.text_encoder(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            encoder_hidden_states=pair_embeds,
            encoder_attention_mask=pair_mask,
        ).last_hidden_state  # (T, L, Dt)
        logits = self.model.itm_head(hidden[:, 0, :])  # (T, 2): [no match, match]
        return logits.float().softmax(dim=-1)[:, 1]

    def _itc_sims(
        self, image_embeds: torch.Tensor, owner: torch.Tensor, tokens: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Cosine similarity of the projected unimodal image and text [CLS] features. (T,)"""
        image_feat = normalize(self.model.vision_proj(image_embeds[:, 0, :]), dim=-1)  # (B', E)
        hidden = self.model.text_encoder(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).last_hidden_state  # (T, L, Dt), text only: no cross-attention
        text_feat = normalize(self.model.text_proj(hidden[:, 0, :]), dim=-1)  # (T, E)
        return (image_feat[owner] * text_feat).sum(dim=-1).float()


def _split(values: list[float], counts: list[int]) -> list[list[float]]:
    """Flat per-text values -> one list per image, following `counts`."""
    out, start = [], 0
    for n in counts:
        out.append(values[start : start + n])
        start += n
    return out


def load_model(cls, id_or_dir: str, device: torch.device, dtype: torch.dtype):
    """`cls.from_pretrained` with safetensors only (never remote code), in eval mode on
    device/dtype. ModelSourceError (one line) when weights of `cls` are missing."""
    source = _resolve(id_or_dir)
    transformers_logging.disable_progress_bar()  # a bar per load would drown the run's progress
    model, info = cls.from_pretrained(
        source, use_safetensors=True, dtype=dtype, output_loading_info=True
    )
    if info["missing_keys"]:  # e.g. a captioner given as --filter: its heads would be random
        missing = sorted(info["missing_keys"])
        raise ModelSourceError(
            f"{id_or_dir} is not a {cls.__name__} checkpoint: {len(missing)} weights missing "
            f"(first: {missing[0]})"
        )
    return model.to(device=device, dtype=dtype).eval()


def load_captioner(id_or_dir: str, device: torch.device, dtype: torch.dtype) -> Captioner:
    """The captioner from a hub id (default Salesforce/blip-image-captioning-large) or folder."""
    model = load_model(BlipForConditionalGeneration, id_or_dir, device, dtype)
    return Captioner(model=model, processor=BlipProcessor.from_pretrained(_resolve(id_or_dir)))


def load_filter(id_or_dir: str, device: torch.device, dtype: torch.dtype) -> Filter:
    """The filter from a hub id (default Salesforce/blip-itm-large-coco) or folder."""
    model = load_model(BlipForImageTextRetrieval, id_or_dir, device, dtype)
    return Filter(model=model, processor=BlipProcessor.from_pretrained(_resolve(id_or_dir)))
