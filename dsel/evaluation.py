"""``dsel evaluate``: DSIR and its baselines side by side on a labelled raw pool.

Given a raw pool with a label column (say ``domain``), a target sample, and the label value the
target stands for (say ``sci_abstracts``), every method picks k documents, where k is the number of
eligible pool documents (``num_words >= min_length``) that carry that label, so that a perfect
method has precision 1.  For each method the table reports:

* ``precision``: the share of the k picked documents that carry the target label (precision at k);
* ``kl_reduction``: :func:`dsel.evaluate.kl_reduction` of the picked documents, in the run's hashed
  n-gram space, with the raw and target histograms of the fit (the raw one is the fit sample).

Methods: ``random``, ``dsir-gumbel``, ``dsir-topk``, ``heuristic-classification`` (GPT-3's
classifier filter with Pareto noise) and ``heuristic-classification-topk`` (the same classifier's
top k, no noise); see :mod:`dsel.baselines`.  The classifier is trained once for both.  Nothing is written: the pool is fit and scored in memory (the weights
are cached for the run of the methods), and only ids, labels and B-sized histograms reach the
driver.
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dsel.baselines import dsir_selection, heuristic_classification, random_selection, train_classifier
from dsel.config import DselConfig
from dsel.errors import DselError
from dsel.evaluate import histograms_by_group, kl_summary
from dsel.read import HASH, ID, REASON

from dsel.cli_extra import EVALUATE_METHODS as METHODS  # noqa: E402  (one list for the CLI and the API)


def evaluate(spark: SparkSession, cfg: DselConfig, label_column: str, target_label: str,
             methods: Sequence[str] = METHODS, k: Optional[int] = None) -> dict[str, Any]:
    """Run each method on ``cfg.raw`` against ``cfg.target``; return the table as a dict.

    The result: ``{"k", "label_docs", "eligible", "target_label", "methods": {name: {"precision",
    "kl_reduction", "selected", "seconds"}}}``.  ``k`` defaults to the eligible documents labelled
    ``target_label``.
    """
    from dsel.featurize import features
    from dsel.fit import fit
    from dsel.pipeline import read_raw, read_targets
    from dsel.score import score, weights as weight_records

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise DselError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    cfg.require("raw", "target")
    started = time.time()
    raw = read_raw(spark, cfg)
    if label_column not in raw.columns:
        raise DselError(f"raw input has no label column '{label_column}'; its columns are "
                        f"{', '.join(c for c in raw.columns if not c.startswith('_'))}. Pass --label-column NAME")
    targets = read_targets(spark, cfg)
    feats = features(raw, cfg).cache()  # the pool's text is featurized once, here
    fitted = fit(feats, targets, cfg)
    w = weight_records(score(feats, fitted)).cache()
    labels = raw.where(F.col(REASON).isNull()).select(
        F.col(ID).alias("_l_id"), F.col(HASH).alias("_l_hash"),
        (F.col(f"`{label_column}`").cast("string") == F.lit(target_label)).alias("_l_hit"))
    try:
        pool = w.where(F.col("num_words") >= cfg.min_length)
        joined = pool.join(labels, (pool["id"] == labels["_l_id"]) & (pool["doc_hash"] == labels["_l_hash"]))
        stats = joined.agg(F.countDistinct("id").alias("eligible"),
                           F.countDistinct(F.when(F.col("_l_hit"), F.col("id"))).alias("hits")).first()
        eligible_count, label_docs = int(stats["eligible"]), int(stats["hits"])
        if k is None:
            k = label_docs
        if k <= 0:
            raise DselError(f"no eligible raw document has {label_column} = {target_label!r}; check --target-label "
                            f"and --min-length")
        proportions = [float(s) for s in fitted.target_sizes]
        chosen: dict[str, DataFrame] = {}
        seconds: dict[str, float] = {}
        model = None
        for method in methods:
            t0 = time.time()
            if method == "random":
                part = random_selection(w, k, seed=cfg.seed, min_length=cfg.min_length)
            elif method in ("dsir-gumbel", "dsir-topk"):
                part = dsir_selection(w, k, target_names=fitted.target_names, proportions=proportions, seed=cfg.seed,
                                      method=method.split("-")[1], min_length=cfg.min_length)
            else:
                model = model or train_classifier(raw, [df for _, df in targets], cfg, seed=cfg.seed)
                part = heuristic_classification(raw, [df for _, df in targets], w, cfg, k, seed=cfg.seed,
                                                min_length=cfg.min_length, model=model,
                                                mode="topk" if method.endswith("-topk") else "pareto")
            chosen[method] = part.select(F.col("id").alias("_e_id"), F.col("doc_hash").alias("_e_hash"),
                                         F.lit(list(methods).index(method)).alias("_m"))
            chosen[method] = chosen[method].cache()
            chosen[method].count()
            seconds[method] = time.time() - t0
        every = None
        for part in chosen.values():
            every = part if every is None else every.unionByName(part)
        picked = raw.join(F.broadcast(every), (raw[ID] == every["_e_id"]) & (raw[HASH] == every["_e_hash"]))
        picked = picked.dropDuplicates(["_m", "_e_id"])
        hists = histograms_by_group(picked, cfg, F.col("_m"), len(methods))
        hits = {int(r["_m"]): (int(r["n"]), int(r["hits"])) for r in picked.groupBy("_m").agg(
            F.count("*").alias("n"),
            F.sum((F.col(f"`{label_column}`").cast("string") == F.lit(target_label)).cast("int")).alias("hits"),
        ).collect()}
    finally:
        w.unpersist()
        for part in locals().get("chosen", {}).values():
            part.unpersist()
    result: dict[str, Any] = {"k": k, "label_docs": label_docs, "eligible": eligible_count,
                              "label_column": label_column, "target_label": target_label,
                              "targets": fitted.target_names, "methods": {}}
    for i, method in enumerate(methods):
        n, hit = hits.get(i, (0, 0))
        kl = kl_summary(fitted.target_counts, fitted.raw_counts, hists[i], fitted.target_names)
        result["methods"][method] = {"precision": hit / k, "kl_reduction": kl["kl_reduction"],
                                     "kl_reduction_epsilon": kl["kl_reduction_epsilon"], "selected": n,
                                     "selected_features": kl["selected_features"],
                                     "seconds": round(seconds[method], 2)}
    result["seconds"] = round(time.time() - started, 2)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The result of :func:`evaluate` as a plain-text table."""
    lines = [f"dsel evaluate — target {result['label_column']} = {result['target_label']}: k = {result['k']:,} "
             f"of {result['eligible']:,} eligible documents",
             f"  {'method':<31}{'precision@k':>12}{'KL reduction':>14}{'(eps 1e-8)':>12}{'selected':>10}"
             f"{'time':>8}"]
    for method, row in result["methods"].items():
        lines.append(f"  {method:<31}{row['precision']:>12.3f}{row['kl_reduction']:>14.4f}"
                     f"{row['kl_reduction_epsilon']:>12.4f}{row['selected']:>10,}{row['seconds']:>7.1f}s")
    lines.append("  KL reduction: add-one smoothing; (eps 1e-8): add-1e-8 smoothing (see dsel.evaluate)")
    lines.append(f"  time {result['seconds']:.1f}s")
    return "\n".join(lines)


__all__ = ["METHODS", "evaluate", "format_table"]
