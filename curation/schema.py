"""Every Parquet table the pipeline writes, declared once.

Writers pass these schemas explicitly (``pq.write_table(table.cast(SCHEMA))``) so a column
can never drift in type or name between shards, runs or versions. See docs/architecture.md,
"Data contracts": every input row ends in exactly one place, a curated shard or the rejects table.
"""

from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa

# One row of the user's URL list after normalisation; `sample_id` is the row's position in
# the list, the key that follows the row through every stage.
INPUT = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("web_text", pa.string()),
    ]
)

# What the download stage knows about every input row (img2dataset's status, or our refusal).
RAW = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("web_text", pa.string()),
        pa.field("status", pa.string()),  # "success" or a failure kind
        pa.field("error", pa.string()),
        pa.field("image", pa.binary()),  # original bytes as served, never re-encoded
    ]
)

# One text considered for an image: the web alt-text or a synthetic caption.
CANDIDATE = pa.struct(
    [
        pa.field("text", pa.string()),
        pa.field("source", pa.string()),  # "web" | "synthetic"
        pa.field("itm", pa.float32()),  # BLIP ITM match probability
        pa.field("itc", pa.float32()),  # BLIP ITC cosine similarity
        pa.field("kept", pa.bool_()),  # passed the ITM threshold
    ]
)

CANDIDATE_LIST = pa.list_(CANDIDATE)

CURATED = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("key", pa.string()),  # zero-padded sample_id, the export file stem
        pa.field("url", pa.string()),
        pa.field("web_text", pa.string()),
        pa.field("candidates", CANDIDATE_LIST),
        pa.field("caption", pa.string()),  # the kept text with the highest ITM probability
        pa.field("caption_source", pa.string()),
        pa.field("caption_itm", pa.float32()),
        pa.field("image", pa.binary()),
        pa.field("width", pa.int32()),  # after EXIF orientation
        pa.field("height", pa.int32()),
        pa.field("sha256", pa.string()),  # of the image bytes as downloaded
        pa.field("shard", pa.int32()),
        pa.field("dfn", pa.float32()),  # DFN-style score of image and caption (null: no scorer)
        pa.field("concepts", pa.list_(pa.string())),  # concept entries the caption matches
    ]
)


class Reason(StrEnum):
    """Why an input row is not curated: the ``reason`` column of REJECTS, one enumeration that
    every writer is checked against (``pipeline.steps.check_rejects``)."""

    INVALID_URL = "invalid_url"  # not http(s), malformed
    BLOCKED_ADDRESS = "blocked_address"  # resolves to a private address without the flag
    DOWNLOAD_FAILED = "download_failed"  # HTTP error, connection refused, timeout...
    DECODE_ERROR = "decode_error"  # bytes are not an image Pillow can decode
    IMAGE_TOO_SMALL = "image_too_small"  # a side below capfilt.min_image_side (tracking pixels)
    IMAGE_TOO_LARGE = "image_too_large"  # more than capfilt.max_image_pixels (bombs)
    NO_MATCHING_TEXT = "no_matching_text"  # no web or synthetic text reached the ITM threshold
    EVAL_OVERLAP = "eval_overlap"  # a copy of an image of a --decontaminate set (before CapFilt)
    DUPLICATE = "duplicate"  # the same bytes (sha256) as a kept image
    NEAR_DUPLICATE = "near_duplicate"  # a pHash-close copy of a kept image
    SEMANTIC_DUPLICATE = "semantic_duplicate"  # SemDeDup: an embedding-close copy of a kept image
    REPEATED_CAPTION = "repeated_caption"  # its caption captions too many images already
    BELOW_SCORE_QUANTILE = "below_score_quantile"  # DFN score under the run's global threshold
    NO_CONCEPT_MATCH = "no_concept_match"  # the caption matches no concept entry (MetaCLIP)
    BALANCED_OUT = "balanced_out"  # every matched entry lost its MetaCLIP keep draw


@dataclass(frozen=True)
class Gate:
    """One line of the funnel (`curate stats`, the report): the reasons that drop rows there
    and the ``stage`` value their rejects carry."""

    name: str
    label: str  # what is left after the gate, as the report's funnel names it
    stage: str
    reasons: tuple[Reason, ...]


R = Reason
GATES = (
    Gate(
        "download", "downloaded", "download", (R.INVALID_URL, R.BLOCKED_ADDRESS, R.DOWNLOAD_FAILED)
    ),
    Gate("decode", "decoded", "decode", (R.DECODE_ERROR, R.IMAGE_TOO_SMALL, R.IMAGE_TOO_LARGE)),
    Gate("decontaminate", "decontaminated", "capfilt", (R.EVAL_OVERLAP,)),
    Gate("capfilt", "CapFilt passed", "capfilt", (R.NO_MATCHING_TEXT,)),
    Gate(
        "dedup",
        "deduplicated",
        "select",
        (R.DUPLICATE, R.NEAR_DUPLICATE, R.SEMANTIC_DUPLICATE, R.REPEATED_CAPTION),
    ),
    Gate("score", "scored", "select", (R.BELOW_SCORE_QUANTILE,)),
    Gate("balance", "balanced", "select", (R.NO_CONCEPT_MATCH, R.BALANCED_OUT)),
)
REJECT_STAGES = tuple(dict.fromkeys(gate.stage for gate in GATES))  # in funnel order

REJECTS = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("web_text", pa.string()),
        pa.field("stage", pa.string()),  # one of REJECT_STAGES
        pa.field("reason", pa.string()),  # a Reason
        pa.field("detail", pa.string()),  # human-readable
        pa.field("candidates", CANDIDATE_LIST),  # scores, when the filter saw the image
        pa.field("shard", pa.int32()),
    ]
)


# Per CapFilt survivor: what the global selection needs (curation/select.py).
ANNOTATIONS = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field(
            "dfn", pa.float32()
        ),  # cosine of the image and the chosen caption; null: no scorer
        pa.field("concepts", pa.list_(pa.string())),  # matched entries; null: no balancing
        pa.field("phash", pa.int64()),  # 64-bit pHash (curation.pipeline.dedup), as int64 bits
        pa.field("thumbnail", pa.binary()),  # 8x8 RGB (dedup.thumbnail): verifies pHash matches
        # L2-normalised image embedding for SemDeDup; null unless [dedup] semantic_threshold
        pa.field("embedding", pa.list_(pa.float32())),
    ]
)

# One selection decision per annotated row: the selection as an artifact (DataComp's uid lists).
DECISIONS = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("reason", pa.string()),  # null when kept
        pa.field("detail", pa.string()),  # score vs threshold, or the entries and their p
    ]
)

# A clean, human-captioned set (`curate finetune --clean`): several rows per image allowed.
CLEAN = pa.schema(
    [
        pa.field("image", pa.binary()),  # encoded bytes
        pa.field("caption", pa.string()),
        pa.field("image_id", pa.int64()),  # rows of one image share it (optional on input)
    ]
)

# A labelled image set for pre-training the image encoder before any image-text training
# (`curate pretrain-vision`): BLIP starts its ViT from ImageNet; this is that step's input.
LABELLED = pa.schema(
    [
        pa.field("image", pa.binary()),  # encoded bytes
        pa.field("labels", pa.list_(pa.string())),  # every label true of the image (multi-label)
    ]
)

# The synthetic world (curation/world/): the web as files + alt-text, and its truth, which
# is kept apart from the URL list and used for evaluation only.
SYNTH_WEB = pa.schema([pa.field("file", pa.string()), pa.field("caption", pa.string())])
SYNTH_TRUTH = pa.schema(
    [
        pa.field("file", pa.string()),
        pa.field("kind", pa.string()),  # one of world.noise.NOISE_KINDS
        pa.field("is_noisy", pa.bool_()),  # == not caption_is_true(web caption, scene)
        pa.field("true_caption", pa.string()),  # a full true description
        pa.field("scene", pa.string()),  # Scene as JSON
    ]
)
SYNTH_EVAL_TRUTH = pa.schema([pa.field("image_id", pa.int64()), pa.field("scene", pa.string())])


def empty(schema: pa.Schema) -> pa.Table:
    """A zero-row table of `schema` (for shards where every row went elsewhere)."""
    return schema.empty_table()


def sample_key(sample_id: int) -> str:
    """Stable, sortable file stem for a sample (WebDataset keys, export names)."""
    return f"{sample_id:012d}"
