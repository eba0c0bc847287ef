"""The target fit keeps real n-grams per bucket: distributed, the same on any partitioning, in both hash modes."""
from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from dsel import kernel as K
from dsel.config import DselConfig
from dsel.fit import NGRAMS_PER_BUCKET, Fit, fit_targets
from dsel.read import HASH, REASON, TEXT, prepare, read_input
from tests.conftest import oracle_sample, sample_docs, write_jsonl

BUCKETS = 2000


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = tmp_path_factory.mktemp("ngram-samples")
    docs = sample_docs("python_peps", 25, seed=3, max_chars=5000) + sample_docs("sci_abstracts", 25, seed=3)
    docs.append({"id": "twice", "text": docs[0]["text"]})  # a duplicate text: the same keys, no extra weight
    one = write_jsonl(root / "one.jsonl", docs)
    parts = [write_jsonl(root / "parts" / f"p{i}.jsonl", docs[i::3]) for i in range(3)]
    return {"docs": docs, "one": one, "parts": str(root / "parts"), "n_parts": len(parts)}


def _fit(spark, cfg, path):
    df = prepare(read_input(spark, [path], "auto", cfg, "target"), cfg)
    samples: list[dict[int, list[str]]] = []
    counts = fit_targets([("t", df)], cfg, samples)
    return df, counts[0], samples[0]


@pytest.mark.parametrize("hash_kind", K.HASH_KINDS)
def test_target_ngram_samples_are_the_oracles_bottom_k_on_any_partitioning(spark, target, hash_kind):
    cfg = DselConfig.from_mapping({"num_buckets": BUCKETS, "hash_kind": hash_kind})
    df, counts, sample = _fit(spark, cfg, target["one"])
    parts_df, parts_counts, parts_sample = _fit(spark, cfg, target["parts"])
    assert parts_df.rdd.getNumPartitions() >= 2
    np.testing.assert_array_equal(counts, parts_counts)
    assert sample == parts_sample
    # exactly the pure-Python oracle's sample, with Spark's content hashes as the document seeds
    rows = df.where(F.col(REASON).isNull()).select(TEXT, HASH).collect()
    expect = oracle_sample([r[TEXT] for r in rows], [r[HASH] for r in rows], BUCKETS, NGRAMS_PER_BUCKET, hash_kind)
    assert sample == expect
    # every non-empty bucket has min(3, its distinct n-grams) samples, each a real target n-gram hashing into it
    grams = {}
    for d in target["docs"]:
        for g, _ in K.oracle_ngrams(d["text"]):
            grams.setdefault(K.oracle_bucket(g, BUCKETS, 0, hash_kind), set()).add(g)
    assert set(sample) == set(np.flatnonzero(counts).tolist()) == set(grams)
    for bucket, kept in sample.items():
        assert len(kept) == min(NGRAMS_PER_BUCKET, len(grams[bucket])) == len(set(kept))
        assert set(kept) <= grams[bucket]
        assert all(K.oracle_bucket(g, BUCKETS, 0, hash_kind) == bucket for g in kept)


def test_log_ratio_table_stores_the_samples(spark, target):
    cfg = DselConfig.from_mapping({"num_buckets": BUCKETS})
    _, counts, sample = _fit(spark, cfg, target["one"])
    fitted = Fit(["t"], counts + 1, counts[None, :], cfg.fit_params(), target_ngrams=[sample])
    table = {r["bucket"]: r["ngrams"] for r in fitted.to_frame(spark).select("bucket", "ngrams").collect()}
    assert len(table) == BUCKETS
    assert all(table[b] == sample.get(b, []) for b in range(BUCKETS))
