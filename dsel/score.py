"""Score: each raw document's log importance weight and length, and the records that were skipped.

:func:`score` runs the kernel over the raw text (one pass) and keeps every record, usable or
not.  :func:`weights` and :func:`skipped` split that result: the weights table is keyed by id
(one row per id), and every record left out of it is in the skipped table with its reason.

When two usable records share an id, the one with the smaller content hash (then source file)
is kept and the others are skipped as ``duplicate_id``, the same choice on any partitioning.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from dsel.config import DselConfig
from dsel.featurize import score as featurize_score
from dsel.fit import Fit
from dsel.read import HASH, ID

WEIGHTS_COLUMNS = ("id", "doc_hash", "num_words", "log_weight", "log_weights")
SKIPPED_COLUMNS = ("id", "reason", "source_file", "detail")


def score(raw: DataFrame, fit: Fit, cfg: DselConfig) -> DataFrame:
    """All raw records (from :func:`dsel.read.prepare`) with ``log_weights``, ``num_words`` and ``skip_reason``."""
    return featurize_score(raw, fit.log_ratios, cfg)


def _ranked(scored: DataFrame) -> DataFrame:
    first = Window.partitionBy(ID).orderBy(HASH, "source_file")
    return scored.where(F.col("skip_reason").isNull()).withColumn("_dsel_dup", F.row_number().over(first))


def weights(scored: DataFrame) -> DataFrame:
    """One row per usable id: id, doc_hash, num_words, log_weight, log_weights.

    ``log_weights`` has one entry per target; ``log_weight`` is that entry when there is one
    target, and the largest entry otherwise.
    """
    return (_ranked(scored).where(F.col("_dsel_dup") == 1)
            .select(F.col(ID).alias("id"), F.col(HASH).alias("doc_hash"), "num_words",
                    F.array_max("log_weights").alias("log_weight"), "log_weights"))


def skipped(scored: DataFrame) -> DataFrame:
    """Every record left out of the weights table: id, reason, source_file, detail."""
    unusable = scored.where(F.col("skip_reason").isNotNull()).select(
        F.col(ID).alias("id"), F.col("skip_reason").alias("reason"), "source_file", "detail")
    duplicates = _ranked(scored).where(F.col("_dsel_dup") > 1).select(
        F.col(ID).alias("id"), F.lit("duplicate_id").alias("reason"), "source_file",
        F.lit(None).cast("string").alias("detail"))
    return unusable.unionByName(duplicates)
