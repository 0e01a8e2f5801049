"""`curate demo`: synthesize a small web, serve it over loopback, curate it.

Everything is local: the images are drawn by `curation.synthetic`, served by a loopback HTTP
server, downloaded by img2dataset and run through CapFilt with tiny BLIP models built from config.
"""

import sys
from pathlib import Path

import pyarrow.parquet as pq

from curation import stats, synthetic, tiny
from curation.webserver import Server, routes_from_dir
from flows.curate import curate

DEMO_CONFIG = {
    "sharding": {"shard_size": 100},
    "download": {"allow_private_network": True, "timeout": 5},
    "capfilt": {"batch_size": 16, "num_captions": 3, "max_new_tokens": 12},
}


def demo(out: str | Path, n_web: int = 300) -> int:
    out = Path(out)
    print(f"[demo] drawing a synthetic web of {n_web} images in {out}/world", file=sys.stderr)
    world = synthetic.write_world(out / "world", n_web=n_web, n_eval=40, seed=0)
    captioner, filt = tiny.save_blip_checkpoints(out / "models", size="tiny", seed=0)
    server = Server(routes_from_dir(world.images, prefix="/images"))
    try:
        pq.write_table(synthetic.url_list(world.root, server.base_url), out / "urls.parquet")
        config = {**DEMO_CONFIG, "capfilt": {**DEMO_CONFIG["capfilt"],
                  "captioner": str(captioner), "filter": str(filt)}}  # fmt: skip
        curate(str(out / "urls.parquet"), str(out / "run"), config=config)
    finally:
        server.close()
    print(stats.report(out / "run"))
    return 0
