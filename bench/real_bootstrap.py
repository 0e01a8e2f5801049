"""One round of `curate bootstrap` on real data: CC3M 6k as the web, COCO-mini as the clean set.

COCO-mini's 80 train2017 photos (5 human captions each) become the clean set and its 79
val2017 photos the eval set, both in the CLEAN format (image bytes, caption, image_id); the
CC3M images are served over loopback and the real command line runs the loop. Small models
trained on a few thousand images give weak absolute numbers: the point is that real data goes
through the whole loop. Skips (exit 0) when ../shared/data is absent.

    .venv/bin/python bench/real_bootstrap.py [--out /tmp/real_boot] [--epochs 2]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curation import schema
from curation.world.webserver import Server, routes_from_dir

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def coco_clean(split: str, out: Path) -> Path:
    """COCO-mini's `split` (train2017 / val2017) as a CLEAN Parquet file."""
    root = DATA / "coco-mini"
    meta = json.loads((root / "annotations" / f"captions_{split}.json").read_text())
    files = {image["id"]: root / split / image["file_name"] for image in meta["images"]}
    rows = [
        {
            "image": files[a["image_id"]].read_bytes(),
            "caption": a["caption"].strip(),
            "image_id": a["image_id"],
        }
        for a in meta["annotations"]
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema.CLEAN), out)
    return out


def cc3m_urls(base_url: str, out: Path) -> Path:
    lines = (DATA / "cc3m-6k" / "captions.tsv").read_text().splitlines()[1:]
    pairs = [line.split("\t", 1) + [""] for line in lines]
    table = pa.table(
        {"url": [f"{base_url}/{p[0]}" for p in pairs], "caption": [p[1] for p in pairs]}
    )
    pq.write_table(table, out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/real_boot")
    parser.add_argument("--epochs", type=int, default=2, help="pre-training epochs")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"SKIP: {DATA} is absent (shared data sits beside the project)")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clean, evals = (
        coco_clean("train2017", out / "clean.parquet"),
        coco_clean("val2017", out / "eval.parquet"),
    )
    (out / "config.toml").write_text(
        f'[sharding]\nshard_size = 1000\n[capfilt]\nbatch_size = 64\n[select]\nmetadata = ""\n'
        f"[train]\nepochs = {args.epochs}\nfinetune_epochs = 5\n"
    )
    server = Server(routes_from_dir(DATA / "cc3m-6k" / "images"), port=8611)
    try:
        urls = cc3m_urls(server.base_url, out / "urls.parquet")
        curate = Path(sys.executable).with_name("curate")
        command = [
            str(curate),
            "bootstrap",
            "--urls",
            str(urls),
            "--clean",
            str(clean),
            "--eval",
            str(evals),
            "--out",
            str(out / "run"),
            "--rounds",
            "1",
            "--config",
            str(out / "config.toml"),
            "--allow-private-network",
        ]
        return subprocess.run(command).returncode
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
