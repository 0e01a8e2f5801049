"""The CapFilt stage (BLIP, Li et al. 2022, arXiv 2201.12086, sec. 3.3).

For every downloaded image: the captioner samples K synthetic captions (nucleus sampling), the
filter scores the web text and each synthetic caption (ITM match probability, ITC similarity),
texts below the ITM threshold are dropped, and an image left with no text is rejected.

Decoding and preprocessing run on worker threads, `prefetch_batches` ahead of the models, so the
models never wait on Python image code.
"""

import hashlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import torch

from curation import schema
from curation.config import CapFiltConfig
from curation.models.blip import Captioner, Filter, image_processor_config, preprocess
from curation.pipeline.images import decode_image

R = schema.Reason


@dataclass
class Batch:
    rows: list[int]  # positions in the shard's RAW table of the images that decoded
    captioner_pixels: torch.Tensor | None  # [B, 3, H, W]
    filter_pixels: torch.Tensor | None  # [B, 3, H', W'] (the same tensor when configs agree)
    sizes: list[tuple[int, int]]  # (width, height) of each upright image
    # (row, stage, reason, detail): images that did not decode, and copies of eval images
    rejects: list[tuple[int, str, str, str]] = field(default_factory=list)


class _Collate:
    def __init__(self, captioner_processor, filter_processor, shared: bool, eval_copies=None):
        self.captioner_processor, self.filter_processor = captioner_processor, filter_processor
        self.shared = shared
        self.eval_copies = eval_copies  # images -> per image, the eval image it copies, or None

    def __call__(self, items) -> Batch:
        good = [(i, d.image) for i, d in items if d.image is not None]
        rejects = [(i, "decode", d.reason, d.detail) for i, d in items if d.image is None]
        if good and self.eval_copies:  # leaks go before the models spend time on them
            leaks = self.eval_copies([im for _, im in good])
            copies = [(i, d) for (i, _), d in zip(good, leaks, strict=True) if d]
            rejects += [(i, "capfilt", R.EVAL_OVERLAP.value, d) for i, d in copies]
            good = [pair for pair, detail in zip(good, leaks, strict=True) if detail is None]
        if not good:
            return Batch([], None, None, [], rejects)
        rows, images = zip(*good, strict=True)
        filter_pixels = preprocess(self.filter_processor, list(images))
        captioner_pixels = (
            filter_pixels if self.shared else preprocess(self.captioner_processor, list(images))
        )
        sizes = [im.size for im in images]
        return Batch(list(rows), captioner_pixels, filter_pixels, sizes, rejects)


def batches(
    images: list[bytes],
    captioner: Captioner,
    filt: Filter,
    cfg: CapFiltConfig,
    eval_copies: Callable | None = None,
):
    """Decoded, preprocessed batches, in order, made `prefetch_batches` ahead by worker threads;
    images `eval_copies` names an eval image for are rejects, not inputs.

    Threads, not processes: Pillow's decoders and resizers and torch's kernels release the GIL,
    and forking a process that runs Prefect's threads is not safe.
    """
    shared = image_processor_config(captioner.processor) == image_processor_config(filt.processor)
    collate = _Collate(captioner.processor, filt.processor, shared, eval_copies)

    def make(start: int) -> Batch:
        rows = range(start, min(start + cfg.batch_size, len(images)))
        return collate(
            [(i, decode_image(images[i], cfg.min_image_side, cfg.max_image_pixels)) for i in rows]
        )

    starts = range(0, len(images), cfg.batch_size)
    if cfg.num_workers == 0:
        yield from map(make, starts)
        return
    with ThreadPoolExecutor(cfg.num_workers) as pool:
        pending = deque()
        for start in starts:
            pending.append(pool.submit(make, start))
            if len(pending) > cfg.prefetch_batches:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def image_seed(seed: int, sample_id: int) -> int:
    """An image's caption-sampling seed: the run seed and the sample alone, so its captions do
    not depend on the batch, shard or worker it lands in."""
    digest = hashlib.blake2b(repr((seed, sample_id)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF


def candidate_texts(web_text: str | None, captions: list[str]) -> list[tuple[str, str]]:
    """(text, source) pairs to score; an empty or blank text, web or synthetic, describes
    nothing and is not scored."""
    web = [(web_text.strip(), "web")] if web_text and web_text.strip() else []
    return web + [(c.strip(), "synthetic") for c in captions if c.strip()]


def judge(
    candidates: list[dict], threshold: float, choice: str = "itm"
) -> tuple[list[dict], dict | None]:
    """Mark each candidate kept or not; return them and the chosen caption, or None when none
    was kept. `choice` (`[capfilt] caption_choice`): "itm" takes the best ITM probability;
    "web_first" takes the web text when it was kept, else the best synthetic caption.

    A stage in the sense of docs/architecture.md (style rule 2): no I/O, a decision per row.
    """
    for c in candidates:
        c["kept"] = c["itm"] >= threshold
    kept = [c for c in candidates if c["kept"]]
    if choice == "web_first" and any(c["source"] == "web" for c in kept):
        kept = [c for c in kept if c["source"] == "web"]
    # Ties go to the web text: it came with the image, a synthetic caption did not.
    best = max(kept, key=lambda c: (c["itm"], c["source"] == "web"), default=None)
    return candidates, best


@dataclass
class ShardResult:
    curated: list[dict]
    rejects: list[dict]
    images: int = 0  # images that reached the models
    model_seconds: float = 0.0
    seconds: float = 0.0


def _score_batch(batch: Batch, texts_in: list, captioner, filt, cfg, sample_ids) -> list:
    seeds = [image_seed(cfg.seed, i) for i in sample_ids]
    captions = captioner.generate(batch.captioner_pixels, cfg.sampling(), seeds)
    pairs = [candidate_texts(w, c) for w, c in zip(texts_in, captions, strict=True)]
    itm, itc = filt.score(batch.filter_pixels, [[t for t, _ in p] for p in pairs])
    return [
        [
            {"text": t, "source": s, "itm": float(m), "itc": float(c)}
            for (t, s), m, c in zip(p, itm_i, itc_i, strict=True)
        ]
        for p, itm_i, itc_i in zip(pairs, itm, itc, strict=True)
    ]


def _reject(row: dict, stage: str, reason: str, detail: str | None, shard: int, cands=None):
    return {
        "sample_id": row["sample_id"],
        "url": row["url"],
        "web_text": row["web_text"],
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "candidates": cands,
        "shard": shard,
    }


def _curated(row: dict, cands: list, best: dict, size: tuple, shard: int) -> dict:
    return {
        "sample_id": row["sample_id"],
        "key": schema.sample_key(row["sample_id"]),
        "url": row["url"],
        "web_text": row["web_text"],
        "candidates": cands,
        "caption": best["text"],
        "caption_source": best["source"],
        "caption_itm": best["itm"],
        "image": row["image"],
        "width": size[0],
        "height": size[1],
        "sha256": hashlib.sha256(row["image"]).hexdigest(),
        "shard": shard,
    }


def download_rejects(raw: pa.Table, shard: int) -> list[dict]:
    """Rows the download stage could not deliver, as rejects (reason = their status)."""
    failed = raw.filter(pc.not_equal(raw["status"], "success")).to_pylist()
    return [_reject(r, "download", r["status"], r["error"], shard) for r in failed]


def capfilt_shard(
    raw: pa.Table,
    captioner: Captioner,
    filt: Filter,
    cfg: CapFiltConfig,
    shard: int,
    progress=None,
    eval_copies: Callable | None = None,
) -> ShardResult:
    """Run CapFilt over one downloaded shard (`schema.RAW`); every row ends curated or rejected.

    `progress(n)` is called after each batch with the number of images it held.
    `eval_copies(images)`: per decoded image, the eval image it copies or None
    (`duplicates.eval_copy_details`): a copy is rejected as eval_overlap before the models see
    it (DataComp's decontamination).
    """
    start = time.perf_counter()
    result = ShardResult([], download_rejects(raw, shard))
    rows = raw.filter(pc.equal(raw["status"], "success")).to_pylist()
    images = [r["image"] for r in rows]
    for batch in batches(images, captioner, filt, cfg, eval_copies):
        for i, stage, reason, detail in batch.rejects:
            result.rejects.append(_reject(rows[i], stage, reason, detail, shard))
        if batch.rows:
            picked = [rows[i] for i in batch.rows]
            t0 = time.perf_counter()
            scored = _score_batch(
                batch,
                [r["web_text"] for r in picked],
                captioner,
                filt,
                cfg,
                [r["sample_id"] for r in picked],
            )
            result.model_seconds += time.perf_counter() - t0
            result.images += len(picked)
            for row, cands, size in zip(picked, scored, batch.sizes, strict=True):
                cands, best = judge(cands, cfg.itm_threshold, cfg.caption_choice)
                if best is None:
                    detail = f"no text reached ITM {cfg.itm_threshold} of {len(cands)} scored"
                    result.rejects.append(
                        _reject(row, "capfilt", "no_matching_text", detail, shard, cands)
                    )
                else:
                    result.curated.append(_curated(row, cands, best, size, shard))
        if progress:
            progress(len(batch.rows) + len(batch.rejects))
    result.seconds = time.perf_counter() - start
    return result


def to_tables(result: ShardResult) -> tuple[pa.Table, pa.Table]:
    """The shard's curated rows and rejects as Arrow tables of the declared schemas."""
    curated = pa.Table.from_pylist(result.curated, schema=schema.CURATED)
    rejects = pa.Table.from_pylist(result.rejects, schema=schema.REJECTS)
    return curated, rejects


def apply_decisions(passed: pa.Table, notes: pa.Table, decisions: pa.Table, shard: int):
    """Split CapFilt's survivors by the selection decisions: (curated, rejects) tables.

    Curated rows gain their DFN score and matched concepts; dropped rows become rejects of the
    `select` stage with the decision's reason and detail. Rows are matched by sample_id.
    """
    note_by_id = {r["sample_id"]: r for r in notes.to_pylist()}
    verdict = {r["sample_id"]: r for r in decisions.to_pylist()}
    curated, rejects = [], []
    for row in passed.to_pylist():
        decision = verdict[row["sample_id"]]
        if decision["keep"]:
            note = note_by_id[row["sample_id"]]
            curated.append({**row, "dfn": note["dfn"], "concepts": note["concepts"]})
        else:
            rejects.append(
                _reject(
                    row, "select", decision["reason"], decision["detail"], shard, row["candidates"]
                )
            )
    return (
        pa.Table.from_pylist(curated, schema=schema.CURATED),
        pa.Table.from_pylist(rejects, schema=schema.REJECTS),
    )
