"""Selection on synthetic weights: the large-k threshold path equals the plain top-k path exactly."""
from __future__ import annotations

import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from dsel import select as S
from dsel.write import parquet_writer, publish_parquet


@pytest.fixture(scope="module")
def weights(spark):
    # 12,000 documents, two targets, some exact ties in the weights (broken by id)
    return (spark.range(12_000).select(
        F.format_string("doc-%06d", "id").alias("id"), F.col("id").alias("doc_hash"),
        (F.col("id") % 400 + 50).alias("num_words"),
        F.array(F.round(F.sin("id") * 5, 1), F.cos("id") * 5).alias("log_weights")))


def _rows(selection):
    return [(r["target"], r["rank"], r["id"]) for r in selection.chosen.orderBy("target", "rank").collect()]


@pytest.mark.parametrize("method", ["gumbel", "topk"])
def test_threshold_selection_equals_plain_top_k(spark, weights, method, monkeypatch):
    args = dict(num_samples=3_600, seed=5, method=method, min_length=100)
    plain = _rows(S.select(weights, ["a", "b"], [2.0, 1.0], **args))
    monkeypatch.setattr(S, "SMALL_K", 300)
    monkeypatch.setattr(S, "RANK_BIN_ROWS", 400)
    large = _rows(S.select(weights, ["a", "b"], [2.0, 1.0], **args))
    assert len(plain) == 3_600 and len({r[2] for r in plain}) == 3_600
    assert large == plain
    assert [r[1] for r in plain if r[0] == "a"] == list(range(1, 2_401))


def test_token_budget_uses_the_same_order(spark, weights, monkeypatch):
    plain = S.select(weights, ["a"], [1.0], num_tokens=80_000, seed=1).chosen.orderBy("rank").collect()
    monkeypatch.setattr(S, "SMALL_K", 100)
    monkeypatch.setattr(S, "RANK_BIN_ROWS", 150)
    large = S.select(weights, ["a"], [1.0], num_tokens=80_000, seed=1).chosen.orderBy("rank").collect()
    assert [r["id"] for r in large] == [r["id"] for r in plain]
    words = [r["num_words"] for r in plain]
    assert sum(words) >= 80_000 > sum(words[:-1])
    # a budget beyond every eligible word takes them all, and says so, as a k beyond the documents does
    eligible = weights.where("num_words >= 100").agg(F.count("*"), F.sum("num_words")).first()
    everything = S.select(weights, ["a"], [1.0], num_tokens=10**12, seed=1)
    assert everything.chosen.count() == eligible[0]
    assert everything.warnings == [f"asked for {10**12:,} words but the {eligible[0]:,} eligible documents "
                                   f"(at least 100 words) hold only {eligible[1]:,}; selecting all {eligible[0]:,}"]
    # ... and with two targets the words there are go by the quotas, as documents do when k is beyond them
    both = S.select(weights, ["a", "b"], [2.0, 1.0], num_tokens=10**12, seed=1).chosen
    words = {r["target"]: (r["n"], r["w"]) for r in
             both.groupBy("target").agg(F.count("*").alias("n"), F.sum("num_words").alias("w")).collect()}
    assert words["a"][0] + words["b"][0] == eligible[0] and words["b"][0] > 0
    assert 2 * eligible[1] // 3 <= words["a"][1] < 2 * eligible[1] // 3 + 450  # its quota, and one document more


def test_noise_depends_only_on_seed_target_and_id(spark, weights):
    keyed = weights.select("id", S.gumbel(3, 0).alias("g"))
    again = weights.repartition(7).select("id", S.gumbel(3, 0).alias("g"))
    joined = keyed.join(again.withColumnRenamed("g", "g2"), "id")
    assert joined.where(F.col("g") != F.col("g2")).count() == 0
    # roughly standard Gumbel: mean ~ 0.5772, and another seed gives other noise
    mean = keyed.agg(F.avg("g")).first()[0]
    assert abs(mean - 0.5772) < 0.05
    other = weights.select("id", S.gumbel(4, 0).alias("g2")).join(keyed, "id")
    assert other.where(F.col("g") == F.col("g2")).count() < 10


def test_noise_stays_within_the_bounds_the_top_k_prunes_with(spark):
    # The smallest, the largest below u = 1, and the top bits (u rounds to 1: a null key, ordered last).
    row = spark.range(1).select(S._noise(F.lit(0)).alias("low"), S._noise(F.lit(2 ** 53 - 2)).alias("high"),
                                S._noise(F.lit(2 ** 53 - 1)).alias("top")).first()
    assert S.GUMBEL_MIN - 1e-9 <= row["low"] < S.GUMBEL_MIN + 1e-9
    assert 36 < row["high"] < S.GUMBEL_MAX and row["top"] is None


@pytest.mark.parametrize("method", ["gumbel", "topk"])
def test_key_bound_keeps_the_top_and_drops_the_rest(spark, method):
    # Weights spread like real ones (sums over hundreds of n-grams), two targets.
    wide = spark.range(12_000).select(
        F.format_string("doc-%06d", "id").alias("id"), F.col("id").alias("doc_hash"),
        (F.col("id") % 400 + 50).alias("num_words"),
        F.array(F.sin("id") * 300, F.cos(F.col("id") * 7) * 300).alias("log_weights"))
    counts = S.filter_counts(wide, 100)
    assert counts.eligible == wide.where("num_words >= 100").count()
    for target, pairs in enumerate(counts.top_weights):  # every stored count is exact
        assert [n for _, n in pairs] == sorted(n for _, n in pairs) and pairs[-1][1] >= 2_000
        for floor, n in pairs[::3]:
            assert wide.where(f"num_words >= 100 AND log_weights[{target}] >= {floor}").count() == n
    args = dict(num_samples=700, seed=5, method=method, min_length=100)
    bounded = _rows(S.select(wide, ["a", "b"], [2.0, 1.0], counts=counts, **args))
    plain = _rows(S.select(wide, ["a", "b"], [2.0, 1.0], counts=counts._replace(top_weights=[]), **args))
    assert len(plain) == 700 and bounded == plain
    # The first target's bound keeps its top 466 keys and drops most of the pool.
    bound = S._least_key(counts.top_weights, 0, method, 0, 466)
    keyed = S._keyed(S.eligible(wide, 100), 0, 5, method)
    kth = keyed.orderBy(*S._order()).limit(466).agg(F.min(S.KEY)).first()[0]
    assert bound <= kth and keyed.where(F.col(S.KEY) >= bound).count() < counts.eligible / 4


def _scanned_rows(df) -> int:
    """Rows the Parquet scans of ``df``'s last execution returned (Spark's numOutputRows of each scan)."""
    def walk(node) -> int:
        if "QueryStage" in node.nodeName():
            return walk(node.plan())
        if "Scan" in node.nodeName():
            return int(node.metrics().apply("numOutputRows").value())
        children = node.children()
        return sum(walk(children.apply(i)) for i in range(children.length()))
    plan = df._jdf.queryExecution().executedPlan()
    return walk(plan.executedPlan() if "AdaptiveSparkPlan" in plan.nodeName() else plan)


def test_top_k_reads_only_the_pages_of_a_weights_file_that_can_reach_the_bound(spark, tmp_path):
    # A Delta weights table as the scorer writes it (one file in descending log_weight), and the same
    # rows unordered: the same selection, but Parquet's page index lets the top-k skip most of the first.
    n = 100_000
    rows = spark.range(n).select(
        F.format_string("doc-%07d", "id").alias("id"), F.col("id").alias("doc_hash"),
        (F.col("id") % 400 + 50).alias("num_words"), F.array(F.sin("id") * 300).alias("log_weights")
    ).withColumn("log_weight", F.array_max("log_weights"))
    rows.coalesce(1).sortWithinPartitions(F.col("log_weight").desc()).write.format("delta").save(str(tmp_path / "s"))
    rows.coalesce(1).write.format("delta").save(str(tmp_path / "u"))
    # the same rows as the scoring workers write a new weights table: pyarrow, ordered, converted to Delta
    arrow = rows.toArrow()
    staging = tmp_path / "staging"
    staging.mkdir()
    narrow = arrow.set_column(2, "num_words", arrow.column(2).cast(pa.int32()))  # cast back to the schema's long
    writer = parquet_writer(lambda _: iter(narrow.to_batches(max_chunksize=7_000)), str(staging), arrow.schema,
                            order="log_weight", compression="snappy")
    assert [r["rows"] for r in (b.to_pylist()[0] for b in writer(iter([pa.record_batch({"task": [0]})])))] == [n]
    publish_parquet(spark, str(staging), str(tmp_path / "p"), {}, {"delta.dataSkippingNumIndexedCols": "0"})
    stored = spark.read.format("delta").load(str(tmp_path / "p"))
    assert stored.schema == spark.read.format("delta").load(str(tmp_path / "s")).schema
    picked = {}
    for name in ("s", "u", "p"):
        table = spark.read.format("delta").load(str(tmp_path / name))
        chosen = S.select(table, ["a"], [1.0], num_samples=300, seed=2, counts=S.filter_counts(table, 100)).chosen
        picked[name] = (sorted((r["rank"], r["id"]) for r in chosen.collect()), _scanned_rows(chosen))
    assert picked["s"][0] == picked["u"][0] and len(picked["s"][0]) == 300
    assert picked["u"][1] == n and picked["s"][1] <= n // 2, picked
    assert picked["p"][0] == picked["s"][0] and picked["p"][1] <= n // 2, picked
