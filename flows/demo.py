"""`curate demo`: BLIP's loop on a synthetic web whose truth is known, end to end, offline.

Draws a small world (curation.world.synthetic), serves its web over loopback, and runs one round of
`curate bootstrap`: pre-train on the raw web, fine-tune on the clean set, CapFilt the web,
pre-train again on the curated data; then prints round 0 vs round 1 and what CapFilt removed.
"""

import sys
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.parquet as pq

from curation.config import from_dict
from curation.training import ablate as ablations
from curation.training import bootstrap as loop
from curation.world import synthetic
from curation.world.webserver import Server, routes_from_dir
from flows.bootstrap import bootstrap

# Sized to finish in about 10 minutes on 2 CPU cores (README, "The built-in demo").
# 500 clean images: with 100 the filter kept 25-31% noisy texts at 80% of the clean ones kept,
# with 500 19% (docs/benchmarks.md, CapFilt quality: the filter's levers).
DEMO_WORLD = {"n_web": 1000, "clean_frac": 0.5, "n_eval": 200, "n_labelled": 3000, "seed": 0}
DEMO_CONFIG = {
    "sharding": {"shard_size": 500},
    "download": {"allow_private_network": True, "timeout": 10},
    # One synthetic caption per image, as BLIP sampled; 3 made round 1 too slow for 10 minutes.
    # The web text as caption whenever it passes: chosen-caption noise 48% -> 42% on this world
    # (docs/benchmarks.md, CapFilt quality).
    # The ITM threshold that keeps 82% of the held-out clean pairs, for the goal of 80% of the
    # clean web pairs: on the web the same threshold kept 0.4-0.5 points fewer in two fresh
    # demos at 80% (79.6%, 79.6%), and 100 held-out images estimate recall to a few points.
    "capfilt": {
        "batch_size": 64,
        "num_captions": 1,
        "max_new_tokens": 24,
        "caption_choice": "web_first",
        "itm_threshold": "auto",
        "calibration_target": 0.82,
    },
    "select": {"metadata": "", "scorer": ""},
    # The world's scenes are a few flat shapes on plain backgrounds: distinct scenes that differ
    # in one small shape look alike to pHash and to 8x8 thumbnails (at the defaults 37 of its
    # 1,000 distinct web scenes would go as near duplicates, 101 as eval copies), and pHash of
    # their JPEG copies moves up to 26 bits. So no near-duplicate stage here, and the loop's
    # decontamination (its eval and clean sets) looks further in pHash and asks the thumbnails
    # for near identity: 99% of re-encoded eval copies found, 2.4% of the web falsely
    # (docs/benchmarks.md, "Duplicates"). Photos need neither: see the defaults.
    "dedup": {"near_duplicates": False, "hash_distance": 24, "thumbnail_similarity": 0.99},
    # Batch 32: with a pre-trained image encoder, ITC gains from the negatives; 20 fine-tuning
    # epochs over 400 clean images (the rest held out); one web text per clean pair as an extra
    # ITM negative: boilerplate kept 21% -> 7% (docs/benchmarks.md, CapFilt quality)
    "train": {"size": "mini", "batch_size": 32, "finetune_epochs": 20, "web_negatives": 1},
}


def _previous_port(urls: Path) -> int:
    """The port of an earlier demo in the same folder, so a rerun resumes its run (0: any)."""
    if not urls.exists():
        return 0
    return urlsplit(pq.read_table(urls, columns=["url"])["url"][0].as_py()).port or 0


def demo_config(overrides: dict) -> dict:
    """DEMO_CONFIG with the settings of `overrides` (nested sections) in place; checked."""
    sections = DEMO_CONFIG.keys() | overrides.keys()
    config = {s: {**DEMO_CONFIG.get(s, {}), **overrides.get(s, {})} for s in sections}
    from_dict(config)  # a bad setting fails now, not after minutes of training
    return config


def demo(out: str | Path, ablate: bool = False, overrides: dict | None = None) -> int:
    out = Path(out)
    config = demo_config(overrides or {})
    print(
        f"[demo] drawing a synthetic web of {DEMO_WORLD['n_web']} images in {out}/world",
        file=sys.stderr,
    )
    world = synthetic.write_world(out / "world", **DEMO_WORLD)
    urls = out / "urls.parquet"
    server = Server(routes_from_dir(world.images, prefix="/images"), port=_previous_port(urls))
    try:
        pq.write_table(synthetic.url_list(world.root, server.base_url), urls)
        if ablate:  # the balancing rows need the world's concept list
            config = {**config, "select": {**config["select"], "metadata": str(world.concepts)}}
        run_dir = out / ("run-ablate" if ablate else "run")  # its config differs: own folder
        spec = loop.BootstrapSpec(
            str(urls),
            str(world.clean),
            str(run_dir),
            eval_set=str(world.eval),
            rounds=1,
            config=config,
            truth=str(world.truth),
            eval_truth=str(world.eval_truth),
            ablate=ablate,
            labelled=str(world.labelled),
        )
        metrics = bootstrap(spec)
    finally:
        server.close()
    print(loop.summary_table(metrics))
    if ablate:
        print("\nablation (same training budget per row):\n" + ablations.table(metrics["ablation"]))
    return 0
