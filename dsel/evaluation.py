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
top k, no noise); see :mod:`dsel.baselines`.  The classifier is trained once for both.  Every method
picks among the same eligible documents (``min_length`` and any quality filter of the config).

The pool is fit and scored in memory (the weights are cached for the run of the methods), and only
label counts and B-sized histograms reach the driver.  With ``cfg.out`` set, the picks and the
result are written as Delta tables (one commit each, overwritten by the next evaluation):

* ``OUT/evaluation/selected``: one table for all methods, partitioned by ``method``, with the
  columns of ``OUT/selected`` (every raw column, ``num_words``, ``log_weight``, ``rank``, ``target``,
  ``run_id``) plus ``method`` and ``method_score`` (see :mod:`dsel.baselines`).  One table rather
  than one per method, so that comparing methods is one query (``GROUP BY method, domain``, or a
  self-join on ``id``), and every method's rows have the same columns by construction;
* ``OUT/evaluation/results``: one row per method (:data:`RESULT_COLUMNS`).

Precision and KL reduction are then computed from the written table, so they are the table's.
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Optional, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from dsel import __version__
from dsel.baselines import COLUMNS, dsir_selection, heuristic_classification, random_selection, train_classifier
from dsel.config import DselConfig
from dsel.errors import DselError
from dsel.evaluate import histograms_by_group, kl_summary
from dsel.read import HASH, ID, REASON, TEXT, clashes, column, quoted
from dsel.report import hint_lines, record_counts
from dsel.select import Filters, eligible, with_raw_columns
from dsel.session import require_delta
from dsel.write import OutputPaths, driver_rows, mapping_names, write_table

from dsel.cli_extra import EVALUATE_METHODS as METHODS  # noqa: E402  (one list for the CLI and the API)


#: Columns of ``OUT/evaluation/results``, one row per method.
RESULT_COLUMNS = ("method", "precision", "kl_reduction", "kl_reduction_epsilon", "k", "selected",
                  "selected_features", "label_docs", "eligible", "label_column", "target_label", "targets", "seconds",
                  "run_id")


def evaluate(spark: SparkSession, cfg: DselConfig, label_column: str, target_label: str,
             methods: Sequence[str] = METHODS, k: Optional[int] = None) -> dict[str, Any]:
    """Run each method on ``cfg.raw`` against ``cfg.target``; return the table as a dict.

    The result: ``{"k", "label_docs", "eligible", "target_label", "run_id", "methods": {name: {"precision",
    "kl_reduction", "selected", "seconds"}}}``, and ``"tables"`` (paths) when ``cfg.out`` is set.
    ``k`` defaults to the eligible documents labelled ``target_label``.
    """
    from dsel.featurize import features
    from dsel.fit import fit
    from dsel.pipeline import read_raw, read_targets
    from dsel.score import score, weights as weight_records

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise DselError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    cfg.require("raw", "target")
    if cfg.out:
        require_delta(spark)
    started = time.time()
    what = json.dumps([cfg.default_run_id("evaluate"), label_column, target_label, list(methods), k])
    run_id = cfg.run_id or "evaluate-" + hashlib.sha256(what.encode()).hexdigest()[:16]
    raw = read_raw(spark, cfg)
    if label_column not in raw.columns:
        raise DselError(f"raw input has no label column '{label_column}'; its columns are "
                        f"{', '.join(c for c in raw.columns if not c.startswith('_'))}. Pass --label-column NAME")
    clashing = clashes(raw.columns, ("method", "method_score"))
    if clashing and cfg.out:
        raise DselError(f"raw input has column(s) {', '.join(clashing)}, which dsel evaluate adds to "
                        "OUT/evaluation/selected; rename them, or evaluate without --out")
    if cfg.out:
        OutputPaths(cfg.out).check_apart({"raw": cfg.raw or [], "target": cfg.target or []})
        OutputPaths(cfg.out).check_owned()  # before the work, not after
    targets = read_targets(spark, cfg)
    rule = Filters.of(cfg)
    feats = features(raw, cfg).cache()  # the pool's text is featurized once, here
    fitted = fit(feats, targets, cfg)
    w = weight_records(score(feats, fitted)).cache()
    labels = raw.where(F.col(REASON).isNull()).select(
        F.col(ID).alias("_l_id"), F.col(HASH).alias("_l_hash"),
        (F.col(quoted(label_column)).cast("string") == F.lit(target_label)).alias("_l_hit"))
    target = ",".join(fitted.target_names)
    chosen: dict[str, DataFrame] = {}
    try:
        pool = eligible(w, rule)
        joined = pool.join(labels, (pool["id"] == labels["_l_id"]) & (pool["doc_hash"] == labels["_l_hash"]))
        stats = joined.agg(F.countDistinct("id").alias("eligible"),
                           F.countDistinct(F.when(F.col("_l_hit"), F.col("id"))).alias("hits")).first()
        eligible_count, label_docs = int(stats["eligible"]), int(stats["hits"])
        # the pool's records: read, and skipped by reason (unusable, or an id's losing duplicate)
        by_reason = {r[0]: int(r[1]) for r in feats.groupBy("skip_reason").count().collect()}
        read, usable, scored = sum(by_reason.values()), by_reason.pop(None, 0), w.count()
        skipped = {**by_reason, **({"duplicate_id": usable - scored} if usable > scored else {})}
        if k is None:
            k = label_docs
        if k <= 0:
            raise DselError(f"no eligible raw document has {label_column} = {target_label!r}; check --target-label "
                            f"and --min-length")
        if k > eligible_count:  # every method would take the whole pool: the precisions would compare nothing
            raise DselError(f"--k {k:,} is more than the {eligible_count:,} eligible raw documents; give --k at most "
                            f"{eligible_count:,} (or lower --min-length)")
        # (their number is checked with the config's, and again by dsel.select.select)
        proportions = list(cfg.target_proportions or [float(s) for s in fitted.target_sizes])
        seconds: dict[str, float] = {}
        model = None
        for method in methods:
            t0 = time.time()
            if method == "random":
                part = random_selection(w, k, seed=cfg.seed, min_length=rule, target=target)
            elif method in ("dsir-gumbel", "dsir-topk"):
                part = dsir_selection(w, k, target_names=fitted.target_names, proportions=proportions, seed=cfg.seed,
                                      method=method.split("-")[1], min_length=rule)
            else:
                model = model or train_classifier(raw, [df for _, df in targets], cfg, seed=cfg.seed)
                part = heuristic_classification(raw, [df for _, df in targets], w, cfg, k, seed=cfg.seed,
                                                min_length=rule, model=model, target=target,
                                                mode="topk" if method.endswith("-topk") else "pareto")
            chosen[method] = part.select(*COLUMNS, F.lit(method).alias("method")).cache()
            chosen[method].count()
            seconds[method] = time.time() - t0
        every = None
        for part in chosen.values():
            every = part if every is None else every.unionByName(part)
        rows = with_raw_columns(raw, every, run_id, extra=("method", "method_score"), per=("method",), broadcast=True)
        tables: dict[str, str] = {}
        if cfg.out:
            picked = _write_selected(spark, cfg, rows, run_id, methods)
            tables["selected"] = _evaluation_path(cfg.out, "selected")
        else:
            picked = rows.cache()
        index = {method: i for i, method in enumerate(methods)}
        group = F.element_at(F.create_map(*[x for m, i in index.items() for x in (F.lit(m), F.lit(i))]),
                             F.col("method"))
        texts = picked.select(column(picked.schema, cfg.text_column).alias(TEXT), F.lit(None).cast("string").alias(REASON),
                              "method")  # picked documents are usable: they were scored
        hists = histograms_by_group(texts, cfg, group, len(methods))
        hits = {r["method"]: (int(r["n"]), int(r["hits"])) for r in picked.groupBy("method").agg(
            F.count("*").alias("n"),
            F.sum((F.col(quoted(label_column)).cast("string") == F.lit(target_label)).cast("int")).alias("hits"),
        ).collect()}
    finally:
        w.unpersist()
        feats.unpersist()
        for part in chosen.values():
            part.unpersist()
        if "picked" in locals():
            picked.unpersist()
    result: dict[str, Any] = {"k": k, "label_docs": label_docs, "eligible": eligible_count,
                              "label_column": label_column, "target_label": target_label,
                              "targets": fitted.target_names, "run_id": run_id, "methods": {},
                              "pool_records": {"read": read, "skipped": skipped},
                              "target_records": dict(zip(fitted.target_names, fitted.target_records or []))}
    for i, method in enumerate(methods):
        n, hit = hits.get(method, (0, 0))
        kl = kl_summary(fitted.target_counts, fitted.raw_counts, hists[i], fitted.target_names)
        result["methods"][method] = {"precision": hit / k, "kl_reduction": kl["kl_reduction"],
                                     "kl_reduction_epsilon": kl["kl_reduction_epsilon"], "selected": n,
                                     "selected_features": kl["selected_features"],
                                     "seconds": round(seconds[method], 2)}
    result["seconds"] = round(time.time() - started, 2)
    if cfg.out:
        tables["results"] = _write_results(spark, cfg, result)
        result["tables"] = tables
    return result


def _evaluation_path(out: str, name: str) -> str:
    return OutputPaths(out).table("evaluation") + "/" + name


def _write_selected(spark: SparkSession, cfg: DselConfig, rows: DataFrame, run_id: str,
                    methods: Sequence[str]) -> DataFrame:
    """Overwrite ``OUT/evaluation/selected`` (partitioned by method) with ``rows``; read it back."""
    path = _evaluation_path(cfg.out, "selected")
    writer = (rows.write.format("delta").mode("overwrite").option("overwriteSchema", "true").partitionBy("method")
              .option("userMetadata", json.dumps({"run_id": run_id, "command": "evaluate", "methods": list(methods),
                                                  "params": cfg.to_dict(), "dsel_version": __version__},
                                                 sort_keys=True, default=str)))
    mapping_names(writer, rows, path).save(path)  # raw columns such as 'source url' need column mapping
    return spark.read.format("delta").load(path)


def _write_results(spark: SparkSession, cfg: DselConfig, result: dict[str, Any]) -> str:
    """Overwrite ``OUT/evaluation/results``: one row per method (:data:`RESULT_COLUMNS`)."""
    schema = ("method string, precision double, kl_reduction double, kl_reduction_epsilon double, k long, "
              "selected long, selected_features long, label_docs long, eligible long, label_column string, "
              "target_label string, targets array<string>, seconds double, run_id string")
    rows = [(m, float(r["precision"]), float(r["kl_reduction"]), float(r["kl_reduction_epsilon"]), int(result["k"]),
             int(r["selected"]), int(r["selected_features"]), int(result["label_docs"]), int(result["eligible"]),
             result["label_column"], result["target_label"], list(result["targets"]), float(r["seconds"]),
             result["run_id"]) for m, r in result["methods"].items()]
    path = _evaluation_path(cfg.out, "results")
    write_table(driver_rows(spark, rows, schema), path,
                {"run_id": result["run_id"], "command": "evaluate", "params": cfg.to_dict()})
    return path


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
    pool, targets = result["pool_records"], result["target_records"]
    lines.append(f"  pool read   {record_counts(pool['read'], pool['skipped'])}")
    lines.extend(f"  target read {record_counts(t['read'], t['skipped'])}" + (f"  {name}" if len(targets) > 1 else "")
                 for name, t in targets.items())
    lines.extend(hint_lines(pool["skipped"], *(t["skipped"] for t in targets.values())))
    for path in result.get("tables", {}).values():
        lines.append(f"  wrote {path} (Delta)")
    lines.append(f"  time {result['seconds']:.1f}s")
    return "\n".join(lines)


__all__ = ["METHODS", "RESULT_COLUMNS", "evaluate", "format_table"]
