"""KL reduction and the baselines side by side (``dsel evaluate``) on real data from the shared corpus.

Pool: 8 domains x 60 documents; for each target domain, 100 other documents of that domain are the
target; k = the eligible pool documents of the target domain (about 60), so random precision is
about 1/8.
"""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from pyspark.sql import functions as F

from dsel.cli import main
from dsel.config import DselConfig
from dsel.evaluate import EPSILON, distribution, histogram, kl, kl_reduction, kl_reductions
from dsel.evaluation import evaluate, format_table
from dsel.kernel import oracle_buckets
from dsel.read import prepare, read_input
from tests.conftest import held_out_pool, sample_docs, write_jsonl

POOL_DOMAINS = ["sci_abstracts", "movie_reviews", "rust_rfcs", "python_peps", "python_docs", "email_ham",
                "email_spam", "man_pages"]
TARGETS = ["sci_abstracts", "python_peps", "email_spam"]
PER_DOMAIN, TARGET_DOCS = 60, 100


# ------------------------------------------------------------------------------------- KL, numpy only
def test_kl_is_zero_on_itself_and_matches_a_hand_computation():
    p = np.array([3, 1, 0, 0])
    q = np.array([1, 1, 1, 1])
    assert kl(p, p) == pytest.approx(0.0, abs=1e-15)
    # add-one: p = (4, 2, 1, 1) / 8, q = uniform.
    ps = np.array([4, 2, 1, 1]) / 8
    assert kl(p, q) == pytest.approx(float(np.sum(ps * np.log(ps / 0.25))), rel=1e-12)
    # epsilon: p / N + 1e-8, renormalised; an empty q bucket costs log(p / 1e-8)-ish but stays finite.
    pe = (np.array([0.75, 0.25, 0, 0]) + EPSILON) / (1 + 4 * EPSILON)
    qe = (np.array([1.0, 0, 0, 0]) + EPSILON) / (1 + 4 * EPSILON)
    assert kl(p, np.array([5, 0, 0, 0]), "epsilon") == pytest.approx(float(np.sum(pe * np.log(pe / qe))), rel=1e-12)
    assert np.isfinite(kl(p, np.array([5, 0, 0, 0]), "epsilon"))
    assert distribution(np.zeros(3), "epsilon").sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        kl(p, np.ones(3))


def test_kl_reduction_is_positive_when_the_selection_moves_towards_the_targets():
    rng = np.random.default_rng(0)
    target = rng.multinomial(50_000, np.r_[np.full(50, 0.015), np.full(50, 0.005)])
    raw = rng.multinomial(50_000, np.full(100, 0.01))
    closer = rng.multinomial(50_000, np.r_[np.full(50, 0.014), np.full(50, 0.006)])
    assert kl_reduction(target, raw, closer) > 0.05
    assert kl_reduction(target, raw, raw) == pytest.approx(0.0, abs=1e-12)
    assert kl_reduction(target, raw, target) == pytest.approx(kl(target, raw), rel=1e-12)
    # Several targets: the mean of the per-target reductions.
    other = rng.multinomial(50_000, np.r_[np.full(50, 0.005), np.full(50, 0.015)])
    both = kl_reductions(np.stack([target, other]), raw, closer)
    assert both[1] < 0 < both[0]
    assert kl_reduction(np.stack([target, other]), raw, closer) == pytest.approx(np.mean(both))


def test_histogram_counts_every_ngram_like_the_oracle(spark, tmp_path):
    docs = sample_docs("python_peps", 5, seed=2, max_chars=3000) + [{"id": "empty", "text": ""},
                                                                   {"id": "null", "text": None}]
    path = write_jsonl(tmp_path / "docs.jsonl", docs)
    cfg = DselConfig.from_mapping({"raw": [path], "num_buckets": 512})
    hist = histogram(prepare(read_input(spark, [path], "auto", cfg, "raw"), cfg), cfg)
    expected = np.zeros(512, dtype=np.int64)
    for d in docs:
        for b in oracle_buckets(d["text"] or "", n=2, num_buckets=512):
            expected[b] += 1
    assert hist.shape == (512,)
    np.testing.assert_array_equal(hist, expected)


# ------------------------------------------------------------------------------ methods side by side
@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    raw, docs, targets = held_out_pool(root, POOL_DOMAINS, TARGETS, PER_DOMAIN, TARGET_DOCS)
    return {"root": root, "raw": raw, "docs": docs, "targets": targets}


@pytest.mark.parametrize("domain", TARGETS)
def test_dsir_beats_random_and_the_classifier_filter_is_in_the_table(spark, pool, domain, capsys, record_property):
    if domain == TARGETS[0]:
        # Once through the command line: the same table, printed, as JSON, and as Delta tables under --out.
        out_json, out = pool["root"] / f"{domain}.json", pool["root"] / "eval-out"
        assert main(["evaluate", "--raw", pool["raw"], "--target", pool["targets"][domain], "--label-column",
                     "domain", "--target-label", domain, "--seed", "0", "--json", str(out_json),
                     "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "precision@k" in printed and "heuristic-classification" in printed
        # what it read of the pool and the target, as dsel run's summary says it
        assert f"\n  pool read   {len(pool['docs']):>12,}\n  target read {TARGET_DOCS:>12,}\n" in printed
        result = json.loads(out_json.read_text())
        assert result["pool_records"] == {"read": len(pool["docs"]), "skipped": {}}
        _check_evaluation_tables(spark, out, result, printed, domain)
    else:
        cfg = DselConfig.from_mapping({"raw": [pool["raw"]], "target": [pool["targets"][domain]], "seed": 0})
        result = evaluate(spark, cfg, "domain", domain)
        print(format_table(result))
    rows = result["methods"]
    record_property("evaluate", {m: {"precision": r["precision"], "kl_reduction": r["kl_reduction"]}
                                 for m, r in rows.items()})
    in_pool = sum(d["domain"] == domain for d in pool["docs"])
    assert 0 < result["k"] <= in_pool
    assert set(rows) == {"random", "dsir-gumbel", "dsir-topk", "heuristic-classification",
                         "heuristic-classification-topk"}
    assert all(r["selected"] == result["k"] for r in rows.values())
    # DSIR: far above random in precision, and closer to the target in n-gram space.
    assert rows["random"]["precision"] < 0.3
    for method in ("dsir-gumbel", "dsir-topk"):
        assert rows[method]["precision"] >= 0.75
        assert rows[method]["precision"] >= rows["random"]["precision"] + 0.5
        assert rows[method]["kl_reduction"] > rows["random"]["kl_reduction"] + 0.05
        assert rows[method]["kl_reduction"] > 0
    # The classifier baseline works too (it is a real baseline, not a stub).
    assert rows["heuristic-classification"]["precision"] >= rows["random"]["precision"] + 0.3
    assert rows["heuristic-classification-topk"]["precision"] >= rows["random"]["precision"] + 0.3


def _check_evaluation_tables(spark, out, result, printed, domain):
    """OUT/evaluation/selected: one table, the same columns for every method, k rows each, and the
    precision recomputed from it is the printed one; OUT/evaluation/results holds the printed table."""
    from delta.tables import DeltaTable

    selected_path, results_path = out / "evaluation" / "selected", out / "evaluation" / "results"
    assert DeltaTable.isDeltaTable(spark, str(selected_path)) and DeltaTable.isDeltaTable(spark, str(results_path))
    table = spark.read.format("delta").load(str(selected_path))
    # the raw columns, then the columns of OUT/selected, then the method and its score
    assert table.columns == ["domain", "id", "text", "num_words", "log_weight", "rank", "target", "run_id",
                             "method", "method_score"]
    methods = result["methods"]
    per_method = {m: spark.read.format("delta").load(str(selected_path)).where(F.col("method") == m)
                  for m in methods}
    assert len({tuple((f.name, f.dataType.simpleString()) for f in df.schema.fields)
                for df in per_method.values()}) == 1
    lines = {line.split()[0]: line.split() for line in printed.splitlines() if line.strip().split()[:1] and
             line.split()[0] in methods}
    for method, rows in per_method.items():
        assert rows.count() == result["k"] == rows.select("id").distinct().count()
        assert sorted(r["rank"] for r in rows.collect()) == list(range(1, result["k"] + 1))
        assert rows.where(" OR ".join(f"{c} IS NULL" for c in table.columns if c != "domain")).count() == 0
        precision = rows.where(F.col("domain") == domain).count() / result["k"]
        assert precision == pytest.approx(methods[method]["precision"], abs=1e-12)
        assert f"{precision:.3f}" == lines[method][1]
    assert table.select("run_id").distinct().count() == 1
    results = {r["method"]: r for r in spark.read.format("delta").load(str(results_path)).collect()}
    assert set(results) == set(methods)
    for method, row in results.items():
        assert row["precision"] == pytest.approx(methods[method]["precision"], abs=1e-12)
        assert row["kl_reduction"] == pytest.approx(methods[method]["kl_reduction"], abs=1e-12)
        assert row["k"] == result["k"] and row["run_id"] == result["run_id"]


def test_baselines_have_the_selection_columns_and_are_seeded(spark, pool):
    from dsel.baselines import COLUMNS, random_selection
    from dsel.featurize import features
    from dsel.fit import fit
    from dsel.pipeline import read_raw, read_targets
    from dsel.score import score, weights

    cfg = DselConfig.from_mapping({"raw": [pool["raw"]], "target": [pool["targets"]["python_peps"]]})
    raw = read_raw(spark, cfg)
    feats = features(raw, cfg)
    w = weights(score(feats, fit(feats, read_targets(spark, cfg), cfg))).cache()
    a = random_selection(w, 40, seed=1)
    assert tuple(a.columns) == COLUMNS
    ids = [r["id"] for r in a.orderBy("rank").collect()]
    assert len(set(ids)) == 40
    assert ids == [r["id"] for r in random_selection(w.repartition(3), 40, seed=1).orderBy("rank").collect()]
    assert set(ids) != {r["id"] for r in random_selection(w, 40, seed=2).collect()}
    assert a.where(F.col("num_words") < 100).count() == 0
    # Uniform over the pool: every domain shows up in a random 40 of 8 x 60.
    domains = Counter(i.split("/")[0] for i in ids)
    assert len(domains) >= 6
    w.unpersist()


def test_evaluate_refuses_an_out_it_does_not_own_before_any_work(pool, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not dsel's")
    assert main(["evaluate", "--raw", pool["raw"], "--target", pool["targets"]["python_peps"], "--label-column",
                 "domain", "--target-label", "python_peps", "--out", str(foreign)]) == 2
    assert "which dsel did not write" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    # a --json path that is a directory is told before the evaluation, not after it
    assert main(["evaluate", "--raw", pool["raw"], "--target", pool["targets"]["python_peps"], "--label-column",
                 "domain", "--target-label", "python_peps", "--out", str(tmp_path / "o"), "--json",
                 str(foreign)]) == 2
    assert "--json" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_evaluate_gives_the_targets_their_proportions(spark, pool, tmp_path):
    """--target-proportions 0 1: every DSIR pick goes to the second target (they were split by size)."""
    cfg = DselConfig.from_mapping({"raw": [pool["raw"]], "out": str(tmp_path / "o"), "target_proportions": [0, 1],
                                   "target": [pool["targets"]["sci_abstracts"], pool["targets"]["python_peps"]]})
    evaluate(spark, cfg, "domain", "python_peps", methods=["dsir-topk"], k=20)
    picks = spark.read.format("delta").load(str(tmp_path / "o" / "evaluation" / "selected"))
    assert {r["target"]: r["n"] for r in picks.groupBy("target").agg(F.count("*").alias("n")).collect()} == {
        pool["targets"]["python_peps"]: 20}


def test_evaluate_refuses_a_k_beyond_the_eligible_documents(pool, tmp_path, capsys):
    """Every method would take the whole pool, and precision@k would be hits / k of nothing chosen."""
    assert main(["evaluate", "--raw", pool["raw"], "--target", pool["targets"]["python_peps"], "--label-column",
                 "domain", "--target-label", "python_peps", "--out", str(tmp_path / "o"), "--k", "1000000"]) == 2
    assert "eligible raw documents; give --k at most" in capsys.readouterr().err
