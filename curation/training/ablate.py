"""`curate bootstrap --ablate`: one model per data variant, same training budget, one table.

BLIP's Table 1 (arXiv 2201.12086) compares pre-training on the raw web with the web after the
filter, after the captioner and after both; MetaCLIP (arXiv 2309.16671) and DFN (arXiv
2309.17425) add concept balancing and model-based scoring. Each variant here is a `curate run`
over the same downloaded web with a different configuration, followed by pre-training from
scratch for the same number of training examples as the raw-web model (epochs scaled by the
variant's size), and the same evaluation, plus recall@1 on the eval set's tail concepts: the
concepts rarest in the web's alt-text, where MetaCLIP expects balancing to help.
"""

import math
from pathlib import Path

import numpy as np

from curation.models.blip import load_filter, pick_device
from curation.pipeline import balance
from curation.pipeline.concepts import ConceptMatcher
from curation.training import metrics
from curation.training.evaluate import eval_pixels, itc_similarity, load_eval_set

TAIL_FRACTION = 0.25  # the rarest quarter (by web count) of the concepts the eval set mentions
OFF = {"metadata": "", "scorer": ""}


def variants(metadata: str, scorer: str) -> list[tuple[str, dict | None]]:
    """(name, run-config overrides) of each row; None = the raw web pairs, no `curate run`.

    `scorer` is the fine-tuned model's contrastive scorer (DFN: a filter trained on clean data).
    The last two rows differ only in stage order, which is what justifies the default.
    """
    both = {"metadata": metadata, "scorer": scorer}
    return [
        ("raw web", None),
        ("+filter", {"capfilt": {"num_captions": 0}, "select": OFF}),
        ("+captioner", {"capfilt": {"itm_threshold": 0.0}, "select": OFF}),
        ("+captioner+filter", {"select": OFF}),
        ("+balancing", {"select": {"metadata": metadata, "scorer": ""}}),
        ("+scoring (score, then balance)", {"select": {**both, "order": "score_then_balance"}}),
        ("+scoring (balance, then score)", {"select": {**both, "order": "balance_then_score"}}),
    ]


def slug(name: str) -> str:
    """A folder name: '+scoring (balance, then score)' -> 'scoring-balance-then-score'."""
    return "-".join("".join(c if c.isalnum() else " " for c in name).split())


def with_overrides(config: dict, overrides: dict) -> dict:
    """`config` (RunConfig.to_dict()) with each section updated by `overrides`."""
    return {**config, **{k: {**config.get(k, {}), **v} for k, v in overrides.items()}}


def budget_epochs(base_epochs: int, base_pairs: int, pairs: int) -> int:
    """Epochs giving `pairs` as many training examples as base_epochs x base_pairs."""
    return max(1, round(base_epochs * base_pairs / max(pairs, 1)))


def tail_concepts(matcher: ConceptMatcher, web: list[str], eval_texts: list[str]) -> set[int]:
    """Entry ids of the rarest TAIL_FRACTION (by web count) of the concepts eval texts mention."""
    counts = balance.count_matches(
        [e for found in matcher.match_many(web) for e in found], len(matcher.entries)
    )
    mentioned = sorted(
        {e for found in matcher.match_many(eval_texts) for e in found}, key=lambda e: (counts[e], e)
    )
    return set(mentioned[: math.ceil(len(mentioned) * TAIL_FRACTION)])


def tail_recall(model_dir: Path, eval_parquet: Path, matcher: ConceptMatcher, tail: set[int]):
    """i2t recall@1 over eval images with a tail concept in a caption, t2i over such captions."""
    data = load_eval_set(eval_parquet)
    filt = load_filter(str(Path(model_dir) / "filter"), *pick_device())
    sim = itc_similarity(filt, eval_pixels(filt.processor, data.images), data.texts)  # (I, T)
    text_ids, image_ids = np.asarray(data.text_image_ids), np.asarray(data.image_ids)
    tail_text = np.array([bool(tail & set(m)) for m in matcher.match_many(data.texts)])
    tail_image = np.isin(image_ids, text_ids[tail_text])
    i2t = metrics.retrieval_recall(sim[tail_image], text_ids, image_ids[tail_image], ks=(1,))
    t2i = metrics.retrieval_recall(sim[:, tail_text], text_ids[tail_text], image_ids, ks=(1,))
    return {
        "tail_i2t_r1": i2t["i2t_r1"],
        "tail_t2i_r1": t2i["t2i_r1"],
        "tail_images": int(tail_image.sum()),
        "tail_texts": int(tail_text.sum()),
    }


def concept_gini(matcher: ConceptMatcher, texts: list[str]) -> float:
    """Gini coefficient of the concept counts of a training set's texts, over the concepts they
    match: how head-heavy the data a model learns from is (balancing should lower it)."""
    found = [e for entries in matcher.match_many(texts) for e in entries]
    counts = balance.count_matches(found, len(matcher.entries))
    return balance.gini(counts[counts > 0])


COLUMNS = [
    ("pairs", "pairs"),
    ("epochs", "epochs"),
    ("i2t_r1", "i2t R@1"),
    ("t2i_r1", "t2i R@1"),
    ("cider", "CIDEr"),
    ("tail_i2t_r1", "tail i2t R@1"),
    ("tail_t2i_r1", "tail t2i R@1"),
    ("gini", "concept Gini"),
]


def table(rows: list[dict]) -> str:
    """The ablation as a Markdown table, one row per variant ({"data": name, ...}) in order."""
    lines = [
        "| data | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    for row in rows:
        cells = [_cell(row.get(key)) for key, _ in COLUMNS]
        lines.append(f"| {row['data']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)
