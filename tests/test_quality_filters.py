"""The optional quality filters of the DSIR paper, on crafted documents with known ratios, through the real pipeline.

Every crafted document has 120 words (tokens, as num_words counts them) unless it is meant to fail
a length filter, and fails at most one filter at the paper's thresholds (max_length 500, repetition
ratio 0.2, informative ratio 0.3, numeric ratio 0.2); the test checks that design with the
pure-Python oracle first, then checks that the pipeline makes exactly those documents ineligible and
counts them in the summary and the run table.
"""
from __future__ import annotations

import json

import pytest
from pyspark.sql import functions as F

from dsel import kernel as K
from dsel.config import QUALITY_FILTERS, DselConfig
from dsel.errors import DselError
from dsel.pipeline import execute
from tests.conftest import write_jsonl

PAPER = {"max_length": 500, "max_repetition_ratio": 0.2, "min_informative_ratio": 0.3, "max_numeric_ratio": 0.2}
CONTENT = ("river mountain lantern harvest meadow granite compass orchard violin canyon glacier falcon harbor "
           "prairie thunder willow beacon quarry saddle timber anchor blossom cavern dune ember fjord grove "
           "hollow island jungle kettle lagoon marble nectar oasis pebble quartz reef summit tundra valley "
           "walnut yarrow zephyr basalt cedar delta estuary fossil garnet heron iris juniper kelp lichen "
           "magnet nebula opal pylon quiver raven sierra tulip umber vortex wren xylem yucca").split()
STOP = ("the of and to in a is that it with as for on at by from this be are was but or not have has "
        "had do does").split()


def _doc(words: int, content: int, stop: int, numbers: int = 0, repeat: int = 0, shift: int = 0) -> str:
    """``words`` tokens in blocks of 10: ``content`` content words (``repeat`` of them the word 'data'),
    ``numbers`` digit-only words, ``stop`` stopwords and punctuation for the rest (one '.' per block)."""
    out, c, s, n = [], shift, 0, 0
    for _ in range(words // 10):
        block = ["data"] * repeat + [CONTENT[(c + i) % len(CONTENT)] for i in range(content - repeat)]
        c += content - repeat
        block += [str(1000 + n + i) for i in range(numbers)]
        n += numbers
        block += [STOP[(s + i) % len(STOP)] for i in range(stop)]
        s += stop
        block += ["."] * (10 - len(block))
        out += block
    return " ".join(out)


def _corpus() -> list[dict]:
    kinds = {
        "good": lambda i: _doc(120, 6, 3, shift=7 * i),
        "long": lambda i: _doc(600, 6, 3, shift=7 * i),            # 600 words
        "repetitive": lambda i: _doc(120, 6, 3, repeat=3, shift=i),  # 'data' is 36 of 120 words: 0.3
        "stopwords": lambda i: _doc(120, 1, 8, shift=i),           # informative 12 of 120: 0.1
        "numeric": lambda i: _doc(120, 3, 3, numbers=3, shift=i),  # numeric 36 of 120: 0.3
        "short": lambda i: _doc(50, 6, 3, shift=i),                # 50 words < min_length 100
    }
    return [{"id": f"{kind}-{i}", "kind": kind, "text": make(i)} for kind, make in kinds.items()
            for i in range(8 if kind == "good" else 3)]


def _fails(text: str) -> set[str]:
    words, top, informative, numeric = K.oracle_stats(text)
    failed = {"min_length"} if words < 100 else set()
    failed |= {"max_length"} if words > PAPER["max_length"] else set()
    failed |= {"max_repetition_ratio"} if top / words > PAPER["max_repetition_ratio"] else set()
    failed |= {"min_informative_ratio"} if informative / words < PAPER["min_informative_ratio"] else set()
    failed |= {"max_numeric_ratio"} if numeric / words > PAPER["max_numeric_ratio"] else set()
    return failed


@pytest.fixture(scope="module")
def crafted(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("quality-filters")
    docs = _corpus()
    target = [{"id": f"t{i}", "text": _doc(120, 6, 3, shift=3 + 11 * i)} for i in range(5)]
    base = {"raw": [write_jsonl(root / "raw.jsonl", docs)], "target": [write_jsonl(root / "target.jsonl", target)],
            "out": str(root / "out"), "num_samples": 1000, "seed": 0}
    out = root / "out"
    # 1. No ratio filter: the statistics are not counted (null), and asking for a ratio filter then
    #    fails with a message that names the fix.
    plain = execute(spark, DselConfig.from_mapping(base), "run")
    nulls = spark.read.format("delta").load(str(out / "weights")).where(F.col("top_word_count").isNull()).count()
    with pytest.raises(DselError) as refused:
        execute(spark, DselConfig.from_mapping({**base, "max_numeric_ratio": 0.2}), "select")
    # 2. A run with a ratio filter featurizes again, with them; 3. a later run without one keeps them.
    with_filter = execute(spark, DselConfig.from_mapping({**base, "min_informative_ratio": 0.0}), "run")
    summary = execute(spark, DselConfig.from_mapping(base), "run")
    return {"docs": docs, "base": base, "out": out, "run": summary, "plain": plain, "nulls": nulls,
            "refused": str(refused.value), "with_filter": with_filter}


def _select(spark, crafted, **filters):
    cfg = DselConfig.from_mapping({**crafted["base"], **filters})
    summary = execute(spark, cfg, "select")
    ids = {r["id"] for r in spark.read.format("delta").load(str(crafted["out"] / "selected")).collect()}
    return summary, ids


def test_crafted_documents_have_the_designed_ratios():
    for doc in _corpus():
        expected = {"good": set(), "long": {"max_length"}, "repetitive": {"max_repetition_ratio"},
                    "stopwords": {"min_informative_ratio"}, "numeric": {"max_numeric_ratio"},
                    "short": {"min_length"}}[doc["kind"]]
        assert _fails(doc["text"]) == expected, doc["id"]


def test_statistics_are_counted_only_when_a_ratio_filter_needs_them(crafted):
    docs = len(crafted["docs"])
    assert crafted["plain"].featurized == docs and crafted["nulls"] == docs  # every weight row, no statistics
    assert "no quality statistics" in crafted["refused"] and "max_numeric_ratio" in crafted["refused"]
    assert "'dsel run'" in crafted["refused"] and "this filter" in crafted["refused"]
    assert crafted["with_filter"].featurized == docs  # featurized again, counting them
    assert crafted["run"].featurized == 0  # kept by a run that does not need them


def test_features_with_statistics_serve_runs_without_filters():
    from dsel.pipeline import _reusable

    plain = {"raw": ["r"], "ngrams": 2, "quality_stats": 0}
    counted = {**plain, "quality_stats": 1}
    assert _reusable(plain, plain) == plain and _reusable(counted, counted) == counted
    assert _reusable(counted, plain) == counted  # the statistics are extra: reused, and kept for appends
    assert _reusable(plain, counted) is None  # missing statistics: featurize again
    assert _reusable({**counted, "ngrams": 3}, plain) is None and _reusable(None, plain) is None


def test_weights_carry_the_statistics_of_the_featurize_pass(spark, crafted):
    weights = spark.read.format("delta").load(str(crafted["out"] / "weights"))
    texts = {d["id"]: d["text"] for d in crafted["docs"]}
    rows = weights.select("id", "num_words", "top_word_count", "informative_words", "numeric_words").collect()
    assert len(rows) == len(texts)
    for r in rows:
        assert (r["num_words"], r["top_word_count"], r["informative_words"], r["numeric_words"]) == \
            K.oracle_stats(texts[r["id"]]), r["id"]


def test_defaults_only_apply_min_length(spark, crafted):
    summary = crafted["run"]
    short = {d["id"] for d in crafted["docs"] if d["kind"] == "short"}
    assert summary.filtered == {"min_length": len(short)}
    assert summary.counts()["filtered"] == {"min_length": len(short)}
    assert summary.eligible == summary.selected == len(crafted["docs"]) - len(short)
    runs = spark.read.format("delta").load(str(crafted["out"] / "runs")).where(F.col("run_id") == summary.run_id)
    assert json.loads(runs.first()["counts"])["filtered"] == {"min_length": len(short)}


@pytest.mark.parametrize("name", QUALITY_FILTERS)
def test_each_filter_removes_exactly_the_documents_that_fail_it(spark, crafted, name):
    summary, ids = _select(spark, crafted, **{name: PAPER[name]})
    failing = {d["id"] for d in crafted["docs"] if name in _fails(d["text"])}
    short = {d["id"] for d in crafted["docs"] if d["kind"] == "short"}
    assert len(failing) == 3
    assert ids == {d["id"] for d in crafted["docs"]} - failing - short
    assert summary.filtered == {"min_length": 3, name: 3}
    runs = spark.read.format("delta").load(str(crafted["out"] / "runs")).where(F.col("run_id") == summary.run_id)
    assert json.loads(runs.first()["counts"])["filtered"] == {"min_length": 3, name: 3}
    assert "not eligible" in summary.format() and f"{name}=3" in summary.format()


def test_all_filters_together_and_the_default_selection_is_unchanged(spark, crafted):
    summary, ids = _select(spark, crafted, **PAPER)
    assert ids == {d["id"] for d in crafted["docs"] if d["kind"] == "good"}
    assert summary.filtered == {"min_length": 3, **{name: 3 for name in QUALITY_FILTERS}}
    assert summary.eligible == 8
    # Off by default: a top-k selection with the defaults is the old rule (num_words >= min_length only),
    # and equals one with every filter present but unable to bind.
    _, default_ids = _select(spark, crafted, num_samples=10, method="topk")
    weights = spark.read.format("delta").load(str(crafted["out"] / "weights"))
    old_rule = {r["id"] for r in weights.where("num_words >= 100").orderBy(F.desc("log_weight"), "id").limit(10)
                .collect()}
    assert default_ids == old_rule
    _, loose_ids = _select(spark, crafted, num_samples=10, method="topk", max_length=10 ** 6,
                           max_repetition_ratio=1.0, min_informative_ratio=0.0, max_numeric_ratio=1.0)
    assert loose_ids == default_ids
