"""Fit: global raw and target bucket histograms and the log-ratio table.

The raw histogram stops at a cap like the reference's ``num_tokens_to_fit``, but the
documents it counts do not depend on file order or partitioning: every raw document falls in
one of :data:`FIT_BINS` bins by a hash of its id, and whole bins are counted, in bin order,
until the cap is reached.  That is a uniform, seed-free sample of the raw corpus that is the
same on any cluster.  Targets are always counted in full.

``log_ratio = log(p_target + 1e-8) - log(p_raw + 1e-8)``, as in data-selection 1.0.3.

While counting a target, the same pass keeps, for every bucket, a sample of up to
:data:`NGRAMS_PER_BUCKET` real n-grams of the target that hash into it (a frequency-weighted,
partitioning-independent bottom-k, see :func:`dsel.featurize.target_histogram`), so that buckets
can be shown as text; they are the ``ngrams`` column of the log-ratio table.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dsel.config import DselConfig
from dsel.errors import DselError
from dsel.featurize import FIT_BINS, GROUP, HISTOGRAM_SCHEMA, RECORDS_BUCKET, _nonzero, target_histogram
from dsel.read import SKIP_HINTS, parallelism, parquet_files, parquet_parts, per_file

SMOOTHING = 1e-8
#: Sample n-grams kept per bucket and target while fitting.
NGRAMS_PER_BUCKET = 3


@dataclass
class Fit:
    """The fitted importance estimator: histograms and log ratios, one row per target."""

    target_names: list[str]
    raw_counts: np.ndarray  # int64 [B]
    target_counts: np.ndarray  # int64 [T, B]
    params: dict
    raw_features_total: Optional[int] = None  # all usable raw features, when known
    warnings: list[str] = field(default_factory=list)
    target_ngrams: Optional[list[dict[int, list[str]]]] = None  # per target: bucket -> sample n-grams
    target_records: Optional[list[dict]] = None  # per target: {"read": records, "skipped": {reason: records}}

    @property
    def log_ratios(self) -> np.ndarray:
        """float64 [T, B]."""
        p_raw = self.raw_counts / max(self.raw_counts.sum(), 1)
        p_target = self.target_counts / np.maximum(self.target_counts.sum(axis=1, keepdims=True), 1)
        return np.log(p_target + SMOOTHING) - np.log(p_raw + SMOOTHING)

    @property
    def target_sizes(self) -> np.ndarray:
        """n-gram features per target; the default quota proportions, as the reference's separate_targets."""
        return self.target_counts.sum(axis=1)

    def to_frame(self, spark: SparkSession) -> DataFrame:
        """The log-ratio table: target, target_name, bucket, raw_count, target_count, log_ratio, ngrams."""
        num_targets, num_buckets = self.target_counts.shape
        samples = self.target_ngrams or [{} for _ in range(num_targets)]
        table = pa.table({
            "target": pa.array(np.repeat(np.arange(num_targets, dtype=np.int32), num_buckets)),
            "target_name": pa.array(np.repeat(np.array(self.target_names, dtype=object), num_buckets), pa.string()),
            "bucket": pa.array(np.tile(np.arange(num_buckets, dtype=np.int32), num_targets)),
            "raw_count": pa.array(np.tile(self.raw_counts, num_targets)),
            "target_count": pa.array(self.target_counts.reshape(-1)),
            "log_ratio": pa.array(self.log_ratios.reshape(-1)),
            "ngrams": pa.array([samples[t].get(b, []) for t in range(num_targets) for b in range(num_buckets)],
                               pa.list_(pa.string())),
        })
        return spark.createDataFrame(table)

    @classmethod
    def from_frame(cls, df: DataFrame, params: dict) -> "Fit":
        """Rebuild a Fit from the log-ratio table (a few rows per bucket, collected as Arrow)."""
        table = df.select("target", "target_name", "bucket", "raw_count", "target_count").toArrow()
        target = table.column("target").to_numpy()
        bucket = table.column("bucket").to_numpy()
        num_targets, num_buckets = int(target.max()) + 1, int(params["num_buckets"])
        if bucket.max() >= num_buckets:
            raise DselError(f"the log-ratio table has bucket {bucket.max()} but num_buckets is {num_buckets}; "
                            "refit with 'dsel fit'")
        names = [""] * num_targets
        for t, name in zip(target, table.column("target_name").to_pylist()):
            names[t] = name
        raw = np.zeros(num_buckets, dtype=np.int64)
        raw[bucket] = table.column("raw_count").to_numpy()
        counts = np.zeros((num_targets, num_buckets), dtype=np.int64)
        counts[target, bucket] = table.column("target_count").to_numpy()
        return cls(names, raw, counts, params)



def _dense(df: DataFrame, num_groups: int, num_buckets: int) -> np.ndarray:
    """Collect a (group, bucket, count) histogram as a dense int64 array; its size is bounded by groups x B."""
    table = df.toArrow()
    dense = np.zeros((num_groups, num_buckets), dtype=np.int64)
    if table.num_rows:
        dense[table.column("group").to_numpy(), table.column("bucket").to_numpy()] = table.column("count").to_numpy()
    return dense


def fit_raw(raw_features: DataFrame, cfg: DselConfig,
            counted: Optional[tuple[np.ndarray, np.ndarray]] = None,
            first_bins: Optional[Callable[[int], Optional[np.ndarray]]] = None) -> tuple[np.ndarray, int]:
    """Raw bucket counts under the cap, and the total usable raw features (all bins).

    ``raw_features`` comes from :func:`dsel.featurize.features`; its ``fit_bin`` column is
    ``pmod(xxhash64(id), 64)``.  ``counted``, when given, is (bucket counts of all usable records,
    features per fit bin), counted while featurizing: when the cap takes every bin, they are
    the answer and the features are not read again; when it takes fewer, ``first_bins(n)`` (if
    given) gives the bucket counts of the records of bins ``[0, n)`` more cheaply than decoding
    through Spark (or None).
    """
    cap = cfg.fit_cap
    if counted is not None and counted[1].sum() > 0:
        every, per_bin_total = counted
        used = FIT_BINS if cap is None else int(np.searchsorted(np.cumsum(per_bin_total), cap)) + 1
        if used >= FIT_BINS:
            return every, int(per_bin_total.sum())
        fewer = first_bins(used) if first_bins is not None else None
        if fewer is not None:
            return fewer, int(per_bin_total.sum())
    num_bins = 1 if cap is None else FIT_BINS
    group = F.lit(0) if cap is None else F.col("fit_bin")
    per_bin = _dense(feature_histograms(raw_features, group, num_bins, cfg.num_buckets), num_bins, cfg.num_buckets)
    totals = per_bin.sum(axis=1)
    if totals.sum() == 0:
        raise DselError("the raw input has no usable text (every record is empty, null or malformed); "
                        "check --raw and --text-column")
    used = num_bins if cap is None else int(np.searchsorted(np.cumsum(totals), cap)) + 1
    return per_bin[:used].sum(axis=0), int(totals.sum())


def fit_targets(targets: list[tuple[str, DataFrame]], cfg: DselConfig,
                ngrams: Optional[list[dict[int, list[str]]]] = None,
                records: Optional[list[dict]] = None) -> np.ndarray:
    """Target bucket counts, one row per target, each counted in full.

    When ``ngrams`` is a list, each target's sample n-grams (bucket -> n-grams, smallest key first)
    are appended to it; when ``records`` is a list, each target's records read and skipped by reason
    (``{"read": n, "skipped": {reason: n}}``), counted in the same pass.
    """
    counts = []
    for name, df in targets:
        table = target_histogram(df, cfg, NGRAMS_PER_BUCKET).toArrow()
        rows = table.to_pydict()
        dense = np.zeros(cfg.num_buckets, dtype=np.int64)
        sample: dict[int, list[tuple[int, bytes, str]]] = {}
        seen: dict[str, int] = {}
        for bucket, count, gram, key in zip(rows["bucket"], rows["count"], rows["ngram"], rows["key"]):
            if bucket == RECORDS_BUCKET:
                seen[gram] = int(count)
            elif gram is None:
                dense[bucket] = count
            else:
                sample.setdefault(bucket, []).append((key, gram.encode("utf-8"), gram))
        read, skipped = sum(seen.values()), {k: v for k, v in sorted(seen.items()) if k}
        if dense.sum() == 0:
            reasons = ", ".join(f"{k}={v:,}" for k, v in skipped.items())
            raise DselError(f"target {name} has no usable text ({read:,} records read"
                            + (f", skipped: {reasons}" if reasons else "") + "); check --target and --text-column"
                            + "".join(f". {k}: {SKIP_HINTS[k]}" for k in skipped if k in SKIP_HINTS))
        counts.append(dense)
        if ngrams is not None:
            ngrams.append({b: [g for _, _, g in sorted(v)] for b, v in sample.items()})
        if records is not None:
            records.append({"read": read, "skipped": skipped})
    return np.stack(counts)


def fit(raw_features: DataFrame, targets: list[tuple[str, DataFrame]], cfg: DselConfig,
        counted: Optional[tuple[np.ndarray, np.ndarray]] = None,
        first_bins: Optional[Callable[[int], Optional[np.ndarray]]] = None) -> Fit:
    """Fit raw and target histograms.

    ``raw_features`` comes from :func:`dsel.featurize.features` (the raw text featurized once);
    each target is a DataFrame from :func:`dsel.read.prepare`, counted from its text.
    """
    samples: list[dict[int, list[str]]] = []
    records: list[dict] = []
    # first: an empty target fails before the long raw pass
    target_counts = fit_targets(targets, cfg, samples, records)
    raw_counts, raw_total = fit_raw(raw_features, cfg, counted, first_bins)
    result = Fit([name for name, _ in targets], raw_counts, target_counts, cfg.fit_params(), raw_total,
                 target_ngrams=samples, target_records=records)
    for name, row in zip(result.target_names, result.target_counts):
        if not np.any((row > 0) & (raw_counts > 0)):
            result.warnings.append(f"target {name} shares no n-gram bucket with the raw data: its weights only "
                                   "reflect document length. Check that raw and target are the right inputs")
        elif np.array_equal(row, raw_counts):
            result.warnings.append(f"target {name} has the raw data's very histogram (is it the raw input?): every "
                                   "weight is 0, so the selection is uniform among the eligible documents. Check "
                                   "that raw and target are the right inputs")
    return result


def feature_histograms(feats: DataFrame, group: "F.Column", num_groups: int, num_buckets: int) -> DataFrame:
    """Bucket counts per (group, bucket), summed from the encoded features of usable records.

    ``group`` is an int column in ``[0, num_groups)``.  Each task decodes its batches into one
    dense array and emits the non-zero cells; Spark reduces them across tasks.
    """

    def count_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from dsel import kernel

        counts = np.zeros((num_groups, num_buckets), dtype=np.int64)
        for batch in batches:
            kernel.count_features(batch.column(0), batch.column(1).to_numpy(zero_copy_only=False), counts)
        yield from _nonzero(counts)

    usable = feats.where(F.col("skip_reason").isNull()).select("features", group.cast("long").alias(GROUP))
    return (usable.mapInArrow(count_partition, HISTOGRAM_SCHEMA)
            .groupBy("group", "bucket").agg(F.sum("count").alias("count")))


def bin_counts(spark: SparkSession, feats: DataFrame, num_buckets: int, bins: int) -> Optional[np.ndarray]:
    """Bucket counts (int64 [B]) of the usable records in fit bins ``[0, bins)`` of a features table the
    pyarrow JSON reader (:mod:`dsel.jsonread`) wrote: the sum of the first bins of every task's
    ``fit_counts`` when each task stored them, else decoded by the workers from the table's Parquet
    files (see :func:`dsel.score.score_files`); None when the files may differ from the table."""
    files = parquet_files(spark, feats)
    if files is None:
        return None
    if "fit_counts" in feats.columns:
        stored = _stored_bin_counts(spark, files, num_buckets, bins)
        if stored is not None:
            return stored
    return _decoded_bin_counts(spark, files, num_buckets, bins)


def _stored_bin_counts(spark: SparkSession, files: list[str], num_buckets: int, bins: int) -> Optional[np.ndarray]:
    """:func:`bin_counts` from the tasks' ``fit_counts`` (only the summary rows' two columns are read),
    or None when a task did not store them (more buckets than
    :data:`dsel.jsonread.FIT_COUNTS_MAX_BUCKETS`, or rows appended by an earlier dsel)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        counts, missing = np.zeros((2, num_buckets), np.int64), 0
        for part in parquet_parts(files, batches, ["raw_types", "fit_counts"]):
            for blob in part.filter(part.column(0).is_valid()).column(1).to_pylist():
                if blob is None:
                    missing += 1
                elif blob:
                    stored = np.frombuffer(zlib.decompress(blob), "<i8").reshape(FIT_BINS, num_buckets)
                    counts[0] += stored[:bins].sum(0)
        counts[1, 0] = missing  # group 1 says how many tasks stored nothing
        yield from _nonzero(counts)

    # a few hundred kB per file: one task per core (a task per file cost as much as the reading)
    dense = _file_histograms(spark, files, run, 2, num_buckets, parallelism(spark))
    return dense[0] if dense[1, 0] == 0 else None


def _decoded_bin_counts(spark: SparkSession, files: list[str], num_buckets: int, bins: int) -> np.ndarray:
    """:func:`bin_counts` decoded from the ``features`` of every usable record in those bins."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from dsel import kernel

        counts = np.zeros((1, num_buckets), np.int64)
        for part in parquet_parts(files, batches, ["features", "fit_bin", "skip_reason"]):
            part = part.filter(pc.and_(part.column(2).is_null(), pc.less(part.column(1), bins)))
            if part.num_rows:
                kernel.count_features(part.column(0), np.zeros(part.num_rows, np.int64), counts)
        yield from _nonzero(counts)

    return _file_histograms(spark, files, run, 1, num_buckets)[0]


def _file_histograms(spark: SparkSession, files: list[str], run, groups: int, num_buckets: int,
                     tasks: Optional[int] = None) -> np.ndarray:
    """The (group, bucket, count) rows ``run`` yields over ``files`` (see :func:`dsel.read.per_file`), summed into
    int64 [groups, B]."""
    rows = per_file(spark, files, run, HISTOGRAM_SCHEMA, tasks).groupBy("group", "bucket")
    return _dense(rows.agg(F.sum("count").alias("count")), groups, num_buckets)
