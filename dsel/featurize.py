"""Featurize: hashed n-gram counts and weights per Arrow batch, run inside Spark tasks.

Both functions are ``DataFrame -> DataFrame`` steps built on ``mapInArrow``: Spark hands each
task Arrow record batches of text, and the compiled kernel in :mod:`dsel.kernel` tokenizes and
hashes a whole batch in one call.  The log-ratio table travels to the executors inside the
function's closure (a few hundred KB), which works on classic clusters, Databricks shared
clusters and Spark Connect alike, where ``sparkContext.broadcast`` is not available.

Batch size is Spark's: ``spark.sql.execution.arrow.maxRecordsPerBatch`` and
``spark.sql.execution.arrow.maxBytesPerBatch`` bound the memory of a task
(see :func:`dsel.session.default_conf`).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from dsel.config import DselConfig
from dsel.read import DETAIL, HASH, ID, REASON, SOURCE, TEXT

GROUP = "_dsel_group"
HISTOGRAM_SCHEMA = "group int, bucket int, count long"
SCORE_SCHEMA = (f"{ID} string, {HASH} long, num_words long, log_weights array<double>, "
                "num_features long, skip_reason string, source_file string, detail string")


def histograms(df: DataFrame, cfg: DselConfig, group: "F.Column", num_groups: int) -> DataFrame:
    """Hashed n-gram counts per (group, bucket), summed over every usable document of ``df``.

    ``df`` comes from :func:`dsel.read.prepare`; ``group`` is an int column in
    ``[0, num_groups)`` (a target index, or a hash bin of the id for the raw fit cap).
    Each task sums its batches into one dense array and emits only the non-zero cells;
    Spark then reduces them across tasks.
    """
    n, buckets, seed, kind = cfg.ngrams, cfg.num_buckets, cfg.hash_seed, cfg.hash_kind

    def count_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from dsel import kernel

        counts = np.zeros((num_groups, buckets), dtype=np.int64)
        for batch in batches:
            kernel.count_batch(batch.column(0), batch.column(1).to_numpy(zero_copy_only=False).astype(np.int64),
                               counts, n=n, seed=seed, hash_kind=kind)
        groups, cells = np.nonzero(counts)
        if len(groups):
            yield pa.RecordBatch.from_arrays(
                [pa.array(groups.astype(np.int32)), pa.array(cells.astype(np.int32)), pa.array(counts[groups, cells])],
                names=["group", "bucket", "count"])

    usable = df.where(F.col(REASON).isNull()).select(F.col(TEXT), group.cast("long").alias(GROUP))
    return (usable.mapInArrow(count_partition, HISTOGRAM_SCHEMA)
            .groupBy("group", "bucket").agg(F.sum("count").alias("count")))


def score(df: DataFrame, log_ratios: np.ndarray, cfg: DselConfig) -> DataFrame:
    """One row per input record: id, content hash, word count, one log weight per target, skip reason.

    ``log_ratios`` is the float64 ``[targets, buckets]`` table from :mod:`dsel.fit`.  Records that
    :func:`dsel.read.prepare` marked unusable keep their reason; a usable text with no tokens gets
    ``empty_text``.
    """
    table = np.ascontiguousarray(log_ratios, dtype=np.float64)
    n, seed, kind = cfg.ngrams, cfg.hash_seed, cfg.hash_kind
    num_targets = table.shape[0]

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from dsel import kernel

        for batch in batches:
            texts = batch.column(2)
            weights, words = kernel.score_batch(texts, table, n=n, seed=seed, hash_kind=kind)
            features = _num_features(words, n)
            reason = batch.column(3)
            empty = pa.array((words == 0) & ~np.asarray(texts.is_null(), dtype=bool))
            reason = pc.if_else(pc.and_(reason.is_null(), empty), pa.scalar("empty_text"), reason)
            offsets = pa.array(np.arange(0, len(words) * num_targets + 1, num_targets, dtype=np.int32))
            log_weights = pa.ListArray.from_arrays(offsets, pa.array(weights.reshape(-1)))
            yield pa.RecordBatch.from_arrays(
                [batch.column(0), batch.column(1), pa.array(words), log_weights, pa.array(features), reason,
                 batch.column(4), batch.column(5)],
                names=[ID, HASH, "num_words", "log_weights", "num_features", "skip_reason", "source_file", "detail"])

    return df.select(ID, HASH, TEXT, REASON, SOURCE, DETAIL).mapInArrow(score_partition, SCORE_SCHEMA)


def _num_features(words: np.ndarray, n: int) -> np.ndarray:
    """n-gram occurrences of a document with ``words`` tokens: sum over i<=n of max(0, words-i+1)."""
    return sum(np.maximum(words - i + 1, 0) for i in range(1, n + 1))
