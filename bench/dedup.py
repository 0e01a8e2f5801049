"""Near-duplicate detection with pHash: recall and precision on planted copies, search speed at
1M hashes, and what CC3M-6k holds (exact, near and alt-text duplicates).

1. Planted duplicates: N distinct originals per set (rendered synthetic-world scenes; and, when
   ``../shared/data/cc3m-6k`` exists, real photos from it, exact copies among them dropped by
   sha256), a fraction copied once each by one transformation (JPEG re-encode at quality 30-70,
   resize by 0.5-2x, a 5% crop (95% of each side kept) resized back, PNG re-save). Every image
   goes through bytes and ``decode_image``, as in a run. Per threshold: recall of the planted
   pairs per transformation (the pair found, or both in one group) and precision (pairs between
   an original and its own copy / all pairs found; pairs between different originals are false).
2. Scale: ``near_duplicate_pairs`` over 1,000,000 realistic hashes (20% random bases, the rest
   copies with 0-3 flipped bits, 1% one placeholder hash) and over 100,000, for the growth.
3. CC3M-6k: exact duplicate groups (sha256 of the bytes), near-duplicate groups beyond them at
   ``NEAR_DUPLICATE_DISTANCE``, and repeated alt-text, with examples.

    .venv/bin/python bench/dedup.py --thresholds 6,8,10,12,14 --scale-distances 6,8  # ~4 min
    .venv/bin/python bench/dedup.py --images 500 --scale 100000  # quick
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.config import DedupConfig  # noqa: E402
from curation.pipeline import dedup, duplicates  # noqa: E402
from curation.pipeline.images import decode_image  # noqa: E402
from curation.world.drawing import encode_jpeg, render_scene  # noqa: E402
from curation.world.scenes import combo_probs, sample_scenes  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cc3m-6k"
MIN_SIDE, MAX_PIXELS = 8, 89_478_485  # decode_image's guards, as in a run
TRANSFORMS = ("jpeg", "resize", "crop5", "png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="distinct originals per set")
    parser.add_argument("--copy-fraction", type=float, default=0.2, help="originals copied")
    parser.add_argument("--thresholds", default="2,4,6,8,10,12", help="Hamming distances tried")
    parser.add_argument("--sides", default="8,16", help="thumbnail sides tried")
    parser.add_argument("--similarities", default="0.8,0.85,0.9,0.95", help="thresholds tried")
    parser.add_argument("--scale", type=int, default=1_000_000, help="hashes in the speed test")
    parser.add_argument("--scale-distances", default="6,8", help="distances in the speed test")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="cc3m-6k folder")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def markdown(rows: list[dict]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(row[k]) for k in head) + " |" for row in rows]
    return "\n".join(lines)


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}" if whole else "-"


# ----------------------------------------------------------------------------------------------
# Originals and copies
# ----------------------------------------------------------------------------------------------


def decoded(data: bytes) -> Image.Image | None:
    return decode_image(data, MIN_SIDE, MAX_PIXELS).image


def synthetic_originals(n: int, rng: np.random.Generator) -> list[bytes]:
    """JPEGs of n distinct synthetic scenes (the world's Zipf combos), 128-384 px a side."""
    scenes = sample_scenes(rng, n, combo_probs(rng), set())
    sides = rng.integers(128, 385, size=(n, 2))
    drawn = zip(scenes, sides.tolist(), strict=True)
    return [encode_jpeg(render_scene(scene, w, h)) for scene, (w, h) in drawn]


def read_captions(data: Path) -> list[tuple[str, str]]:
    """(file, caption) rows of captions.tsv, header skipped."""
    lines = (data / "captions.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [tuple(line.split("\t", 1)) for line in lines if "\t" in line]


def real_originals(data: Path, n: int) -> list[bytes]:
    """The first n CC3M files that decode, one per sha256 (exact copies are not distinct)."""
    seen, found = set(), []
    for file, _ in read_captions(data):
        raw = (data / "images" / file).read_bytes()
        digest = hashlib.sha256(raw).digest()
        if digest not in seen and decoded(raw) is not None:
            seen.add(digest)
            found.append(raw)
            if len(found) == n:
                break
    return found


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def transformed(image: Image.Image, kind: str, rng: np.random.Generator) -> bytes:
    """`image` after one transformation, as the bytes a web server would send."""
    width, height = image.size
    if kind == "jpeg":
        return encode(image, "JPEG", quality=int(rng.integers(30, 71)))
    if kind == "resize":
        factor = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        size = (max(8, round(width * factor)), max(8, round(height * factor)))
        return encode(image.resize(size, Image.Resampling.BICUBIC), "JPEG", quality=90)
    if kind == "crop5":  # keep 95% of each side, at a random offset, then the original size
        keep_w, keep_h = round(width * 0.95), round(height * 0.95)
        left = int(rng.integers(0, width - keep_w + 1))
        top = int(rng.integers(0, height - keep_h + 1))
        box = (left, top, left + keep_w, top + keep_h)
        crop = image.crop(box).resize((width, height), Image.Resampling.BICUBIC)
        return encode(crop, "JPEG", quality=90)
    return encode(image, "PNG")


def thumbnails(images: list[Image.Image], side: int) -> np.ndarray:
    """uint8 [N, side * side * 3]: dedup.thumbnail at another side (same BOX resample)."""
    box = Image.Resampling.BOX
    rows = [image.convert("RGB").resize((side, side), box).tobytes() for image in images]
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(images), -1)


def planted_set(originals: list[bytes], fraction: float, rng: np.random.Generator, sides):
    """(hashes uint64 [N + C], source int64 [N + C], kind [N + C], {side: thumbnails}):
    originals, then copies."""
    images = [decoded(raw) for raw in originals]
    copied = rng.choice(len(images), size=round(fraction * len(images)), replace=False)
    kinds = [TRANSFORMS[k % len(TRANSFORMS)] for k in range(len(copied))]
    copies = [decoded(transformed(images[i], k, rng)) for i, k in zip(copied, kinds, strict=True)]
    hashes = [dedup.perceptual_hash(image) for image in images + copies]
    source = np.concatenate([np.arange(len(images)), copied])
    thumbs = {side: thumbnails(images + copies, side) for side in sides}
    return np.array(hashes, dtype=np.uint64), source, ["original"] * len(images) + kinds, thumbs


# ----------------------------------------------------------------------------------------------
# 1. Recall and precision
# ----------------------------------------------------------------------------------------------


def planted_rows(name: str, hashes, source, kinds, thumbs, args) -> list[dict]:
    """One row per (distance, side, similarity); similarity "-" is pHash alone."""
    rows = []
    for threshold in args.thresholds:
        candidates = dedup.near_duplicate_pairs(hashes, threshold)
        rows.append(planted_row(name, source, kinds, candidates, {"threshold": threshold}))
        for side in args.sides:
            similarity = dedup.thumbnail_similarity(
                thumbs[side][candidates[:, 0]], thumbs[side][candidates[:, 1]]
            )
            for minimum in args.similarities:
                setting = {"threshold": threshold, "side": side, "similarity": minimum}
                pairs = candidates[similarity >= minimum]
                rows.append(planted_row(name, source, kinds, pairs, setting))
    return rows


def planted_row(name: str, source, kinds, pairs, setting: dict) -> dict:
    n_originals = kinds.count("original")
    copy_index = np.arange(n_originals, len(kinds))
    kind_of_copy = np.array(kinds[n_originals:])
    labels = dedup.duplicate_groups(len(kinds), pairs)
    same_group = labels[copy_index] == labels[source[copy_index]]
    true = source[pairs[:, 0]] == source[pairs[:, 1]]
    row = {"set": name, "side": "-", "similarity": "-", **setting}
    for kind in TRANSFORMS:
        found = same_group[kind_of_copy == kind]
        row[f"recall {kind} %"] = pct(int(found.sum()), len(found))
    row["pairs found"] = len(pairs)
    row["false pairs"] = int((~true).sum())
    row["precision %"] = pct(int(true.sum()), len(pairs))
    # distinct originals that dedup would drop: members of a group beyond its first
    originals = labels[:n_originals]
    row["originals removed"] = n_originals - len(np.unique(originals))
    return row


def distance_rows(name: str, hashes, source, kinds) -> list[dict]:
    """Hamming distance of each copy to its original, and of the closest two originals."""
    n_originals = kinds.count("original")
    copies = np.arange(n_originals, len(kinds))
    distance = np.bitwise_count(hashes[copies] ^ hashes[source[copies]]).astype(int)
    kind_of_copy = np.array(kinds[n_originals:])
    rows = []
    for kind in TRANSFORMS:
        d = distance[kind_of_copy == kind]
        rows.append(
            {
                "set": name,
                "pairs": kind,
                "n": len(d),
                "median": int(np.median(d)),
                "p95": int(np.percentile(d, 95)),
                "max": int(d.max()),
            }
        )
    originals = hashes[:n_originals]
    between = np.bitwise_count(originals[:, None] ^ originals[None, :]).astype(int)
    between = between[np.triu_indices(n_originals, 1)]
    rows.append(
        {
            "set": name,
            "pairs": "distinct originals",
            "n": len(between),
            "median": int(np.median(between)),
            "p95": f"p0.1 {np.percentile(between, 0.1):.0f}",
            "max": f"min {between.min()}",
        }
    )
    return rows


def planted_duplicates(args: argparse.Namespace) -> None:
    sets = {"synthetic": synthetic_originals(args.images, np.random.default_rng(args.seed))}
    if args.data.is_dir():
        sets["cc3m"] = real_originals(args.data, args.images)
    else:
        print(f"SKIP real photos: {args.data} is absent")
    recall, distances = [], []
    for name, originals in sets.items():
        start = time.perf_counter()
        rng = np.random.default_rng(args.seed)
        planted = planted_set(originals, args.copy_fraction, rng, args.sides)
        seconds = time.perf_counter() - start
        print(
            f"{name}: {len(originals)} originals + {len(planted[0]) - len(originals)} copies "
            f"decoded, transformed and hashed in {seconds:.1f} s"
        )
        recall += planted_rows(name, *planted, args)
        distances += distance_rows(name, *planted[:3])
    print(
        "\n### Planted duplicates: recall (copy and original in one group) and precision; "
        "pHash alone (side -) and verified by thumbnail correlation\n"
    )
    print(markdown(recall))
    print("\n### Hamming distances: copy to its original; between distinct originals\n")
    print(markdown(distances))


# ----------------------------------------------------------------------------------------------
# 2. Scale
# ----------------------------------------------------------------------------------------------


def realistic_hashes(n: int, rng: np.random.Generator) -> np.ndarray:
    """n hashes: 20% random bases, 79% copies of them with 0-3 flipped bits, 1% one value."""
    base = rng.integers(0, 2**64, size=n // 5, dtype=np.uint64, endpoint=False)
    n_copies = n - len(base) - n // 100
    copies = base[rng.integers(0, len(base), n_copies)]
    flipped = rng.integers(0, 4, n_copies)
    for k in range(3):
        bit = np.uint64(1) << rng.integers(0, 64, n_copies).astype(np.uint64)
        copies = copies ^ np.where(flipped > k, bit, np.uint64(0))
    return np.concatenate([base, copies, np.full(n // 100, base[0])])


def scale(args: argparse.Namespace) -> None:
    """Collapse equal hashes (as a run does), search the distinct ones, verify the candidates
    with random thumbnails (one per distinct hash; the cost per pair does not depend on content)."""
    rows = []
    for n in sorted({min(100_000, args.scale), args.scale}):
        hashes = realistic_hashes(n, np.random.default_rng(args.seed))
        for distance in args.scale_distances:
            rows.append(scale_row(hashes, distance, np.random.default_rng(args.seed)))
    print(
        f"\n### Scale: distinct hashes searched, candidates verified, on {os.cpu_count()} CPUs "
        f"(load average {os.getloadavg()[0]:.2f})\n"
    )
    print(markdown(rows))
    distance = args.scale_distances[-1]
    print(f"\n{nearest_row(hashes, np.random.default_rng(args.seed), distance)}")
    print(f"\n{stage_row(hashes, np.random.default_rng(args.seed))}")


def stage_row(hashes: np.ndarray, rng: np.random.Generator) -> str:
    """The whole plan-time stage (`duplicates.removals` at the defaults: exact, then near
    duplicates with verification) over one survivor row per hash; a tenth share their bytes.
    Rows with one pHash but other thumbnails are all paired (k^2 candidates for k of them): a
    10,000-times repeated hash with random thumbnails would make 50M candidates."""
    n = len(hashes)
    side = dedup.THUMBNAIL_SIDE
    # one random thumbnail per distinct hash: equal hashes are one picture (the repeated one, a
    # placeholder), flipped-bit copies look different and fail the check
    distinct, inverse = np.unique(hashes, return_inverse=True)
    thumbs = rng.integers(0, 256, (len(distinct), side * side * 3), dtype=np.uint8)[inverse]
    shas = [f"{i % (n - n // 10):x}" for i in range(n)]  # the last tenth repeats the first
    rows = pa.table(
        {
            "sample_id": pa.array(np.arange(n), pa.int64()),
            "sha256": shas,
            "caption": [""] * n,
            "caption_itm": pa.array(rng.random(n), pa.float32()),
            "phash": pa.array(dedup.to_signed(hashes), pa.int64()),
            "thumbnail": [t.tobytes() for t in thumbs],
            "embedding": pa.nulls(n, pa.list_(pa.float32())),
        }
    )
    start = time.perf_counter()
    removed = duplicates.removals(rows, DedupConfig())
    seconds = time.perf_counter() - start
    counts = Counter(removed["reason"].to_pylist())
    return (
        f"duplicates.removals (the plan's dedup stage, defaults): {n:,} survivors, "
        f"{dict(sorted(counts.items()))} removed, {seconds:.1f} s"
    )


def scale_row(hashes: np.ndarray, distance: int, rng: np.random.Generator) -> dict:
    start = time.perf_counter()
    distinct = np.unique(hashes)
    candidates = dedup.near_duplicate_pairs(distinct, distance)
    search = time.perf_counter() - start
    side = dedup.THUMBNAIL_SIDE
    thumbs = rng.integers(0, 256, (len(distinct), side * side * 3), dtype=np.uint8)
    start = time.perf_counter()
    kept = dedup.verified_pairs(candidates, thumbs, dedup.NEAR_DUPLICATE_SIMILARITY)
    verify = time.perf_counter() - start
    return {
        "hashes": f"{len(hashes):,}",
        "distinct": f"{len(distinct):,}",
        "distance": distance,
        "candidate pairs": f"{len(candidates):,}",
        "search s": f"{search:.1f}",
        "verified (random thumbnails)": f"{len(kept):,}",
        "verify s": f"{verify:.1f}",
    }


def nearest_row(
    queries: np.ndarray, rng: np.random.Generator, distance: int, n_refs: int = 10_000
) -> str:
    """Decontamination's search: every (query, reference) pair within `distance` against an
    evaluation set of n_refs hashes, a tenth of them taken from the queries (leaks), the rest
    random (each pair is then checked by thumbnail, as `verified_pairs` times above)."""
    leaked = rng.choice(queries, size=n_refs // 10, replace=False)
    refs = np.concatenate([leaked, rng.integers(0, 2**64, n_refs - len(leaked), dtype=np.uint64)])
    start = time.perf_counter()
    pairs = dedup.match_pairs(queries, refs, distance)
    seconds = time.perf_counter() - start
    return (
        f"match_pairs: {len(queries):,} queries vs {n_refs:,} references, distance {distance}, "
        f"{len(np.unique(pairs[:, 0])):,} queries matched, {seconds:.1f} s"
    )


# ----------------------------------------------------------------------------------------------
# 3. CC3M-6k
# ----------------------------------------------------------------------------------------------


def cc3m_rows(data: Path) -> list[dict]:
    """Each decodable file: file, caption, sha256, pHash."""
    rows = []
    for file, caption in read_captions(data):
        raw = (data / "images" / file).read_bytes()
        image = decoded(raw)
        if image is not None:
            digest = hashlib.sha256(raw).hexdigest()
            rows.append(
                {
                    "file": file,
                    "caption": caption,
                    "sha": digest,
                    "phash": dedup.perceptual_hash(image),
                    "thumb": dedup.thumbnail(image),
                }
            )
    return rows


def groups_of(keys: list) -> list[list[int]]:
    """Indices sharing a key, for keys held by >= 2 items, largest groups first."""
    by_key = defaultdict(list)
    for i, key in enumerate(keys):
        by_key[key].append(i)
    return sorted((g for g in by_key.values() if len(g) > 1), key=len, reverse=True)


def show(rows: list[dict], groups: list[list[int]], examples: int = 4) -> None:
    for group in groups[:examples]:
        print(f"- {len(group)} images:")
        for i in group[:4]:
            print(f"  - `{rows[i]['file']}` {rows[i]['caption'][:90]!r}")


def tail_rows(hashes: np.ndarray, shas: list[str], upto: int = 16) -> list[dict]:
    """How many pairs of files with different bytes lie within each distance (all pairs)."""
    _, distinct = np.unique(np.array(shas), return_index=True)
    hashes = hashes[np.sort(distinct)]
    counts = np.zeros(upto + 1, dtype=np.int64)
    for start in range(0, len(hashes), 500):
        block = np.bitwise_count(hashes[start : start + 500, None] ^ hashes[None, :]).astype(int)
        block = block[np.arange(start, start + len(block))[:, None] < np.arange(len(hashes))]
        counts += np.bincount(block[block <= upto], minlength=upto + 1)
    total = len(hashes) * (len(hashes) - 1) // 2
    within = np.cumsum(counts)
    return [
        {
            "distance <=": d,
            "pairs": int(within[d]),
            "share of pairs": f"{within[d] / total:.2e}",
            "expected pairs per 1M images": f"{within[d] / total * 5e11:,.0f}",
        }
        for d in range(4, upto + 1, 2)
    ]


def cc3m(data: Path) -> None:
    if not (data / "captions.tsv").is_file():
        print(f"\nSKIP CC3M-6k: {data}/captions.tsv is absent")
        return
    total = len(read_captions(data))
    start = time.perf_counter()
    rows = cc3m_rows(data)
    print(
        f"\n### CC3M-6k: {len(rows):,} of {total:,} files decode "
        f"(read, decoded and hashed in {time.perf_counter() - start:.0f} s)\n"
    )
    exact = groups_of([r["sha"] for r in rows])
    hashes = np.array([r["phash"] for r in rows], dtype=np.uint64)
    pairs = dedup.near_duplicate_pairs(hashes, dedup.NEAR_DUPLICATE_DISTANCE)
    labels = dedup.duplicate_groups(len(rows), pairs)
    near = [g for g in groups_of(labels.tolist()) if len({rows[i]["sha"] for i in g}) > 1]
    thumbs = np.frombuffer(b"".join(r["thumb"] for r in rows), np.uint8).reshape(len(rows), -1)
    kept = dedup.verified_pairs(pairs, thumbs, dedup.NEAR_DUPLICATE_SIMILARITY)
    labels = dedup.duplicate_groups(len(rows), kept)
    verified = [g for g in groups_of(labels.tolist()) if len({rows[i]["sha"] for i in g}) > 1]
    texts = groups_of([r["caption"].strip() for r in rows])
    texts = [g for g in texts if rows[g[0]]["caption"].strip()]  # an empty text is no alt-text
    texts = [g for g in texts if len({rows[i]["sha"] for i in g}) > 1]
    summary = [
        {
            "kind": "exact (same sha256)",
            "groups": len(exact),
            "images in them": sum(map(len, exact)),
            "removable": sum(len(g) - 1 for g in exact),
        },
        {
            "kind": f"near (pHash <= {dedup.NEAR_DUPLICATE_DISTANCE}, >= 2 distinct files)",
            "groups": len(near),
            "images in them": sum(map(len, near)),
            "removable": sum(len({rows[i]["sha"] for i in g}) - 1 for g in near),
        },
        {
            "kind": f"near, verified (thumbnail correlation >= {dedup.NEAR_DUPLICATE_SIMILARITY})",
            "groups": len(verified),
            "images in them": sum(map(len, verified)),
            "removable": sum(len({rows[i]["sha"] for i in g}) - 1 for g in verified),
        },
        {
            "kind": "repeated alt-text (>= 2 distinct files)",
            "groups": len(texts),
            "images in them": sum(map(len, texts)),
            "removable": "-",
        },
    ]
    print(markdown(summary))
    print(
        f"\nHamming distance between distinct files ({len(rows):,} images), and what that rate "
        "would give among 1,000,000 images of the same kind:\n"
    )
    print(markdown(tail_rows(hashes, [r["sha"] for r in rows])))
    shown = (("Exact", exact), ("Near", near), ("Near, verified", verified), ("Alt-text", texts))
    for title, groups in shown:
        print(f"\n{title} duplicates, largest groups:")
        show(rows, groups)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.thresholds = [int(t) for t in args.thresholds.split(",")]
    args.sides = [int(t) for t in args.sides.split(",")]
    args.similarities = [float(t) for t in args.similarities.split(",")]
    args.scale_distances = [int(t) for t in args.scale_distances.split(",")]
    print(f"# bench/dedup.py {' '.join(sys.argv[1:])}\n")
    planted_duplicates(args)
    scale(args)
    cc3m(args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
