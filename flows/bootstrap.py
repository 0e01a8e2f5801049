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

from curation import io
from curation.config import from_dict
from curation.pipeline import run, select, steps
from curation.rundir import RunDir
from curation.training import ablate as ablations
from curation.training import bootstrap as loop
from curation.training import evaluate as evaluation
from curation.training import train, vision
from curation.training.data import pairs_from_clean, pairs_from_curated, pairs_from_raw
from flows.curate import curate


def _say(text: str) -> None:
    print(f"[bootstrap] {text}", file=sys.stderr)


@task(cache_policy=NO_CACHE, task_run_name="download-web")
def download_web(urls: str, web: str, url_col: str, caption_col: str | None, config: dict):
    cfg = from_dict(config)
    web_dir = RunDir(web)
    shards = run.prepare(web_dir, Path(urls), url_col, caption_col, cfg)
    return [steps.run_step("download", web_dir, shard, cfg) for shard in shards]


@task(cache_policy=NO_CACHE, task_run_name="pretrain-{model}")
def pretrain(source: str, from_curated: bool, model: str, config: dict) -> dict:
    pairs = pairs_from_curated(source) if from_curated else pairs_from_raw(source)
    if not pairs:
        raise ValueError(
            f"no training pairs in {source}: CapFilt kept no text; lower [capfilt] "
            "itm_threshold or fine-tune the filter longer ([train] finetune_epochs)"
        )
    _say(f"pre-training {model} from scratch on {len(pairs):,} pairs")
    return train.pretrain(pairs, model, from_dict(config).train)


@task(cache_policy=NO_CACHE, task_run_name="pretrain-vision")
def pretrain_vision(labelled: str, out: str, config: dict) -> dict:
    _say(f"pre-training the image encoder on the labelled set {labelled}")
    return vision.pretrain_vision(labelled, out, from_dict(config).train)


@task(cache_policy=NO_CACHE, task_run_name="finetune-{out}")
def finetune(clean: str, init: str, out: str, config: dict) -> dict:
    _say(f"fine-tuning {init} on the clean set {clean}")
    return train.finetune(pairs_from_clean(clean), init, out, from_dict(config).train)


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


def _capfilt_pass(
    urls, out: Path, r: int, url_col, caption_col, config: dict, run_dir: Path | None = None
) -> str:
    """CapFilt over the (already downloaded) web with round r's fine-tuned models, into
    `run_dir` (default: the round's capfilt folder)."""
    finetuned = loop.layout(out, r)["finetuned"]
    run_dir = run_dir or loop.layout(out, r)["capfilt"]
    capfilt = dict(config.get("capfilt", {}))
    capfilt |= {"captioner": str(finetuned / "captioner"), "filter": str(finetuned / "filter")}
    config = {**config, "capfilt": capfilt}
    run.prepare(run_dir, Path(urls), url_col, caption_col, from_dict(config))
    loop.link_downloads(out / "web", run_dir)
    curate(urls, str(run_dir), url_col, caption_col, config)
    return str(run_dir)


def _ablation(
    urls, out: Path, url_col, caption_col, config: dict, eval_set: str, eval_truth: str | None
) -> list[dict]:
    """One model per data variant (curation.training.ablate), trained on the same example budget."""
    cfg = from_dict(config)
    matcher = select.load_matcher(cfg.select)
    raw_texts = [text for _, text in pairs_from_raw(out / "web")]
    base_pairs = len(raw_texts)
    eval_texts = evaluation.load_eval_set(eval_set).texts
    tail = ablations.tail_concepts(matcher, raw_texts, eval_texts)  # rarest in the web's texts
    scorer = str(loop.layout(out, 1)["finetuned"] / "scorer")
    rows = []  # a list: JSON objects are written with sorted keys, rows keep their order
    for name, overrides in ablations.variants(cfg.select.metadata, scorer):
        texts, model = raw_texts, loop.layout(out, 0)["model"]
        found = {"pairs": base_pairs, "epochs": cfg.train.epochs}
        if overrides is not None:
            folder = out / "ablate" / ablations.slug(name)
            variant = ablations.with_overrides(config, overrides)
            run_dir = _capfilt_pass(urls, out, 1, url_col, caption_col, variant, folder / "run")
            texts = [text for _, text in pairs_from_curated(run_dir)]
            epochs = ablations.budget_epochs(cfg.train.epochs, base_pairs, len(texts))
            found = {"pairs": len(texts), "epochs": epochs}
            model = folder / "model"
            if texts:
                budget = ablations.with_overrides(config, {"train": {"epochs": epochs}})
                pretrain(run_dir, True, str(model), budget)
        found["gini"] = ablations.concept_gini(matcher, texts)
        if found["pairs"]:
            scores = evaluate(str(model), eval_set, eval_truth)
            found |= {k: v for k, v in scores.items() if k != "samples"}
            found |= ablations.tail_recall(Path(model), Path(eval_set), matcher, tail)
        rows.append({"data": name, **found})
        io.write_json({"rows": rows}, out / "ablation.json")
    (out / "ablation.md").write_text(ablations.table(rows) + "\n")
    return rows


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
    ablate: bool = False,
    labelled: str | None = None,
) -> dict:
    """Run `rounds` rounds of BLIP's loop under `out`; returns (and writes) metrics.json.

    `truth` (the synthetic world's truth.parquet) adds noise and filter numbers to each CapFilt
    pass; `eval_truth` (its eval_truth.parquet) adds the share of true generated captions.
    `ablate` adds RUN_DIR/ablation.json and ablation.md: one model per data variant
    (curation.training.ablate), with round 1's fine-tuned models; it needs `eval_set` and a concept
    list.
    `labelled` (a LABELLED parquet) pre-trains an image encoder first, into RUN_DIR/vision, and
    every from-scratch pre-training starts from it (BLIP's ImageNet ViT).
    """
    out_dir, config = Path(out), config or {}
    if labelled:
        pretrain_vision(labelled, str(out_dir / "vision"), config)
        trained = {"vision_init": str(out_dir / "vision")}
        config = {**config, "train": {**config.get("train", {}), **trained}}
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
    if ablate:
        metrics["ablation"] = _ablation(urls, out_dir, url_col, caption_col, config, eval_set,
                                        eval_truth)  # fmt: skip
    io.write_json(metrics, out_dir / "metrics.json")
    return metrics
