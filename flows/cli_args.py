"""The `curate` command line: every subcommand's arguments (the commands are in flows/cli.py)."""

import argparse

DESCRIPTION = (
    "CapFilt data curation (BLIP, MetaCLIP, DFN): curate web image-text pairs, query and "
    "export the runs, and retrain the captioner and filter."
)


def add_run_options(r: argparse.ArgumentParser) -> None:
    """The options `curate run` and `curate schedule` share."""
    r.add_argument("--urls", required=True, help="URL list: .parquet, .csv, .tsv or .jsonl")
    r.add_argument("--url-col", default="url")
    r.add_argument("--caption-col", default="caption", help="alt-text column ('' for none)")
    r.add_argument("--config", help="TOML file or preset name from data/presets")
    r.add_argument("--captioner", help="hub id or folder (default: BLIP large captioning)")
    r.add_argument("--filter", help="hub id or folder (default: BLIP large ITM, COCO)")
    r.add_argument(
        "--allow-private-network",
        action="store_true",
        help="allow loopback/private addresses (tests, demo, intranet mirrors)",
    )
    r.add_argument(
        "--decontaminate",
        nargs="+",
        default=[],
        metavar="EVAL.parquet",
        help="reject web images that are near duplicates (pHash) of these Parquet files' images "
        "(reject reason eval_overlap); adds to [dedup] decontaminate",
    )


def add_scale_out_options(r: argparse.ArgumentParser) -> None:
    """Where the per-shard tasks run (README, "Scale-out"); default: this process."""
    r.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="a local Dask cluster of N worker processes (one per GPU with dask-cuda)",
    )
    r.add_argument(
        "--cluster", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://host:8786"
    )


def _run(sub) -> None:
    r = sub.add_parser("run", help="download, caption and filter a URL list into RUN_DIR")
    r.add_argument("--out", required=True, help="run directory (rerun to resume)")
    r.add_argument(
        "--retry-failed",
        action="store_true",
        help="in an existing run, fetch again the downloads that failed for a transient reason "
        "(timeout, refused or reset connection, cut body, 5xx, 429) and redo what they change",
    )
    add_run_options(r)
    add_scale_out_options(r)


def _schedule(sub) -> None:
    c = sub.add_parser("schedule", help="serve a Prefect deployment running `curate run` on cron")
    c.add_argument("--cron", required=True, help='e.g. "0 3 * * *" (03:00 every day)')
    c.add_argument("--out-root", required=True, help="each run writes OUT_ROOT/<UTC timestamp>")
    c.add_argument("--name", default="nightly", help="deployment name")
    add_run_options(c)
    add_scale_out_options(c)


def _train(sub) -> None:
    t = sub.add_parser("train", help="pre-train BLIP (ITC+ITM+LM) on a run's curated shards")
    t.add_argument("--shards", required=True, metavar="RUN_DIR")
    t.add_argument("--out", required=True, metavar="MODEL_DIR")
    t.add_argument(
        "--init", metavar="MODEL_DIR", help="start from these weights (default: scratch)"
    )
    t.add_argument("--config", help="TOML file or preset name ([train] section)")


def _pretrain_vision(sub) -> None:
    v = sub.add_parser(
        "pretrain-vision",
        help="pre-train the image encoder on labelled images "
        "(BLIP's ImageNet step), for [train] vision_init",
    )
    v.add_argument("--labelled", required=True, help="Parquet with image (bytes) and labels")
    v.add_argument("--out", required=True, metavar="VISION_DIR")
    v.add_argument("--config", help="TOML file or preset name ([train] section)")


def _finetune(sub) -> None:
    f = sub.add_parser(
        "finetune", help="fine-tune captioner (LM) and filter (ITC+ITM) on clean data"
    )
    f.add_argument("--clean", required=True, help="Parquet with image (bytes) and caption")
    f.add_argument("--init", required=True, metavar="MODEL_DIR")
    f.add_argument("--out", required=True, metavar="MODEL_DIR2")
    f.add_argument("--config", help="TOML file or preset name ([train] section)")
    f.add_argument(
        "--web",
        metavar="RUN_DIR",
        help="a run whose downloaded alt-text serves as the filter's extra ITM negatives "
        "([train] web_negatives)",
    )


def _bootstrap(sub) -> None:
    b = sub.add_parser("bootstrap", help="BLIP's loop: pretrain, finetune, CapFilt, pretrain again")
    b.add_argument("--clean", required=True, help="Parquet with image (bytes) and caption")
    b.add_argument("--out", required=True, metavar="RUN_DIR")
    b.add_argument("--eval", help="held-out set (CLEAN format) for recall@k, BLEU-4, CIDEr")
    b.add_argument("--rounds", type=int, default=1)
    b.add_argument("--truth", help="synthetic world's truth.parquet: noise and filter numbers")
    b.add_argument("--eval-truth", help="synthetic world's eval_truth.parquet: caption truth")
    b.add_argument(
        "--labelled",
        help="labelled images (Parquet: image, labels): pre-train the "
        "image encoder on them first, as BLIP starts from ImageNet",
    )
    b.add_argument(
        "--ablate",
        action="store_true",
        help="also train one model per data variant (raw, +filter, +captioner, ...) "
        "on the same budget and write RUN_DIR/ablation.md",
    )
    b.add_argument(
        "--no-decontaminate",
        action="store_true",
        help="keep web copies of the --eval and --clean images (by default they are rejected "
        "as eval_overlap, and left out of round 0's raw pairs)",
    )
    add_run_options(b)


def _stats(sub) -> None:
    s = sub.add_parser("stats", help="print a run's funnel and score summaries")
    s.add_argument("run_dir")


def _sql(sub) -> None:
    q = sub.add_parser("sql", help="query one or many runs with DuckDB SQL")
    q.add_argument(
        "items",
        nargs="+",
        metavar="RUN_DIR... [QUERY]",
        help="run directories, then a query over the views (samples, texts, ...); the query "
        "may be left out only with --catalog",
    )
    q.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    q.add_argument("--out", help="write the result to this file")
    q.add_argument("--catalog", help="write a DuckDB database file holding the views")
    q.add_argument(
        "--allow-files",
        action="store_true",
        help="let the query use DuckDB's file functions (read_csv, COPY TO, ATTACH...); by "
        "default it sees the runs' views and nothing else",
    )


def _runs(sub) -> None:
    ls = sub.add_parser("runs", help="list the runs under a folder with status and counts")
    ls.add_argument("--out-root", required=True)


def _export(sub) -> None:
    e = sub.add_parser("export", help="write curated rows as WebDataset, Parquet or JSONL shards")
    e.add_argument("run_dir")
    e.add_argument("--out", required=True, help="a new or empty folder")
    e.add_argument("--where", help='DuckDB predicate, e.g. "caption_itm > 0.8 AND width >= 256"')
    e.add_argument("--format", choices=["webdataset", "parquet", "jsonl"], default="webdataset")
    e.add_argument("--shard-size", type=int, default=10000, help="rows per output shard")
    e.add_argument(
        "--caption",
        choices=["chosen", "all"],
        default="chosen",
        help="all: every kept text in the json/columns too",
    )


def _report(sub) -> None:
    rp = sub.add_parser("report", help="write a self-contained RUN_DIR/report.html")
    rp.add_argument("run_dir")
    rp.add_argument("--out", help="default: RUN_DIR/report.html")


def _metadata(sub) -> None:
    m = sub.add_parser("metadata", help="concept lists for MetaCLIP balancing")
    mb = m.add_subparsers(dest="metadata_command", required=True).add_parser(
        "build", help="unigrams (count >= N) and bigrams (PMI >= P) of a text corpus (MetaCLIP)"
    )
    mb.add_argument(
        "--corpus", nargs="+", required=True, help=".txt (a text a line), .tsv, .parquet"
    )
    mb.add_argument("--out", required=True, help=".txt (an entry a line) or .json (MetaCLIP's)")
    mb.add_argument("--min-count", type=int, default=5, help="unigram count floor")
    mb.add_argument("--min-pmi", type=float, default=7.0, help="bigram PMI floor (log2)")
    mb.add_argument("--min-bigram-count", type=int, default=5)
    mb.add_argument("--extra", help="entries to add as they are (e.g. WordNet lemmas you export)")


def _demo(sub) -> None:
    d = sub.add_parser("demo", help="synthesize a small web, serve it on loopback, curate it")
    d.add_argument("--out", default="demo_run")
    d.add_argument(
        "--ablate", action="store_true", help="also run the data ablation (bootstrap --ablate)"
    )
    d.add_argument("--config", help="TOML whose settings replace the demo's (e.g. [train] epochs)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="curate", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (
        _run,
        _schedule,
        _train,
        _pretrain_vision,
        _finetune,
        _bootstrap,
        _stats,
        _sql,
        _runs,
        _export,
        _report,
        _metadata,
        _demo,
    ):
        add(sub)
    return p
