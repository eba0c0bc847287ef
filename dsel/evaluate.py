"""KL reduction: how much closer the selection's n-gram distribution is to the target than the raw pool's.

Everything is measured in the same hashed n-gram space as the selection itself (the run's
``ngrams``, ``num_buckets``, ``hash_kind`` and ``hash_seed``): a corpus is reduced to a bucket
histogram of size B by :func:`dsel.featurize.histograms` inside Spark tasks, and only those B
counts reach the driver, never documents.

The DSIR paper's measure, for targets ``t = 1..T``::

    KL reduction = mean_t [ KL(p_t || q_raw) - KL(p_t || p_selected) ]

where ``p_t``, ``q_raw`` and ``p_selected`` are the bucket distributions of target t, of the raw
pool and of the selected documents.  Positive means the selection is closer to the targets than
the raw pool is; a uniformly random selection scores near 0 (a little below on small selections:
a sample is noisier than the pool it comes from).

Smoothing.  KL(p || q) is infinite when q has an empty bucket that p has, so the count vectors are
smoothed before they are compared.  Two rules are implemented (``smoothing=``):

* ``"add-one"`` (the default): Laplace smoothing of the counts, ``p_b = (c_b + 1) / (N + B)``.  The
  pseudo-count is one n-gram per bucket whatever the corpus, so its weight shrinks as the corpus
  grows.
* ``"epsilon"``: ``p = c / N``, plus ``EPSILON = 1e-8`` in every bucket, renormalised (the 1e-8 of
  the log-ratio table of :mod:`dsel.fit`).  An empty bucket then costs about ``p_t(b) * log(p_t(b) /
  1e-8)``, so on small selections, whose histograms leave many of the B buckets empty, this
  measure is dominated by how many buckets the selection happens to cover, and long random
  documents can beat a selection of short on-target ones.  Both smoothings fade as every bucket
  fills, so the two measures converge on large selections.  On the tests' pools (about 60 selected documents,
  20,000-140,000 n-grams over 10,000 buckets) DSIR's add-one reduction is positive for every
  target domain, its epsilon reduction is negative for sci_abstracts (-0.72 against -0.12 for
  random), which is why add-one is the default.

The same rule applies to all three distributions.  :func:`kl_summary` reports both.

For a finished run (:func:`run_kl_reduction`), the raw and target histograms are the ones stored
in ``OUT/log_ratios`` (``raw_count`` and ``target_count`` per target).  ``raw_count`` is the raw
histogram the run was fit on, which under ``--num-tokens-to-fit`` (``auto`` by default) is a
uniform sample of the raw pool (whole id-hash bins, see :mod:`dsel.fit`) rather than all of it;
the sample is unbiased, so KL against it estimates KL against the full pool.  The selection's
histogram is recomputed from ``OUT/selected``, which holds the raw text column.  With several
targets, each with its quota, the run also measures each target against the documents chosen for
it (``kl_reduction_own``): the paper's measure compares every target with the whole selection, so a
selection made 70% for one target and 30% for an unlike one can read negative for both while each
target's own picks are much closer to it than the raw pool is.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dsel.config import DselConfig
from dsel.errors import DselError
from dsel.featurize import histograms

if TYPE_CHECKING:
    from dsel.fit import Fit

#: ``smoothing="epsilon"``: added to every bucket probability before renormalising (the log-ratio table's 1e-8).
EPSILON = 1e-8
#: ``smoothing="add-one"`` (the default): pseudo-count added to every bucket's count.
PSEUDO_COUNT = 1.0
SMOOTHINGS = ("add-one", "epsilon")


def histograms_by_group(df_prepared: DataFrame, cfg: DselConfig, group: "F.Column", num_groups: int) -> np.ndarray:
    """int64 ``[num_groups, B]`` bucket counts of a prepared DataFrame (see :func:`dsel.read.prepare`)."""
    table = histograms(df_prepared, cfg, group, num_groups).toArrow()
    dense = np.zeros((num_groups, cfg.num_buckets), dtype=np.int64)
    if table.num_rows:
        dense[table.column("group").to_numpy(), table.column("bucket").to_numpy()] = table.column("count").to_numpy()
    return dense


def histogram(df_prepared: DataFrame, cfg: DselConfig) -> np.ndarray:
    """int64 ``[B]`` hashed n-gram counts of every usable document of a prepared DataFrame."""
    return histograms_by_group(df_prepared, cfg, F.lit(0), 1)[0]


def distribution(counts: np.ndarray, smoothing: str = "add-one") -> np.ndarray:
    """A count vector as smoothed probabilities (see the module docstring for the two rules)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or np.any(counts < 0):
        raise ValueError("expected a 1-d vector of non-negative counts")
    if smoothing == "add-one":
        return (counts + PSEUDO_COUNT) / (counts.sum() + PSEUDO_COUNT * counts.size)
    if smoothing == "epsilon":
        total = counts.sum()
        p = (counts / total if total > 0 else np.zeros_like(counts)) + EPSILON
        return p / p.sum()
    raise ValueError(f"smoothing must be one of {', '.join(SMOOTHINGS)}, got {smoothing!r}")


def kl(p: np.ndarray, q: np.ndarray, smoothing: str = "add-one") -> float:
    """KL(p || q) in nats between two bucket count vectors, each smoothed by :func:`distribution`."""
    if np.shape(p) != np.shape(q):
        raise ValueError(f"histograms of different sizes: {np.shape(p)} and {np.shape(q)}")
    p, q = distribution(p, smoothing), distribution(q, smoothing)
    return float(np.sum(p * (np.log(p) - np.log(q))))


def kl_reductions(target_hists: np.ndarray, raw_hist: np.ndarray, selected_hist: np.ndarray,
                  smoothing: str = "add-one") -> list[float]:
    """Per target t: KL(p_t || q_raw) - KL(p_t || p_selected)."""
    targets = np.atleast_2d(np.asarray(target_hists))
    return [kl(t, raw_hist, smoothing) - kl(t, selected_hist, smoothing) for t in targets]


def kl_reduction(target_hists: np.ndarray, raw_hist: np.ndarray, selected_hist: np.ndarray,
                 smoothing: str = "add-one") -> float:
    """mean over targets t of [KL(p_t || q_raw) - KL(p_t || p_selected)]; ``target_hists`` is [T, B] or [B]."""
    return float(np.mean(kl_reductions(target_hists, raw_hist, selected_hist, smoothing)))


def kl_summary(target_hists: np.ndarray, raw_hist: np.ndarray, selected_hist: np.ndarray,
               target_names: Optional[Sequence[str]] = None,
               own_hists: Optional[np.ndarray] = None) -> dict[str, Any]:
    """KL reduction (add-one; and with epsilon smoothing) with its parts per target, as a JSON-ready dict.

    ``own_hists`` ([T, B], several targets with quotas): each target's own picks.  Each target's part
    then also has ``kl_reduction_own``, KL(p_t || q_raw) - KL(p_t || p_own_t), its reduction against
    the documents chosen for it (None when none were), and the dict has ``kl_reduction_own``, those
    reductions by target name.  The headline stays the paper's measure, every target against the
    whole selection, which a quota selection of unlike targets can make negative.
    """
    targets = np.atleast_2d(np.asarray(target_hists))
    names = list(target_names) if target_names is not None else [str(i) for i in range(len(targets))]
    per_target = {}
    for i, (name, t) in enumerate(zip(names, targets)):
        part = {"kl_target_raw": kl(t, raw_hist), "kl_target_selected": kl(t, selected_hist)}
        part["kl_reduction"] = part["kl_target_raw"] - part["kl_target_selected"]
        part["kl_reduction_epsilon"] = kl(t, raw_hist, "epsilon") - kl(t, selected_hist, "epsilon")
        if own_hists is not None:
            own = own_hists[i]
            part["kl_reduction_own"] = part["kl_target_raw"] - kl(t, own) if own.sum() > 0 else None
        per_target[name] = part
    summary = {"kl_reduction": float(np.mean([p["kl_reduction"] for p in per_target.values()])),
               "kl_reduction_epsilon": float(np.mean([p["kl_reduction_epsilon"] for p in per_target.values()])),
               "smoothing": "add-one", "pseudo_count": PSEUDO_COUNT, "epsilon": EPSILON, "per_target": per_target,
               "raw_features": int(np.sum(raw_hist)), "selected_features": int(np.sum(selected_hist)),
               "pseudo_counts": int(PSEUDO_COUNT * np.size(selected_hist))}
    if own_hists is not None:
        summary["kl_reduction_own"] = {name: p["kl_reduction_own"] for name, p in per_target.items()}
    return summary


def run_kl_reduction(spark: SparkSession, cfg: DselConfig, fitted: Optional[Fit] = None,
                     selected: Optional[DataFrame] = None) -> dict[str, Any]:
    """KL reduction of the finished run under ``cfg.out`` (tables log_ratios and selected).

    ``cfg`` must carry the run's n-gram and hash settings and its text and id columns; raw and
    target histograms come from ``fitted`` (by default ``OUT/log_ratios``; the raw one is the run's
    fit sample), the selection's is recomputed from the text in ``OUT/selected``, or in ``selected``
    (the rows being written there).
    """
    from dsel.fit import Fit
    from dsel.read import field_type, prepare
    from dsel.write import OutputPaths, read_table

    cfg.require("out")
    paths = OutputPaths(cfg.out)
    fitted = fitted or Fit.from_frame(read_table(spark, paths.log_ratios, "log_ratios"), cfg.fit_params())
    selected = read_table(spark, paths.selected, "selected") if selected is None else selected
    if field_type(selected.schema, cfg.text_column) is None:
        raise DselError(f"{paths.selected} has no text column '{cfg.text_column}'; pass the run's --text-column")
    names = list(fitted.target_names)
    own = None
    if len(names) > 1 and "target" in selected.columns:  # one pass, by the target each row was chosen for
        index = F.coalesce(*[F.when(F.col("target") == name, F.lit(i)) for i, name in enumerate(names)],
                           F.lit(len(names)))
        by_target = histograms_by_group(prepare(selected, cfg), cfg, index, len(names) + 1)
        selected_hist, own = by_target.sum(axis=0), by_target[:len(names)]
    else:
        selected_hist = histogram(prepare(selected, cfg), cfg)
    if selected_hist.sum() == 0:
        raise DselError(f"{paths.selected} holds no usable text (the selection is empty): select some documents "
                        "first, with a lower --min-length if none is eligible")
    return kl_summary(fitted.target_counts, fitted.raw_counts, selected_hist, names, own)


__all__ = ["EPSILON", "PSEUDO_COUNT", "SMOOTHINGS", "histogram", "histograms_by_group", "distribution", "kl", "kl_reduction", "kl_reductions",
           "kl_summary", "run_kl_reduction"]
