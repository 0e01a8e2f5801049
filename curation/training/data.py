"""Training data: (image, text) pairs read from a run or a clean set, decoded, preprocessed
and tokenized once, and sliced into batches; the pairs' digest that a resume checks."""

import hashlib
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from transformers import BlipProcessor

from curation.config import CapFiltConfig, ConfigError, DedupConfig, TrainConfig
from curation.models.blip import preprocess
from curation.pipeline import duplicates
from curation.pipeline.images import decode_image
from curation.rundir import RunDir

MIN_IMAGE_SIDE = 8  # as CapFiltConfig.min_image_side: smaller images are not training data
MAX_IMAGE_PIXELS = CapFiltConfig().max_image_pixels  # the curation run's bomb guard
PREPROCESS_CHUNK = 256  # images per preprocess call: bounds peak memory of the PIL -> tensor step


def pairs_from_curated(run_dir: str | Path) -> list[tuple[bytes, str]]:
    """(image bytes, text) for every KEPT candidate of every curated row (shards/*.parquet).

    BLIP pre-trains on the bootstrapped set: each web or synthetic text that passed the
    filter is a training pair with its image (sec. 3.3), not only the row's chosen caption.
    """
    pairs = []
    for path in RunDir.of(run_dir).shard_files("shards"):
        table = pq.read_table(path, columns=["image", "candidates"])
        for image, candidates in zip(*table.to_pydict().values(), strict=True):
            kept = [c["text"] for c in candidates or [] if c["kept"] and (c["text"] or "").strip()]
            pairs.extend((image, text) for text in kept)
    return pairs


def pairs_from_raw(
    run_dir: str | Path, dedup: DedupConfig | None = None
) -> list[tuple[bytes, str]]:
    """(image bytes, web text) for every downloaded image with non-empty alt-text (raw/),
    except near duplicates of the images of ``dedup.decontaminate`` (eval_overlap).

    Round 0 of the loop: BLIP's first model learns from the noisy web as it is.
    """
    pairs = []
    for path in RunDir.of(run_dir).shard_files("raw"):
        table = pq.read_table(path, columns=["image", "web_text", "status"])
        table = table.filter(pc.equal(table["status"], "success"))
        images, texts = table["image"].to_pylist(), table["web_text"].to_pylist()
        pairs += [(i, t) for i, t in zip(images, texts, strict=True) if t and t.strip()]
    if dedup is not None and dedup.decontaminate:
        leaks = duplicates.eval_copies([i for i, _ in pairs], dedup)
        pairs = [pair for pair, leak in zip(pairs, leaks, strict=True) if not leak]
    return pairs


def web_texts(run_dir: str | Path) -> list[str]:
    """The alt-text of every downloaded image (raw/), without reading the images: the pool of
    `[train] web_negatives` and of the held-out calibration's web negatives."""
    texts = []
    for path in RunDir.of(run_dir).shard_files("raw"):
        table = pq.read_table(path, columns=["web_text", "status"])
        table = table.filter(pc.equal(table["status"], "success"))
        texts += [t for t in table["web_text"].to_pylist() if t and t.strip()]
    return texts


def require_columns(path: str | Path, role: str, columns: tuple[str, ...]) -> list[str]:
    """Check, before any work, that `path` is a Parquet file holding `columns`; returns all its
    column names. `role` names the file in the message ("clean set", "eval set", ...).

    Raises:
        ConfigError: one line naming the file and what is wrong with it.
    """
    if not Path(path).is_file():
        raise ConfigError(f"{role} not found: {path}")
    try:
        names = pq.read_schema(path).names
    except (OSError, ValueError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise ConfigError(f"{role} {path} is not a Parquet file: {err}") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise ConfigError(
            f"{role} {path} lacks column(s) {', '.join(missing)} "
            f"(needs {', '.join(columns)}; has {', '.join(names) or 'none'})"
        )
    return names


def check_captioned_set(path: str | Path, role: str) -> None:
    """A clean or eval set: `image` (encoded bytes) and `caption`, several rows per image
    allowed; `image_id` optional (rows with identical image bytes are one image)."""
    require_columns(path, role, ("image", "caption"))


def pairs_from_clean(clean_parquet: str | Path) -> list[tuple[bytes, str]]:
    """(image bytes, caption) rows of a clean, human-captioned-like set (BLIP's COCO role)."""
    table = pq.read_table(clean_parquet, columns=["image", "caption"])
    images, captions = table["image"].to_pylist(), table["caption"].to_pylist()
    return [(i, c) for i, c in zip(images, captions, strict=True) if c and c.strip()]


@dataclass
class PairData:
    """Pairs decoded and preprocessed once: each distinct image one row of `pixels`."""

    pixels: torch.Tensor  # (I, 3, H, W) float32 pixel_values, one row per distinct image
    image_of: torch.Tensor  # (N,) long: the pixels row of each pair = its image id
    text_of: torch.Tensor  # (N,) long: an id per distinct text (equal texts, equal ids)
    texts: list[str]  # (N,) the pairs' texts
    skipped: int  # pairs dropped because their image did not decode
    digest: str  # sha256 over all pairs, part of the resume fingerprint


def pixels_of(images: list[bytes], processor: BlipProcessor) -> tuple[torch.Tensor, list[int]]:
    """Decode (`decode_image`, the run's guards) and preprocess images in chunks that bound peak
    memory: (pixels of the decodable ones (I, 3, H, W), their indices in `images`)."""
    decoded = [decode_image(data, MIN_IMAGE_SIDE, MAX_IMAGE_PIXELS).image for data in images]
    ok = [i for i, image in enumerate(decoded) if image is not None]
    starts = range(0, len(ok), PREPROCESS_CHUNK)
    chunks = [
        preprocess(processor, [decoded[i] for i in ok[j : j + PREPROCESS_CHUNK]]) for j in starts
    ]
    return (torch.cat(chunks) if chunks else preprocess(processor, [])), ok


def prepare_pairs(pairs: Iterable[tuple[bytes, str]], processor: BlipProcessor) -> PairData:
    """Decode every distinct image once (`pixels_of`), preprocess once, index the pairs.

    Undecodable images (and their pairs) are skipped and counted, never raised.
    """
    pairs = list(pairs)
    distinct = list(dict.fromkeys(data for data, _ in pairs))
    pixels, ok = pixels_of(distinct, processor)  # (I, 3, H, W)
    row_of = {distinct[i]: row for row, i in enumerate(ok)}  # image bytes -> pixels row
    kept = [(row_of[data], text) for data, text in pairs if data in row_of]
    image_index = torch.tensor([row for row, _ in kept], dtype=torch.long)
    texts = [text for _, text in kept]
    text_ids: dict[str, int] = {}
    text_index = torch.tensor([text_ids.setdefault(t, len(text_ids)) for t in texts])
    skipped = len(pairs) - len(kept)
    return PairData(pixels, image_index, text_index, texts, skipped, pairs_digest(pairs))


# Function words are left in place: swapping "a" and "of" says nothing about the image.
FUNCTION_WORDS = frozenset(
    "a an the of in on at to and or with without for from by is are this that its it".split()
)


def compositional_negative(text: str, vocabulary: list[str], rng: random.Random) -> str | None:
    """A text that reads like `text` but no longer describes its image (NegCLIP, Yuksekgonul et
    al. 2023, arXiv 2210.01936): two different content words swapped, or one content word
    replaced by another word of `vocabulary`. Whitespace words; None when `text` has no
    content word to change."""
    words = text.split()
    content = [i for i, w in enumerate(words) if w.lower() not in FUNCTION_WORDS]
    swappable = [(i, j) for i in content for j in content if i < j and words[i] != words[j]]
    if swappable and rng.random() < 0.5:
        i, j = rng.choice(swappable)
        words[i], words[j] = words[j], words[i]
        return " ".join(words)
    others = [w for w in vocabulary if w not in words]
    if not content or not others:
        return None
    words[rng.choice(content)] = rng.choice(others)
    return " ".join(words)


def negatives_for(texts: list[str], seed: int) -> list[str]:
    """One compositional negative per text (the text itself, masked out later, when none can
    be made); the same texts and seed give the same negatives."""
    rng = random.Random(seed)
    vocabulary = sorted({w for t in texts for w in t.split() if w.lower() not in FUNCTION_WORDS})
    return [compositional_negative(t, vocabulary, rng) or t for t in texts]


@dataclass
class Tokens:
    """The pairs' texts tokenized once, for the encoders and (with the prompt) the decoder."""

    ids: torch.Tensor  # (N, L) [CLS] text [SEP] [PAD]..., for ITC and ITM
    mask: torch.Tensor  # (N, L)
    lm_ids: torch.Tensor  # (N, L') [DEC] prompt text [SEP] [PAD]...
    lm_mask: torch.Tensor  # (N, L')
    lm_labels: torch.Tensor  # (N, L') lm_ids with prompt and padding set to -100 (not scored)
    neg_ids: torch.Tensor | None = None  # (N, L'') compositional negatives, when asked for
    neg_mask: torch.Tensor | None = None
    neg_valid: torch.Tensor | None = None  # (N,) bool: the negative differs from the text
    web_ids: torch.Tensor | None = None  # (W, L) web texts drawn as ITM negatives
    web_mask: torch.Tensor | None = None


def tokenize_pairs(
    texts: list[str], tokenizer, cfg: TrainConfig, web_texts: list[str] | None = None
) -> Tokens:
    """Tokenize once. The decoder's input starts with [DEC] (BLIP's bos) instead of [CLS], as
    `BlipForConditionalGeneration.generate` does; the prompt is not scored (BLIP's captioning
    fine-tuning masks `prompt_length` tokens), so the captioner continues "a picture of".
    `web_texts` (the web's alt-text) are tokenized as a pool of ITM negatives when
    `cfg.web_negatives` asks for them."""

    def encode(batch: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tokenizer(
            batch,
            padding="longest",
            truncation=True,
            max_length=cfg.max_text_tokens,
            return_tensors="pt",
        )
        return enc["input_ids"], enc["attention_mask"]

    ids, mask = encode(texts)
    lm_ids, lm_mask = encode([cfg.prompt + t for t in texts])
    prompt_length = len(tokenizer(cfg.prompt.strip())["input_ids"]) - 1  # [CLS] + prompt words
    lm_ids[:, 0] = tokenizer.bos_token_id  # [CLS] -> [DEC]
    labels = lm_ids.masked_fill(lm_mask == 0, -100)
    labels[:, :prompt_length] = -100
    tokens = Tokens(ids, mask, lm_ids, lm_mask, labels)
    if cfg.compositional_negatives:
        negatives = negatives_for(texts, cfg.seed)
        tokens.neg_ids, tokens.neg_mask = encode(negatives)
        tokens.neg_valid = torch.tensor([n != t for n, t in zip(negatives, texts, strict=True)])
    pool = web_negative_pool(web_texts or [], texts) if cfg.web_negatives else []
    if pool:  # (an all-blank web gives none)
        tokens.web_ids, tokens.web_mask = encode(pool)
    return tokens


def web_negative_pool(web_texts: list[str], texts: list[str]) -> list[str]:
    """The distinct web texts, less any text that is also a training text (it would be a
    positive of some image): sorted, so the pool does not depend on the web's order."""
    own = set(texts)
    return sorted({t for t in web_texts if t and t.strip() and t not in own})


@dataclass
class Batch:
    pixels: torch.Tensor  # (B, 3, H, W)
    positive: torch.Tensor  # (B, B) bool: pair j's text fits pair i's image (see make_batch)
    ids: torch.Tensor  # (B, L)
    mask: torch.Tensor  # (B, L)
    lm_ids: torch.Tensor  # (B, L')
    lm_mask: torch.Tensor  # (B, L')
    lm_labels: torch.Tensor  # (B, L')
    neg_ids: torch.Tensor | None = None  # (B, L'') compositional negatives (Tokens.neg_ids)
    neg_mask: torch.Tensor | None = None
    neg_valid: torch.Tensor | None = None  # (B,) bool
    web_ids: torch.Tensor | None = None  # (B * k, Lw) web texts as ITM negatives, k per pair
    web_mask: torch.Tensor | None = None


def make_batch(pixels: torch.Tensor, data: PairData, tokens: Tokens, index, device) -> Batch:
    """The pairs at `index`, text padding trimmed to the batch's longest text, on device."""

    def trim(*tensors: torch.Tensor) -> list[torch.Tensor]:
        length = int(tensors[1][index].sum(dim=1).max())  # tensors[1] is the attention mask
        return [t[index, :length].to(device) for t in tensors]

    image_of, text_of = data.image_of[index], data.text_of[index]  # (B,), (B,)
    positive = (image_of[:, None] == image_of[None, :]) | (text_of[:, None] == text_of[None, :])
    ids, mask = trim(tokens.ids, tokens.mask)
    lm_ids, lm_mask, lm_labels = trim(tokens.lm_ids, tokens.lm_mask, tokens.lm_labels)
    images = pixels[image_of.to(pixels.device)].to(device)
    batch = Batch(images, positive.to(device), ids, mask, lm_ids, lm_mask, lm_labels)
    if tokens.neg_ids is not None:
        batch.neg_ids, batch.neg_mask = trim(tokens.neg_ids, tokens.neg_mask)
        batch.neg_valid = tokens.neg_valid[index].to(device)
    return batch


def add_web_negatives(batch: Batch, tokens: Tokens, k: int, generator: torch.Generator) -> None:
    """Give `batch` k web texts per pair, drawn uniformly from the pool with `generator`
    (seeded per step, so a resume draws the same ones), padding trimmed."""
    draws = (len(batch.ids) * k,)
    pick = torch.randint(len(tokens.web_ids), draws, generator=generator, device=generator.device)
    pick = pick.cpu()  # (B * k,) rows of the pool
    length = int(tokens.web_mask[pick].sum(dim=1).max())
    batch.web_ids = tokens.web_ids[pick, :length].to(batch.ids.device)
    batch.web_mask = tokens.web_mask[pick, :length].to(batch.ids.device)


def pairs_digest(pairs: list[tuple[bytes, str]]) -> str:
    """sha256 over every pair's image bytes and text, in order (cheap next to decoding)."""
    digest = hashlib.sha256()
    for data, text in pairs:
        digest.update(hashlib.sha256(data or b"").digest() + text.encode() + b"\0")
    return digest.hexdigest()
