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

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dsel.config import DselConfig
from dsel.errors import DselError
from dsel.featurize import FIT_BINS, feature_histograms, target_histogram

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
                ngrams: Optional[list[dict[int, list[str]]]] = None) -> np.ndarray:
    """Target bucket counts, one row per target, each counted in full.

    When ``ngrams`` is a list, each target's sample n-grams (bucket -> n-grams, smallest key first)
    are appended to it.
    """
    counts = []
    for name, df in targets:
        table = target_histogram(df, cfg, NGRAMS_PER_BUCKET).toArrow()
        rows = table.to_pydict()
        dense = np.zeros(cfg.num_buckets, dtype=np.int64)
        sample: dict[int, list[tuple[int, bytes, str]]] = {}
        for bucket, count, gram, key in zip(rows["bucket"], rows["count"], rows["ngram"], rows["key"]):
            if gram is None:
                dense[bucket] = count
            else:
                sample.setdefault(bucket, []).append((key, gram.encode("utf-8"), gram))
        if dense.sum() == 0:
            raise DselError(f"target {name} has no usable text (it is empty, or every record is null, empty or "
                            "malformed); check --target and --text-column")
        counts.append(dense)
        if ngrams is not None:
            ngrams.append({b: [g for _, _, g in sorted(v)] for b, v in sample.items()})
    return np.stack(counts)


def fit(raw_features: DataFrame, targets: list[tuple[str, DataFrame]], cfg: DselConfig,
        counted: Optional[tuple[np.ndarray, np.ndarray]] = None,
        first_bins: Optional[Callable[[int], Optional[np.ndarray]]] = None) -> Fit:
    """Fit raw and target histograms.

    ``raw_features`` comes from :func:`dsel.featurize.features` (the raw text featurized once);
    each target is a DataFrame from :func:`dsel.read.prepare`, counted from its text.
    """
    samples: list[dict[int, list[str]]] = []
    target_counts = fit_targets(targets, cfg, samples)  # first: an empty target fails before the long raw pass
    raw_counts, raw_total = fit_raw(raw_features, cfg, counted, first_bins)
    result = Fit([name for name, _ in targets], raw_counts, target_counts, cfg.fit_params(), raw_total,
                 target_ngrams=samples)
    for name, row in zip(result.target_names, result.target_counts):
        if not np.any((row > 0) & (raw_counts > 0)):
            result.warnings.append(f"target {name} shares no n-gram bucket with the raw data: its weights only "
                                   "reflect document length. Check that raw and target are the right inputs")
    return result
