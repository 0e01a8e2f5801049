"""Retrieval and captioning metrics, written out so their numbers can be checked by hand.

- `retrieval_recall`: image-text retrieval recall@k, as BLIP reports it on COCO/Flickr
  (arXiv 2201.12086, table 5): several captions per image; an image counts as retrieved
  correctly when any of its captions is in the top k.
- `bleu4` and `cider_d`: corpus BLEU-4 and CIDEr-D computed the way coco-caption
  (pycocoevalcap's `bleu_scorer.py` and `cider_scorer.py`) does, which is how BLIP reports
  captioning quality. Tokenisation is simpler than COCO's PTB tokenizer: lower-case, punctuation
  replaced by spaces, split on whitespace.

Scales: recall in percent (0-100); BLEU-4 as a fraction in [0, 1] (identical captions give
1.0, papers print 100x); CIDEr-D with coco-caption's x10 scaling (papers print 100x again).
"""

import math
import re
from collections import Counter

import numpy as np

NGRAM_MAX = 4
CIDER_SIGMA = 6.0  # CIDEr-D's gaussian length penalty width (coco-caption default)
BLEU_TINY, BLEU_SMALL = 1e-15, 1e-9  # coco-caption's guards against log(0) and 0/0


def tokenize(text: str) -> list[str]:
    """Lower-case, punctuation to spaces, whitespace split."""
    return re.sub(r"[^\w\s]|_", " ", text.lower()).split()


def ngrams(tokens: list[str], n_max: int = NGRAM_MAX) -> Counter:
    """Counts of every n-gram (as a tuple) for n = 1..n_max."""
    return Counter(
        tuple(tokens[i : i + n]) for n in range(1, n_max + 1) for i in range(len(tokens) - n + 1)
    )


# --------------------------------------------------------------------------- retrieval


def _best_rank(sim: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Per row, the 0-based rank of the best-ranked correct column (ties: lower index first).

    sim, correct: [rows, cols]; rows without any correct column get rank cols (never a hit).
    """
    order = np.argsort(-sim, axis=1, kind="stable")  # [rows, cols], best first
    hits = np.take_along_axis(correct, order, axis=1)
    return np.where(hits.any(axis=1), hits.argmax(axis=1), sim.shape[1])


def retrieval_recall(
    sim: np.ndarray, text_image_ids, image_ids, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Image-to-text and text-to-image recall@k in percent.

    sim: [n_images, n_texts] similarities; text_image_ids: [n_texts], the image id each text
    describes; image_ids: [n_images]. i2t recall@k = share of images with at least one of their
    texts in their top k; t2i recall@k = share of texts whose image is in their top k.
    Returns `i2t_r{k}`, `t2i_r{k}` for each k and `r_mean` (their mean, BLIP's summary).
    """
    sim = np.asarray(sim, dtype=np.float64)
    text_ids, img_ids = np.asarray(text_image_ids), np.asarray(image_ids)
    if sim.shape != (len(img_ids), len(text_ids)):
        raise ValueError(f"sim must be [n_images, n_texts] = {len(img_ids), len(text_ids)}")
    correct = img_ids[:, None] == text_ids[None, :]  # [n_images, n_texts]
    i2t, t2i = _best_rank(sim, correct), _best_rank(sim.T, correct.T)
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * float(np.mean(i2t < k))
        out[f"t2i_r{k}"] = 100.0 * float(np.mean(t2i < k))
    out["r_mean"] = float(np.mean(list(out.values())))
    return out


# --------------------------------------------------------------------------- BLEU


def _closest_ref_len(test_len: int, ref_lens: list[int]) -> int:
    """coco-caption's 'closest' option: the nearest reference length, the shorter on a tie."""
    return min((abs(length - test_len), length) for length in ref_lens)[1]


def _bleu_counts(candidate: str, refs: list[str]) -> tuple[int, int, list[int], list[int]]:
    """(test length, reference length, guessed n-grams per n, clipped matches per n)."""
    test = tokenize(candidate)
    ref_tokens = [tokenize(r) for r in refs]
    max_ref: Counter = Counter()
    for tokens in ref_tokens:
        max_ref |= ngrams(tokens)  # element-wise max: the clipping counts
    guess = [max(len(test) - n + 1, 0) for n in range(1, NGRAM_MAX + 1)]
    correct = [0] * NGRAM_MAX
    for gram, count in ngrams(test).items():
        correct[len(gram) - 1] += min(count, max_ref[gram])
    return len(test), _closest_ref_len(len(test), [len(t) for t in ref_tokens]), guess, correct


def bleu4(candidates: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002) with brevity penalty, as coco-caption computes it.

    Clipped n-gram matches and guesses are summed over the corpus before dividing, and the
    brevity penalty uses the sum of each candidate's closest reference length. In [0, 1].
    """
    _check_pairs(candidates, references)
    test_len = ref_len = 0
    guess, correct = np.zeros(NGRAM_MAX), np.zeros(NGRAM_MAX)
    for cand, refs in zip(candidates, references, strict=True):
        t, r, g, c = _bleu_counts(cand, refs)
        test_len, ref_len = test_len + t, ref_len + r
        guess += g
        correct += c
    precision = np.prod((correct + BLEU_TINY) / (guess + BLEU_SMALL))
    score = float(precision ** (1.0 / NGRAM_MAX))
    ratio = (test_len + BLEU_TINY) / (ref_len + BLEU_SMALL)
    return score * math.exp(1 - 1 / ratio) if ratio < 1 else score


def _check_pairs(candidates: list[str], references: list[list[str]]) -> None:
    if len(candidates) != len(references) or not candidates:
        raise ValueError("need one list of references per candidate, and at least one candidate")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every candidate needs at least one reference")


# --------------------------------------------------------------------------- CIDEr-D


def _tfidf(counts: Counter, doc_freq: Counter, log_n_images: float):
    """tf-idf vectors per n (list of dicts), their norms, and the length CIDEr-D compares.

    idf = log(n_images) - log(max(1, df)); coco-caption measures length by bigram count.
    """
    vec: list[dict] = [{} for _ in range(NGRAM_MAX)]
    norm = np.zeros(NGRAM_MAX)
    for gram, tf in counts.items():
        n = len(gram) - 1
        vec[n][gram] = tf * (log_n_images - math.log(max(1.0, doc_freq[gram])))
        norm[n] += vec[n][gram] ** 2
    length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
    return vec, np.sqrt(norm), length


def _cider_sim(hyp, ref, sigma: float = CIDER_SIGMA) -> np.ndarray:
    """Per-n clipped cosine similarity times the gaussian length penalty (CIDEr-D)."""
    (vec_h, norm_h, len_h), (vec_r, norm_r, len_r) = hyp, ref
    val = np.zeros(NGRAM_MAX)
    for n in range(NGRAM_MAX):
        for gram, weight in vec_h[n].items():
            ref_weight = vec_r[n].get(gram, 0.0)
            val[n] += min(weight, ref_weight) * ref_weight
        if norm_h[n] != 0 and norm_r[n] != 0:
            val[n] /= norm_h[n] * norm_r[n]
    return val * math.exp(-((len_h - len_r) ** 2) / (2 * sigma**2))


def cider_d(candidates: list[str], references: list[list[str]]) -> float:
    """Corpus CIDEr-D (Vedantam et al. 2015) as coco-caption computes it.

    Document frequencies come from the references (an n-gram counts once per image); a
    candidate's score is the mean over n = 1..4 and over its references of the clipped tf-idf
    cosine with the length penalty, times 10; the corpus score is the mean over candidates.
    With a single image every idf is 0, so the score is 0: CIDEr needs a corpus.
    """
    _check_pairs(candidates, references)
    ref_counts = [[ngrams(tokenize(r)) for r in refs] for refs in references]
    doc_freq: Counter = Counter()
    for counts in ref_counts:
        doc_freq.update(set().union(*counts))
    log_n = math.log(len(references))
    scores = []
    for cand, counts in zip(candidates, ref_counts, strict=True):
        hyp = _tfidf(ngrams(tokenize(cand)), doc_freq, log_n)
        total = sum(_cider_sim(hyp, _tfidf(c, doc_freq, log_n)) for c in counts)
        scores.append(float(np.mean(total)) / len(counts) * 10.0)
    return float(np.mean(scores))
