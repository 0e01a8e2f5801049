"""The `curate` command line. Thin: parse, validate everything up front, call one flow.

Commands that need no model (stats, sql, runs, export, report) import no torch, so they answer
in about a second.
"""

import os
import socket
import sys
from pathlib import Path

import duckdb

from curation import config as config_mod
from curation import sql
from curation.outputs import stats
from curation.pipeline import duplicates, select, urls
from flows.cli_args import parser

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
    extra = [str(Path(p).resolve()) for p in args.decontaminate]
    cfg.dedup.decontaminate = [*cfg.dedup.decontaminate, *extra]
    return cfg


def checked_run_config(args) -> tuple[config_mod.RunConfig, str | None]:
    """The run's configuration and caption column, every input checked now, not in a task."""
    from curation.models import blip as models
    from curation.models import captioners

    cfg = run_config(args)
    caption_col = args.caption_col or None
    urls.read_url_list(args.urls, args.url_col, caption_col)
    models.check_model_source(cfg.capfilt.captioner)
    models.check_model_source(cfg.capfilt.filter)
    captioners.check_captioner(cfg.capfilt.captioner, cfg.capfilt.sampling())
    models.check_family(cfg.capfilt.filter, "filter")
    select.check_sources(cfg.select)
    duplicates.check_sources(cfg.dedup)
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
    from curation.pipeline import calibration, run
    from curation.pipeline.run import RunSpec, check_out_dir, exclusive
    from curation.rundir import RunDir
    from flows.curate import curate_on

    spec = RunSpec(args.urls, args.out, args.url_col, caption_col, cfg.to_dict())
    spec = calibration.calibrated(spec)  # "auto" without a calibrated filter: refused now
    if args.retry_failed and not RunDir(args.out).is_run():
        raise config_mod.ConfigError(f"--retry-failed: {args.out} holds no run to retry")
    check_out_dir(args.out, [f for f in (args.urls, args.config) if f and Path(f).exists()])
    with exclusive(args.out):  # before Prefect starts: a second run is refused, not raced
        if args.retry_failed:
            run.prepare(spec, cfg)  # another URL list or configuration: refused here
            run.retry_failed_downloads(RunDir(args.out), cfg, say=_stderr)
        curate_on(spec, args.workers or 0, args.cluster)
    print(stats.report(args.out))
    return 0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def cmd_schedule(args) -> int:
    check_scale_out(args)
    cfg, caption_col = checked_run_config(args)
    from flows.schedule import serve

    parameters = {
        "urls": str(Path(args.urls).resolve()),
        "out_root": str(Path(args.out_root).resolve()),
        "url_col": args.url_col,
        "caption_col": caption_col,
        "config": cfg.to_dict(),
        "workers": args.workers or 0,
        "cluster": args.cluster,
    }
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
    from curation.training.data import check_captioned_set, pairs_from_clean

    cfg = config_mod.load(args.config)
    check_captioned_set(args.clean, "clean set")
    web_texts = _web_negative_texts(args.web, cfg.train.web_negatives)
    pairs = pairs_from_clean(args.clean)
    train.finetune(pairs, args.init, args.out, cfg.train, web_texts=web_texts)
    print(f"wrote {args.out}/captioner, filter, scorer")
    return 0


def _web_negative_texts(web: str | None, web_negatives: int) -> list[str] | None:
    """The alt-text of run `web`'s downloads, for [train] web_negatives; checked first."""
    from curation.rundir import RunDir
    from curation.training.data import web_texts

    if bool(web) != bool(web_negatives):
        raise config_mod.ConfigError("give --web RUN_DIR and [train] web_negatives >= 1 together")
    if web and not RunDir(web).markers("download"):
        raise config_mod.ConfigError(f"--web {web} holds no downloaded shards (not a curate run?)")
    return web_texts(web) if web else None


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
    check_bootstrap_files(args)
    select.check_sources(cfg.select)  # a bad concept list or scorer: now, not after training
    duplicates.check_sources(cfg.dedup)
    from curation.models import blip as models
    from curation.models import tiny

    # the loop's captioners are built from the `[train] size` preset with the shipped tokenizer
    preset = tiny.preset(cfg.train.size)
    models.check_caption_length(preset.max_text_len, tiny.load_tokenizer(), cfg.capfilt.sampling())
    if args.ablate:
        check_ablation(args, cfg)
    _quiet()
    from curation.rundir import LoopDir
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
        decontaminate=not args.no_decontaminate,
    )
    metrics = bootstrap(spec)
    print(loop.summary_table(metrics))
    if args.ablate:
        ablation = LoopDir(args.out).ablation_md
        print(f"\nablation ({ablation}):\n" + ablation.read_text())
    return 0


def check_bootstrap_files(args) -> None:
    """Every input file of `curate bootstrap` readable with the columns it needs, before any
    work (a bad eval set must not surface after hours of training)."""
    from curation.training.data import check_captioned_set, require_columns

    check_captioned_set(args.clean, "clean set")
    if args.eval:
        check_captioned_set(args.eval, "eval set")
    files = [
        (args.labelled, "labelled set", ("image", "labels")),
        (args.truth, "truth", ("file", "is_noisy", "scene")),
        (args.eval_truth, "eval truth", ("image_id", "scene")),
    ]
    for path, role, columns in files:
        if path:
            require_columns(path, role, columns)


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
    # The query is last; only with --catalog may it be left out (then: does the last parse?).
    if len(run_dirs) > 1 and (not args.catalog or sql.is_query(run_dirs[-1])):
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
    con = sql.connect(*run_dirs, allow_files=args.allow_files)
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

    manifest = export_mod.export(
        args.run_dir, args.out, args.where, args.format, args.shard_size, args.caption
    )
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
        args.corpus,
        args.out,
        args.min_count,
        args.min_pmi,
        args.extra,
        min_bigram_count=args.min_bigram_count,
    )
    print(f"wrote {len(entries):,} entries to {args.out}")
    return 0


def cmd_demo(args) -> int:
    _quiet()
    from flows.demo import demo

    overrides = config_mod.read_toml(args.config) if args.config else {}
    return demo(args.out, args.ablate, overrides)


COMMANDS = {
    "run": cmd_run,
    "schedule": cmd_schedule,
    "train": cmd_train,
    "pretrain-vision": cmd_pretrain_vision,
    "finetune": cmd_finetune,
    "bootstrap": cmd_bootstrap,
    "stats": cmd_stats,
    "sql": cmd_sql,
    "runs": cmd_runs,
    "export": cmd_export,
    "report": cmd_report,
    "metadata": cmd_metadata_build,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if argv is None:  # the `curate` process itself, not a caller's (tests call main([...]))
        from flows import stopping

        stopping.install(getattr(args, "out", None))
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as err:
        print(f"curate: error: {err}", file=sys.stderr)
        return 2
    except duckdb.Error as err:  # e.g. a damaged file in a run: DuckDB's message names it
        print(f"curate: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
