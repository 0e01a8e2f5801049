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
from curation.pipeline import calibration, run, select, steps
from curation.pipeline.run import RunSpec
from curation.rundir import LoopDir, RunDir
from curation.training import ablate as ablations
from curation.training import bootstrap as loop
from curation.training import evaluate as evaluation
from curation.training import train, vision
from curation.training.bootstrap import BootstrapSpec
from curation.training.data import pairs_from_clean, pairs_from_curated, pairs_from_raw, web_texts
from flows import stopping
from flows.curate import curate


def _say(text: str) -> None:
    print(f"[bootstrap] {text}", file=sys.stderr)


@task(cache_policy=NO_CACHE, task_run_name="download-web")
def download_web(spec: RunSpec):
    cfg = from_dict(spec.config)
    shards = run.prepare(spec, cfg)
    return [steps.run_step("download", spec.run_dir, shard, cfg) for shard in shards]


@task(cache_policy=NO_CACHE, task_run_name="pretrain-{model}")
def pretrain(source: str, from_curated: bool, model: str, config: dict) -> dict:
    dedup = from_dict(config).dedup
    pairs = pairs_from_curated(source) if from_curated else pairs_from_raw(source, dedup)
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
def finetune(clean: str, init: str, out: str, config: dict, web: str) -> dict:
    _say(f"fine-tuning {init} on the clean set {clean}")
    cfg = from_dict(config).train
    return train.finetune(pairs_from_clean(clean), init, out, cfg, web_texts=web_texts(web))


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


def _capfilt_pass(spec: BootstrapSpec, r: int, config: dict, run_dir: RunDir | None = None) -> str:
    """CapFilt over the (already downloaded) web with round r's fine-tuned models, into
    `run_dir` (default: the round's capfilt folder)."""
    dirs = LoopDir(spec.out)
    finetuned, run_dir = dirs.finetuned(r), run_dir or dirs.capfilt(r)
    capfilt = dict(config.get("capfilt", {}))
    capfilt |= {"captioner": str(finetuned / "captioner"), "filter": str(finetuned / "filter")}
    run_spec = calibration.calibrated(
        spec.web_spec(str(run_dir.root), {**config, "capfilt": capfilt})
    )
    run.prepare(run_spec, from_dict(run_spec.config))
    loop.link_downloads(dirs.web, run_dir)
    curate(run_spec)
    return str(run_dir.root)


def _gated_capfilt_pass(spec: BootstrapSpec, r: int, config: dict) -> tuple[str, dict]:
    """Round r's CapFilt pass, run again without synthetic captions when `[train]
    synthetic_gate` withholds them; (the pass to train on, the gate's numbers)."""
    capfilt_run = _capfilt_pass(spec, r, config)
    gate = loop.synthetic_gate(Path(capfilt_run), from_dict(config).train.synthetic_gate)
    if gate["synthetic_withheld"]:
        _say(f"round {r}: synthetic captions withheld ({gate})")
        web_only = {**config, "capfilt": {**config.get("capfilt", {}), "num_captions": 0}}
        capfilt_run = _capfilt_pass(spec, r, web_only, LoopDir(spec.out).capfilt_web_only(r))
    return capfilt_run, gate


def _ablation(spec: BootstrapSpec, config: dict) -> list[dict]:
    """One model per data variant (curation.training.ablate), trained on the same example
    budget."""
    cfg, dirs = from_dict(config), LoopDir(spec.out)
    matcher = select.load_matcher(cfg.select)
    raw_texts = web_texts(dirs.web)
    base_pairs = len(raw_texts)
    eval_texts = evaluation.load_eval_set(spec.eval_set).texts
    tail = ablations.tail_concepts(matcher, raw_texts, eval_texts)  # rarest in the web's texts
    scorer = str(dirs.finetuned(1) / "scorer")
    rows = []  # a list: JSON objects are written with sorted keys, rows keep their order
    for name, overrides in ablations.variants(cfg.select.metadata, scorer):
        texts, model = raw_texts, dirs.model(0)
        found = {"pairs": base_pairs, "epochs": cfg.train.epochs}
        if overrides is not None:
            folder = dirs.ablation_variant(ablations.slug(name))
            variant = ablations.with_overrides(config, overrides)
            run_dir = _capfilt_pass(spec, 1, variant, RunDir(folder / "run"))
            texts = [text for _, text in pairs_from_curated(run_dir)]
            epochs = ablations.budget_epochs(cfg.train.epochs, base_pairs, len(texts))
            found = {"pairs": len(texts), "epochs": epochs}
            model = folder / "model"
            if texts:
                budget = ablations.with_overrides(config, {"train": {"epochs": epochs}})
                pretrain(run_dir, True, str(model), budget)
        found["gini"] = ablations.concept_gini(matcher, texts)
        if found["pairs"]:
            scores = evaluate(str(model), spec.eval_set, spec.eval_truth)
            found |= {k: v for k, v in scores.items() if k != "samples"}
            found |= ablations.tail_recall(Path(model), Path(spec.eval_set), matcher, tail)
        rows.append({"data": name, **found})
        io.write_json({"rows": rows}, dirs.ablation_json)
    dirs.ablation_md.write_text(ablations.table(rows) + "\n")
    return rows


@flow(name="bootstrap")
def bootstrap(spec: BootstrapSpec) -> dict:
    """Run `spec.rounds` rounds of BLIP's loop under `spec.out`; returns (and writes)
    metrics.json. What each option adds: `BootstrapSpec`."""
    stopping.reclaim()  # Ctrl-C / SIGTERM stop the loop now, not after its running tasks
    dirs, config = LoopDir(spec.out), spec.curation_config()
    if spec.labelled:
        pretrain_vision(spec.labelled, str(dirs.vision), config)
        trained = {"vision_init": str(dirs.vision)}
        config = {**config, "train": {**config.get("train", {}), **trained}}
    download_web(spec.web_spec(str(dirs.web.root), config))
    metrics = {"models": {}, "capfilt": {}}
    model = str(dirs.model(0))
    pretrain(str(dirs.web.root), False, model, config)
    for r in range(spec.rounds + 1):
        if spec.eval_set:
            metrics["models"][f"round{r}"] = evaluate(model, spec.eval_set, spec.eval_truth)
            io.write_json(metrics, dirs.metrics)  # kept if a later step fails
        if r == spec.rounds:
            break
        finetune(spec.clean, model, str(dirs.finetuned(r + 1)), config, str(dirs.web.root))
        capfilt_run, gate = _gated_capfilt_pass(spec, r + 1, config)
        found = capfilt_metrics(str(dirs.web.root), capfilt_run, spec.truth) | gate
        metrics["capfilt"][f"round{r + 1}"] = found
        io.write_json(metrics, dirs.metrics)
        model = str(dirs.model(r + 1))
        pretrain(capfilt_run, True, model, config)
    if spec.ablate:
        metrics["ablation"] = _ablation(spec, config)
    io.write_json(metrics, dirs.metrics)
    return metrics
