"""The facade: fit, score, select and run, each from a :class:`~dsel.config.DselConfig`.

These functions wire the stage modules (read, featurize, fit, score, select, write, report)
to the Delta tables under ``cfg.out``.  The SparkSession is always passed in.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import json
import time
from typing import Optional

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StructType
from delta.tables import DeltaTable

from dsel import __version__, jsonread
from dsel.config import DselConfig
from dsel.errors import DselError
from dsel.fit import Fit, fit as fit_histograms
from dsel.read import HASH, ID, INTERNAL, prepare, read_input, user_columns
from dsel.report import Summary
from dsel.score import score as score_records, skipped as skipped_records, weights as weight_records
from dsel.select import SELECTED_COLUMNS, eligible, select as select_documents
from dsel.evaluate import run_kl_reduction
from dsel.featurize import features as raw_features
from dsel.write import OutputPaths, commit_metadata, export, last_commit, read_table, record_run, write_table


def read_raw(spark: SparkSession, cfg: DselConfig, schema: Optional[StructType] = None) -> DataFrame:
    """The raw corpus with all its columns plus dsel's internal ones."""
    return prepare(read_input(spark, cfg.raw, cfg.raw_format, cfg, "raw", schema), cfg)


def _raw_schema(df: DataFrame) -> str:
    """The raw input's own schema as JSON, stored in commit metadata so later stages skip inference."""
    return StructType([f for f in df.schema.fields if f.name not in INTERNAL]).json()


def _stored_raw(spark: SparkSession, cfg: DselConfig, path: str) -> Optional[DataFrame]:
    """The raw input read with the schema stored at ``path``'s last commit, if it was the same input."""
    meta = commit_metadata(spark, path) or {}
    params, schema = meta.get("params", {}), meta.get("raw_schema")
    if schema and params.get("raw") == cfg.raw and params.get("raw_format") == cfg.raw_format:
        return read_raw(spark, cfg, StructType.fromJson(json.loads(schema)))
    return None


def read_targets(spark: SparkSession, cfg: DselConfig) -> list[tuple[str, DataFrame]]:
    """(name, prepared DataFrame) per target: one per --target, or one in all with combine_targets."""
    groups = [cfg.target] if cfg.combine_targets else [[t] for t in cfg.target]
    return [(",".join(g), prepare(read_input(spark, g, cfg.target_format, cfg, "target"), cfg)) for g in groups]


def _metadata(cfg: DselConfig, summary: Summary, **extra: object) -> dict:
    return {"dsel_version": __version__, "run_id": summary.run_id, "command": summary.command,
            "params": cfg.to_dict(), **extra}


def _features_key(cfg: DselConfig, files: list[str], reader: str = "spark") -> dict:
    """What the features table depends on: the settings, the reader, and the input files with their sizes and times."""
    files = sorted(files)
    stats = []
    for name in files:
        local = name[len("file:"):] if name.startswith("file:") else name
        local = local.replace("///", "/") if local.startswith("///") else local
        try:
            info = os.stat(local)
            stats.append(f"{name}:{info.st_size}:{info.st_mtime_ns}")
        except OSError:
            stats.append(name)
    digest = hashlib.sha256("\n".join(stats).encode()).hexdigest()
    return {"raw": cfg.raw, "raw_format": cfg.raw_format, "text_column": cfg.text_column, "id_column": cfg.id_column,
            "max_doc_bytes": cfg.max_doc_bytes, "input_files": digest, **cfg.fit_params(),
            **({"reader": reader} if reader != "spark" else {})}


def featurize(spark: SparkSession, cfg: DselConfig, summary: Summary, raw: Optional[DataFrame] = None) -> DataFrame:
    """``OUT/features``: the raw text featurized in one pass, reused by fit and score (and by later fits).

    It is rebuilt only when the raw input or the n-gram settings changed since it was written.
    """
    paths = OutputPaths(cfg.out)
    if raw is None:
        fast = fast_plan(spark, cfg)
        if fast is not None:
            feats = _fast_featurize(spark, cfg, summary, fast)
            if feats is not None:
                return feats
        raw = (_stored_raw(spark, cfg, paths.features) if DeltaTable.isDeltaTable(spark, paths.features) else None)
        raw = raw if raw is not None else read_raw(spark, cfg)
    _COUNTED.pop(paths.features, None)
    key = _features_key(cfg, raw.inputFiles())
    if DeltaTable.isDeltaTable(spark, paths.features):
        meta = commit_metadata(spark, paths.features) or {}
        if meta.get("features_of") == key:
            summary.read = last_commit(spark, paths.features).rows
            _RAW_SCHEMAS[paths.features] = meta.get("raw_schema")
            return spark.read.format("delta").load(paths.features)
    started = time.time()
    _RAW_SCHEMAS[paths.features] = _raw_schema(raw)
    written = write_table(raw_features(raw, cfg), paths.features,
                          _metadata(cfg, summary, features_of=key, raw_schema=_RAW_SCHEMAS[paths.features]))
    summary.read = written.rows
    summary.tables[paths.features] = written.version
    summary.stage("featurize", started)
    return spark.read.format("delta").load(paths.features)


#: The raw schema (JSON) of each features table this process wrote or checked, by path.
_RAW_SCHEMAS: dict[str, Optional[str]] = {}
#: Raw bucket counts and features per fit bin that the pyarrow reader counted while featurizing, by path.
_COUNTED: dict[str, Optional[tuple]] = {}


def fast_plan(spark: SparkSession, cfg: DselConfig) -> Optional[jsonread.Plan]:
    """The pyarrow reader's plan for the raw input, or None (with one log line saying why)."""
    plan, why = jsonread.plan(spark, cfg)
    if plan is None:
        print(f"[dsel] reading the raw input with Spark's reader: {why}", flush=True)
    return plan


def _fast_featurize(spark: SparkSession, cfg: DselConfig, summary: Summary,
                    plan: jsonread.Plan) -> Optional[DataFrame]:
    """``OUT/features`` by the pyarrow reader (see :mod:`dsel.jsonread`); None when Spark's reader must
    read this input instead (the reason is logged)."""
    paths = OutputPaths(cfg.out)
    key = _features_key(cfg, plan.files, "pyarrow")
    metadata = _metadata(cfg, summary, features_of=key)
    started = time.time()
    fresh = not (DeltaTable.isDeltaTable(spark, paths.features)
                 and (commit_metadata(spark, paths.features) or {}).get("features_of") == key)
    if fresh:
        written = write_table(jsonread.features(spark, cfg, plan), paths.features, metadata)
        summary.tables[paths.features] = written.version
    feats = spark.read.format("delta").load(paths.features)
    checked, why = jsonread.check(spark, cfg, feats, paths.features, json.dumps(metadata, sort_keys=True, default=str))
    if checked is None:
        print(f"[dsel] reading the raw input with Spark's reader: {why}", flush=True)
        return None
    _RAW_SCHEMAS[paths.features] = checked.schema
    _COUNTED[paths.features] = checked.counted
    summary.read = written.rows if fresh else feats.count()
    if fresh:
        summary.stage("featurize", started)
    return spark.read.format("delta").load(paths.features)


def _features_schema(spark: SparkSession, paths: OutputPaths) -> Optional[str]:
    if paths.features not in _RAW_SCHEMAS:
        _RAW_SCHEMAS[paths.features] = (commit_metadata(spark, paths.features) or {}).get("raw_schema")
    return _RAW_SCHEMAS[paths.features]


def fit(spark: SparkSession, cfg: DselConfig, summary: Summary, raw: Optional[DataFrame] = None) -> Fit:
    """Fit raw and target histograms and write ``OUT/log_ratios``."""
    cfg.require("raw", "target", "out")
    paths = OutputPaths(cfg.out)
    paths.check_owned()
    targets = read_targets(spark, cfg)
    feats = featurize(spark, cfg, summary, raw)
    started = time.time()
    result = fit_histograms(feats, targets, cfg, _COUNTED.get(paths.features))
    summary.warnings.extend(result.warnings)
    schema = _features_schema(spark, paths)
    written = write_table(result.to_frame(spark), paths.log_ratios,
                          _metadata(cfg, summary, dsel_fit=result.params, targets=result.target_names,
                                    raw_schema=schema))
    summary.tables[paths.log_ratios] = written.version
    summary.stage("fit", started)
    return result


def load_fit(spark: SparkSession, cfg: DselConfig) -> Fit:
    """Read ``OUT/log_ratios`` back, checking it was fit with the same n-gram and hash settings."""
    path = OutputPaths(cfg.out).log_ratios
    frame = read_table(spark, path, "log_ratios")
    stored = (commit_metadata(spark, path) or {}).get("dsel_fit")
    if stored is None:
        raise DselError(f"{path} was not written by 'dsel fit'; run 'dsel fit' with this --out")
    wanted = cfg.fit_params()
    for key, value in stored.items():
        if wanted.get(key) != value:
            raise DselError(f"{path} was fit with {key}={value} but this run has {key}={wanted.get(key)}; "
                            f"pass --{key.replace('_', '-')} {value} or run 'dsel fit' again")
    return Fit.from_frame(frame, stored)


def score(spark: SparkSession, cfg: DselConfig, summary: Summary, fitted: Optional[Fit] = None,
          raw: Optional[DataFrame] = None) -> None:
    """Score every raw document from ``OUT/features`` and write ``OUT/weights`` and ``OUT/skipped``."""
    cfg.require("raw", "out")
    paths = OutputPaths(cfg.out)
    paths.check_owned()
    fitted = fitted or load_fit(spark, cfg)
    feats = featurize(spark, cfg, summary, raw)
    started = time.time()
    schema = _features_schema(spark, paths)
    metadata = _metadata(cfg, summary, dsel_fit=fitted.params, targets=fitted.target_names, raw_schema=schema)
    # The weights decode the stored features of usable records (no text is read); the skipped
    # records need no weights, only the narrow columns of the features table.
    usable = None
    if _COUNTED.get(paths.features) is not None:  # the pyarrow reader's table, unchanged: decode in Python
        usable = jsonread.scored(spark, feats, fitted.log_ratios)
    if usable is None:
        usable = score_records(feats.where(F.col("skip_reason").isNull()), fitted)
    written = write_table(weight_records(usable), paths.weights, metadata)
    summary.tables[paths.weights], summary.scored = written.version, written.rows
    written = write_table(skipped_records(feats), paths.skipped, metadata)
    summary.tables[paths.skipped] = written.version
    summary.skipped = {} if written.rows == 0 else {
        r["reason"]: int(r["count"])
        for r in spark.read.format("delta").load(paths.skipped).groupBy("reason").count().collect()}
    if cfg.strict and summary.skipped:
        reasons = ", ".join(f"{k}={v:,}" for k, v in sorted(summary.skipped.items()))
        raise DselError(f"strict mode: {sum(summary.skipped.values()):,} records were skipped ({reasons}); "
                        f"they are listed in {paths.skipped}. Fix the input, or run without --strict to skip them")
    weights = spark.read.format("delta").load(paths.weights)
    summary.eligible = eligible(weights, cfg.min_length).count()
    summary.stage("score", started)


def select(spark: SparkSession, cfg: DselConfig, summary: Summary, fitted: Optional[Fit] = None,
           raw: Optional[DataFrame] = None) -> DataFrame:
    """Choose documents from ``OUT/weights`` and write them, with all raw columns, to ``OUT/selected``."""
    cfg.require("raw", "out")
    if cfg.num_samples is None and cfg.num_tokens is None:
        raise DselError("give --num-samples K or --num-tokens N")
    paths = OutputPaths(cfg.out)
    paths.check_owned()
    started = time.time()
    fitted = fitted or Fit.from_frame(read_table(spark, paths.log_ratios, "log_ratios"), cfg.fit_params())
    weights = read_table(spark, paths.weights, "weights")
    proportions = cfg.target_proportions or [float(s) for s in fitted.target_sizes]
    if len(proportions) != len(fitted.target_names):
        raise DselError(f"target_proportions has {len(proportions)} values but {paths.log_ratios} has "
                        f"{len(fitted.target_names)} targets")
    selection = select_documents(weights, fitted.target_names, proportions, num_samples=cfg.num_samples,
                                 num_tokens=cfg.num_tokens, seed=cfg.seed, method=cfg.method,
                                 min_length=cfg.min_length)
    summary.warnings.extend(selection.warnings)
    if raw is None:
        raw = _selected_raw(spark, cfg, paths, selection)
    if raw is None:
        raw = _stored_raw(spark, cfg, paths.weights) or read_raw(spark, cfg)
    columns = user_columns(raw)
    # chosen's columns by new names: raw may be built from the selection itself (see _selected_raw)
    chosen = selection.chosen.select(*[F.col(c).alias(f"_dsel_c_{c}") for c in SELECTED_COLUMNS])
    chosen = F.broadcast(chosen) if (cfg.num_samples or 0) <= 1_000_000 else chosen
    joined = raw.join(chosen, (raw[ID] == F.col("_dsel_c_id")) & (raw[HASH] == F.col("_dsel_c_doc_hash")))
    # Several raw records with one id and one text: keep one, the same one on every run.
    once = Window.partitionBy("_dsel_c_id").orderBy(F.to_json(F.struct(*[raw[f"`{c}`"] for c in columns])))
    rows = (joined.withColumn("_dsel_once", F.row_number().over(once)).where(F.col("_dsel_once") == 1)
            .select(*[raw[f"`{c}`"] for c in columns],
                    *[F.col(f"_dsel_c_{c}").alias(c) for c in ("num_words", "log_weight", "rank", "target")],
                    F.lit(summary.run_id).alias("run_id"))
            .orderBy("target", "rank"))
    commit = write_table(rows, paths.selected, _metadata(cfg, summary, requested=selection.requested))
    summary.tables[paths.selected], summary.selected = commit.version, commit.rows
    summary.eligible = selection.eligible
    written = spark.read.format("delta").load(paths.selected)
    summary.selected_words = int(written.agg(F.sum("num_words")).first()[0] or 0)
    summary.kl_reduction = run_kl_reduction(spark, cfg)["kl_reduction"]
    if cfg.export:
        export(written.drop("run_id"), cfg.export, cfg.export_format)
        summary.tables[cfg.export] = -1
    summary.stage("select", started)
    return written


def _selected_raw(spark: SparkSession, cfg: DselConfig, paths: OutputPaths, selection) -> Optional[DataFrame]:
    """The chosen raw records read back by their line (pyarrow reader), when OUT/features knows where
    each line is and the raw files are unchanged since; else None.

    The selection is materialized first (it is used twice: to find the lines and to join them)."""
    if not DeltaTable.isDeltaTable(spark, paths.features):
        return None
    feats = spark.read.format("delta").load(paths.features)
    if not jsonread.is_fast(feats):
        return None
    plan, _ = jsonread.plan(spark, cfg)
    meta = commit_metadata(spark, paths.features) or {}
    schema = (commit_metadata(spark, paths.weights) or {}).get("raw_schema")
    if plan is None or schema is None or meta.get("features_of") != _features_key(cfg, plan.files, "pyarrow"):
        return None
    selection.chosen = selection.chosen.localCheckpoint()
    return jsonread.raw_rows(feats, selection.chosen, schema)


def _record(spark: SparkSession, cfg: DselConfig, summary: Summary) -> None:
    summary.finish()
    paths = OutputPaths(cfg.out)
    record_run(spark, paths.runs, {
        "run_id": summary.run_id, "command": summary.command,
        "started_at": dt.datetime.fromtimestamp(summary.started), "finished_at": dt.datetime.fromtimestamp(summary.finished),
        "params": json.dumps(cfg.to_dict(), sort_keys=True), "counts": json.dumps(summary.counts(), sort_keys=True),
        "table_versions": json.dumps(summary.tables, sort_keys=True), "dsel_version": __version__,
    })


def execute(spark: SparkSession, cfg: DselConfig, command: str) -> Summary:
    """Run one command ('fit', 'score', 'select' or 'run') and record it in ``OUT/runs``."""
    summary = Summary(command=command, run_id=cfg.run_id or cfg.default_run_id(command))
    if command == "fit":
        fit(spark, cfg, summary)
    elif command == "score":
        score(spark, cfg, summary)
    elif command == "select":
        select(spark, cfg, summary)
    elif command == "run":
        cfg.require("raw", "target", "out")
        if cfg.num_samples is None and cfg.num_tokens is None:
            raise DselError("give --num-samples K or --num-tokens N")
        # Spark's reader: one schema inference for the whole run; the pyarrow reader needs none
        raw = None if jsonread.plan(spark, cfg)[0] is not None else read_raw(spark, cfg)
        fitted = fit(spark, cfg, summary, raw)
        score(spark, cfg, summary, fitted, raw)
        select(spark, cfg, summary, fitted, raw)
    else:
        raise DselError(f"unknown command {command!r}; use fit, score, select or run")
    _record(spark, cfg, summary)
    return summary


__all__ = ["execute", "fit", "load_fit", "score", "select", "read_raw", "read_targets"]
