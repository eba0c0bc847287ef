"""Tests for dsel.kernel: exact agreement with nltk + mmh3 / hashlib and data-selection 1.0.3."""

from __future__ import annotations

import glob
import gzip
import itertools
import json

import mmh3
import numpy as np
import pyarrow as pa
import pytest
from nltk.tokenize import WordPunctTokenizer

from dsel import kernel as K
from tests.conftest import CORPUS, bottom_k, oracle_sample

WPT = WordPunctTokenizer()  # nltk >= 3.10 runs it with the ``regex`` engine, as dsel does

TRICKY = [
    "",
    "   \t\n  ",
    "\u00a0\u2003\u3000\u2028\x1c\x1f\x85",
    "Hello, World!!! How's it going?... (fine) -- ok;",
    "cafe\u0301 re\u0301sume\u0301 na\u00efve",  # decomposed combining marks
    "ΟΔΟΣ ΣΑΣ Σίσυφος ΣΟΦΟΣ.",  # final sigma under str.lower()
    "İstanbul İİ KIRIKKALE ǅ ǈ ẞ",  # dotted capital I lowers to 'i' + U+0307
    "日本語のテキスト、中文文本。한국어 텍스트",
    "emoji 👍🏽 👨\u200d👩\u200d👧\u200d👦 🏳️\u200d🌈 ❤️ ok👍ok",
    "digits 123 4.56 ١٢٣ ² ½ Ⅻ x2y",
    "snake_case __dunder__ _ a_b_c",
    "mixed --->>> <<<=== !?!? a+b=c ((x)) [y]{z} «quote» “smart” ‘s’",
    "tab\tseparated\nnew\r\nline\u00a0nbsp\u2009thin\u200bzwsp\ufeffbom",
    "UPPER lower MiXeD ÀÉÎÕÜ ÇŒÆ",
    "a",
    "x" * 300 + " " + "Y" * 70,
]


def tokens(text: str) -> list[str]:
    """The oracle: nltk's WordPunctTokenizer after str.lower()."""
    return WPT.tokenize(text.lower())


def ref_buckets(text: str, n: int, num_buckets: int, seed: int) -> list[int]:
    """Independent reference: nltk tokens + mmh3 on the joined n-grams."""
    words = tokens(text)
    out = []
    for i in range(1, n + 1):
        for j in range(len(words) - i + 1):
            out.append(mmh3.hash(" ".join(words[j:j + i]), seed, signed=False) % num_buckets)
    return out


def counts_of(texts, n, num_buckets, seed, hash_kind="murmur3"):
    counts = np.zeros((len(texts), num_buckets), np.int64)
    nf, nw = K.count_batch(pa.array(texts), np.arange(len(texts)), counts, n=n, seed=seed,
                           hash_kind=hash_kind)
    return counts, nf, nw


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1])
@pytest.mark.parametrize("num_buckets", [1, 97, 10000])
def test_tricky_text_matches_nltk_and_mmh3(n, seed, num_buckets):
    counts, nf, nw = counts_of(TRICKY, n, num_buckets, seed)
    for i, text in enumerate(TRICKY):
        ref = ref_buckets(text, n, num_buckets, seed)
        assert nw[i] == len(tokens(text)), text
        assert nf[i] == len(ref), text
        np.testing.assert_array_equal(counts[i], np.bincount(ref, minlength=num_buckets),
                                      err_msg=repr(text))
        assert ref == K.oracle_buckets(text, n, num_buckets, seed)


def test_oracle_tokenizer_is_nltk_pattern():
    assert K._TOKEN.pattern == WPT._pattern and K._TOKEN.flags & WPT._flags == WPT._flags
    for text in TRICKY:
        assert K._TOKEN.findall(text.lower()) == tokens(text)


def test_engine_specific_code_points_follow_nltk():
    """Combining marks, ZWJ, superscripts and \\x1c are where the ``re`` and ``regex`` engines differ."""
    texts = ["e\u0301", "\u0915\u093f", "x\u00b2", "\u00bd", "a\u200db", "a\x1cb", "\u24b6"]
    counts, nf, nw = counts_of(texts, 2, 997, 0)
    assert nw.tolist() == [len(tokens(t)) for t in texts]
    assert tokens("cafe\u0301 ok") == ["cafe\u0301", "ok"]
    expect = np.array([np.bincount(K.oracle_buckets(t, 2, 997, 0), minlength=997) for t in texts])
    np.testing.assert_array_equal(counts, expect)


@pytest.mark.parametrize("hash_kind", K.HASH_KINDS)
def test_every_single_codepoint_class(hash_kind):
    """Each BMP-ish sample code point alone and between letters tokenizes like nltk."""
    rng = np.random.default_rng(0)
    cps = list(range(0, 0x3000)) + list(rng.integers(0x3000, 0x110000, 3000))
    texts = [f"a{chr(c)}b {chr(c)}{chr(c)}" for c in cps if not 0xD800 <= c < 0xE000]
    counts, nf, nw = counts_of(texts, 2, 257, 3, hash_kind)
    for i, text in enumerate(texts):
        assert nw[i] == len(tokens(text)), repr(text)
    expect = np.array([np.bincount(K.oracle_buckets(t, 2, 257, 3, hash_kind), minlength=257)
                       for t in texts])
    np.testing.assert_array_equal(counts, expect)


def _oracle_scores(texts, lr, n, seed, hash_kind):
    out = np.zeros((len(texts), lr.shape[0]))
    nw = np.zeros(len(texts), np.int64)
    for i, t in enumerate(texts):
        if t is None:
            continue
        b = K.oracle_buckets(t, n, lr.shape[1], seed, hash_kind)
        out[i] = lr[:, b].sum(axis=1)
        nw[i] = len(tokens(t))
    return out, nw


@pytest.mark.parametrize("hash_kind", K.HASH_KINDS)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_score_batch_matches_oracle(hash_kind, n):
    rng = np.random.default_rng(n)
    lr = rng.normal(size=(2, 1009))
    texts = ["Plain ASCII Text, With CAPS.", None, "", "ΟΔΟΣ ΣΑΣ İstanbul", "  ",
             "emoji 👍🏽 ok", "ASCII again: 1+1=2", None] + TRICKY
    seed = 11
    exp_w, exp_nw = _oracle_scores(texts, lr, n, seed, hash_kind)

    variants = {
        "string": pa.array(texts, pa.string()),
        "large_string": pa.array(texts, pa.large_string()),
        "chunked": pa.chunked_array([pa.array(texts[:3]), pa.array([], pa.string()),
                                     pa.array(texts[3:])]),
    }
    for name, arr in variants.items():
        w, nw = K.score_batch(arr, lr, n=n, seed=seed, hash_kind=hash_kind)
        assert w.shape == (len(texts), 2) and w.dtype == np.float64, name
        np.testing.assert_allclose(w, exp_w, rtol=0, atol=1e-9, err_msg=name)
        np.testing.assert_array_equal(nw, exp_nw, err_msg=name)

    # sliced arrays (non-zero offset), both offset widths, and a sliced chunked array
    padded = ["LEADING junk É", None] + texts + ["trailing ÜBER"]
    for typ in (pa.string(), pa.large_string()):
        arr = pa.array(padded, typ).slice(2, len(texts))
        assert arr.offset == 2
        w, nw = K.score_batch(arr, lr, n=n, seed=seed, hash_kind=hash_kind)
        np.testing.assert_allclose(w, exp_w, rtol=0, atol=1e-9, err_msg=str(typ))
        np.testing.assert_array_equal(nw, exp_nw)
    chunked = pa.chunked_array([pa.array(padded)]).slice(2, len(texts))
    w, nw = K.score_batch(chunked, lr, n=n, seed=seed, hash_kind=hash_kind)
    np.testing.assert_allclose(w, exp_w, rtol=0, atol=1e-9)


def test_score_batch_empty_and_all_null():
    lr = np.ones((3, 10))
    w, nw = K.score_batch(pa.array([], pa.string()), lr)
    assert w.shape == (0, 3) and nw.shape == (0,)
    w, nw = K.score_batch(pa.array([None, None], pa.string()), lr)
    assert (w == 0).all() and (nw == 0).all()
    w, nw = K.score_batch(pa.array(["", ""], pa.string()), lr)  # data buffer may be empty
    assert (w == 0).all() and (nw == 0).all()


def test_null_slot_with_nonempty_offsets_is_ignored():
    """Arrow allows a null slot to span bytes; they must not be featurized."""
    data = pa.py_buffer(b"hello worldGHOST TEXTbye")
    offsets = pa.py_buffer(np.array([0, 11, 21, 24], np.int32).tobytes())
    validity = pa.py_buffer(np.packbits([1, 0, 1], bitorder="little").tobytes())
    arr = pa.StringArray.from_buffers(3, offsets, data, validity)
    assert arr.to_pylist() == ["hello world", None, "bye"]
    lr = np.random.default_rng(1).normal(size=(2, 50))
    w, nw = K.score_batch(arr, lr)
    assert nw.tolist() == [2, 0, 1] and (w[1] == 0).all()
    counts = np.zeros((1, 50), np.int64)
    nf, _ = K.count_batch(arr, np.zeros(3, np.int64), counts)
    assert nf.tolist() == [3, 0, 1] and counts.sum() == 4


@pytest.mark.parametrize("hash_kind", K.HASH_KINDS)
def test_bytes_that_are_not_utf8_read_as_replacement_characters(hash_kind):
    """A Parquet or Delta input can hold strings that are not UTF-8: they are featurized as Python
    decodes them with errors="replace" (U+FFFD per bad sequence), as Spark shows them, not an error."""
    raw = [b"caf\xe9 LATIN-1 Word", b"ok \xff\xfe end", None, b"x\xed\xa0\x80y \xc0\xaf",
           "Ünïcödé ÉCOLE".encode(), b"plain ASCII"]
    arr = pa.array(raw, pa.binary()).view(pa.string())
    with pytest.raises(pa.ArrowInvalid):
        arr.validate(full=True)
    decoded = [None if b is None else b.decode("utf-8", "replace") for b in raw]
    lr = np.random.default_rng(2).normal(size=(2, 1000))
    w, nw = K.score_batch(arr, lr, hash_kind=hash_kind)
    exp_w, exp_nw = K.score_batch(pa.array(decoded, pa.string()), lr, hash_kind=hash_kind)
    np.testing.assert_array_equal(w, exp_w)
    assert nw.tolist() == exp_nw.tolist() == [len(tokens(t)) if t else 0 for t in decoded]
    assert nw[0] == 6 and tokens(decoded[0])[:2] == ["caf", "\ufffd"]


@pytest.mark.parametrize("hash_kind", K.HASH_KINDS)
def test_count_batch_accumulates_into_groups(hash_kind):
    texts = ["the cat sat", "THE CAT SAT on the mat", None, "Ünïcödé text", "the cat", ""]
    groups = np.array([0, 2, 1, 2, 0, 1])
    B = 64
    counts = np.zeros((3, B), np.int64)
    counts[1, 5] = 7  # pre-existing counts are kept
    initial = counts.copy()
    added = np.zeros_like(counts)
    for t, g in zip(texts, groups):
        if t is not None:
            added[g] += np.bincount(K.oracle_buckets(t, 2, B, 5, hash_kind), minlength=B)
    assert added.sum() > 0
    nf, nw = K.count_batch(pa.array(texts), groups, counts, n=2, seed=5, hash_kind=hash_kind)
    np.testing.assert_array_equal(counts, initial + added)
    assert nf.tolist() == [0 if t is None else len(K.oracle_buckets(t, 2, B, 5)) for t in texts]
    assert nw.tolist() == [0 if t is None else len(tokens(t)) for t in texts]
    # a second call accumulates on top
    K.count_batch(pa.array(texts), groups, counts, n=2, seed=5, hash_kind=hash_kind)
    np.testing.assert_array_equal(counts, initial + 2 * added)


@pytest.mark.parametrize("hash_kind", K.HASH_KINDS)
def test_long_tokens_grow_scratch_and_resume(hash_kind):
    """Tokens longer than the initial scratch buffer: grow, resume mid-document, no double count."""
    long_doc = "a b " + "Q" * 10000 + " c " + "\u00c9" * 5000 + " d " + "z" * 40000
    texts = ["short doc first", long_doc,
             None, "x" * 70000, "tail doc, after"]
    B = 211
    for n in (1, 2, 3):
        counts = np.zeros((len(texts), B), np.int64)
        nf, nw = K.count_batch(pa.array(texts), np.arange(len(texts)), counts, n=n, seed=9,
                               hash_kind=hash_kind)
        lr = np.random.default_rng(n).normal(size=(2, B))
        w, nw2 = K.score_batch(pa.array(texts), lr, n=n, seed=9, hash_kind=hash_kind)
        exp_w, exp_nw = _oracle_scores(texts, lr, n, 9, hash_kind)
        np.testing.assert_allclose(w, exp_w, rtol=0, atol=1e-9)
        np.testing.assert_array_equal(nw, exp_nw)
        np.testing.assert_array_equal(nw2, exp_nw)
        for i, t in enumerate(texts):
            ref = [] if t is None else K.oracle_buckets(t, n, B, 9, hash_kind)
            assert nf[i] == len(ref)
            np.testing.assert_array_equal(counts[i], np.bincount(ref, minlength=B))


def _corpus_docs(per_domain: int = 12, max_domains: int = 20) -> list[str]:
    docs = []
    paths = sorted(glob.glob(str(CORPUS / "*.jsonl.gz")))[:max_domains]
    assert paths, f"the shared corpus is missing at {CORPUS}; set DSEL_CORPUS"
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in itertools.islice(f, per_domain):
                docs.append(json.loads(line)["text"])
    return docs


@pytest.fixture(scope="module")
def corpus_docs():
    return _corpus_docs()


def test_sha256_matches_data_selection(corpus_docs):
    from data_selection.hashed_ngram_dsir import get_ngram_counts

    B = 10000
    docs = corpus_docs
    assert len(docs) >= 200
    counts = np.zeros((len(docs), B), np.int64)
    K.count_batch(pa.array(docs), np.arange(len(docs)), counts, n=2, hash_kind="sha256")
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(counts[i], get_ngram_counts(doc, n=2, num_buckets=B), err_msg=doc[:80])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_murmur3_matches_oracle_on_corpus(corpus_docs, n):
    B = 4096
    docs = corpus_docs
    counts = np.zeros((len(docs), B), np.int64)
    nf, nw = K.count_batch(pa.array(docs, pa.large_string()), np.arange(len(docs)), counts,
                           n=n, seed=42)
    for i, doc in enumerate(docs):
        ref = K.oracle_buckets(doc, n, B, 42)
        assert nf[i] == len(ref)
        np.testing.assert_array_equal(counts[i], np.bincount(ref, minlength=B))
    assert nw.tolist() == [len(tokens(d)) for d in docs]


def test_large_single_document(corpus_docs):
    base = "\n".join(corpus_docs[:50]) + "\n"
    copies = 20_000_000 // len(base.encode()) + 1
    doc = base * copies
    assert len(doc.encode()) >= 20_000_000
    B = 1000
    lr = np.random.default_rng(0).normal(size=(2, B))
    w, nw = K.score_batch(pa.array([doc], pa.large_string()), lr, n=2)
    words = tokens(base)
    assert nw[0] == copies * len(words) == len(K._TOKEN.findall(doc.lower()))
    # grams(doc) = copies * grams(base) + (copies - 1) * the seam bigram
    seam = mmh3.hash(words[-1] + " " + words[0], 0, signed=False) % B
    expect = copies * lr[:, K.oracle_buckets(base, 2, B)].sum(axis=1) + (copies - 1) * lr[:, seam]
    np.testing.assert_allclose(w[0], expect, rtol=1e-9)


MIXED_CASE = [
    "Σ", "ΣΑΣ", "ΟΔΟΣ.", "ΟΔΟΣ ΣΑΣ Σίσυφος", "ΑΣ\u0301 ΑΣ'Α ΑΣ\u00adΑ 1Σ ΑΣ1 Σ\u0301 aΣb aΣ ΣΣΣ",  # final sigma
    "İ", "İstanbul KIRIKKALE i\u0307 ǅ ǈ ẞ ﬁ",  # U+0130 lowers to 'i' + U+0307
    "Straße İzmir ΟΔΥΣΣΕΥΣ Москва ԱՐԱՐԱՏ 東京 Ⅻ Ⓐ 𐐀𐐁 𞤀 Ꞌ ꭰ ǰ",
]


def test_fast_lowering_is_str_lower(corpus_docs, monkeypatch):
    """``_lower`` (``pc.utf8_lower`` but for the documents with a special code point) is ``str.lower()``."""
    def check(texts):
        got = K._lower(pa.array(texts, pa.large_string())).to_pylist()
        bad = [t for t, g in zip(texts, got) if g != t.lower()]
        assert not bad, [f"U+{ord(t):04X}" if len(t) == 1 else t[:40] for t in bad[:10]]
    singles = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    for i in range(0, len(singles), 1 << 16):
        check(singles[i:i + (1 << 16)])
    check(MIXED_CASE + TRICKY)
    check([d for d in corpus_docs if not d.isascii()])
    # _prepare places the lowered non-ASCII documents (Python-lowered ones included) in data1
    texts = [None, "ΟΔΟΣ Ab", "AbC", "Éa", "İ", ""]
    data0, data1, starts, ends, which = K._prepare(pa.array(texts))
    got = [bytes((data1 if w else data0)[s:e]) for s, e, w in zip(starts, ends, which)]
    assert got == [b""] + [(t if t.isascii() else t.lower()).encode() for t in texts[1:]]
    # the test has teeth: without the special code points, utf8_lower alone gets these wrong
    assert K._lower_special()[[0x130, 0x3A3]].all()
    monkeypatch.setattr(K, "_LOWER_SPECIAL", np.zeros_like(K._lower_special()))
    assert K._lower(pa.array(["ΟΔΟΣ", "İ"])).to_pylist() != ["ΟΔΟΣ".lower(), "İ".lower()]


def test_validation():
    arr = pa.array(["a b"])
    lr = np.zeros((1, 10))
    with pytest.raises(ValueError, match="n must be"):
        K.score_batch(arr, lr, n=0)
    with pytest.raises(ValueError, match="hash_kind"):
        K.score_batch(arr, lr, hash_kind="md5")
    with pytest.raises(ValueError, match="seed"):
        K.score_batch(arr, lr, seed=2**32)
    with pytest.raises(ValueError, match="seed"):
        K.score_batch(arr, lr, seed=-1)
    with pytest.raises(ValueError, match="num_buckets"):
        K.score_batch(arr, np.zeros((1, 0)))
    with pytest.raises(ValueError, match="log_ratios"):
        K.score_batch(arr, np.zeros(10))
    with pytest.raises(ValueError, match="groups"):
        K.count_batch(arr, np.array([3]), np.zeros((2, 10), np.int64))
    with pytest.raises(ValueError, match="counts"):
        K.count_batch(arr, np.array([0]), np.zeros((2, 10), np.int32))
    with pytest.raises(TypeError):
        K.score_batch(pa.array([1, 2]), lr)


@pytest.mark.parametrize("hash_kind", K.HASH_KINDS)
def test_encoded_features_reproduce_counts_and_weights(corpus_docs, hash_kind):
    """features_batch once, then score_features / count_features, equals tokenizing twice."""
    docs = TRICKY + corpus_docs + [None, "x" * 200_000]  # > 64 KB of output grows the buffer
    arr = pa.chunked_array([pa.array(docs[:40], pa.large_string()), pa.array(docs[40:], pa.large_string())])
    lr = np.random.default_rng(1).normal(size=(3, 997))
    feats, nf, nw = K.features_batch(arr, 997, n=2, seed=7, hash_kind=hash_kind)
    weights, words = K.score_batch(arr, lr, n=2, seed=7, hash_kind=hash_kind)
    np.testing.assert_allclose(K.score_features(feats, lr), weights, rtol=1e-12, atol=1e-9)
    assert nw.tolist() == words.tolist()
    groups = np.arange(len(docs)) % 2
    expect = np.zeros((2, 997), np.int64)
    nf2, _ = K.count_batch(arr, groups, expect, n=2, seed=7, hash_kind=hash_kind)
    got = np.zeros((2, 997), np.int64)
    K.count_features(feats, groups, got)
    np.testing.assert_array_equal(got, expect)
    assert nf.tolist() == nf2.tolist()
    assert len(feats[len(docs) - 2].as_py()) == 0  # a null document has empty features


# ---------------------------------------------------------------------------------------------
# Quality statistics and the n-gram sample, against their pure-Python oracles.

STAT_DOCS = TRICKY + [
    "the the the 12 34 a5 \u0661\u0662\u0663 x\u00b2 ok . . , 2024",  # ASCII and Arabic-Indic digits are numeric
    "The THE tHe cat, the CAT!",  # repetition is case-insensitive, like the n-grams
    "don't won't isn't",  # apostrophes split: don ' t -> 'don' and 't' are stopwords
    "a b " + "Q" * 10000 + " c the a",  # a long token: scratch grows mid-document
    " ".join(f"w{i}" for i in range(5000)) + " w5 w5",  # 5,000 distinct tokens: the token table grows
    None,
]


@pytest.mark.parametrize("hash_kind", K.HASH_KINDS)
def test_quality_stats_match_the_oracle(corpus_docs, hash_kind):
    docs = STAT_DOCS + corpus_docs
    feats, nf, nw, stats = K.features_batch(pa.chunked_array([pa.array(docs[:30]), pa.array(docs[30:])]), 997,
                                            seed=5, hash_kind=hash_kind, stats=True)
    assert stats.shape == (len(docs), 3)
    for i, doc in enumerate(docs):
        assert (nw[i], *stats[i]) == (K.oracle_stats(doc) if doc is not None else (0, 0, 0, 0)), repr((doc or "")[:60])
    # the statistics ride along: the features themselves are unchanged
    plain, nf2, nw2 = K.features_batch(pa.array(docs), 997, seed=5, hash_kind=hash_kind)
    assert plain.equals(feats) and nf.tolist() == nf2.tolist() and nw.tolist() == nw2.tolist()


def test_quality_stats_by_hand():
    words, top, informative, numeric = K.oracle_stats("The cat and THE dog: 42 cats, 7 dogs!")
    # the cat and the dog : 42 cats , 7 dogs !
    assert (words, top, informative, numeric) == (12, 2, 6, 2)
    _, _, _, stats = K.features_batch(pa.array(["The cat and THE dog: 42 cats, 7 dogs!"]), 97, stats=True)
    assert stats.tolist() == [[2, 6, 2]]


@pytest.mark.parametrize("hash_kind", K.HASH_KINDS)
def test_ngram_sample_is_the_bottom_k_of_the_oracle(corpus_docs, hash_kind):
    docs = STAT_DOCS + corpus_docs
    hashes = np.random.default_rng(3).integers(-(1 << 63), (1 << 63) - 1, len(docs), dtype=np.int64)  # signed, like Spark's
    B, k = 101, 3
    expect = oracle_sample(docs, hashes, B, k, hash_kind)
    sample = K.NgramSample(B, k)
    sample.arena = np.zeros(64, np.uint8)  # tiny: the arena must be compacted and grown
    counts = np.zeros((1, B), np.int64)
    K.count_batch(pa.array(docs), np.zeros(len(docs), np.int64), counts, hash_kind=hash_kind, sample=sample,
                  doc_hashes=hashes)
    assert sample.as_dict() == expect
    assert sample.arena.shape[0] > 64
    # every kept n-gram really hashes into its bucket, and the counts are the plain ones
    for bucket, grams in sample.as_dict().items():
        assert all(K.oracle_bucket(g, B, 0, hash_kind) == bucket for g in grams)
    plain = np.zeros((1, B), np.int64)
    K.count_batch(pa.array(docs), np.zeros(len(docs), np.int64), plain, hash_kind=hash_kind)
    np.testing.assert_array_equal(counts, plain)
    # mergeable: two halves, each with its own sample, keep the same n-grams as one sample of all
    halves = [K.NgramSample(B, k), K.NgramSample(B, k)]
    for half, part in zip(halves, (slice(0, 100), slice(100, None))):
        K.count_batch(pa.array(docs[part]), np.zeros(len(docs[part]), np.int64), np.zeros((1, B), np.int64),
                      hash_kind=hash_kind, sample=half, doc_hashes=hashes[part])
    merged: dict[int, dict[str, int]] = {}
    for half in halves:
        for bucket, key, gram in zip(*half.rows()):
            kept = merged.setdefault(int(bucket), {})
            kept[gram] = min(int(key), kept.get(gram, int(key)))
    assert bottom_k(merged, k) == expect


def test_ngram_sample_prefers_frequent_ngrams():
    """An n-gram that occurs c times comes first c times as often as one that occurs once."""
    docs = ["alpha " * 9 + "beta"]
    firsts = []
    for trial in range(400):
        sample = K.NgramSample(1, 1)
        K.count_batch(pa.array(docs), np.zeros(1, np.int64), np.zeros((1, 1), np.int64), n=1, sample=sample,
                      doc_hashes=np.array([trial * 7919], np.int64))
        firsts += sample.as_dict()[0]
    assert 0.8 < firsts.count("alpha") / len(firsts) < 0.97  # 9 of 10 occurrences
