"""The `curate` command line. Thin: parse, validate everything up front, call one flow.

Commands that need no model (stats, sql, runs, export, report) import no torch, so they answer
in about a second.
"""

import argparse
import os
import socket
import sys
from pathlib import Path

import duckdb

from curation import config as config_mod
from curation import sql
from curation.outputs import stats
from curation.pipeline import select, urls

# Errors that mean "fix your command": one line, exit code 2, before any work. Every such error
# of the library (bad URL list, model source, run dir, predicate...) is a ConfigError.
USER_ERRORS = (config_mod.ConfigError, FileNotFoundError)


def _quiet() -> None:
    # Telemetry tries the network; INFO logs and load bars would drown the progress lines.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # else INFO per worker event


def run_config(args) -> config_mod.RunConfig:
    """The run's configuration: file (or preset) first, then the command-line overrides."""
    cfg = config_mod.load(args.config)
    if args.captioner:
        cfg.capfilt.captioner = args.captioner
    if args.filter:
        cfg.capfilt.filter = args.filter
    if args.allow_private_network:
        cfg.download.allow_private_network = True
    return cfg


def checked_run_config(args) -> tuple[config_mod.RunConfig, str | None]:
    """The run's configuration and caption column, every input checked now, not in a task."""
    from curation.models import blip as models

    cfg = run_config(args)
    caption_col = args.caption_col or None
    urls.read_url_list(args.urls, args.url_col, caption_col)
    models.check_model_source(cfg.capfilt.captioner)
    models.check_model_source(cfg.capfilt.filter)
    select.check_sources(cfg.select)
    _quiet()
    return cfg, caption_col


def check_scale_out(args) -> None:
    """`--workers` / `--cluster`: one of them, a positive count, a scheduler we can reach."""
    if args.workers is not None and args.cluster:
        raise config_mod.ConfigError("give --workers or --cluster, not both")
    if args.workers is not None and args.workers < 1:
        raise config_mod.ConfigError("--workers must be >= 1")
    if not args.cluster:
        return
    from distributed.comm import parse_address, parse_host_port
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise config_mod.ConfigError(
            "--cluster needs PREFECT_API_URL: a Prefect server every Dask worker can reach "
            '(README, "Scale-out")'
        )
    scheme, location = parse_address(args.cluster)
    if scheme in ("tcp", "tls"):
        try:
            socket.create_connection(parse_host_port(location), timeout=5).close()
        except OSError as err:
            raise config_mod.ConfigError(f"no Dask scheduler at {args.cluster}: {err}") from None


def cmd_run(args) -> int:
    check_scale_out(args)
    cfg, caption_col = checked_run_config(args)
    from curation.pipeline.run import RunSpec
    from flows.curate import curate_on

    spec = RunSpec(args.urls, args.out, args.url_col, caption_col, cfg.to_dict())
    curate_on(spec, args.workers or 0, args.cluster)
    print(stats.report(args.out))
    return 0


def cmd_schedule(args) -> int:
    check_scale_out(args)
    cfg, caption_col = checked_run_config(args)
    from flows.schedule import serve

    parameters = {
        "urls": str(Path(args.urls).resolve()), "out_root": str(Path(args.out_root).resolve()),
        "url_col": args.url_col, "caption_col": caption_col, "config": cfg.to_dict(),
        "workers": args.workers or 0, "cluster": args.cluster,
    }  # fmt: skip
    print(f"serving deployment curate-scheduled/{args.name} on cron {args.cron!r}; Ctrl-C stops")
    serve(args.name, args.cron, parameters)
    return 0


def cmd_train(args) -> int:
    from curation.training import train
    from curation.training.data import pairs_from_curated

    cfg = config_mod.load(args.config)
    pairs = pairs_from_curated(args.shards)
    if not pairs:
        raise config_mod.ConfigError(f"{args.shards} has no curated pairs (shards/*.parquet)")
    log = train.pretrain(pairs, args.out, cfg.train, args.init)
    print(f"wrote {args.out}/captioner, filter, scorer ({log.get('pairs', len(pairs))} pairs)")
    return 0


def cmd_finetune(args) -> int:
    from curation.training import train
    from curation.training.data import pairs_from_clean

    cfg = config_mod.load(args.config)
    train.finetune(pairs_from_clean(args.clean), args.init, args.out, cfg.train)
    print(f"wrote {args.out}/captioner, filter, scorer")
    return 0


def cmd_pretrain_vision(args) -> int:
    from curation.training import vision

    cfg = config_mod.load(args.config)
    log = vision.pretrain_vision(args.labelled, args.out, cfg.train)
    scores = log["held_out_scores"]
    print(
        f"wrote {args.out} ({log['images']} images, {len(log['labels'])} labels; held out: "
        f'micro-F1 {scores["micro_f1"]:.3f}); use it with [train] vision_init = "{args.out}"'
    )
    return 0


def cmd_bootstrap(args) -> int:
    cfg = run_config(args)
    caption_col = args.caption_col or None
    urls.read_url_list(args.urls, args.url_col, caption_col)
    for path in [args.clean, args.eval, args.truth, args.eval_truth, args.labelled]:
        if path and not Path(path).is_file():
            raise config_mod.ConfigError(f"file not found: {path}")
    select.check_sources(cfg.select)  # a bad concept list or scorer: now, not after training
    if args.ablate:
        check_ablation(args, cfg)
    _quiet()
    from curation.training import bootstrap as loop
    from flows.bootstrap import bootstrap

    spec = loop.BootstrapSpec(
        urls=args.urls,
        clean=args.clean,
        out=args.out,
        eval_set=args.eval,
        rounds=args.rounds,
        url_col=args.url_col,
        caption_col=caption_col,
        config=cfg.to_dict(),
        truth=args.truth,
        eval_truth=args.eval_truth,
        ablate=args.ablate,
        labelled=args.labelled,
    )
    metrics = bootstrap(spec)
    print(loop.summary_table(metrics))
    if args.ablate:
        print(
            f"\nablation ({args.out}/ablation.md):\n" + (Path(args.out) / "ablation.md").read_text()
        )
    return 0


def check_ablation(args, cfg: config_mod.RunConfig) -> None:
    """`--ablate` compares models on the eval set, after round 1, with balancing rows."""
    if not args.eval:
        raise config_mod.ConfigError("--ablate needs --eval: the variants are compared on it")
    if args.rounds < 1:
        raise config_mod.ConfigError("--ablate needs --rounds >= 1 (it uses round 1's models)")
    if not cfg.select.metadata:
        raise config_mod.ConfigError(
            "--ablate needs a concept list for its balancing rows: set [select] metadata"
        )


def cmd_stats(args) -> int:
    print(stats.report(args.run_dir))
    return 0


def cmd_sql(args) -> int:
    run_dirs, query = args.items, None
    if not Path(run_dirs[-1]).is_dir():
        run_dirs, query = run_dirs[:-1], run_dirs[-1]
    missing = [d for d in run_dirs if not Path(d).is_dir()]
    if not run_dirs or missing:
        raise config_mod.ConfigError(f"not a run directory: {(missing or ['(none given)'])[0]}")
    if args.catalog:
        print(f"wrote {sql.write_catalog(run_dirs, args.catalog)}")
    if query is None:
        return 0
    if args.format == "parquet" and not args.out:
        raise config_mod.ConfigError("--format parquet needs --out FILE")
    con = sql.connect(*run_dirs)
    try:
        relation = con.sql(query)
        if args.format == "table":
            print(stats.format_table(relation.columns, relation.fetchall()))
        else:
            sql.write_result(relation, args.format, args.out)
    except duckdb.Error as err:
        print(str(err), file=sys.stderr)
        return 1
    return 0


def cmd_runs(args) -> int:
    from curation.pipeline import run
    from curation.rundir import RunDir

    runs = [RunDir(d) for d in sorted(Path(args.out_root).iterdir())]
    rows = [run.summary(d) for d in runs if d.is_run()]
    columns = ["run", "status", "input", "curated", "rejected", "seconds"]
    print(stats.format_table(columns, [tuple(r[c] for c in columns) for r in rows]))
    return 0


def cmd_export(args) -> int:
    from curation.outputs import export as export_mod

    manifest = export_mod.export(args.run_dir, args.out, args.where, args.format,
                                 args.shard_size, args.caption)  # fmt: skip
    counts = manifest["counts"]
    print(f"exported {counts['rows']:,} rows in {counts['shards']} shards to {args.out}")
    return 0


def cmd_report(args) -> int:
    from curation.outputs import report as report_mod

    print(report_mod.write_report(args.run_dir, args.out))
    return 0


def cmd_metadata_build(args) -> int:
    from curation.pipeline import concepts

    entries = concepts.build_metadata_file(
        args.corpus, args.out, args.min_count, args.min_pmi, args.extra,
        min_bigram_count=args.min_bigram_count,
    )  # fmt: skip
    print(f"wrote {len(entries):,} entries to {args.out}")
    return 0


def cmd_demo(args) -> int:
    _quiet()
    from flows.demo import demo

    overrides = config_mod.read_toml(args.config) if args.config else {}
    return demo(args.out, args.ablate, overrides)


def add_run_options(r: argparse.ArgumentParser) -> None:
    """The options `curate run` and `curate schedule` share."""
    r.add_argument("--urls", required=True, help="URL list: .parquet, .csv, .tsv or .jsonl")
    r.add_argument("--url-col", default="url")
    r.add_argument("--caption-col", default="caption", help="alt-text column ('' for none)")
    r.add_argument("--config", help="TOML file or preset name from data/presets")
    r.add_argument("--captioner", help="hub id or folder (default: BLIP large captioning)")
    r.add_argument("--filter", help="hub id or folder (default: BLIP large ITM, COCO)")
    r.add_argument(
        "--allow-private-network", action="store_true",
        help="allow loopback/private addresses (tests, demo, intranet mirrors)",
    )  # fmt: skip


def add_scale_out_options(r: argparse.ArgumentParser) -> None:
    """Where the per-shard tasks run (README, "Scale-out"); default: this process."""
    r.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="a local Dask cluster of N worker processes (one per GPU with dask-cuda)",
    )
    r.add_argument("--cluster", metavar="ADDRESS",
                   help="an existing Dask scheduler, e.g. tcp://host:8786")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="curate", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="download, caption and filter a URL list into RUN_DIR")
    r.add_argument("--out", required=True, help="run directory (rerun to resume)")
    add_run_options(r)
    add_scale_out_options(r)
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("schedule", help="serve a Prefect deployment running `curate run` on cron")
    c.add_argument("--cron", required=True, help='e.g. "0 3 * * *" (03:00 every day)')
    c.add_argument("--out-root", required=True, help="each run writes OUT_ROOT/<UTC timestamp>")
    c.add_argument("--name", default="nightly", help="deployment name")
    add_run_options(c)
    add_scale_out_options(c)
    c.set_defaults(func=cmd_schedule)
    t = sub.add_parser("train", help="pre-train BLIP (ITC+ITM+LM) on a run's curated shards")
    t.add_argument("--shards", required=True, metavar="RUN_DIR")
    t.add_argument("--out", required=True, metavar="MODEL_DIR")
    t.add_argument(
        "--init", metavar="MODEL_DIR", help="start from these weights (default: scratch)"
    )
    t.add_argument("--config", help="TOML file or preset name ([train] section)")
    t.set_defaults(func=cmd_train)
    v = sub.add_parser("pretrain-vision", help="pre-train the image encoder on labelled images "
                       "(BLIP's ImageNet step), for [train] vision_init")  # fmt: skip
    v.add_argument("--labelled", required=True, help="Parquet with image (bytes) and labels")
    v.add_argument("--out", required=True, metavar="VISION_DIR")
    v.add_argument("--config", help="TOML file or preset name ([train] section)")
    v.set_defaults(func=cmd_pretrain_vision)
    f = sub.add_parser(
        "finetune", help="fine-tune captioner (LM) and filter (ITC+ITM) on clean data"
    )
    f.add_argument("--clean", required=True, help="Parquet with image (bytes) and caption")
    f.add_argument("--init", required=True, metavar="MODEL_DIR")
    f.add_argument("--out", required=True, metavar="MODEL_DIR2")
    f.add_argument("--config", help="TOML file or preset name ([train] section)")
    f.set_defaults(func=cmd_finetune)
    b = sub.add_parser("bootstrap", help="BLIP's loop: pretrain, finetune, CapFilt, pretrain again")
    b.add_argument("--clean", required=True, help="Parquet with image (bytes) and caption")
    b.add_argument("--out", required=True, metavar="RUN_DIR")
    b.add_argument("--eval", help="held-out set (CLEAN format) for recall@k, BLEU-4, CIDEr")
    b.add_argument("--rounds", type=int, default=1)
    b.add_argument("--truth", help="synthetic world's truth.parquet: noise and filter numbers")
    b.add_argument("--eval-truth", help="synthetic world's eval_truth.parquet: caption truth")
    b.add_argument("--labelled", help="labelled images (Parquet: image, labels): pre-train the "
                   "image encoder on them first, as BLIP starts from ImageNet")  # fmt: skip
    b.add_argument("--ablate", action="store_true",
                   help="also train one model per data variant (raw, +filter, +captioner, ...) "
                   "on the same budget and write RUN_DIR/ablation.md")  # fmt: skip
    add_run_options(b)
    b.set_defaults(func=cmd_bootstrap)
    s = sub.add_parser("stats", help="print a run's funnel and score summaries")
    s.add_argument("run_dir")
    s.set_defaults(func=cmd_stats)
    q = sub.add_parser("sql", help="query one or many runs with DuckDB SQL")
    q.add_argument(
        "items",
        nargs="+",
        metavar="RUN_DIR... [QUERY]",
        help="run directories, then a query over the views (samples, texts, ...)",
    )
    q.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    q.add_argument("--out", help="write the result to this file")
    q.add_argument("--catalog", help="write a DuckDB database file holding the views")
    q.set_defaults(func=cmd_sql)
    ls = sub.add_parser("runs", help="list the runs under a folder with status and counts")
    ls.add_argument("--out-root", required=True)
    ls.set_defaults(func=cmd_runs)
    e = sub.add_parser("export", help="write curated rows as WebDataset, Parquet or JSONL shards")
    e.add_argument("run_dir")
    e.add_argument("--out", required=True, help="a new or empty folder")
    e.add_argument("--where", help='DuckDB predicate, e.g. "caption_itm > 0.8 AND width >= 256"')
    e.add_argument("--format", choices=["webdataset", "parquet", "jsonl"], default="webdataset")
    e.add_argument("--shard-size", type=int, default=10000, help="rows per output shard")
    e.add_argument("--caption", choices=["chosen", "all"], default="chosen",
                   help="all: every kept text in the json/columns too")  # fmt: skip
    e.set_defaults(func=cmd_export)
    rp = sub.add_parser("report", help="write a self-contained RUN_DIR/report.html")
    rp.add_argument("run_dir")
    rp.add_argument("--out", help="default: RUN_DIR/report.html")
    rp.set_defaults(func=cmd_report)
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
    mb.set_defaults(func=cmd_metadata_build)
    d = sub.add_parser("demo", help="synthesize a small web, serve it on loopback, curate it")
    d.add_argument("--out", default="demo_run")
    d.add_argument(
        "--ablate", action="store_true", help="also run the data ablation (bootstrap --ablate)"
    )
    d.add_argument("--config", help="TOML whose settings replace the demo's (e.g. [train] epochs)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"curate: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
