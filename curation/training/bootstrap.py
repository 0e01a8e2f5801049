"""BLIP's bootstrapping loop on disk, and the numbers that say whether CapFilt worked.

Layout of a bootstrap folder (`curation.rundir.LoopDir`; each step skipped when its output
exists):
    web/                the web, downloaded once (a run directory with raw/ only)
    vision/             the image encoder pre-trained on a labelled set (with --labelled)
    round0/model/       pre-trained on the raw web pairs
    roundR/finetuned/   roundR-1's model fine-tuned on the clean set (captioner LM; filter ITC+ITM)
    roundR/capfilt/     `curate run` over the web with that captioner and filter
    roundR/capfilt-web-only/  the same without synthetic captions, when [train] synthetic_gate
                        withheld them (round R then trains on it)
    roundR/model/       pre-trained from scratch on roundR/capfilt's curated pairs
    metrics.json        every model's eval numbers, every CapFilt pass's noise ratio
    ablate/, ablation.json, ablation.md  with --ablate
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from curation import io, sql
from curation.pipeline import calibration
from curation.pipeline.run import RunSpec
from curation.rundir import RunDir
from curation.world.captions import caption_is_true
from curation.world.scenes import Scene


@dataclass(frozen=True)
class BootstrapSpec:
    """What `curate bootstrap` runs: BLIP's loop over a web URL list, under `out` (LoopDir)."""

    urls: str  # the web's URL list, as `curate run --urls`
    clean: str  # CLEAN parquet (image, caption): BLIP's human-captioned set, for fine-tuning
    out: str
    eval_set: str | None = None  # EVAL parquet: recall@K and captioning metrics per model
    rounds: int = 1
    url_col: str = "url"
    caption_col: str | None = "caption"
    config: dict = field(default_factory=dict)  # RunConfig.to_dict()
    truth: str | None = None  # the synthetic world's truth.parquet: noise numbers per pass
    eval_truth: str | None = None  # its eval_truth.parquet: share of true generated captions
    ablate: bool = False  # one model per data variant after round 1 (ablation.json, .md)
    labelled: str | None = None  # LABELLED parquet: image-encoder pre-training (BLIP's ViT)
    # Reject web copies of the eval and clean images (eval_overlap), in every CapFilt pass and
    # in round 0's raw pairs: a model must not be trained on the images it is measured on.
    decontaminate: bool = True

    def curation_config(self) -> dict:
        """`config` with the eval and clean sets added to `[dedup] decontaminate`."""
        held = [str(Path(p).resolve()) for p in (self.eval_set, self.clean) if p]
        if not self.decontaminate:
            return self.config
        dedup = self.config.get("dedup", {})
        listed = [*dedup.get("decontaminate", []), *held]
        return {**self.config, "dedup": {**dedup, "decontaminate": listed}}

    def web_spec(self, out: str, config: dict) -> RunSpec:
        """A curation run of the web's URL list into `out` with `config`."""
        return RunSpec(self.urls, out, self.url_col, self.caption_col, config)


def link_downloads(web_run: RunDir, run_dir: RunDir) -> None:
    """Give `run_dir` the web run's downloads (hard links + markers): download once, reuse."""
    for marker in web_run.markers("download"):
        shard = int(marker.stem)
        target = run_dir.shard_file("raw", shard)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(web_run.shard_file("raw", shard), target)
        io.write_json(json.loads(marker.read_text()), run_dir.marker("download", shard))


def noise_ratio(run_dir: Path) -> dict:
    """BLIP's "noise ratio" of a CapFilt pass: share of web and of synthetic texts rejected."""
    con = sql.connect(run_dir)
    _, rows = sql.query(con, "bootstrap_noise_ratio")
    return {f"{row[0]}_rejected_pct": row[1] for row in rows}


def synthetic_gate(capfilt_run: Path, ratio: float) -> dict:
    """Whether a CapFilt pass's synthetic captions should be withheld (`[train]
    synthetic_gate`; 0 = never): the filter passed them less than `ratio` times as often as
    human captions. BLIP keeps both kinds; this guards against a captioner that writes fluent
    but wrong text. Human captions are the filter's held-out clean pairs at the pass's
    threshold when the filter has them (FILTER_DIR/calibration.json), else the web's alt-text,
    whose own noise makes that bar lower."""
    rejected = noise_ratio(capfilt_run)
    web = 100.0 - rejected.get("web_rejected_pct", 100.0)
    synthetic = 100.0 - rejected.get("synthetic_rejected_pct", 100.0)
    human = _held_out_pass_pct(RunDir(capfilt_run))
    bar = web if human is None else human
    return {
        "web_pass_pct": round(web, 2),
        "held_out_clean_pass_pct": human,
        "synthetic_pass_pct": round(synthetic, 2),
        "synthetic_withheld": bool(ratio) and synthetic < ratio * bar,
    }


def _held_out_pass_pct(run_dir: RunDir) -> float | None:
    """Share of the filter's held-out clean pairs at or above the run's ITM threshold."""
    capfilt = json.loads(run_dir.run_json.read_text())["config"]["capfilt"]
    path = Path(capfilt["filter"]) / calibration.CALIBRATION_FILE
    if not path.is_file():
        return None
    positives = json.loads(path.read_text())["positives"]
    return pct(sum(s >= capfilt["itm_threshold"] for s in positives), len(positives))


def _truth_by_url(truth_parquet: Path) -> dict[str, dict]:
    """Truth rows keyed by the URL's path tail (`images/web_000000.jpg`)."""
    return {r["file"]: r for r in pq.read_table(truth_parquet).to_pylist()}


def _file_of(url: str) -> str:
    return "/".join(url.rsplit("/", 2)[-2:])


def judged_texts(capfilt_run: Path, truth_parquet: Path) -> list[dict]:
    """Every text a CapFilt pass scored, judged by the world's stored truth: its image `file`,
    `source`, `kind` (the web text's noise kind, or "synthetic true" / "synthetic wrong"),
    `wrong` (false of its image), `kept`, `curated`, `itm` and its image's reject `reason`."""
    truth = _truth_by_url(truth_parquet)
    rows = sql.connect(capfilt_run).execute(sql.load("bootstrap_scored_texts")).fetchall()
    judged = []
    for url, source, text, kept, curated, itm, reason in rows:
        file = _file_of(url)
        scene = truth[file]
        wrong = _is_wrong(source, text, scene)
        kind = scene["kind"] if source == "web" else f"synthetic {'wrong' if wrong else 'true'}"
        judged.append(
            {
                "file": file,
                "source": source,
                "kind": kind,
                "wrong": wrong,
                "kept": kept,
                "curated": curated,
                "itm": itm,
                "reason": reason,
            }
        )
    return judged


def truth_metrics(web_run: Path, capfilt_run: Path, truth_parquet: Path) -> dict:
    """What the synthetic world's stored truth says about a CapFilt pass.

    noise rate: share of texts wrong for their image, in the raw web (downloaded images with
    alt-text), among the chosen captions of the curated images (what an export trains on) and
    among all kept texts of the curated output (web and synthetic: what the next round trains
    on); share of clean web pairs kept; the filter's precision and recall as a detector of
    noisy web texts; and the share of synthetic captions fully true of their scene.
    """
    truth = _truth_by_url(truth_parquet)
    raw = sql.connect(web_run).execute(sql.load("bootstrap_raw_texts")).fetchall()
    raw_noisy = [truth[_file_of(url)]["is_noisy"] for url, _ in raw]
    texts = judged_texts(capfilt_run, truth_parquet)
    web = {t["file"]: t["kept"] for t in texts if t["source"] == "web"}
    kept_texts = [t["wrong"] for t in texts if t["kept"] and t["curated"]]
    synthetic_true = [not t["wrong"] for t in texts if t["source"] == "synthetic"]
    chosen = _chosen_wrong(capfilt_run, truth)
    return {
        "raw_noise_pct": pct(sum(raw_noisy), len(raw_noisy)),
        "chosen_noise_pct": pct(sum(chosen), len(chosen)),
        "curated_images": len(chosen),
        "curated_noise_pct": pct(sum(kept_texts), len(kept_texts)),
        "curated_texts": len(kept_texts),
        **_web_filter_scores(truth, web, [_file_of(url) for url, _ in raw]),
        "synthetic_true_pct": pct(sum(synthetic_true), len(synthetic_true)),
    }


def _chosen_wrong(capfilt_run: Path, truth: dict) -> list[bool]:
    """Per curated image, whether its chosen caption is false of the image."""
    rows = sql.connect(capfilt_run).execute(sql.load("bootstrap_chosen_captions")).fetchall()
    wrong = []
    for url, caption, source in rows:
        scene = truth[_file_of(url)]
        wrong.append(_is_wrong(source, caption, scene))
    return wrong


def verdict(found: dict) -> str:
    """One line in plain words: did this CapFilt pass make the data cleaner than the web? The
    goal: chosen captions at most half as noisy as the web's texts, kept texts less noisy."""
    keys = ("raw_noise_pct", "chosen_noise_pct", "curated_noise_pct")
    raw, chosen, kept = (found.get(k) for k in keys)
    if None in (raw, chosen, kept):
        return "verdict: no curated text to judge"
    if chosen <= raw / 2 and kept < raw:
        word = "much cleaner than"
    elif chosen < raw and kept < raw:
        word = "cleaner, but not half as noisy as,"
    else:
        word = "NOT cleaner than"
    return (
        f"verdict: the curated data is {word} the raw web: {chosen:.0f}% of chosen captions and "
        f"{kept:.0f}% of kept texts are wrong against {raw:.0f}% of web texts; "
        f"{found.get('clean_web_kept_pct') or 0:.0f}% of the clean web pairs kept"
    )


def _is_wrong(source: str, text: str, truth_row: dict) -> bool:
    """A web text is wrong when the world made it noisy; a synthetic one when it is false of
    the scene (`captions.caption_is_true`)."""
    if source == "web":
        return truth_row["is_noisy"]
    return not caption_is_true(text, Scene.from_json(truth_row["scene"]))


def _web_filter_scores(truth: dict, web_kept: dict, downloaded: list[str]) -> dict:
    """The filter as a detector of noisy web texts: a web text it did not keep (or an image
    it rejected whole) counts as flagged noisy."""
    flagged = {f: not web_kept.get(f, False) for f in downloaded}
    noisy = {f: truth[f]["is_noisy"] for f in downloaded}
    hits = sum(flagged[f] and noisy[f] for f in downloaded)
    clean = [f for f in downloaded if not noisy[f]]
    return {
        "clean_web_kept_pct": pct(sum(not flagged[f] for f in clean), len(clean)),
        "filter_precision_pct": pct(hits, sum(flagged.values())),
        "filter_recall_pct": pct(hits, sum(noisy.values())),
    }


def pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def summary_table(metrics: dict) -> str:
    """The demo's table: round 0 (raw web) vs each later round, and each CapFilt pass."""
    rounds = sorted(metrics["models"], key=lambda name: int(name[5:]))
    lines = ["model trained on       " + "".join(f"{r:>12}" for r in rounds)]
    for key, label in [
        ("i2t_r1", "i2t recall@1"),
        ("t2i_r1", "t2i recall@1"),
        ("i2t_r5", "i2t recall@5"),
        ("t2i_r5", "t2i recall@5"),
        ("cider", "CIDEr"),
        ("bleu4", "BLEU-4"),
        ("caption_true", "captions true (share)"),
    ]:
        values = [metrics["models"][r].get(key) for r in rounds]
        lines.append(f"{label:<23}" + "".join(_cell(v) for v in values))
    for name, found in sorted(metrics["capfilt"].items()):
        lines.append(f"\nCapFilt pass {name}")
        lines += [f"  {key:<28}{_cell(value).strip()}" for key, value in found.items()]
        if "raw_noise_pct" in found:
            lines.append(f"  {verdict(found)}")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return f"{'-':>12}"
    return f"{value:>12.2f}" if isinstance(value, float) else f"{value!s:>12}"
