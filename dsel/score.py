"""Score: each raw document's log importance weight and length, and the records that were skipped.

:func:`score` decodes the hashed n-gram counts of the featurize pass (``OUT/features``) and weighs
them with the log-ratio table: the text is not read or tokenized again.  For a features table the
pyarrow JSON reader wrote (:mod:`dsel.jsonread`), :func:`score_files` does the same in Python
workers that read the table's Parquet files themselves, and :func:`duplicates` finds the records
that share an id on the driver when they are few.  :func:`weights` and :func:`skipped` split the
score rows: the weights table is keyed by id (one row per id), and every record left out of it is
in the skipped table with its reason.

When two usable records share an id, the one with the smaller content hash (then source file)
is kept and the others are skipped as ``duplicate_id``, the same choice on any partitioning.

The log-ratio table travels to the executors inside the scoring function's closure (a few hundred
KB), which works on classic clusters, Databricks shared clusters and Spark Connect alike, where
``sparkContext.broadcast`` is not available.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from dsel.featurize import LINE_COLUMNS, LOCATION_COLUMNS, SCORE_SCHEMA, STAT_COLUMNS
from dsel.fit import Fit
from dsel.read import HASH, ID, parquet_files, parquet_parts, per_file


def score(raw_features: DataFrame, fit: Fit) -> DataFrame:
    """All raw records with ``log_weights``, ``num_words`` and ``skip_reason``.

    ``raw_features`` comes from :func:`dsel.featurize.features`: scoring decodes those bytes and
    never tokenizes the text again.
    """
    return score_features(raw_features, fit.log_ratios)


def score_features(feats: DataFrame, log_ratios: np.ndarray) -> DataFrame:
    """Score rows (the same columns as :func:`score`) from encoded features: no text, no tokenizing."""
    table = np.ascontiguousarray(log_ratios, dtype=np.float64)
    num_targets = table.shape[0]

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from dsel import kernel

        for batch in batches:
            weights = kernel.score_features(batch.column(2), table)
            yield pa.RecordBatch.from_arrays(
                [batch.column(0), batch.column(1), batch.column(3), _lists(weights, num_targets), batch.column(4),
                 batch.column(5), batch.column(6), batch.column(7), *batch.columns[8:]],
                names=[ID, HASH, "num_words", "log_weights", "num_features", "skip_reason", "source_file", "detail",
                       *STAT_COLUMNS, *LINE_COLUMNS])

    lines = [F.col(c) if c in feats.columns else F.lit(None).cast("long").alias(c) for c in LINE_COLUMNS]
    return (feats.select(ID, HASH, "features", "num_words", "num_features", "skip_reason", "source_file", "detail",
                         *STAT_COLUMNS, *lines)
            .mapInArrow(score_partition, SCORE_SCHEMA))


def _lists(weights: np.ndarray, num_targets: int) -> pa.Array:
    offsets = pa.array(np.arange(0, weights.shape[0] * num_targets + 1, num_targets, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(weights.reshape(-1)))


#: At most this many usable records sharing an id are settled on the driver (see :func:`duplicates`).
DUPLICATES_ON_DRIVER = 100_000


def duplicates(feats: DataFrame) -> Optional[list[tuple[str, str, int]]]:
    """(id, source_file, line_start) of each usable record of a features table the pyarrow JSON reader
    (:mod:`dsel.jsonread`) wrote that the weights table leaves out because another record has its id:
    of the records of one id, the one with the smallest (content hash, source file) is kept (as
    :func:`weights` keeps it;
    records equal in both are equal in text, and the first line is kept).

    The ids are grouped by their 64-bit hash, ``id_key`` (Spark's ``xxhash64`` of the id, stored by
    the featurize tasks; computed from the ids for a table written before it was): one aggregation
    of a long column, no strings read.  Only when some hash repeats are the records of those hashes
    read (a broadcast semi-join) and compared by their ids on the driver.  On the 16 GB benchmark's
    features (6.2M records, 13,700 duplicates) this takes 5.1 s in a warm session, against 7.1-7.4 s
    hashing the ids in the query and collecting under limits.
    None when those records are more than :data:`DUPLICATES_ON_DRIVER` (counted before any is
    read), so that the driver's memory stays bounded."""
    key = F.col("id_key") if "id_key" in feats.columns else F.xxhash64(ID)
    usable = feats.where(F.col("skip_reason").isNull())
    # Counted before anything is collected, from a cache of the (few) repeated keys: a limit (on the
    # keys or on the records) would make Spark run the partitions one, then four, then twenty... at a time.
    repeated = usable.groupBy(key.alias("_dsel_k")).count().where(F.col("count") > 1).persist()
    try:
        keys, records = repeated.agg(F.count(F.lit(1)), F.sum("count")).first()
        if not keys:
            return []
        if records > DUPLICATES_ON_DRIVER:
            return None
        rows = (usable.select(ID, HASH, "source_file", "line_start", key.alias("_dsel_k"))
                .join(F.broadcast(repeated.select("_dsel_k")), "_dsel_k", "left_semi").drop("_dsel_k").collect())
    finally:
        repeated.unpersist()
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(r[ID], []).append(r)
    order = lambda r: (r[HASH], r["source_file"] is not None, r["source_file"] or "", r["line_start"])  # noqa: E731
    return [(r[ID], r["source_file"], int(r["line_start"])) for group in groups.values() if len(group) > 1
            for r in sorted(group, key=order)[1:]]


def score_files(spark: SparkSession, feats: DataFrame, log_ratios: np.ndarray,
                drop: Sequence[tuple[str, str, int]] = ()) -> Optional[DataFrame]:
    """The score rows (SCORE_SCHEMA) of the usable records of a features table the pyarrow JSON reader
    wrote and :func:`dsel.jsonread.check` passed unchanged, decoded by the Python workers straight
    from its Parquet files: the JVM neither reads nor ships the encoded features.  The records
    ``drop`` names (id, source_file, line_start; see :func:`duplicates`) are left out.  None when
    Delta table defaults (deletion vectors, column mapping) could make the files differ from the
    table."""
    files = parquet_files(spark, feats)
    if files is None:
        return None
    return per_file(spark, files, score_files_function(files, log_ratios, drop), SCORE_SCHEMA)


def score_files_function(files: list[str], log_ratios: np.ndarray, drop: Sequence[tuple[str, str, int]] = ()):
    """The mapInArrow function of :func:`score_files`: each input row is the index of a file of ``files``."""
    table = np.ascontiguousarray(log_ratios, dtype=np.float64)
    columns = [ID, "_dsel_hash", "num_words", "num_features", "skip_reason", "source_file", "detail", "features",
               *STAT_COLUMNS, *LINE_COLUMNS]
    dropped = pa.array([f"{source}\0{start}" for _, source, start in drop], pa.string())

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from dsel import kernel

        for part in parquet_parts(files, batches, columns):
            usable = part.column(4).is_null()
            if len(dropped):
                where = pc.binary_join_element_wise(part.column(5), pc.cast(part.column("line_start"), pa.string()),
                                                    "\0")
                usable = pc.and_(usable, pc.invert(pc.fill_null(pc.is_in(where, dropped), False)))
            part = part.filter(usable)
            if not part.num_rows:
                continue
            weights = kernel.score_features(part.column(7), table)
            yield pa.RecordBatch.from_arrays(
                [part.column(0), part.column(1), part.column(2), _lists(weights, table.shape[0]),
                 part.column(3), part.column(4), part.column(5), part.column(6),
                 *[part.column(c) for c in STAT_COLUMNS], *[part.column(c) for c in LINE_COLUMNS]],
                names=[ID, "_dsel_hash", "num_words", "log_weights", "num_features", "skip_reason",
                       "source_file", "detail", *STAT_COLUMNS, *LINE_COLUMNS])

    return run

def _winners(scored: DataFrame) -> DataFrame:
    """Per usable id: how many records carry it and the one kept (smallest content hash, then source).

    One hash aggregation (``min_by``), no sort: cheaper than a window over all rows.
    """
    usable = scored.where(F.col("skip_reason").isNull())
    order = F.struct(F.col(HASH), F.col("source_file"))
    kept = F.struct(HASH, "num_words", "log_weights", *STAT_COLUMNS, *LOCATION_COLUMNS)
    return usable.groupBy(ID).agg(F.count("*").alias("_dsel_n"), F.min_by(kept, order).alias("_dsel_keep"))


#: The weights table's columns, each with the score column it comes from (``log_weight``: None, the
#: largest of ``log_weights``).
_WEIGHTS_FROM = (("id", ID), ("doc_hash", HASH), ("num_words", "num_words"), ("log_weight", None),
                 ("log_weights", "log_weights"), *((c, c) for c in (*STAT_COLUMNS, *LOCATION_COLUMNS)))


def _weight_columns(field: Callable[[str], Column]) -> list[Column]:
    def column(source: Optional[str]) -> Column:
        if source is None:
            return F.array_max(field("log_weights"))
        return F.col(ID) if source == ID else field(source)  # the id: the grouping key, not a kept field

    return [column(source).alias(name) for name, source in _WEIGHTS_FROM]


def weights(scored: DataFrame) -> DataFrame:
    """One row per usable id: id, doc_hash, num_words, log_weight, log_weights and the quality statistics.

    ``log_weights`` has one entry per target; ``log_weight`` is that entry when there is one
    target, and the largest entry otherwise.  ``top_word_count``, ``informative_words`` and
    ``numeric_words`` come from the featurize pass (see :func:`dsel.kernel.oracle_stats`).
    ``source_file``, ``line_start`` and ``line_length`` say where the record's line is (the last two
    are null unless the pyarrow JSON reader featurized it), so that ``select`` reads back only the
    chosen lines without looking them up in the features table.
    """
    keep = F.col("_dsel_keep")
    return _winners(scored).select(*_weight_columns(lambda c: keep[c]))


def unique_weights(scored: DataFrame) -> DataFrame:
    """:func:`weights` of score rows already one per id (the duplicates settled before): no shuffle."""
    return scored.where(F.col("skip_reason").isNull()).select(*_weight_columns(F.col))


def unique_weights_batch(scored: pa.RecordBatch) -> pa.RecordBatch:
    """:func:`unique_weights` of a batch of usable score rows, in pyarrow (for the workers that write
    the weights themselves): the same columns in the same order."""
    per_target = pc.list_flatten(scored.column("log_weights")).to_numpy(zero_copy_only=False)
    top = pa.array(per_target.reshape(scored.num_rows, -1).max(axis=1) if scored.num_rows else np.empty(0))
    return pa.RecordBatch.from_arrays([top if source is None else scored.column(source) for _, source in _WEIGHTS_FROM],
                                      names=[name for name, _ in _WEIGHTS_FROM])


def skipped(scored: DataFrame, duplicates: Optional[DataFrame] = None) -> DataFrame:
    """Every record left out of the weights table: id, reason, source_file, detail.

    ``scored`` needs only the columns ``_dsel_id``, ``_dsel_hash``, ``skip_reason``, ``source_file``
    and ``detail``: the features table itself will do, with no decoding.  ``duplicates``: the
    ``duplicate_id`` rows when they are known already (else they are found here)."""
    unusable = scored.where(F.col("skip_reason").isNotNull()).select(
        F.col(ID).alias("id"), F.col("skip_reason").alias("reason"), "source_file", "detail")
    if duplicates is not None:
        return unusable.unionByName(duplicates)
    usable = scored.where(F.col("skip_reason").isNull())
    shared = usable.groupBy(ID).count().where(F.col("count") > 1).select(ID)
    # Only ids that occur more than once (usually few) are ordered; all but the kept record are skipped.
    first = Window.partitionBy(ID).orderBy(HASH, "source_file")
    duplicates = (usable.join(shared, ID).withColumn("_dsel_dup", F.row_number().over(first))
                  .where(F.col("_dsel_dup") > 1)
                  .select(F.col(ID).alias("id"), F.lit("duplicate_id").alias("reason"), "source_file",
                          F.lit(None).cast("string").alias("detail")))
    return unusable.unionByName(duplicates)
