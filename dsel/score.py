"""Score: each raw document's log importance weight and length, and the records that were skipped.

:func:`score` runs the kernel over the raw text (one pass) and keeps every record, usable or
not.  :func:`weights` and :func:`skipped` split that result: the weights table is keyed by id
(one row per id), and every record left out of it is in the skipped table with its reason.

When two usable records share an id, the one with the smaller content hash (then source file)
is kept and the others are skipped as ``duplicate_id``, the same choice on any partitioning.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from dsel.featurize import LOCATION_COLUMNS, STAT_COLUMNS, score_features
from dsel.fit import Fit
from dsel.read import HASH, ID


def score(raw_features: DataFrame, fit: Fit) -> DataFrame:
    """All raw records with ``log_weights``, ``num_words`` and ``skip_reason``.

    ``raw_features`` comes from :func:`dsel.featurize.features`: scoring decodes those bytes and
    never tokenizes the text again.
    """
    return score_features(raw_features, fit.log_ratios)


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
