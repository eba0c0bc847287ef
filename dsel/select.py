"""Select: the minimum-length filter and seeded Gumbel-top-k (or top-k) resampling, with quotas.

Sampling k documents without replacement with probability proportional to their importance
weights is done with the Gumbel-top-k trick: take the k largest ``log_weight + G``, where G is
standard Gumbel noise.  The noise of a document is a pure function of (seed, target index,
document id)::

    h = xxhash64(seed, target, id)            # Spark's xxhash64, the same on every executor
    u = ((h >>> 11) + 0.5) / 2**53            # uniform in (0, 1)
    G = -log(-log(u))

so a selection does not depend on partitioning, executor count or task retries.  Ties in the
key are broken by id.  With several targets the quotas follow the reference: ``int(k * p_t)``
for each target and the remainder to the last one; each target then takes its top documents
among those not chosen by an earlier target.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from dsel.errors import DselError

KEY = "_dsel_key"
SELECTED_COLUMNS = ("id", "doc_hash", "num_words", "log_weight", "rank", "target")


def gumbel(seed: int, target: int) -> F.Column:
    """Standard Gumbel noise from (seed, target, id), as in the module docstring."""
    bits = F.shiftrightunsigned(F.xxhash64(F.lit(seed).cast("long"), F.lit(target).cast("int"), F.col("id")), 11)
    uniform = (bits.cast("double") + F.lit(0.5)) / F.lit(float(2 ** 53))
    return -F.log(-F.log(uniform))


def eligible(weights: DataFrame, min_length: int) -> DataFrame:
    """Documents long enough to be selected (``num_words >= min_length``, as the reference)."""
    return weights.where(F.col("num_words") >= min_length)


def quotas(total: int, proportions: Sequence[float]) -> list[int]:
    """Split ``total`` by proportions like data-selection: floor each, the remainder to the last."""
    norm = [p / sum(proportions) for p in proportions]
    parts = [int(total * p) for p in norm]
    parts[-1] += total - sum(parts)
    return parts


@dataclass
class Selection:
    """The chosen documents (id, doc_hash, num_words, log_weight, rank, target) and what happened."""

    chosen: DataFrame
    requested: list[int]
    warnings: list[str] = field(default_factory=list)


def _keyed(pool: DataFrame, target: int, seed: int, method: str) -> DataFrame:
    weight = F.col("log_weights")[target]
    key = weight + gumbel(seed, target) if method == "gumbel" else weight
    return pool.withColumn("log_weight", weight).withColumn(KEY, key)


def _top(keyed: DataFrame, k: int) -> DataFrame:
    """The k rows with the largest key (ties by id), ranked 1..k."""
    order = [F.col(KEY).desc(), F.col("id").asc()]
    top = keyed.orderBy(*order).limit(k)
    return top.withColumn("rank", F.row_number().over(Window.orderBy(*order)))


def _top_tokens(keyed: DataFrame, budget: int, pool_size: int, mean_words: float) -> DataFrame:
    """Top documents until their words reach ``budget`` (the last one may cross it)."""
    guess = min(pool_size, int(math.ceil(budget / max(mean_words, 1.0) * 1.25)) + 16)
    while True:
        ranked = _top(keyed, guess)
        cumulative = F.sum("num_words").over(Window.orderBy("rank").rowsBetween(Window.unboundedPreceding, 0))
        ranked = ranked.withColumn("_dsel_before", cumulative - F.col("num_words"))
        enough = ranked.where(F.col("_dsel_before") >= budget).limit(1).count() > 0
        if enough or guess >= pool_size:
            return ranked.where(F.col("_dsel_before") < budget).drop("_dsel_before")
        guess = min(pool_size, guess * 2)


def select(weights: DataFrame, target_names: Sequence[str], proportions: Sequence[float], *,
           num_samples: Optional[int] = None, num_tokens: Optional[int] = None, seed: int = 0,
           method: str = "gumbel", min_length: int = 100) -> Selection:
    """Choose documents from the weights table (columns id, doc_hash, num_words, log_weights).

    Give exactly one of ``num_samples`` (exactly that many documents, or all eligible ones with
    a warning when fewer are eligible) and ``num_tokens`` (a budget of words).
    """
    if (num_samples is None) == (num_tokens is None):
        raise DselError("give exactly one of --num-samples or --num-tokens")
    if len(proportions) != len(target_names):
        raise DselError(f"{len(proportions)} target proportions for {len(target_names)} targets; "
                        "give one proportion per target")
    pool = eligible(weights, min_length).select("id", "doc_hash", "num_words", "log_weights")
    stats = pool.agg(F.count("*").alias("n"), F.avg("num_words").alias("mean")).first()
    available, mean_words = int(stats["n"]), float(stats["mean"] or 0.0)
    result = Selection(chosen=None, requested=[])  # type: ignore[arg-type]
    if num_samples is not None and num_samples > available:
        result.warnings.append(f"asked for {num_samples} documents but only {available} are eligible "
                               f"(at least {min_length} words); selecting all {available}")
        num_samples = available
    budgets = quotas(num_samples if num_samples is not None else num_tokens, proportions)  # type: ignore[arg-type]
    result.requested = budgets
    parts: list[DataFrame] = []
    taken = 0
    for t, (name, budget) in enumerate(zip(target_names, budgets)):
        remaining = available - taken
        if budget <= 0 or remaining <= 0:
            continue
        keyed = _keyed(pool, t, seed, method)
        if num_samples is not None:
            part = _top(keyed, min(budget, remaining))
        else:
            part = _top_tokens(keyed, budget, remaining, mean_words)
        part = part.select("id", "doc_hash", "num_words", "log_weight", "rank", F.lit(name).alias("target"))
        parts.append(part)
        if t < len(budgets) - 1:
            part_ids = part.select("id")
            taken += part_ids.count()
            pool = pool.join(part_ids, "id", "left_anti")
    if not parts:
        chosen = weights.sparkSession.createDataFrame(
            [], "id string, doc_hash long, num_words long, log_weight double, rank int, target string")
    else:
        chosen = parts[0]
        for part in parts[1:]:
            chosen = chosen.unionByName(part)
    result.chosen = chosen
    return result
