"""Featurize: hashed n-gram counts per Arrow batch, run inside Spark tasks.

Each step is a ``DataFrame -> DataFrame`` function built on ``mapInArrow``: Spark hands each task
Arrow record batches of text, and the compiled kernel in :mod:`dsel.kernel` tokenizes and hashes a
whole batch in one call.  :func:`features` is the one pass over the raw text: it encodes each
document's sparse bucket counts (``OUT/features``), which :mod:`dsel.fit` sums and
:mod:`dsel.score` weighs without tokenizing again; :func:`target_histogram` (the targets, with
sample n-grams per bucket) and :func:`histograms` (the evaluation's groups) count text straight
into bucket histograms.  The pyarrow JSON reader (:mod:`dsel.jsonread`) runs
:func:`featurize_batch` on the blocks it parses.

Batch size is Spark's: ``spark.sql.execution.arrow.maxRecordsPerBatch`` and
``spark.sql.execution.arrow.maxBytesPerBatch`` bound the memory of a task
(see :func:`dsel.session.default_conf`).
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from dsel.config import DselConfig
from dsel.read import DETAIL, HASH, ID, REASON, SOURCE, TEXT

GROUP = "_dsel_group"
HISTOGRAM_SCHEMA = "group int, bucket int, count long"
#: Number of id-hash bins the raw fit cap counts by (see dsel.fit).
FIT_BINS = 64
#: Per-document quality statistics computed in the featurize pass (see dsel.kernel.oracle_stats).
STAT_COLUMNS = ("top_word_count", "informative_words", "numeric_words")
_STATS_SCHEMA = ", ".join(f"{c} long" for c in STAT_COLUMNS)
FEATURES_SCHEMA = (f"{ID} string, {HASH} long, num_words long, num_features long, features binary, "
                   f"skip_reason string, source_file string, detail string, fit_bin int, {_STATS_SCHEMA}")
#: Where a record's line is in its raw file (the pyarrow reader's features; null for Spark's reader).
LINE_COLUMNS = ("line_start", "line_length")
#: Where a document's line is: the weights carry these into the selection, which reads the line there.
LOCATION_COLUMNS = ("source_file", *LINE_COLUMNS)
SCORE_SCHEMA = (f"{ID} string, {HASH} long, num_words long, log_weights array<double>, "
                f"num_features long, skip_reason string, source_file string, detail string, {_STATS_SCHEMA}, "
                "line_start long, line_length long")
#: Rows of :func:`target_histogram`: bucket counts (ngram null) and the kept n-gram samples (count null).
NGRAM_SAMPLE_SCHEMA = "bucket int, count long, ngram string, key long"
#: The bucket of :func:`target_histogram`'s rows that count records by skip reason.
RECORDS_BUCKET = -1


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
        yield from _nonzero(counts)

    usable = df.where(F.col(REASON).isNull()).select(F.col(TEXT), group.cast("long").alias(GROUP))
    return (usable.mapInArrow(count_partition, HISTOGRAM_SCHEMA)
            .groupBy("group", "bucket").agg(F.sum("count").alias("count")))


def target_histogram(df: DataFrame, cfg: DselConfig, per_bucket: int) -> DataFrame:
    """Bucket counts of every usable document of ``df``, and a sample of the real n-grams of each bucket.

    Rows ``bucket, count, ngram, key``: one per non-empty bucket with its count (``ngram`` null),
    up to ``per_bucket`` per bucket with a sampled n-gram (``count`` null), and the records counted
    in the same pass: bucket -1, ``ngram`` the skip reason ("" for usable records; ``empty_text`` for a
    text without tokens, as :func:`featurize_batch` marks raw ones), ``count`` the
    records (see :data:`RECORDS_BUCKET`).  The sample is the
    bottom-k of :class:`dsel.kernel.NgramSample`, kept per task while counting (the same pass over
    the text) and merged across tasks by keeping, per bucket, the ``per_bucket`` n-grams with the
    smallest (key, n-gram): a frequency-weighted sample, the same on any partitioning, of bounded
    size (at most B x per_bucket rows per task and in the result).
    """
    n, buckets, seed, kind = cfg.ngrams, cfg.num_buckets, cfg.hash_seed, cfg.hash_kind

    def count_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from dsel import kernel

        counts = np.zeros((1, buckets), dtype=np.int64)
        sample = kernel.NgramSample(buckets, per_bucket)
        records: Counter = Counter()
        for batch in batches:
            reason = batch.column(2)
            seen = pc.value_counts(pc.fill_null(reason, ""))
            records.update(dict(zip(seen.field("values").to_pylist(), seen.field("counts").to_pylist())))
            batch = batch.filter(pc.is_null(reason))
            _, words = kernel.count_batch(batch.column(0), np.zeros(batch.num_rows, np.int64), counts, n=n,
                                          seed=seed, hash_kind=kind, sample=sample,
                                          doc_hashes=batch.column(1).to_numpy(zero_copy_only=False).astype(np.int64))
            empty = int(np.count_nonzero(words == 0))  # a text with no tokens, as the raw side counts it
            if empty:
                records[""] -= empty
                records["empty_text"] += empty
        if records:
            yield pa.RecordBatch.from_arrays(
                [pa.array([RECORDS_BUCKET] * len(records), pa.int32()), pa.array(list(records.values()), pa.int64()),
                 pa.array(list(records), pa.string()), pa.nulls(len(records), pa.int64())],
                names=["bucket", "count", "ngram", "key"])
        for part in _nonzero(counts):
            yield pa.RecordBatch.from_arrays(
                [part.column(1), part.column(2), pa.nulls(part.num_rows, pa.string()),
                 pa.nulls(part.num_rows, pa.int64())], names=["bucket", "count", "ngram", "key"])
        bucket, key, grams = sample.rows()
        if len(grams):
            yield pa.RecordBatch.from_arrays(
                [pa.array(bucket), pa.nulls(len(grams), pa.int64()), pa.array(grams, pa.string()), pa.array(key)],
                names=["bucket", "count", "ngram", "key"])

    merged = (df.select(F.col(TEXT), F.col(HASH), F.col(REASON)).mapInArrow(count_partition, NGRAM_SAMPLE_SCHEMA)
              .groupBy("bucket", "ngram").agg(F.sum("count").alias("count"), F.min("key").alias("key")))
    order = Window.partitionBy("bucket", F.col("ngram").isNull()).orderBy("key", "ngram")
    kept = F.col("ngram").isNull() | (F.col("bucket") == RECORDS_BUCKET) | (F.col("_dsel_r") <= per_bucket)
    return merged.withColumn("_dsel_r", F.row_number().over(order)).where(kept).drop("_dsel_r")


def features(df: DataFrame, cfg: DselConfig, stats: Optional[bool] = None) -> DataFrame:
    """The one pass over the raw text: each record's encoded sparse n-gram counts.

    One row per input record: ``_dsel_id``, ``_dsel_hash``, ``num_words``, ``num_features``,
    ``features`` (binary, see :func:`dsel.kernel.features_batch`; empty for unusable records),
    ``skip_reason``, ``source_file``, ``detail``, ``fit_bin`` (the id-hash bin the raw fit
    cap counts by, see :mod:`dsel.fit`) and the quality statistics :data:`STAT_COLUMNS` (null unless
    ``stats``, by default ``cfg.quality_stats``: counting them costs ~20% of the pass).  Fitting and
    scoring then read these bytes, never the text again.  Records that :func:`dsel.read.prepare`
    marked unusable keep their reason; a usable text with no tokens gets ``empty_text``.
    """
    cfg_params = kernel_params(cfg, stats)

    def featurize_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        _inject_fault("featurize")
        for batch in batches:
            yield featurize_batch(*batch.columns, cfg_params)

    fit_bin = F.pmod(F.xxhash64(F.col(ID)), F.lit(FIT_BINS)).cast("int").alias("fit_bin")
    return df.select(ID, HASH, TEXT, REASON, SOURCE, DETAIL, fit_bin).mapInArrow(featurize_partition, FEATURES_SCHEMA)


def kernel_params(cfg: DselConfig, stats: Optional[bool] = None) -> tuple[int, int, int, str, bool]:
    """(num_buckets, ngrams, hash_seed, hash_kind, stats): what :func:`featurize_batch` needs, small enough
    for a closure; ``stats`` (whether to count the quality statistics) defaults to ``cfg.quality_stats``."""
    return cfg.num_buckets, cfg.ngrams, cfg.hash_seed, cfg.hash_kind, cfg.quality_stats if stats is None else stats


def featurize_batch(ids: pa.Array, hashes: pa.Array, texts: pa.Array, reasons: pa.Array, sources: pa.Array,
                    details: pa.Array, fit_bins: pa.Array, params: tuple[int, int, int, str, bool]) -> pa.RecordBatch:
    """One batch of :func:`features` rows (FEATURES_SCHEMA; the quality statistics null unless
    ``params`` asks for them) from the prepared columns of its records.

    ``texts`` is null for unusable records (``reasons`` says why); shared by Spark's reader path
    (:func:`features`) and the pyarrow reader (:mod:`dsel.jsonread`).
    """
    from dsel import kernel

    buckets, n, seed, kind, want_stats = params
    encoded, num_features, words, *counted = kernel.features_batch(texts, buckets, n=n, seed=seed, hash_kind=kind,
                                                                   stats=want_stats)
    stats = ([pa.array(counted[0][:, i]) for i in range(len(STAT_COLUMNS))] if want_stats
             else [pa.nulls(len(words), pa.int64())] * len(STAT_COLUMNS))
    empty = pa.array((words == 0) & ~np.asarray(texts.is_null(), dtype=bool))
    reasons = pc.if_else(pc.and_(reasons.is_null(), empty), pa.scalar("empty_text"), reasons)
    return pa.RecordBatch.from_arrays(
        [ids, hashes, pa.array(words), pa.array(num_features), encoded, reasons, sources, details, fit_bins,
         *stats],
        names=[ID, HASH, "num_words", "num_features", "features", "skip_reason", "source_file", "detail", "fit_bin",
               *STAT_COLUMNS])


def _inject_fault(stage: str) -> None:
    """Testing aid, set in the executors' environment, so that tests can check faults change nothing:

    * ``DSEL_FAULT_INJECTION=<stage>``: the first attempt of task 0 of that stage fails;
    * ``DSEL_FAULT_INJECTION=<stage>:stall``: the first attempt of every task of that stage writes a
      file into ``DSEL_FAULT_DIR`` and then sleeps ``DSEL_FAULT_STALL`` seconds (default 60), so a test
      can kill its executor mid-stage.
    """
    mode = os.environ.get("DSEL_FAULT_INJECTION", "")
    if mode not in (stage, f"{stage}:stall"):
        return
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None or ctx.attemptNumber() != 0:
        return
    if mode == stage and ctx.partitionId() == 0:
        raise RuntimeError(f"dsel fault injection: failing the first attempt of {stage} task 0")
    if mode.endswith(":stall"):
        import time

        marker = os.path.join(os.environ["DSEL_FAULT_DIR"], f"{stage}-{ctx.partitionId()}-{os.getpid()}")
        open(marker, "w").close()
        time.sleep(float(os.environ.get("DSEL_FAULT_STALL", "60")))


def _nonzero(counts: np.ndarray) -> Iterator[pa.RecordBatch]:
    groups, cells = np.nonzero(counts)
    if len(groups):
        yield pa.RecordBatch.from_arrays(
            [pa.array(groups.astype(np.int32)), pa.array(cells.astype(np.int32)), pa.array(counts[groups, cells])],
            names=["group", "bucket", "count"])
