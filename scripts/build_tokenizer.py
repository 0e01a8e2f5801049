"""Regenerate data/tokenizer/: a small lower-cased WordPiece vocabulary for the tiny BLIP models.

Real BLIP uses bert-base-uncased plus a [DEC] token (its decoder's BOS, arXiv 2201.12086); the
demo and test models are built from config offline, so they need a vocabulary of their own. It
is built from data/tokenizer_corpus.txt with the `tokenizers` library's BERT normalizer and
pre-tokenizer and saved as a BertTokenizerFast (WordPiece), which is what BlipProcessor
expects. The build is deterministic: the same corpus gives byte-identical files.

    .venv/bin/python scripts/build_tokenizer.py [--corpus PATH] [--out DIR] [--vocab-size N]
"""

import argparse
import string
from collections import Counter
from pathlib import Path

from tokenizers import normalizers, pre_tokenizers
from transformers import BertTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
# [PAD] must be 0 (BLIP's pad_token_id); [DEC] is the decoder's BOS token.
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
# Lower-cased printable ASCII without whitespace: every English string tokenizes without [UNK].
ALPHABET = sorted(set(string.printable.lower()) - set(string.whitespace))


def read_corpus(path: Path) -> list[str]:
    """Non-empty corpus lines; lines starting with '#' are comments."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def corpus_words(lines: list[str]) -> Counter[str]:
    """Word counts after BERT normalisation (lower-case) and pre-tokenisation (punctuation split).

    The same `tokenizers` normalizer and pre-tokenizer run at tokenisation time, so the
    vocabulary's words are exactly the units WordPiece will look up.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for line in lines:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    return counts


def suffix_counts(words: Counter[str], max_len: int = 5) -> Counter[str]:
    """Counts of word endings ("##s", "##ing", ...) of 2..max_len characters, weighted by use.

    They let WordPiece split an unseen inflection ("circles") into a known word plus a known
    ending ("circle", "##s") instead of single characters.
    """
    counts: Counter[str] = Counter()
    for word, n in words.items():
        for k in range(2, min(max_len, len(word) - 2) + 1):
            counts["##" + word[-k:]] += n
    return counts


def train_vocab(lines: list[str], vocab_size: int) -> dict[str, int]:
    """Deterministic WordPiece vocabulary: specials, ASCII pieces, corpus words, then endings.

    The `tokenizers` WordPieceTrainer breaks ties between equally frequent merges in hash
    order, so two runs give different vocabularies; counting words and endings with a stable
    (count, text) order gives the same files on every run. Ties at the cut-off are broken
    alphabetically.
    """
    pieces = SPECIAL_TOKENS + ALPHABET + [f"##{c}" for c in ALPHABET]
    words = corpus_words(lines)
    ranked_words = sorted(words, key=lambda w: (-words[w], w))
    endings = suffix_counts(words)
    ranked_endings = sorted((e for e in endings if endings[e] >= 2), key=lambda e: (-endings[e], e))
    vocab: dict[str, int] = {}
    for piece in pieces + ranked_words + ranked_endings:
        if len(vocab) >= max(vocab_size, len(pieces)):
            break
        vocab.setdefault(piece, len(vocab))
    return vocab


def build(corpus: Path, out_dir: Path, vocab_size: int = 1200) -> BertTokenizerFast:
    """Train the vocabulary and save it as a BertTokenizerFast with [DEC] as bos_token."""
    vocab = train_vocab(read_corpus(corpus), vocab_size)
    assert [vocab[t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True, bos_token="[DEC]")
    tokenizer.model_max_length = 512  # BLIP's text max_position_embeddings
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "data" / "tokenizer_corpus.txt")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "tokenizer")
    parser.add_argument("--vocab-size", type=int, default=1200)
    args = parser.parse_args()
    tokenizer = build(args.corpus, args.out, args.vocab_size)
    print(f"wrote {args.out} ({len(tokenizer)} tokens)")


if __name__ == "__main__":
    main()
