"""The dedup stage of a run: which CapFilt survivors are copies or evaluation leaks.

Decontamination runs in CapFilt, image by image, before the models: ``eval_overlap``, a copy
of an image of a ``--decontaminate`` set (DataComp removed its evaluation sets' near duplicates
from its pool, arXiv 2304.14108). The rest is decided once over the whole run, in the global
plan (``select.global_plan``), before DFN scoring and MetaCLIP balancing, so a decision never
depends on shards or workers. In this order, each pass over the rows the passes before it left:

1. ``duplicate``: the same sha256 of the bytes as another row.
2. ``near_duplicate``: a copy of another row (re-encoded, resized, lightly cropped).

A copy: pHashes at most ``hash_distance`` bits apart (the candidates, found by an exact
multi-index search) whose 8x8 colour thumbnails correlate at ``thumbnail_similarity`` or more
(the check: pHash is greyscale and coarse, flat graphics collide).
3. ``semantic_duplicate``: SemDeDup (Abbas et al. 2023, arXiv 2303.09540), cosine of the image
   embeddings >= ``semantic_threshold`` within a k-means cluster.
4. ``repeated_caption``: more than ``max_images_per_caption`` images with one chosen caption.

Each group of copies keeps one representative: the best chosen caption by ITM, ties by the
smaller key. A removed row's detail names the representative's key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation import schema
from curation.config import ConfigError, DedupConfig
from curation.pipeline import dedup
from curation.pipeline.images import decode_image

R = schema.Reason
REMOVALS = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
    ]
)
EVAL_BATCH_ROWS = 256  # eval images decoded at a time: memory stays bounded for any set size


def check_sources(cfg: DedupConfig) -> None:
    """Refuse, before any work, a --decontaminate file that is not a Parquet file with an
    ``image`` column of bytes (ConfigError, one line)."""
    for path in cfg.decontaminate:
        try:
            field = pq.read_schema(path).field("image")
        except (OSError, KeyError, pa.ArrowInvalid) as err:
            raise ConfigError(
                f"--decontaminate {path}: not a Parquet file with an image column "
                f"({type(err).__name__})"
            ) from None
        if not pa.types.is_binary(field.type) and not pa.types.is_large_binary(field.type):
            raise ConfigError(f"--decontaminate {path}: image column holds {field.type}, not bytes")


def eval_hashes(paths: list[str]) -> dict:
    """pHashes and thumbnails of every decodable image of the --decontaminate files: {hashes
    (uint64 [E]), thumbnails (uint8 [E, L]), names (FILE:ROW per image), files ({path: sha256,
    rows, undecodable})}."""
    hashes, thumbs, names, files = [], [], [], {}
    for path in paths:
        rows = undecodable = 0
        for batch in pq.ParquetFile(path).iter_batches(EVAL_BATCH_ROWS, columns=["image"]):
            for data in batch.column(0).to_pylist():
                image = _decoded(data)
                if image is None:
                    undecodable += 1
                else:
                    hashes.append(dedup.perceptual_hash(image))
                    thumbs.append(dedup.thumbnail(image))
                    names.append(f"{Path(path).name}:{rows}")
                rows += 1
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        files[path] = {"sha256": digest, "rows": rows, "undecodable": undecodable}
    return {
        "hashes": np.array(hashes, np.uint64),
        "thumbnails": _thumbnail_rows(thumbs),
        "names": names,
        "files": files,
    }


def _decoded(data: bytes | None):
    """The upright RGB image of `data`, or None when it does not decode (no size limits: the
    bytes come from the user's own sets or from images CapFilt already decoded)."""
    return decode_image(data, 1, 1 << 62).image if data else None


def _thumbnail_rows(thumbs: list[bytes | None]) -> np.ndarray:
    """uint8 [N, L] from `dedup.thumbnail` bytes; a missing one is zeros (it is never read:
    rows without a hash are not searched)."""
    size = dedup.THUMBNAIL_SIDE**2 * 3
    flat = b"".join(t if t else bytes(size) for t in thumbs)
    return np.frombuffer(flat, np.uint8).reshape(len(thumbs), size)


def eval_copies(images: list[bytes], cfg: DedupConfig) -> list[bool]:
    """Per image: whether it is a copy of an image of ``cfg.decontaminate`` (one that does not
    decode is no copy): round 0's raw pairs leave them out."""
    evals = eval_hashes(cfg.decontaminate)
    decoded = [_decoded(data) for data in images]
    found = iter(eval_copy_details([im for im in decoded if im is not None], evals, cfg))
    return [im is not None and next(found) is not None for im in decoded]


def eval_copy_details(images: list, evals: dict, cfg: DedupConfig) -> list[str | None]:
    """Per RGB image: the eval_overlap detail naming the eval image it copies (pHash within
    ``hash_distance`` and thumbnails correlating at ``thumbnail_similarity``, the nearest
    such), or None."""
    hashes = np.array([dedup.perceptual_hash(im) for im in images], np.uint64)
    thumbs = _thumbnail_rows([dedup.thumbnail(im) for im in images])
    match = _eval_matches(hashes, thumbs, evals, cfg)
    return [
        None
        if m < 0
        else f"near duplicate of {evals['names'][m]} "
        f"(pHash distance {_hamming(h, evals['hashes'][m])})"
        for h, m in zip(hashes, match, strict=True)
    ]


def _eval_matches(hashes: np.ndarray, thumbs: np.ndarray, evals: dict, cfg: DedupConfig):
    """int64 [Q]: per query, the nearest eval image (pHash distance, then index) among those it
    is a verified copy of; -1 for none."""
    match = np.full(len(hashes), -1, np.int64)
    if not len(hashes) or not len(evals["hashes"]):
        return match
    pairs = dedup.match_pairs(hashes, evals["hashes"], cfg.hash_distance)
    similar = dedup.thumbnail_similarity(thumbs[pairs[:, 0]], evals["thumbnails"][pairs[:, 1]])
    pairs = pairs[similar >= cfg.thumbnail_similarity]
    gaps = np.array([_hamming(hashes[q], evals["hashes"][r]) for q, r in pairs], np.int64)
    for q, r in pairs[np.lexsort((pairs[:, 1], gaps))[::-1]]:  # the nearest is written last
        match[q] = r
    return match


def removals(rows: pa.Table, cfg: DedupConfig) -> pa.Table:
    """REMOVALS for the run's survivors ``rows`` (sample_id, sha256, caption, caption_itm,
    phash, thumbnail, embedding; one row per survivor), from ``cfg``."""
    pool = _Pool(rows)
    if cfg.exact:
        members = pool.left()
        _, labels = np.unique(pool.sha[members], return_inverse=True)
        pool.keep_best(R.DUPLICATE, members, labels, lambda row, rep: f"sha256 {pool.sha[row]}")
    if cfg.near_duplicates:
        _near(pool, cfg)
    if cfg.semantic_threshold > 0:
        _semantic(pool, rows["embedding"].to_pylist(), cfg.semantic_threshold)
    if cfg.max_images_per_caption > 0:
        _cap_captions(pool, rows["caption"].to_pylist(), cfg.max_images_per_caption)
    return pool.table()


class _Pool:
    """The survivors as arrays, which of them each pass has left, and what was removed."""

    def __init__(self, rows: pa.Table):
        self.ids = rows["sample_id"].to_numpy()
        self.sha = rows["sha256"].to_numpy(zero_copy_only=False)
        phash = rows["phash"].combine_chunks()
        self.hashed = phash.is_valid().to_numpy(zero_copy_only=False)
        self.hashes = dedup.to_unsigned(pc.fill_null(phash, 0).to_numpy())
        self.thumbnails = _thumbnail_rows(rows["thumbnail"].to_pylist())
        itm = pc.fill_null(rows["caption_itm"], 0.0).to_numpy().astype(float)
        # best ITM first, then the smaller key (sample keys are zero-padded ids: the same order)
        order = np.lexsort((self.ids, -itm))
        self.rank = np.empty(len(self.ids), np.int64)
        self.rank[order] = np.arange(len(self.ids))
        self.alive = np.ones(len(self.ids), bool)
        self.found: dict[int, tuple[str, str]] = {}  # row -> (reason, detail)

    def key(self, row: int) -> str:
        return schema.sample_key(int(self.ids[row]))

    def left(self, also: np.ndarray | None = None) -> np.ndarray:
        """Positions of the rows no pass has removed (and where ``also`` holds)."""
        return np.flatnonzero(self.alive if also is None else self.alive & also)

    def drop(self, row: int, reason: R, detail: str) -> None:
        self.found[int(row)] = (reason.value, detail)
        self.alive[row] = False

    def keep_best(self, reason: R, members: np.ndarray, labels: np.ndarray, note) -> None:
        """Of each group of ``members`` (one label per member), keep the best ranked one and
        remove the others, naming the one kept and ``note(row, kept)``."""
        if not len(members):
            return
        kept = members[dedup.representatives(labels, self.rank[members])]
        copies = members != kept
        for row, rep in zip(members[copies], kept[copies], strict=True):
            self.drop(row, reason, f"copy of {self.key(rep)} kept ({note(row, rep)})")

    def table(self) -> pa.Table:
        listed = sorted(self.found)
        return pa.table(
            {
                "sample_id": self.ids[listed] if listed else np.array([], np.int64),
                "reason": [self.found[r][0] for r in listed],
                "detail": [self.found[r][1] for r in listed],
            },
            schema=REMOVALS,
        )


def _near(pool: _Pool, cfg: DedupConfig) -> None:
    """pHash candidates within ``hash_distance``, kept when their thumbnails correlate at
    ``thumbnail_similarity`` (pHash is greyscale and coarse: flat graphics collide)."""
    members = pool.left(pool.hashed)
    # One search key per distinct (pHash, thumbnail): a placeholder on 10,000 URLs is one key,
    # not 50M pairs; equal hashes with other thumbnails stay apart until verified.
    keys = np.concatenate(
        [pool.hashes[members, None].view(np.uint8).reshape(-1, 8), pool.thumbnails[members]], axis=1
    )
    keys = keys.view(np.dtype((np.void, keys.shape[1]))).ravel()  # one sortable item per row
    distinct, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    candidates = dedup.near_duplicate_pairs(pool.hashes[members][first], cfg.hash_distance)
    thumbs = pool.thumbnails[members][first]
    pairs = dedup.verified_pairs(candidates, thumbs, cfg.thumbnail_similarity)
    labels = dedup.duplicate_groups(len(distinct), pairs)[inverse.reshape(-1)]

    def note(row: int, rep: int) -> str:
        return f"pHash distance {_hamming(pool.hashes[row], pool.hashes[rep])}"

    pool.keep_best(R.NEAR_DUPLICATE, members, labels, note)


def _semantic(pool: _Pool, embeddings: list, threshold: float) -> None:
    """SemDeDup over the rows left that have an embedding; about 1,000 rows per k-means cluster
    (SemDeDup clustered LAION-440M into 50k clusters; pairs are only sought within one)."""
    members = pool.left(np.array([e is not None for e in embeddings], bool))
    if len(members) < 2:
        return
    vectors = np.array([embeddings[r] for r in members], np.float32)
    clusters = math.ceil(len(members) / 1000)
    pairs = dedup.semantic_duplicate_pairs(vectors, threshold, clusters, seed=0)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    place = {int(row): i for i, row in enumerate(members)}
    pool.keep_best(
        R.SEMANTIC_DUPLICATE,
        members,
        dedup.duplicate_groups(len(members), pairs),
        lambda row, rep: f"cosine {float(unit[place[row]] @ unit[place[rep]]):.3f}",
    )


def _cap_captions(pool: _Pool, captions: list[str], cap: int) -> None:
    """Keep the best ``cap`` images of each chosen caption, by rank."""
    by_caption: dict[str, list[int]] = {}
    for row in pool.left():
        by_caption.setdefault(captions[row], []).append(int(row))
    for caption, group in by_caption.items():
        group.sort(key=lambda row: pool.rank[row])
        for row in group[cap:]:
            detail = (
                f"caption {caption[:60]!r} already on {cap} images, the best {pool.key(group[0])}"
            )
            pool.drop(row, R.REPEATED_CAPTION, detail)


def _hamming(a: np.uint64, b: np.uint64) -> int:
    return int(a ^ b).bit_count()


def summary(removed: pa.Table, cfg: DedupConfig) -> dict:
    """What selection.json records of the dedup stage: its settings and removals by reason."""
    reasons = removed["reason"].to_pylist()
    return {
        "settings": dataclasses.asdict(cfg),
        "removed": {reason: reasons.count(reason) for reason in sorted(set(reasons))},
    }
