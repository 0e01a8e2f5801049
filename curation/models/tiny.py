"""Small models built from config, for tests, the offline demo and benchmarks.

Nothing can be downloaded here, so the real loading path (`from_pretrained` on a hub id or a
folder) is exercised on models built from a `BlipConfig` with random weights and saved with
`save_pretrained`, exactly as the retraining step saves its checkpoints. Captioner and filter
are separate checkpoints, as Salesforce's are (BLIP, arXiv 2201.12086, sec. 3.3: both are
initialised from the same pre-trained model and fine-tuned separately).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AddedToken,
    BertTokenizerFast,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    BlipImageProcessorPil,
    BlipProcessor,
    CLIPImageProcessorPil,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "data" / "tokenizer"


@dataclass(frozen=True)
class Preset:
    """Sizes of one BLIP variant: a ViT image encoder and a BERT-style text transformer."""

    image_size: int  # input side in pixels (square)
    patch_size: int  # ViT patch side; image_size // patch_size patches per side
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    embed_dim: int  # ITC projection size (image_text_hidden_size)
    max_text_len: int  # text position embeddings: BLIP captions stay under 40 tokens


PRESETS: dict[str, Preset] = {
    # Tests: loads and runs in milliseconds on one CPU core.
    "tiny": Preset(32, 8, 32, 2, 2, 64, 32, 2, 2, 64, 32, 64),
    # CPU benchmarks of CapFilt: a few M parameters, 64 patches per image.
    "small": Preset(64, 8, 192, 4, 4, 768, 192, 4, 4, 768, 128, 64),
    # CPU training (the demo): ~6x faster per example than "small", and on the synthetic world
    # it learnt more within the same minutes (docs/benchmarks.md).
    "mini": Preset(48, 8, 96, 3, 3, 384, 96, 3, 3, 384, 64, 64),
    # BLIP-base sizes (ViT-B/16 at 224 px, BERT-base text) for GPU throughput measurements.
    "base": Preset(224, 16, 768, 12, 12, 3072, 768, 12, 12, 3072, 256, 512),
}


def preset(size: str) -> Preset:
    """The named preset; a ValueError naming the known sizes otherwise."""
    if size not in PRESETS:
        raise ValueError(f"unknown model size {size!r} (known: {', '.join(PRESETS)})")
    return PRESETS[size]


def blip_config(
    size: str,
    vocab_size: int,
    bos_token_id: int,
    sep_token_id: int,
    pad_token_id: int = 0,
) -> BlipConfig:
    """A BlipConfig for `size` whose text side fits a tokenizer of `vocab_size` tokens.

    BLIP's text config defaults to bert-base-uncased ids (bos 30522 = [DEC], sep 102); with a
    small vocabulary they must point inside it. The decoder stops on [SEP] (BLIP's eos).
    """
    p = preset(size)
    vision = dict(
        image_size=p.image_size,
        patch_size=p.patch_size,
        hidden_size=p.vision_hidden,
        num_hidden_layers=p.vision_layers,
        num_attention_heads=p.vision_heads,
        intermediate_size=p.vision_intermediate,
        initializer_range=0.02,  # ViT's init for class/position embeddings (HF default: 1e-10)
    )
    text = dict(
        vocab_size=vocab_size,
        hidden_size=p.text_hidden,
        num_hidden_layers=p.text_layers,
        num_attention_heads=p.text_heads,
        intermediate_size=p.text_intermediate,
        max_position_embeddings=p.max_text_len,
        bos_token_id=bos_token_id,
        eos_token_id=sep_token_id,
        sep_token_id=sep_token_id,
        pad_token_id=pad_token_id,
    )
    return BlipConfig(
        vision_config=vision,
        text_config=text,
        image_text_hidden_size=p.embed_dim,
        projection_dim=p.embed_dim,
    )


def load_tokenizer(tokenizer_dir: str | Path = TOKENIZER_DIR) -> BertTokenizerFast:
    """The shipped WordPiece tokenizer (data/tokenizer, built by scripts/build_tokenizer.py)."""
    return BertTokenizerFast.from_pretrained(str(tokenizer_dir))


def config_for_tokenizer(size: str, tokenizer: BertTokenizerFast) -> BlipConfig:
    """blip_config with the vocabulary size and special-token ids taken from `tokenizer`."""
    return blip_config(
        size,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,  # [DEC]
        sep_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def make_processor(size: str, tokenizer: BertTokenizerFast) -> BlipProcessor:
    """BlipProcessor: BLIP's image preprocessing at the preset's resolution + `tokenizer`."""
    side = preset(size).image_size
    image_processor = BlipImageProcessorPil(size={"height": side, "width": side})
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_blip_checkpoints(
    out_dir: str | Path,
    size: str = "tiny",
    seed: int = 0,
    tokenizer_dir: str | Path = TOKENIZER_DIR,
) -> tuple[Path, Path]:
    """Write randomly initialised `out_dir/captioner` and `out_dir/filter` checkpoints.

    Each folder holds safetensors weights, config.json and the processor files, so
    `curation.models.blip.load_captioner` / `load_filter` read it like a hub id. Returns the two
    paths (captioner, filter). The same seed gives the same weights.
    """
    out = Path(out_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    config = config_for_tokenizer(size, tokenizer)
    processor = make_processor(size, tokenizer)
    paths = (out / "captioner", out / "filter")
    for offset, (cls, path) in enumerate(
        zip((BlipForConditionalGeneration, BlipForImageTextRetrieval), paths, strict=True)
    ):
        torch.manual_seed(seed + offset)  # each checkpoint reproducible on its own
        model = cls(config).eval()
        model.save_pretrained(path)  # safetensors by default
        processor.save_pretrained(path)
    return paths


# The other captioner families at test sizes: one 32 px image tower and one 2-layer language
# model of width 32, reading the shipped WordPiece vocabulary plus an "<image>" placeholder.
TINY_TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TINY_SIDE, TINY_PATCH = 32, 8
# LLaVA-1.5's conversation format ("USER: <image>\n... ASSISTANT:"), as a chat template.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def tokenizer_with_image_token(tokenizer_dir: str | Path) -> tuple[BertTokenizerFast, int]:
    """The shipped tokenizer with an "<image>" placeholder token added, and that token's id."""
    tokenizer = load_tokenizer(tokenizer_dir)
    tokenizer.add_tokens([AddedToken("<image>", normalized=False, special=True)])
    return tokenizer, tokenizer.convert_tokens_to_ids("<image>")


def _language_model(tokenizer: BertTokenizerFast, model_type: str, **sizes) -> dict:
    """A 2-layer decoder's config over `tokenizer`'s ids ([CLS] starts, [SEP] ends)."""
    return dict(
        model_type=model_type,
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )


def save_blip2_captioner(out_dir: str | Path, seed: int = 0, tokenizer_dir=TOKENIZER_DIR) -> Path:
    """A random BLIP-2 captioner (`Blip2ForConditionalGeneration`: ViT, Q-Former with 4 query
    tokens, OPT decoder) with its `Blip2Processor`, saved to `out_dir`; returns `out_dir`."""
    tokenizer, image_token = tokenizer_with_image_token(tokenizer_dir)
    config = Blip2Config(
        vision_config=dict(TINY_TOWER, image_size=TINY_SIDE, patch_size=TINY_PATCH),
        qformer_config=dict(TINY_TOWER, encoder_hidden_size=32),
        text_config=_language_model(tokenizer, "opt", ffn_dim=64, word_embed_proj_dim=32),
        num_query_tokens=4,
        image_token_index=image_token,
    )
    image_processor = BlipImageProcessorPil(size={"height": TINY_SIDE, "width": TINY_SIDE})
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=4)
    return _save(Blip2ForConditionalGeneration, config, seed, processor, out_dir)


def save_llava_captioner(out_dir: str | Path, seed: int = 0, tokenizer_dir=TOKENIZER_DIR) -> Path:
    """A random LLaVA-1.5-shaped captioner (`LlavaForConditionalGeneration`: CLIP vision
    tower, MLP projector, Llama decoder) with a `LlavaProcessor` carrying LLaVA-1.5's chat
    template, saved to `out_dir`; returns `out_dir`."""
    tokenizer, image_token = tokenizer_with_image_token(tokenizer_dir)
    patches = (TINY_SIDE // TINY_PATCH) ** 2
    config = LlavaConfig(
        vision_config=dict(
            TINY_TOWER, model_type="clip_vision_model", image_size=TINY_SIDE, patch_size=TINY_PATCH
        ),
        text_config=_language_model(
            tokenizer, "llama", intermediate_size=64, num_key_value_heads=2
        ),
        image_token_index=image_token,
        image_seq_length=patches,
        vision_feature_layer=-1,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": TINY_SIDE}, crop_size={"height": TINY_SIDE, "width": TINY_SIDE}
    )
    processor = LlavaProcessor(
        image_processor,
        tokenizer,
        patch_size=TINY_PATCH,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
    )
    return _save(LlavaForConditionalGeneration, config, seed, processor, out_dir)


def _save(model_class, config, seed: int, processor, out_dir: str | Path) -> Path:
    """`model_class(config)` with random weights from `seed`, saved with its processor."""
    torch.manual_seed(seed)  # each checkpoint reproducible on its own
    out = Path(out_dir)
    model_class(config).eval().save_pretrained(out)  # safetensors by default
    processor.save_pretrained(out)
    return out
