"""Typed configuration: one dataclass per stage, loaded from TOML.

Every threshold lives here with its default and the reason for it; nothing is inlined in the
stages. A TOML file overrides any subset: ``[capfilt] itm_threshold = 0.6``. Presets ship in
``data/presets/NAME.toml`` and are loaded by name.
"""

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent.parent / "data" / "presets"

CAPTIONER_DEFAULT = "Salesforce/blip-image-captioning-large"
FILTER_DEFAULT = "Salesforce/blip-itm-large-coco"


class ConfigError(ValueError):
    """A configuration problem the user must fix; the message names it in one line."""


@dataclass
class ShardingConfig:
    shard_size: int = 1000  # input rows per shard: one download task and one CapFilt task each
    # torch intra-op threads of the model steps (CapFilt, DFN scoring) wherever a shard runs. A
    # matmul's sums split by thread, so one count everywhere makes single-process and Dask
    # output bit-identical. 0: torch's default (this machine's cores; 1 on a Dask worker).
    torch_threads: int = 0


@dataclass
class DownloadConfig:
    timeout: int = 10  # seconds per request, whole (img2dataset's default; safe_fetch's deadline)
    retries: int = 0  # a retry rarely rescues a dead web URL and doubles the time spent on it
    thread_count: int = 32  # concurrent requests per shard; downloads are I/O bound
    allow_private_network: bool = False  # refuse loopback/private/link-local targets (SSRF)
    max_bytes: int = 20_000_000  # larger responses are refused while read: no image is this big


@dataclass
class CapFiltConfig:
    captioner: str = CAPTIONER_DEFAULT  # hub id or local folder (save_pretrained)
    filter: str = FILTER_DEFAULT
    # Synthetic captions per image. BLIP sampled 1; BLIP-2 sampled 10 and kept the best 2.
    # 3 gives the filter a choice at 3x the decoding cost of 1 (README, "Choosing K").
    num_captions: int = 3
    prompt: str = "a picture of"  # BLIP's captioning prompt
    top_p: float = 0.9  # nucleus sampling: more diverse than beam search (BLIP, sec. 4.3)
    repetition_penalty: float = 1.1  # BLIP's sampling setting; stops "a a a a" loops
    min_new_tokens: int = 5
    max_new_tokens: int = 30
    # BLIP's filter keeps texts with ITM probability >= 0.5. "auto": the threshold at which the
    # filter's held-out clean pairs reach `calibration_target` (curation.pipeline.calibration;
    # the filter must come from curate finetune / bootstrap).
    itm_threshold: float | str = 0.5
    # With "auto": "recall" keeps that share of held-out true pairs (the highest such threshold);
    # "precision" reaches that class-balanced precision against held-out negatives (the lowest).
    calibrate_for: str = "recall"
    calibration_target: float = 0.85
    # Which kept text becomes the row's `caption`: "itm" (highest ITM probability) or
    # "web_first" (the web text when it passed, else the best synthetic caption): a filter
    # that prefers fluent synthetic text over true alt-text should not decide alone.
    caption_choice: str = "itm"
    batch_size: int = 32  # images per model call
    num_workers: int = 1  # threads that decode and preprocess ahead of the models (0: inline)
    prefetch_batches: int = 4  # batches kept ready ahead of the models
    min_image_side: int = 8  # smaller images are tracking pixels or icons, not training data
    max_image_pixels: int = 89_478_485  # Pillow's decompression-bomb limit
    seed: int = 0  # caption sampling seed

    def sampling(self) -> "Sampling":
        fields = [f.name for f in dataclasses.fields(Sampling)]
        return Sampling(**{name: getattr(self, name) for name in fields})


@dataclass(frozen=True)
class Sampling:
    """How the captioner samples its captions (BLIP's ``generate(sample=True)``): the sampling
    fields of ``[capfilt]``, with its defaults and meanings (``CapFiltConfig.sampling()``)."""

    num_captions: int = CapFiltConfig.num_captions
    prompt: str = CapFiltConfig.prompt
    top_p: float = CapFiltConfig.top_p
    repetition_penalty: float = CapFiltConfig.repetition_penalty
    min_new_tokens: int = CapFiltConfig.min_new_tokens
    max_new_tokens: int = CapFiltConfig.max_new_tokens


@dataclass
class DedupConfig:
    """``[dedup]``: copies and evaluation leaks among CapFilt's survivors, removed over the whole
    run before DFN scoring and balancing (a copy would count twice in MetaCLIP's entry counts
    and take two keeps). Each removal is a reject naming the copy that was kept."""

    exact: bool = True  # one image per sha256 of its bytes (reason duplicate)
    near_duplicates: bool = True  # one image per group of pHash-close images (near_duplicate)
    # Two images are copies when their pHashes (64 bits) differ in at most hash_distance bits
    # and their 8x8 colour thumbnails correlate at >= thumbnail_similarity (Pearson), for
    # near_duplicates and for decontamination (docs/benchmarks.md, "Duplicates": every
    # re-encoded, resized and re-saved copy of CC3M photos, 72% of 5% crops, precision 99%).
    hash_distance: int = 8
    thumbnail_similarity: float = 0.9
    # SemDeDup (arXiv 2303.09540): images whose embeddings (the scorer's, else the filter's)
    # have cosine >= this within a k-means cluster are one semantic group; 0 = off.
    semantic_threshold: float = 0.0
    # The same chosen caption on more images than this keeps the best this many by ITM (a
    # boilerplate text, e.g. "image not found"); 0 = no cap (counted in `curate stats` anyway).
    max_images_per_caption: int = 0
    # Parquet files with an `image` column (bytes): a web image that copies one of theirs is
    # rejected as eval_overlap before CapFilt's models (`curate run --decontaminate FILE ...`
    # adds to this; `curate bootstrap` adds its eval and clean sets).
    decontaminate: list[str] = field(default_factory=list)


CAPTION_CHOICES = ("itm", "web_first")  # [capfilt] caption_choice
ORDERS = ("score_then_balance", "balance_then_score")  # [select] order
AUTO = "auto"  # a setting the product derives: [capfilt] itm_threshold
AUTO_SETTINGS = ("itm_threshold",)
CALIBRATE_FOR = ("recall", "precision")  # [capfilt] calibrate_for


@dataclass
class SelectConfig:
    """``[select]``: DFN scoring and MetaCLIP balancing of the images that passed CapFilt."""

    # DFN scorer: CLIP hub id/folder or a BLIP retrieval checkpoint; "" = no scoring. Off by
    # default: the right scorer is one trained on your clean data (DFN's finding), and a
    # second filter after CapFilt drops 70% of its output at the DataComp setting below.
    scorer: str = ""
    # Keep this top fraction of the pool by score: DataComp's CLIP-score baseline keeps 0.3
    # (OpenAI ViT-L/14), DFN kept 0.15.
    score_keep_fraction: float = 0.3
    # Absolute cosine threshold instead of the fraction; -1 (every cosine passes) = unused.
    min_score: float = -1.0
    # Concept list: a file (.txt one entry a line, or MetaCLIP's metadata.json), or a name in
    # data/metadata/ ("default": 6,388 entries built from CC3M captions); "" = no balancing.
    metadata: str = "default"
    t: int = 0  # MetaCLIP's per-entry cap (20k for 400M pairs); 0 = derive it from tail_share
    # MetaCLIP 2's way to size t for any pool: the share of matches left to the tail (entries
    # with count < t); 0.1 is the default of MetaCLIP's own p_to_t.
    tail_share: float = 0.1
    casefold: bool = False  # MetaCLIP matches case-sensitively
    order: str = "score_then_balance"  # or "balance_then_score"
    seed: int = 0  # balancing draws: a hash of (seed, sample key, entry)
    batch_size: int = 64  # images per scorer call
    num_workers: int = 1  # threads decoding and preprocessing ahead of the scorer (0: inline)


def check_select(cfg: SelectConfig) -> list[str]:
    """Problems of ``cfg``'s values, one line each (empty when fine); no file access."""
    checks = [
        (0.0 < cfg.score_keep_fraction <= 1.0, "[select] score_keep_fraction must be in (0, 1]"),
        (-1.0 <= cfg.min_score <= 1.0, "[select] min_score must be in [-1, 1] (-1: unused)"),
        (cfg.t >= 0, "[select] t must be >= 0 (0: derive it from tail_share)"),
        (0.0 < cfg.tail_share <= 1.0, "[select] tail_share must be in (0, 1]"),
        (cfg.order in ORDERS, f"[select] order must be one of {', '.join(ORDERS)}"),
        (cfg.batch_size >= 1, "[select] batch_size must be >= 1"),
        (cfg.num_workers >= 0, "[select] num_workers must be >= 0"),
    ]
    return [message for ok, message in checks if not ok]


@dataclass
class TrainConfig:
    """Hyperparameters of `pretrain` and `finetune` (the `[train]` section of a run config).

    Defaults are measured on the synthetic world (`curation.world.synthetic.write_world`, 2,000 web
    images of 64-96 px) with the "small" preset on 2 CPU cores; BLIP's own values are noted.
    """

    size: str = "mini"  # tiny.PRESETS entry for models built from scratch (ignored with init)
    epochs: int = 15  # pre-training passes over the pairs (BLIP: 20 over 14M-129M pairs)
    batch_size: int = 16  # pairs per step; ITC/ITM negatives come from the batch (BLIP: 2880)
    lr: float = 1e-3  # AdamW peak lr from scratch (BLIP: 3e-4 ViT-B; small models take more)
    weight_decay: float = 0.05  # AdamW weight decay (BLIP: 0.05)
    warmup: int = 30  # linear warm-up steps, then cosine decay to 0 (BLIP: warm-up + cosine)
    label_smoothing: float = 0.1  # LM cross-entropy label smoothing (BLIP: 0.1)
    itm_hard_negatives: bool = False  # ITM negatives drawn by ITC similarity (BLIP) vs uniform
    # One more ITM negative per pair, made from its own text (NegCLIP, arXiv 2210.01936): two
    # content words swapped or one replaced by another word of the texts, so the filter learns
    # which attribute goes with which object, not only the topic.
    compositional_negatives: bool = False
    # Fine-tuning the filter: this many web texts of other images per clean pair as extra ITM
    # negatives, so boilerplate and mismatched alt-text are seen as "no match" and are not out of
    # distribution when the filter judges the web. Needs the web's texts (`curate bootstrap`
    # passes them; `curate finetune --web RUN_DIR`). 0 = off (BLIP's in-batch negatives only).
    web_negatives: int = 0
    # Share of the clean set's images held out of the filter's fine-tuning to calibrate
    # `[capfilt] itm_threshold = "auto"` (FILTER_DIR/calibration.json); 0 = no calibration.
    calibration_holdout: float = 0.2
    # `curate bootstrap`: withhold a round's synthetic captions (CapFilt again with K = 0) when
    # the filter passes them less than this many times as often as human captions (its held-out
    # clean pairs; the web's alt-text without them): a captioner whose captions fare worse than
    # people's adds noise, not clean text. 0 = off (BLIP's loop); 1.0 measured on the demo
    # world (docs/benchmarks.md, CapFilt quality).
    synthetic_gate: float = 1.0
    temperature: float = 0.07  # ITC temperature at the start, then learnt (BLIP: init 0.07)
    # The ITC objective: "softmax" (CLIP/BLIP's InfoNCE over the batch) or "sigmoid" (SigLIP,
    # arXiv 2303.15343: each pair a binary match, with a learnt logit bias from -10).
    contrastive_loss: str = "softmax"
    finetune_epochs: int = 15  # passes over the clean set in fine-tuning (BLIP COCO: 5-6)
    finetune_lr: float = 5e-4  # AdamW peak lr in fine-tuning (BLIP: 1e-5 on ViT-B)
    seed: int = 0  # model init, batch order and negative sampling
    # Image encoder from `curate pretrain-vision` (BLIP's ImageNet ViT); "" = random. Used by
    # every from-scratch pre-training; fine-tuning starts from its init model instead.
    vision_init: str = ""
    # `curate pretrain-vision`, measured on the demo's labelled set (docs/benchmarks.md):
    vision_epochs: int = 24  # passes over the labelled set
    vision_batch_size: int = 64  # images per step (no in-batch negatives; 2x the img/s of 16)
    vision_lr: float = 2e-3  # AdamW peak lr
    checkpoint_every: int = 100  # steps between resumable checkpoints (the last step always)
    max_text_tokens: int = 40  # texts truncated to this many tokens incl. [CLS]/[SEP] and prompt
    prompt: str = "a picture of "  # LM prefix, not scored (BLIP's captioning prompt)
    log_every: int = 10  # steps per logged loss (the mean over those steps) and progress line
    keep_checkpoints: bool = False  # keep checkpoints/ after the outputs are written


@dataclass
class RunConfig:
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    capfilt: CapFiltConfig = field(default_factory=CapFiltConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    train: TrainConfig = field(default_factory=TrainConfig)  # curate train/finetune/bootstrap

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _apply(section_obj, values: dict, section: str) -> None:
    known = {f.name: f for f in dataclasses.fields(section_obj)}
    for name, value in values.items():
        if name not in known:
            raise ConfigError(f"unknown setting [{section}] {name} (known: {', '.join(known)})")
        expected = type(getattr(section_obj, name))
        if value == AUTO and name in AUTO_SETTINGS:
            expected = str
        if expected is float and type(value) is int:
            value = float(value)
        if type(value) is not expected:
            kind = expected.__name__ + (' or "auto"' if name in AUTO_SETTINGS else "")
            raise ConfigError(f"[{section}] {name} must be {kind}, got {value!r}")
        setattr(section_obj, name, value)


def from_dict(values: dict) -> RunConfig:
    """Build a RunConfig from nested dicts, refusing unknown sections, keys and wrong types."""
    config = RunConfig()
    sections = {f.name for f in dataclasses.fields(config)}
    for section, section_values in values.items():
        if section not in sections or not isinstance(section_values, dict):
            raise ConfigError(f"unknown config section [{section}] (known: {', '.join(sections)})")
        _apply(getattr(config, section), section_values, section)
    validate(config)
    return config


def load(path: str | Path | None) -> RunConfig:
    """Load a TOML file, or a preset name from data/presets; None gives the defaults."""
    return RunConfig() if path is None else from_dict(read_toml(path))


def read_toml(path: str | Path) -> dict:
    """The sections a TOML file (or preset name) sets, as nested dicts, unchecked."""
    file = Path(path)
    if not file.exists() and (PRESET_DIR / f"{path}.toml").exists():
        file = PRESET_DIR / f"{path}.toml"
    try:
        values = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"bad TOML in {path}: {err}") from None
    return values


def validate(config: RunConfig) -> None:
    """Reject values that would make a run meaningless, before any work starts."""
    c = config.capfilt
    checks = [
        (config.sharding.shard_size >= 1, "[sharding] shard_size must be >= 1"),
        (config.sharding.torch_threads >= 0, "[sharding] torch_threads must be >= 0"),
        (c.num_captions >= 0, "[capfilt] num_captions must be >= 0"),
        (0.0 < c.top_p <= 1.0, "[capfilt] top_p must be in (0, 1]"),
        (
            c.itm_threshold == AUTO or 0.0 <= c.itm_threshold <= 1.0,
            '[capfilt] itm_threshold must be in [0, 1] or "auto"',
        ),
        (c.calibrate_for in CALIBRATE_FOR, "[capfilt] calibrate_for must be recall or precision"),
        (0.0 < c.calibration_target < 1.0, "[capfilt] calibration_target must be in (0, 1)"),
        (c.caption_choice in CAPTION_CHOICES, "[capfilt] caption_choice must be itm or web_first"),
        (c.batch_size >= 1, "[capfilt] batch_size must be >= 1"),
        (c.num_workers >= 0, "[capfilt] num_workers must be >= 0"),
        (c.prefetch_batches >= 1, "[capfilt] prefetch_batches must be >= 1"),
        (c.repetition_penalty > 0, "[capfilt] repetition_penalty must be > 0 (1: off)"),
        (c.min_new_tokens >= 0, "[capfilt] min_new_tokens must be >= 0"),
        (c.min_new_tokens <= c.max_new_tokens, "[capfilt] min_new_tokens > max_new_tokens"),
        (c.min_image_side >= 1, "[capfilt] min_image_side must be >= 1"),
        (c.max_image_pixels >= 1, "[capfilt] max_image_pixels must be >= 1"),
        (config.download.timeout > 0, "[download] timeout must be > 0"),
        (config.download.retries >= 0, "[download] retries must be >= 0"),
        (config.download.thread_count >= 1, "[download] thread_count must be >= 1"),
        (config.download.max_bytes >= 1, "[download] max_bytes must be >= 1"),
        (0 <= config.dedup.hash_distance <= 64, "[dedup] hash_distance must be in [0, 64]"),
        (
            -1.0 <= config.dedup.thumbnail_similarity <= 1.0,
            "[dedup] thumbnail_similarity must be in [-1, 1]",
        ),
        (
            0.0 <= config.dedup.semantic_threshold <= 1.0,
            "[dedup] semantic_threshold must be in [0, 1] (0: off)",
        ),
        (
            config.dedup.max_images_per_caption >= 0,
            "[dedup] max_images_per_caption must be >= 0 (0: no cap)",
        ),
        (
            all(isinstance(p, str) and p for p in config.dedup.decontaminate),
            "[dedup] decontaminate must be a list of Parquet file paths",
        ),
        (config.train.synthetic_gate >= 0, "[train] synthetic_gate must be >= 0 (0: off)"),
        (config.train.web_negatives >= 0, "[train] web_negatives must be >= 0 (0: off)"),
        (
            0.0 <= config.train.calibration_holdout < 1.0,
            "[train] calibration_holdout must be in [0, 1)",
        ),
    ]
    problems = [message for ok, message in checks if not ok] + check_select(config.select)
    if problems:
        raise ConfigError(problems[0])
