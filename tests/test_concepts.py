"""MetaCLIP concept matching: spacing rules, matchers equal to the reference loop, metadata I/O."""

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.pipeline.concepts import (
    AhoCorasickMatcher,
    ConceptMatcher,
    as_list_array,
    bigram_pmi,
    build_metadata,
    build_metadata_file,
    count_ngrams,
    load_metadata,
    match_reference,
    read_corpus_texts,
    save_metadata,
    spacing,
)

ROOT = Path(__file__).resolve().parents[1]
ALT_TEXT = ROOT.parent / "shared" / "data" / "alt-text"


# -- spacing ---------------------------------------------------------------------------------


def test_spacing_pads_both_ends():
    assert spacing("cat") == " cat "
    assert spacing("") == "  "


@pytest.mark.parametrize("punct", [",", ".", ";", ":", "?", "!", "`"])
def test_spacing_wraps_each_punctuation_mark(punct):
    assert spacing(f"a{punct}b") == f" a {punct} b "


@pytest.mark.parametrize("char", ["\t", "\n", "\r"])
def test_spacing_turns_tab_newline_return_into_space(char):
    assert spacing(f"a{char}b") == " a b "


def test_spacing_leaves_other_characters_and_case_alone():
    assert spacing('Don\'t (x)-y/z "Q" é') == ' Don\'t (x)-y/z "Q" é '


# -- matchers against the reference loop -----------------------------------------------------


def all_matchers(entries, casefold=False):
    return [ConceptMatcher(entries, casefold), AhoCorasickMatcher(entries, casefold)]


TRICKY_ENTRIES = [
    "cat",
    "a cat",
    "cat sat",
    "the cat sat",
    "sat",
    "cat.",
    "cat .",
    ". cat",
    ",",
    ".",
    "dog ,",
    ", dog",
    "e . g .",
    "U . S .",
    "",
    " ",
    "  ",
    " dog",
    "dog ",
    "a  b",
    "x\ty",
    "new\nline",
    "Cat",
    "cat",
    "café",
    "東京",
    "東京 タワー",
    "naïve ça",
    "(x)-y",
    "it's",
    "?!",
]
TRICKY_TEXTS = [
    "the cat sat.",
    "a cat. cat",
    "Cat, cat; CAT",
    "",
    " ",
    "dog,dog",
    " dog , dog",
    "e.g. U.S.",
    "a  b",
    "a\tb",
    "x\ty",
    "new\nline",
    "café au lait",
    "東京 タワー",
    "東京タワー",
    "naïve ça va",
    "(x)-y",
    "it's?!",
    "??",
    "...",
    "cat\r\ncat",
    "`cat`",
    "cat:sat",
    "a cat sat cat sat",
]


def test_matchers_equal_reference_on_tricky_cases():
    expected = match_reference(TRICKY_TEXTS, TRICKY_ENTRIES)
    for matcher in all_matchers(TRICKY_ENTRIES):
        assert matcher.match_many(TRICKY_TEXTS) == expected, type(matcher).__name__


def test_tricky_cases_mean_what_metaclip_means():
    index = {e: i for i, e in enumerate(TRICKY_ENTRIES)}
    matcher = ConceptMatcher(TRICKY_ENTRIES)
    the_cat = matcher.match("the cat sat.")
    assert {index["cat"], index["cat sat"], index["the cat sat"], index["sat"]} <= set(the_cat)
    assert index["cat."] not in matcher.match("a cat.")  # spacing made it "a cat ."
    assert index["cat ."] in matcher.match("a cat.")
    assert index["Cat"] not in matcher.match("cat")  # no lower-casing by default
    assert index["cat"] in matcher.match("dog,cat") and index["dog ,"] in matcher.match("dog,cat")
    assert matcher.match("東京タワー") == []  # no word boundary inside CJK runs
    assert matcher.match("x\ty") == []  # a tab is a space after spacing, "x\ty" never matches


def test_duplicate_entries_all_match():
    entries = ["cat", "dog", "cat"]
    for matcher in all_matchers(entries):
        assert matcher.match("a cat") == [0, 2]


def test_empty_entry_matches_texts_with_a_double_space_after_spacing():
    matcher = ConceptMatcher(["", "cat"])
    assert matcher.match("") == [0]  # spacing("") == "  "
    assert matcher.match("cat") == [1]  # " cat ": no double space
    assert matcher.match("cat.") == [0, 1]  # " cat .  "
    assert matcher.match("a  cat") == [0, 1]


def test_casefold_option():
    entries = ["straße", "ΣΟΦΙΑ", "Cat", "cat"]
    texts = ["STRASSE", "σοφια", "σοφιας", "a CAT"]
    expected = match_reference(texts, entries, casefold=True)
    assert expected == [[0], [1], [], [2, 3]]
    for matcher in all_matchers(entries, casefold=True):
        assert matcher.match_many(texts) == expected
    assert ConceptMatcher(entries).match_many(texts) == [[], [], [], []]


def random_text(rng, words, max_words=12):
    pieces = rng.choices(words + [",", ".", ":", "?", "`", "!", ";", "\t", "\n", "\r", ""], k=12)
    seps = rng.choices([" ", "", "  ", ",", ". "], weights=[8, 2, 1, 1, 1], k=len(pieces))
    return "".join(p + s for p, s in zip(pieces[: rng.randint(0, max_words)], seps, strict=False))


def random_entries(rng, words, texts, n):
    entries = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:  # a real span of some text: a match is likely
            spaced = spacing(rng.choice(texts))
            start = rng.randrange(len(spaced))
            entries.append(spaced[start : start + rng.randint(0, 12)])
        elif kind < 0.8:
            entries.append(" ".join(rng.choices(words, k=rng.randint(1, 4))))
        else:
            entries.append(random_text(rng, words, 3))
    return entries


@pytest.mark.parametrize("casefold", [False, True])
def test_matchers_equal_reference_on_random_texts_and_entries(casefold):
    rng = random.Random(1234 + casefold)
    words = ["a", "b", "ab", "A", "Ab", "c.d", "é", "É", "x y", "the", "The", "ß", "SS", "東京"]
    texts = [random_text(rng, words) for _ in range(400)]
    entries = random_entries(rng, words, texts, 300)
    expected = match_reference(texts, entries, casefold)
    assert sum(map(len, expected)) > 400  # the case is not trivially empty
    ours = ConceptMatcher(entries, casefold)
    assert ours.match_many(texts) == expected
    assert ours.match_many(texts, chunk_size=7) == expected  # chunk boundaries
    assert ours.match_many([*texts, "\ud800"])[:-1] == expected  # the pure-Python tokenizer
    assert AhoCorasickMatcher(entries, casefold).match_many(texts) == expected


def test_edge_lookup_without_packed_sort_gives_the_same_matches():
    matcher = ConceptMatcher(TRICKY_ENTRIES)
    expected = matcher.match_many(TRICKY_TEXTS)
    matcher._key_bits = 63  # as if the keys were too wide to pack the query index beside them
    assert (
        matcher.match_many(TRICKY_TEXTS)
        == expected
        == match_reference(TRICKY_TEXTS, TRICKY_ENTRIES)
    )


def test_null_texts_match_nothing_and_lone_surrogates_still_match():
    matcher = ConceptMatcher(["cat", "a\ud800b", ""])
    assert matcher.match_many(["cat", None, "", "x"]) == [[0], [], [2], []]
    texts = ["cat", None, "a\ud800b", "cat a\ud800b", ""]  # Arrow cannot encode these
    assert matcher.match_many(texts) == [[0], [], [1], [0, 1], [2]]


def test_arrow_string_arrays_in():
    entries = ["cat", "Big Dog", "big dog ."]
    texts = ["a cat", None, "BIG DOG.", "Big Dog"]
    expected = [[0], [], [], [1]]
    matcher = ConceptMatcher(entries)
    assert matcher.match_many(texts) == expected
    for array in (pa.array(texts), pa.array(texts, pa.large_string())):
        assert matcher.match_many(array) == expected
    chunked = pa.chunked_array([texts[:1], texts[1:3], texts[3:]])
    assert matcher.match_many(chunked, chunk_size=3) == expected
    folded = ConceptMatcher(entries, casefold=True)
    assert folded.match_many(pa.array(texts)) == [[0], [], [1, 2], [1]]


def test_no_entries_and_no_texts():
    for matcher in all_matchers([]):
        assert matcher.match_many(["cat", ""]) == [[], []]
    offsets, ids = ConceptMatcher(["cat"]).match_csr([])
    assert offsets.tolist() == [0] and ids.tolist() == []


def test_csr_output_and_arrow_list_column():
    offsets, ids = ConceptMatcher(["cat", "dog", "a cat"]).match_csr(["a cat", "", "dog cat"])
    assert offsets.tolist() == [0, 2, 2, 4] and ids.tolist() == [0, 2, 0, 1]
    column = as_list_array(offsets, ids)
    assert column.type == pa.list_(pa.int32())
    assert column.to_pylist() == [[0, 2], [], [0, 1]]


@pytest.mark.skipif(not ALT_TEXT.is_dir(), reason="../shared/data/alt-text absent")
def test_real_alt_text_against_reference_with_default_list():
    rng = random.Random(0)
    texts = rng.sample(read_corpus_texts(ALT_TEXT / "laion-10k.parquet"), 150)
    texts += rng.sample(read_corpus_texts(ALT_TEXT / "cc3m-gcc-validation.tsv"), 150)
    entries = load_metadata(ROOT / "data" / "metadata" / "default.txt")
    assert ConceptMatcher(entries).match_many(texts) == match_reference(texts, entries)


# -- metadata files --------------------------------------------------------------------------


def test_load_metaclip_json_format(tmp_path):
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(["cat", "", " padded ", "東京"]), encoding="utf-8")
    assert load_metadata(path) == ["cat", "", " padded ", "東京"]


def test_load_json_rejects_anything_but_a_list_of_strings(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"cat": 1}), encoding="utf-8")
    with pytest.raises(ValueError, match="list of strings"):
        load_metadata(path)


def test_load_plain_text_one_entry_a_line(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes("cat\r\n\nhot dog\n a b \n東京".encode())
    assert load_metadata(path) == ["cat", "hot dog", " a b ", "東京"]


def test_save_round_trips_both_formats(tmp_path):
    entries = ["cat", "hot dog", " padded", "東京"]
    for name in ("list.txt", "list.json"):
        assert load_metadata(save_metadata(entries, tmp_path / name)) == entries
    with pytest.raises(ValueError, match="json"):
        save_metadata(["", "cat"], tmp_path / "list.txt")
    assert load_metadata(save_metadata(["", "a\nb"], tmp_path / "odd.json")) == ["", "a\nb"]


def test_default_list_ships_and_loads():
    entries = load_metadata(ROOT / "data" / "metadata" / "default.txt")
    assert len(entries) == len(set(entries)) > 1000
    assert {"dog", "city", "los angeles"} <= set(entries)


# -- building metadata -----------------------------------------------------------------------

CORPUS = [
    "new york at night.",
    "a dog in new york",
    "new shoes, old york",  # the comma ends the run: no bigram "shoes old"
    "a dog <b>and</b> a cat",
    "a cat",
]


def test_count_ngrams_uses_matcher_tokens_and_breaks_at_punctuation():
    unigrams, bigrams = count_ngrams(CORPUS)
    assert unigrams["new"] == 3 and unigrams["york"] == 3 and unigrams["a"] == 4
    assert "," not in unigrams and "<b>and</b>" not in unigrams and unigrams["and"] == 1
    assert bigrams["new york"] == 2 and "shoes old" not in bigrams and "night ." not in bigrams


def test_bigram_pmi_in_bits():
    unigrams, bigrams = count_ngrams(CORPUS)
    total = sum(unigrams.values())  # 20 tokens
    assert total == 20
    assert bigram_pmi(bigrams, unigrams)["new york"] == pytest.approx(
        __import__("math").log2(2 * 20 / (3 * 3))
    )


def test_build_metadata_thresholds_order_and_extras(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    entries = build_metadata(
        [corpus], min_count=2, min_pmi=1.0, extra_entries=["zebra", "a"], min_bigram_count=2
    )
    # extras first; unigrams by count (a: 4; new, york: 3; cat, dog: 2); bigrams by PMI
    assert entries == ["zebra", "a", "new", "york", "cat", "dog", "a cat", "a dog", "new york"]
    assert build_metadata([corpus], min_count=3, min_pmi=9.0, min_bigram_count=2) == [
        "a",
        "new",
        "york",
    ]


def test_build_metadata_file_reads_tsv_and_parquet(tmp_path):
    (tmp_path / "c.tsv").write_text("new york\thttp://x/1.jpg\nnew york\thttp://x/2\n")
    pq.write_table(pa.table({"TEXT": ["new york", None, "york"]}), tmp_path / "c.parquet")
    out = tmp_path / "out.txt"
    entries = build_metadata_file(
        [tmp_path / "c.tsv", tmp_path / "c.parquet"],
        out,
        min_count=3,
        min_pmi=0.0,
        min_bigram_count=3,
    )
    assert entries == ["york", "new", "new york"] and load_metadata(out) == entries
