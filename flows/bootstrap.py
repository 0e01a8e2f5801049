"""`curate bootstrap`: BLIP's loop (arXiv 2201.12086, sec. 3.3 and Table 1) as a Prefect flow.

Round 0 pre-trains from scratch on the raw web pairs. Each round then fine-tunes the previous
model on the clean set, runs CapFilt over the web with that captioner and filter, and pre-trains
a new model from scratch on the curated pairs. Every step is a task that finds its output on
disk when it already ran, so a rerun continues where it stopped.
"""

import json
import sys
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from curation import bootstrap as loop
from curation import evaluate as evaluation
from curation import io, run, train
from curation.config import from_dict
from flows.curate import curate


def _say(text: str) -> None:
    print(f"[bootstrap] {text}", file=sys.stderr)


@task(cache_policy=NO_CACHE, task_run_name="download-web")
def download_web(urls: str, web: str, url_col: str, caption_col: str | None, config: dict):
    cfg = from_dict(config)
    shards = run.prepare(Path(web), Path(urls), url_col, caption_col, cfg)
    return [run.download_step(Path(web), shard, cfg) for shard in shards]


@task(cache_policy=NO_CACHE, task_run_name="pretrain-{model}")
def pretrain(source: str, from_curated: bool, model: str, config: dict) -> dict:
    pairs = train.pairs_from_curated(source) if from_curated else train.pairs_from_raw(source)
    if not pairs:
        raise ValueError(
            f"no training pairs in {source}: CapFilt kept no text; lower [capfilt] "
            "itm_threshold or fine-tune the filter longer ([train] finetune_epochs)"
        )
    _say(f"pre-training {model} from scratch on {len(pairs):,} pairs")
    return train.pretrain(pairs, model, from_dict(config).train)


@task(cache_policy=NO_CACHE, task_run_name="finetune-{out}")
def finetune(clean: str, init: str, out: str, config: dict) -> dict:
    _say(f"fine-tuning {init} on the clean set {clean}")
    return train.finetune(train.pairs_from_clean(clean), init, out, from_dict(config).train)


@task(cache_policy=NO_CACHE, task_run_name="evaluate-{model}")
def evaluate(model: str, eval_set: str, truth: str | None) -> dict:
    path = Path(model) / "eval.json"
    if not path.exists():
        io.write_json(evaluation.evaluate(model, eval_set, truth), path)
    return json.loads(path.read_text())


@task(cache_policy=NO_CACHE, task_run_name="capfilt-metrics-{capfilt_run}")
def capfilt_metrics(web: str, capfilt_run: str, truth: str | None) -> dict:
    found = loop.noise_ratio(Path(capfilt_run))
    if truth:
        found |= loop.truth_metrics(Path(web), Path(capfilt_run), Path(truth))
    return found


def _capfilt_pass(urls, out: Path, r: int, url_col, caption_col, config: dict) -> str:
    """CapFilt over the (already downloaded) web with round r's fine-tuned models."""
    dirs = loop.layout(out, r)
    capfilt = dict(config.get("capfilt", {}))
    capfilt |= {"captioner": str(dirs["finetuned"] / "captioner"),
                "filter": str(dirs["finetuned"] / "filter")}  # fmt: skip
    config = {**config, "capfilt": capfilt}
    run.prepare(dirs["capfilt"], Path(urls), url_col, caption_col, from_dict(config))
    loop.link_downloads(out / "web", dirs["capfilt"])
    curate(urls, str(dirs["capfilt"]), url_col, caption_col, config)
    return str(dirs["capfilt"])


@flow(name="bootstrap")
def bootstrap(
    urls: str,
    clean: str,
    out: str,
    eval_set: str | None = None,
    rounds: int = 1,
    url_col: str = "url",
    caption_col: str | None = "caption",
    config: dict | None = None,
    truth: str | None = None,
    eval_truth: str | None = None,
) -> dict:
    """Run `rounds` rounds of BLIP's loop under `out`; returns (and writes) metrics.json.

    `truth` (the synthetic world's truth.parquet) adds noise and filter numbers to each CapFilt
    pass; `eval_truth` (its eval_truth.parquet) adds the share of true generated captions.
    """
    out_dir, config = Path(out), config or {}
    download_web(urls, str(out_dir / "web"), url_col, caption_col, config)
    metrics = {"models": {}, "capfilt": {}}
    model = str(loop.layout(out_dir, 0)["model"])
    pretrain(str(out_dir / "web"), False, model, config)
    for r in range(rounds + 1):
        if eval_set:
            metrics["models"][f"round{r}"] = evaluate(model, eval_set, eval_truth)
            io.write_json(metrics, out_dir / "metrics.json")  # kept if a later step fails
        if r == rounds:
            break
        dirs = loop.layout(out_dir, r + 1)
        finetune(clean, model, str(dirs["finetuned"]), config)
        capfilt_run = _capfilt_pass(urls, out_dir, r + 1, url_col, caption_col, config)
        metrics["capfilt"][f"round{r + 1}"] = capfilt_metrics(str(out_dir / "web"), capfilt_run,
                                                              truth)  # fmt: skip
        io.write_json(metrics, out_dir / "metrics.json")
        model = str(dirs["model"])
        pretrain(capfilt_run, True, model, config)
    io.write_json(metrics, out_dir / "metrics.json")
    return metrics
