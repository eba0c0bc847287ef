"""The facade: fit, score, select and run, each from a :class:`~dsel.config.DselConfig`.

These functions wire the stage modules (read, featurize, fit, score, select, write, report)
to the Delta tables under ``cfg.out``.  The SparkSession is always passed in.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import math
import os
import shutil
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, Optional

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType
from delta.tables import DeltaTable

from dsel import __version__, jsonread
from dsel.config import DselConfig, same_input, same_inputs
from dsel.errors import DselError, user_error
from dsel.fit import Fit, bin_counts, fit as fit_histograms
from dsel.read import (DETAIL, HASH, ID, INTERNAL, REASON, SOURCE, arrow_path, file_states, files_digest,
                       fingerprint, parallelism, parquet_files, per_file, plain_parquet, prepare, read_input)
from dsel.report import Summary
from dsel.score import (DUPLICATES_ON_DRIVER, duplicates as duplicate_records, score as score_records, score_files,
                        score_files_function, skipped as skipped_records, unique_weights, unique_weights_batch,
                        weights as weight_records)
from dsel.select import (SMALL_K, Counts, Filters, carried_rows, filter_counts, select as select_documents,
                         with_raw_columns)
from dsel.evaluate import run_kl_reduction
from dsel.featurize import LOCATION_COLUMNS, features as raw_features
from dsel.runs import bookkeeping_session, claim, mark_taken_over, record_run, release
from dsel.session import require_delta
from dsel.write import (PARQUET_WRITER_SCHEMA, STAGING, OutputPaths, Written, check_export, check_outputs,
                        commit_metadata, commit_stamp, driver_rows, export, interrupted_write, last_commit, load_state,
                        local_dir, parquet_writer, prefetch_commits, publish_parquet, read_table, remembering,
                        remembering_commits, write_table)


def read_raw(spark: SparkSession, cfg: DselConfig, schema: Optional[StructType] = None,
             summary: Optional[Summary] = None) -> DataFrame:
    """The raw corpus with all its columns plus dsel's internal ones (its state goes to ``summary.inputs``)."""
    state: dict = {}
    df = prepare(read_input(spark, cfg.raw, cfg.raw_format, cfg, "raw", schema, state), cfg)
    if summary is not None:
        summary.inputs["raw"] = state
    return df


def checkpoint_is_safe(conf: Callable[[str, str], str]) -> bool:
    """Whether a local checkpoint's blocks stay while the run needs them, given a getter of Spark's
    configuration: not under dynamic allocation with a finite
    ``spark.dynamicAllocation.cachedExecutorIdleTimeout``, which removes idle executors with their
    cached blocks (Spark's default keeps them, its timeout being infinite)."""
    if conf("spark.dynamicAllocation.enabled", "false").strip().lower() != "true":
        return True
    return conf("spark.dynamicAllocation.cachedExecutorIdleTimeout", "infinity").strip().lower() == "infinity"


def materialized(df: DataFrame, conf: Optional[Callable[[str, str], str]] = None) -> DataFrame:
    """``df`` computed now and kept on the executors for the jobs that read it next: a local
    checkpoint (which also cuts the plan's lineage), or, where executors holding cached blocks can be
    removed (:func:`checkpoint_is_safe` of ``conf``, by default the application's configuration),
    ``df`` persisted and counted, whose lost blocks Spark recomputes from their lineage (a lost local
    checkpoint block fails the job)."""
    spark = df.sparkSession
    if conf is None:
        try:
            conf = spark.sparkContext.getConf().get
        except Exception:  # Spark Connect: the session's view of the configuration
            conf = spark.conf.get
    if checkpoint_is_safe(conf):
        return df.localCheckpoint()
    df = df.persist(StorageLevel.MEMORY_AND_DISK)
    df.count()
    return df


def _raw_schema(df: DataFrame) -> str:
    """The raw input's own schema as JSON, stored in commit metadata so later stages skip inference."""
    return StructType([f for f in df.schema.fields if f.name not in INTERNAL]).json()


def _stored_raw(spark: SparkSession, cfg: DselConfig, path: str, summary: Optional[Summary] = None) -> Optional[DataFrame]:
    """The raw input read with the schema stored at ``path``'s last commit, if it was the same input."""
    if not DeltaTable.isDeltaTable(spark, path):
        return None
    meta = commit_metadata(spark, path) or {}
    params, schema = meta.get("params", {}), meta.get("raw_schema")
    if schema and params.get("raw") == cfg.raw and params.get("raw_format") == cfg.raw_format:
        return read_raw(spark, cfg, StructType.fromJson(json.loads(schema)), summary)
    return None


def read_targets(spark: SparkSession, cfg: DselConfig, summary: Optional[Summary] = None) -> list[tuple[str, DataFrame]]:
    """(name, prepared DataFrame) per target: one per --target, or one in all with combine_targets."""
    indices = list(range(len(cfg.target)))
    per_target = len(cfg.target_text_column or []) > 1  # a text column per target: each is read on its own
    groups = [indices] if cfg.combine_targets and not per_target else [[i] for i in indices]
    targets, states = [], []
    for group in groups:
        state: dict = {}
        settings = cfg.for_target(group[0]) if group else cfg
        sources = [cfg.target[i] for i in group]
        targets.append((",".join(sources), prepare(read_input(spark, sources, cfg.target_format, settings, "target",
                                                              state=state), settings)))
        states.append(state)
    if cfg.combine_targets and per_target:  # one target of them all, as --combine-targets reads them together
        union = functools.reduce(lambda a, b: a.unionByName(b, allowMissingColumns=True), [df for _, df in targets])
        targets, states = [(",".join(cfg.target), union)], [{"parts": states}]
    if summary is not None:
        summary.inputs["targets"] = states
    return targets


def _metadata(cfg: DselConfig, summary: Summary, **extra: object) -> dict:
    return {"dsel_version": __version__, "run_id": summary.run_id, "command": summary.command,
            "params": cfg.to_dict(), "inputs": summary.inputs, **extra}


def _features_settings(cfg: DselConfig) -> dict:
    """What the features of one record depend on (besides the record)."""
    return {"raw": cfg.raw, "raw_format": cfg.raw_format, "text_column": cfg.text_column, "id_column": cfg.id_column,
            "max_doc_bytes": cfg.max_doc_bytes, "quality_stats": int(cfg.quality_stats), **cfg.fit_params()}


def _reusable(stored: Optional[dict], wanted: dict) -> Optional[dict]:
    """The key of a features table built as ``stored`` if it serves a run that wants ``wanted``, else None:
    the same key, or the same but with the quality statistics counted when this run does not need them."""
    mine, wanted = _alike(stored), _alike(wanted)
    if mine == wanted or (mine and mine.get("quality_stats") == 1
                          and {**mine, "quality_stats": wanted.get("quality_stats")} == wanted):
        return stored
    return None


def _alike(key: Optional[dict]) -> Optional[dict]:
    """A features or fit key with its input paths as one spelling (``/x/dir``, ``/x/dir/``, ``file:/x/dir``
    and ``file:///x/dir`` name one input, as for ``pin_versions``): a respelt --raw or --target featurized
    the whole input again, or fit again, unsaid."""
    if not key:
        return key
    key = same_inputs(key)
    if isinstance(key.get("targets"), list):
        key["targets"] = [{**state, "sources": [same_input(p) for p in state.get("sources", [])]}
                          if isinstance(state, dict) else state for state in key["targets"]]
    return key


def _fast_key(cfg: DselConfig) -> dict:
    """What the pyarrow reader's features of one record depend on (besides the record); which files
    the table holds, with their sizes and times, is in its commit's ``input_files``."""
    return {**_features_settings(cfg), "reader": "pyarrow"}


def _changed_files(held: Optional[dict], files: dict[str, str]) -> Optional[list[str]]:
    """The files a pyarrow-read features table holds (``held``: name -> state, see
    :func:`dsel.read.file_states`) that are gone from ``files`` or changed since; None when it holds no list."""
    if held is None:
        return None
    return sorted(name for name, state in held.items() if files.get(name) != state)


def _record_key(id_col: str, hash_col: str, detail_col: str) -> list:
    """A record's identity across runs: id, content hash, and for malformed lines the line itself."""
    return [F.coalesce(F.col(id_col), F.lit("")).alias("_dsel_k_id"), F.col(hash_col).alias("_dsel_k_hash"),
            F.coalesce(F.col(detail_col), F.lit("")).alias("_dsel_k_detail")]


_KEY = ["_dsel_k_id", "_dsel_k_hash", "_dsel_k_detail"]


def _count(spark: SparkSession, path: str) -> int:
    return spark.read.format("delta").load(path).count()


def featurize(spark: SparkSession, cfg: DselConfig, summary: Summary, raw: Optional[DataFrame] = None) -> DataFrame:
    """``OUT/features``: the raw records featurized once, reused by fit and score and by later runs.

    When the table was built from the same input with the same settings, only the records it
    does not hold yet (by id, content hash and, for malformed lines, the line) are featurized and
    appended: a growing input costs only its new records.  When records have gone from the input
    (deleted or changed), or the settings changed, the whole input is featurized again.
    """
    paths = OutputPaths(cfg.out)
    if raw is None:
        plan = fast_plan(spark, cfg)
        if plan is not None:
            feats = _fast_featurize(spark, cfg, summary, plan)
            if feats is not None:
                return feats
        raw = _stored_raw(spark, cfg, paths.features, summary) or read_raw(spark, cfg, summary=summary)
    _COUNTED.pop(paths.features, None)
    meta = (commit_metadata(spark, paths.features) or {}) if DeltaTable.isDeltaTable(spark, paths.features) else {}
    wanted = _features_settings(cfg)
    settings = _reusable(meta.get("features_of"), wanted) or wanted
    stats = bool(settings["quality_stats"])  # appended records get statistics when the table has them
    started = time.time()
    _RAW_SCHEMAS[paths.features] = _raw_schema(raw)
    metadata = _metadata(cfg, summary, features_of=settings, raw_input=summary.inputs.get("raw"),
                         raw_schema=_RAW_SCHEMAS[paths.features])
    if meta.get("features_of") == settings:
        before = _count(spark, paths.features)
        if meta.get("raw_input") == summary.inputs.get("raw"):
            summary.read, summary.featurized = before, 0
            return spark.read.format("delta").load(paths.features)
        seen = spark.read.format("delta").load(paths.features).select(*_record_key(ID, HASH, "detail")).distinct()
        observed = Observation(f"dsel_raw_{uuid.uuid4().hex}")
        counted = raw.observe(observed, F.count(F.lit(1)).alias("rows"))
        new = (counted.select("*", *_record_key(ID, HASH, DETAIL)).join(seen, _KEY, "left_anti").drop(*_KEY))
        written = _write_features(raw_features(new, cfg, stats), paths, metadata, mode="append")
        rows = int(observed.get["rows"])
        if rows - written.rows == before:
            summary.read, summary.featurized = rows, written.rows
            summary.tables[paths.features] = written.version
            summary.stage("featurize", started)
            return spark.read.format("delta").load(paths.features)
        print(f"[dsel] {before + written.rows - rows:,} records of {paths.features} are no longer in the raw input "
              "(deleted or changed); featurizing the whole input again", flush=True)
    written = _write_features(raw_features(raw, cfg, stats), paths, metadata, change_feed=True)
    summary.read, summary.featurized = written.rows, written.rows
    summary.tables[paths.features] = written.version
    summary.stage("featurize", started)
    return spark.read.format("delta").load(paths.features)


def _write_features(df: DataFrame, paths: OutputPaths, metadata: dict, **options) -> Written:
    """Write ``OUT/features`` as :func:`write_table` does, stored as this cache of encoded counts is
    meant to be: no per-file column statistics (it is read whole or joined on ids), no compression
    codec (its varints do not compress), and no deletion vectors (the workers read its Parquet files,
    see :func:`dsel.read.parquet_files`)."""
    return write_table(df, paths.features, metadata, column_stats=False, compressed=False, plain_files=True,
                       **options)


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
    read this input instead (the reason is logged).

    The table remembers the files it holds (name, size, modification time).  When the input only
    gained files, only those are read and their records appended; when a file it holds changed or
    went, the whole input is featurized again.
    """
    paths = OutputPaths(cfg.out)
    meta = (commit_metadata(spark, paths.features) or {}) if DeltaTable.isDeltaTable(spark, paths.features) else {}
    stored = _reusable(meta.get("features_of"), _fast_key(cfg))
    key = stored or _fast_key(cfg)
    files = file_states(plan.files, plan.sizes)
    held = meta.get("input_files") if stored else None
    changed = _changed_files(held, files)
    new = [name for name in plan.files if name not in held] if changed == [] else []
    metadata = _metadata(cfg, summary, features_of=key, input_files=files)
    started, written, stats = time.time(), None, bool(key["quality_stats"])
    if changed:
        print(f"[dsel] {len(changed):,} raw files changed or went since {paths.features} was built "
              f"(first: {changed[0]}); featurizing the whole input again", flush=True)
    if changed is None or changed:
        written = _direct_features(spark, cfg, plan, stats, paths, metadata) if changed is None else None
        if written is None:
            written = _write_features(jsonread.features(spark, cfg, plan, stats), paths, metadata, change_feed=True)
    elif new:
        print(f"[dsel] featurizing the {len(new):,} raw files that {paths.features} does not hold yet", flush=True)
        rows = jsonread.features(spark, cfg, plan.only(spark, new), stats)
        held = spark.read.format("delta").load(paths.features).columns
        written = _write_features(rows.select(*[c for c in rows.columns if c in held]), paths, metadata,
                                  mode="append")  # as the table's columns (one an earlier dsel wrote lacks fit_counts)
    if written is not None:
        summary.tables[paths.features] = written.version
    feats = spark.read.format("delta").load(paths.features)
    checked, why = jsonread.check(spark, cfg, feats, paths.features, json.dumps(metadata, sort_keys=True, default=str))
    if checked is None:
        print(f"[dsel] reading the raw input with Spark's reader: {why}", flush=True)
        return None
    _RAW_SCHEMAS[paths.features] = checked.schema
    _COUNTED[paths.features] = checked.counted
    summary.read = written.rows if written is not None and not new else feats.count()
    summary.featurized = written.rows if written is not None else 0
    summary.inputs["raw"] = {"sources": list(cfg.raw), "format": "json", "files": len(plan.files),
                             "digest": files_digest(plan.files)}
    if written is not None:
        summary.stage("featurize", started)
    return spark.read.format("delta").load(paths.features)


#: features_writer auto: the size of raw input from which the workers write a new OUT/features
#: themselves.  The JVM's share of featurize is about a fifth of its CPU, the conversion to Delta a
#: fixed ~1.5 s.  Measured, featurize with Spark's writer / the workers': 17.9 / 15.7 s at 2 GB,
#: 13.5 / 14.1 s at 1.08 GB (the benchmark's 1 GB set), 148.4 / 117.3 s at 16 GB.
DIRECT_WRITE_MIN_BYTES = 2 << 30


def _direct_features(spark: SparkSession, cfg: DselConfig, plan: jsonread.Plan, stats: bool, paths: OutputPaths,
                     metadata: dict) -> Optional[Written]:
    """A new ``OUT/features`` written by the workers with pyarrow and converted to Delta in place
    (see :func:`dsel.write.parquet_writer`), or None when Spark's Delta writer writes it (see
    :func:`_workers_write`; auto: from :data:`DIRECT_WRITE_MIN_BYTES` of input)."""
    if not _workers_write(spark, cfg, paths.features, sum(plan.sizes.values()), DIRECT_WRITE_MIN_BYTES):
        return None
    schema = to_arrow_schema(StructType.fromDDL(jsonread.FEATURES_COLUMNS))
    return _written_by_workers(
        spark, paths, paths.features,
        lambda staging: jsonread.tasks_frame(spark, plan).mapInArrow(
            parquet_writer(jsonread.features_function(cfg, plan, stats), staging, schema), PARQUET_WRITER_SCHEMA),
        metadata, {"delta.enableChangeDataFeed": "true", "delta.dataSkippingNumIndexedCols": "0",
                   "delta.enableDeletionVectors": "false"})


def _workers_write(spark: SparkSession, cfg: DselConfig, path: str, size: int, min_bytes: int) -> bool:
    """Whether the workers write the new table at ``path`` themselves (see :func:`_written_by_workers`):
    not when a table (or anything but an interrupted write) is already there, ``--out`` is not a local
    directory, a Delta default would make the files differ from the table, features_writer is 'spark',
    or (auto) ``size`` is under ``min_bytes``."""
    local = _local_dir(spark, path)
    return not (cfg.features_writer == "spark" or local is None
                or (os.path.lexists(local) and not interrupted_write(local))
                or not plain_parquet(spark) or (cfg.features_writer == "auto" and size < min_bytes))


def _written_by_workers(spark: SparkSession, paths: OutputPaths, path: str, writing: Callable[[str], DataFrame],
                        metadata: dict, properties: dict[str, str]) -> Written:
    """The new Delta table at local ``path`` from the Parquet files that the tasks of ``writing(staging)``
    (a :func:`dsel.write.parquet_writer` frame) write into a staging directory, converted in place."""
    staging = local_dir(paths.table(STAGING))
    shutil.rmtree(staging, ignore_errors=True)  # left by a run that was killed while writing
    os.makedirs(staging)
    try:
        parts = writing(staging).collect()
        written = {os.path.basename(r["file"]) for r in parts if r["file"]}
        for name in set(os.listdir(staging)) - written:  # what failed attempts may have left
            os.remove(os.path.join(staging, name))
        shutil.rmtree(local_dir(path), ignore_errors=True)  # what an interrupted write left (the lock is ours)
        version = publish_parquet(spark, staging, path, metadata, properties)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"[dsel] {path} written by the workers ({len(written):,} Parquet files) and converted to Delta", flush=True)
    return Written(version, sum(int(r["rows"]) for r in parts))


def _local_dir(spark: SparkSession, path: str) -> Optional[str]:
    """:func:`dsel.write.local_dir` of ``path`` where Spark reads it from the local file system too: a
    file:// path, or a plain one where the default file system is local (not, say, dbfs: on Databricks)."""
    local = local_dir(path)
    if local is None or path.startswith("file://"):
        return local
    try:
        default = spark.sparkContext._jsc.hadoopConfiguration().get("fs.defaultFS", "file:///")
    except Exception:  # Spark Connect: no JVM in this process to ask
        return None
    return local if str(default).startswith("file:") else None


def _features_schema(spark: SparkSession, paths: OutputPaths) -> Optional[str]:
    if paths.features not in _RAW_SCHEMAS:
        _RAW_SCHEMAS[paths.features] = (commit_metadata(spark, paths.features) or {}).get("raw_schema")
    return _RAW_SCHEMAS[paths.features]


def _fit_of(cfg: DselConfig, summary: Summary) -> dict:
    """What a fit depends on besides the raw documents: the targets and the fit settings."""
    return {"target": cfg.target, "target_format": cfg.target_format, "combine_targets": cfg.combine_targets,
            "num_tokens_to_fit": cfg.num_tokens_to_fit, "targets": summary.inputs.get("targets"),
            "text_column": cfg.text_column, "id_column": cfg.id_column,
            **_target_text_columns(cfg), **cfg.fit_params()}


def _target_text_columns(cfg: DselConfig) -> dict:
    """``target_text_column`` as a fit remembers it: one name as a string (as fits before one per target)."""
    names = cfg.target_text_column or []
    return {"target_text_column": names[0] if len(names) == 1 else names} if names else {}


def refit_reason(spark: SparkSession, cfg: DselConfig, summary: Summary) -> Optional[str]:
    """Why ``dsel run`` must fit the histograms again, or None to reuse ``OUT/log_ratios``.

    A fit is always made when there is none, or when it was made for other targets (other files,
    or a Delta target at another version) or settings.  Otherwise ``refit='always'`` fits every
    run, ``'never'`` reuses the fit, and ``'auto'`` fits again when the raw records changed in
    number by more than ``refit_growth`` (a fraction) since the fit was made.
    """
    path = OutputPaths(cfg.out).log_ratios
    if not DeltaTable.isDeltaTable(spark, path):
        return "no fit yet"
    meta = commit_metadata(spark, path) or {}
    if _alike(meta.get("fit_of")) != _alike(_fit_of(cfg, summary)):
        return "the targets or the fit settings changed"
    if cfg.refit == "always":
        return "refit=always"
    if cfg.refit == "never":
        return None
    then, now = int(meta.get("raw_rows") or 0), int(summary.read or 0)
    if then <= 0 or abs(now - then) > cfg.refit_growth * then:
        return f"the raw records went from {then:,} to {now:,}, more than refit_growth={cfg.refit_growth:g}"
    return None


def fit(spark: SparkSession, cfg: DselConfig, summary: Summary, feats: Optional[DataFrame] = None,
        reason: str = "dsel fit") -> Fit:
    """Fit raw and target histograms and write ``OUT/log_ratios``."""
    cfg.require("raw", "target", "out")
    paths = OutputPaths(cfg.out)
    targets = read_targets(spark, cfg, summary)
    feats = feats if feats is not None else featurize(spark, cfg, summary)
    started = time.time()
    result = fit_histograms(feats, targets, cfg, _COUNTED.get(paths.features),
                            lambda bins: bin_counts(spark, feats, cfg.num_buckets, bins))
    summary.target_records = dict(zip(result.target_names, result.target_records or []))
    if cfg.strict:
        _strict_targets(targets, summary.target_records)
    summary.warnings.extend(result.warnings)
    schema = _features_schema(spark, paths)
    written = write_table(result.to_frame(spark), paths.log_ratios,
                          _metadata(cfg, summary, dsel_fit=result.params, targets=result.target_names,
                                    raw_schema=schema, fit_of=_fit_of(cfg, summary), raw_rows=summary.read,
                                    target_records=result.target_records))
    summary.tables[paths.log_ratios] = written.version
    summary.fit_version, summary.refit = written.version, reason
    summary.stage("fit", started)
    return result


def _strict_targets(targets: list[tuple[str, DataFrame]], records: dict[str, dict]) -> None:
    """Strict mode: fail when a target record was skipped, naming the first few (a target is small)."""
    skipped = {name: seen["skipped"] for name, seen in records.items()}
    if not any(skipped.values()):
        return
    examples = []
    for name, df in targets:
        if skipped.get(name):
            rows = df.where(F.col(REASON).isNotNull()).select(SOURCE, ID, DETAIL, REASON).limit(5).collect()
            examples += [f"{r[3]} in {r[0]}: " + (f"line starting {r[2][:60]!r}" if r[2] else f"id {r[1]!r}")
                         for r in rows]
    counts = "; ".join(f"{name}: " + ", ".join(f"{k}={v:,}" for k, v in seen.items())
                       for name, seen in skipped.items() if seen)
    example = f", for example {'; '.join(examples[:5])}" if examples else ""  # an empty text has no reason row
    raise DselError(f"strict mode: target records were skipped ({counts}){example}. Fix the target, or run "
                    "without --strict to skip them")


def load_fit(spark: SparkSession, cfg: DselConfig, summary: Optional[Summary] = None,
             path: Optional[str] = None, version: Optional[int] = None) -> Fit:
    """Read ``OUT/log_ratios`` (or ``path`` as of ``version``), checking it has this run's n-gram and hash settings."""
    path = path or OutputPaths(cfg.out).log_ratios
    frame = read_table(spark, path, "log_ratios")
    version = last_commit(spark, path).version if version is None else version
    frame = spark.read.format("delta").option("versionAsOf", version).load(path)
    meta = _commit_at(spark, path, version) or {}
    stored = meta.get("dsel_fit")
    if stored is None:
        raise DselError(f"{path} was not written by 'dsel fit'; run 'dsel fit' with this --out")
    wanted = cfg.fit_params()
    for key, value in stored.items():
        if wanted.get(key) != value:
            raise DselError(f"{path} was fit with {key}={value} but this run has {key}={wanted.get(key)}; "
                            f"pass --{key.replace('_', '-')} {value} or run 'dsel fit' again")
    if summary is not None:
        summary.fit_version = version
        # what the fit read of the targets (an older fit stored nothing: no line then)
        summary.fit_target_records = dict(zip(meta.get("targets") or [], meta.get("target_records") or []))
    return Fit.from_frame(frame, stored)


def _commit_at(spark: SparkSession, path: str, version: int) -> Optional[dict]:
    """The userMetadata of commit ``version`` (the latest one's is remembered, see :func:`commit_metadata`)."""
    if version == last_commit(spark, path).version:
        return commit_metadata(spark, path)
    row = (DeltaTable.forPath(spark, path).history().where(F.col("version") == version)
           .select("userMetadata").first())
    return json.loads(row[0]) if row and row[0] else None


def _appended_since(spark: SparkSession, path: str, version: int) -> Optional[DataFrame]:
    """The rows appended to ``path`` after ``version``, from Delta's change data feed, or None when
    something other than appends happened since (or the feed is off): then everything is rescored."""
    history = DeltaTable.forPath(spark, path).history().where(F.col("version") > version).collect()
    if not history or any(r["operation"] != "WRITE" or (r["operationParameters"] or {}).get("mode") != "Append"
                          for r in history):
        return None
    try:
        changes = (spark.read.format("delta").option("readChangeFeed", "true")
                   .option("startingVersion", version + 1).load(path))
        changes.schema  # noqa: B018 - fails here when the change feed was not on for these versions
    except Exception:
        return None
    return changes.where(F.col("_change_type") == "insert").drop("_change_type", "_commit_version", "_commit_timestamp")


def _skipped_counts(spark: SparkSession, path: str) -> dict[str, int]:
    return {r["reason"]: int(r["count"]) for r in spark.read.format("delta").load(path).groupBy("reason").count().collect()}


def score(spark: SparkSession, cfg: DselConfig, summary: Summary, fitted: Optional[Fit] = None,
          feats: Optional[DataFrame] = None, count_eligible: bool = True) -> None:
    """Score the raw documents from ``OUT/features`` into ``OUT/weights`` and ``OUT/skipped``.

    With the same fit as the weights table's, only the records appended to ``OUT/features`` since
    it was scored (and the other records of their ids, for the duplicate-id rule) are scored, and
    merged in; when nothing was appended, nothing is done (a rerun resumes after this stage).
    ``count_eligible``: count the documents each selection filter removes (select counts them too).
    """
    cfg.require("raw", "out")
    paths = OutputPaths(cfg.out)
    fitted = fitted or load_fit(spark, cfg, summary)
    feats = feats if feats is not None else featurize(spark, cfg, summary)
    started = time.time()
    features_version = last_commit(spark, paths.features).version
    metadata = _metadata(cfg, summary, dsel_fit=fitted.params, targets=fitted.target_names,
                         raw_schema=_features_schema(spark, paths), fit_version=summary.fit_version,
                         features_version=features_version)
    previous = (commit_metadata(spark, paths.weights) or {}) if DeltaTable.isDeltaTable(spark, paths.weights) else {}
    same_fit = previous.get("fit_version") == summary.fit_version and previous.get("dsel_fit") == fitted.params
    scored_through = previous.get("features_version")
    appended = (_appended_since(spark, paths.features, scored_through)
                if same_fit and scored_through is not None and scored_through < features_version else None)
    if appended is not None and not set(LOCATION_COLUMNS) <= set(
            spark.read.format("delta").load(paths.weights).columns):
        appended = None  # weights of an earlier layout: rescored whole, as merging needs the same columns
    if same_fit and scored_through == features_version and DeltaTable.isDeltaTable(spark, paths.skipped):
        summary.scored_now = 0
    elif appended is not None:
        summary.scored_now = _score_appended(spark, paths, fitted, appended, metadata, summary)
    else:
        _score_all(spark, cfg, paths, fitted, feats, metadata, summary)
    summary.scored = _count(spark, paths.weights)
    summary.skipped = _skipped_counts(spark, paths.skipped)
    if cfg.strict and summary.skipped:
        reasons = ", ".join(f"{k}={v:,}" for k, v in sorted(summary.skipped.items()))
        raise DselError(f"strict mode: {sum(summary.skipped.values()):,} records were skipped ({reasons}); "
                        f"they are listed in {paths.skipped}. Fix the input, or run without --strict to skip them")
    if count_eligible:
        counts = filter_counts(spark.read.format("delta").load(paths.weights), Filters.of(cfg))
        summary.eligible, summary.filtered = counts.eligible, counts.removed
    summary.stage("score", started)


def _score_all(spark: SparkSession, cfg: DselConfig, paths: OutputPaths, fitted: Fit, feats: DataFrame,
               metadata: dict, summary: Summary) -> None:
    # The weights decode the stored features of usable records (no text is read); the skipped
    # records need no weights, only the narrow columns of the features table.  The weights are
    # written last: their commit records what was scored, so a crash before it redoes both.
    weights, duplicates, drop = _fast_weights(spark, paths, fitted, feats)
    if weights is None:
        weights = weight_records(score_records(feats.where(F.col("skip_reason").isNull()), fitted))
    written = write_table(skipped_records(feats, duplicates), paths.skipped, metadata)
    summary.tables[paths.skipped] = written.version
    written = None if drop is None else _direct_weights(spark, cfg, paths, fitted, feats, weights.schema, drop,
                                                        metadata)
    written = written or _write_weights(spark, paths, weights, metadata)
    summary.tables[paths.weights], summary.scored_now = written.version, written.rows


def _write_weights(spark: SparkSession, paths: OutputPaths, weights: DataFrame, metadata: dict,
                   mode: str = "overwrite") -> Written:
    # In at most four files per core: every re-select's top-k opens each file of the weights (16 GB:
    # 133 files of 1.5 MB took 1.13 s, 8 files 0.89 s); their scoring tasks are as many, a few inputs each.
    # Each file in descending log_weight: a top-k reads only its first pages (see dsel.select._top).
    weights = (weights.coalesce(4 * parallelism(spark))
               .sortWithinPartitions(F.col("log_weight").desc()))
    return write_table(weights, paths.weights, metadata, mode=mode, column_stats=False)


def _fast_weights(spark: SparkSession, paths: OutputPaths, fitted: Fit,
                  feats: DataFrame) -> tuple[Optional[DataFrame], Optional[DataFrame], Optional[list]]:
    """The weights of the pyarrow reader's features table, unchanged since it was checked, decoded in
    Python, and when the duplicate ids were settled on the driver (then the weights need no shuffle)
    the ``duplicate_id`` rows of ``OUT/skipped`` and the records they leave out (see
    :func:`dsel.score.duplicates`); (None, None, None) for any other table."""
    if _COUNTED.get(paths.features) is None:
        return None, None, None
    drop = duplicate_records(feats)
    usable = score_files(spark, feats, fitted.log_ratios, drop or ())
    if usable is None:
        return None, None, None
    if drop is None:
        return weight_records(usable), None, None
    rows = driver_rows(spark, [(i, "duplicate_id", source, None) for i, source, _ in drop],
                       "id string, reason string, source_file string, detail string")
    return unique_weights(usable), rows, drop


#: features_writer auto: the bytes of ``OUT/features`` from which the workers write a new
#: ``OUT/weights`` themselves (the features are about half the bytes of the raw input they encode).
#: The JVM's sort and write of the weights grows with the rows, the conversion to Delta is a fixed
#: ~1.5 s.  Measured, the score stage with Spark's writer / the workers' (two runs each, 1, 2 and 4
#: files of the 16 GB benchmark set): 5.3, 5.8 / 7.6, 8.0 s at 0.54 GB of features; 8.6, 8.4 / 9.0,
#: 8.9 s at 1.08 GB; 12.3, 12.7 / 10.1, 10.6 s at 2.2 GB; 45.8 / 26.7 s at 8.6 GB (one run each).
DIRECT_WEIGHTS_MIN_BYTES = 3 << 29
#: A weights-writing task scores at most about this many bytes of ``OUT/features``: it holds all its
#: weights rows to order them (1 GiB of the benchmark's features: about 780,000 rows, 150 MB).
WEIGHTS_TASK_BYTES = 1 << 30


def _direct_weights(spark: SparkSession, cfg: DselConfig, paths: OutputPaths, fitted: Fit, feats: DataFrame,
                    schema: StructType, drop: list, metadata: dict) -> Optional[Written]:
    """A new ``OUT/weights`` (``schema``) written by the workers that score the features, as the
    workers write a new ``OUT/features`` (see :func:`_direct_features`), or None when Spark's Delta
    writer writes it (see :func:`_workers_write`; auto: from :data:`DIRECT_WEIGHTS_MIN_BYTES` of
    features).  Only with the duplicate ids settled on the driver (``drop``): otherwise Spark's
    shuffle keeps one record per id.

    As :func:`_write_weights` writes them: each file in descending ``log_weight`` (with Parquet's page
    index), at least four files per core, and more when the features are large, so that no task
    orders more than the weights of :data:`WEIGHTS_TASK_BYTES` of features, in a multiple of the cores."""
    files = parquet_files(spark, feats)
    if not files:
        return None
    filesystem = arrow_path(files[0])[0]
    size = sum(i.size or 0 for i in filesystem.get_file_info([arrow_path(f)[1] for f in files]))
    if not _workers_write(spark, cfg, paths.weights, size, DIRECT_WEIGHTS_MIN_BYTES):
        return None
    scoring = score_files_function(files, fitted.log_ratios, drop)
    cores = parallelism(spark)
    tasks = max(4 * cores, math.ceil(size / WEIGHTS_TASK_BYTES))
    # in whole waves (just over 8 GiB of features made 9 tasks: one core idle for the last task's 1.3 s)
    tasks = math.ceil(tasks / cores) * cores

    def rows(batches):
        return (unique_weights_batch(b) for b in scoring(batches))

    return _written_by_workers(
        spark, paths, paths.weights,
        lambda staging: per_file(spark, files, parquet_writer(
            rows, staging, to_arrow_schema(schema), order="log_weight", compression="snappy"),
            PARQUET_WRITER_SCHEMA, tasks),
        metadata, {"delta.dataSkippingNumIndexedCols": "0"})


def _score_appended(spark: SparkSession, paths: OutputPaths, fitted: Fit, appended: DataFrame, metadata: dict,
                    summary: Summary) -> int:
    """Score only the appended records and settle their ids against the stored weights.  Returns the
    weights rows added or replaced.

    A stored weights row is its id's winner so far (the smallest content hash, then source file, of
    the id's usable records), so an appended record takes its place exactly when it comes first in
    that order, and the loser of the pair, stored or appended, becomes a ``duplicate_id`` row of
    ``OUT/skipped``: what a full rescore gives, with no earlier record read again.  ``OUT/skipped``
    is rewritten in one commit that holds these rows once however often this is redone, then the
    weights are rewritten in one commit that records the features version scored through, so a crash
    between the two is repaired by the rerun, which redoes both.
    """
    # Each computed once (eagerly): several of the jobs below read them at the same time.
    scored = materialized(score_records(appended, fitted))
    table = spark.read.format("delta").load(paths.weights)
    stored = table.select("id", F.col("doc_hash").alias("_dsel_h"), F.col("source_file").alias("_dsel_s"))
    pairs = materialized(weight_records(scored).join(stored, "id", "left"))
    first = F.col("_dsel_h").isNull() | (F.struct("doc_hash", "source_file") < F.struct("_dsel_h", "_dsel_s"))
    replacing = first & F.col("_dsel_h").isNotNull()
    duplicate = [F.lit("duplicate_id").alias("reason"), F.lit(None).cast("string").alias("detail")]
    losers = (pairs.where(replacing).select("id", F.col("_dsel_s").alias("source_file"), *duplicate)
              .unionByName(pairs.where(~first).select("id", "source_file", *duplicate)))
    fresh = skipped_records(scored).unionByName(losers)
    names = [f"_dsel_k_{c}" for c in fresh.columns]
    key = [F.coalesce(F.col(c), F.lit("")).alias(k) for c, k in zip(fresh.columns, names)]
    # Delta reads the snapshot it started from, so the table can be rewritten from itself.
    kept = (spark.read.format("delta").load(paths.skipped).select("*", *key)
            .join(fresh.select(*key).distinct(), names, "left_anti").drop(*names))
    written = write_table(kept.unionByName(fresh), paths.skipped, metadata)
    summary.tables[paths.skipped] = written.version
    # New ids only (the usual case): their rows are appended, in files sorted as a full scoring sorts
    # them.  Else the table is written whole from its own snapshot without the replaced rows (cheaper
    # than a MERGE, whose randomly placed ids touch every file anyway).
    winners = pairs.where(first).drop("_dsel_h", "_dsel_s")
    replaced = pairs.where(replacing).select("id")
    won, count = pairs.agg(F.count_if(first), F.count_if(replacing)).first()
    if count:
        rest = table.join(F.broadcast(replaced) if count <= DUPLICATES_ON_DRIVER else replaced, "id",
                          "left_anti")
        written = _write_weights(spark, paths, rest.unionByName(winners), metadata)
    else:
        written = _write_weights(spark, paths, winners, metadata, mode="append")
    summary.tables[paths.weights] = written.version
    return int(won)


def select(spark: SparkSession, cfg: DselConfig, summary: Summary, fitted: Optional[Fit] = None,
           raw: Optional[DataFrame] = None) -> DataFrame:
    """Choose documents from ``OUT/weights`` and write them, with all raw columns, to ``OUT/selected``."""
    cfg.require("raw", "out")
    if cfg.num_samples is None and cfg.num_tokens is None:
        raise DselError("give --num-samples K or --num-tokens N")
    paths = OutputPaths(cfg.out)
    started = time.time()
    # While the selection is made: the overwrite of OUT/selected needs that table's current state, and
    # the fit (checked against this run's settings) is needed only to measure the selection.
    warming = ThreadPoolExecutor(2)
    state = warming.submit(load_state, spark, paths.selected)
    prefetch_commits(spark, [paths.weights, paths.log_ratios, paths.selected, paths.features])
    weights = read_table(spark, paths.weights, "weights")
    scored = commit_metadata(spark, paths.weights) or {}
    fitting = None if fitted else warming.submit(remembering(load_fit), spark, cfg, summary,
                                                 version=scored.get("fit_version"))
    warming.shutdown(wait=False)
    names = fitted.target_names if fitted else scored.get("targets")
    if fitting and (names is None or (len(names) > 1 and not cfg.target_proportions)):
        fitted = fitting.result()  # the quotas follow the targets' sizes
        names = fitted.target_names
    weights_version = last_commit(spark, paths.weights).version
    scored_with = scored.get("fit_version")
    latest_fit = (last_commit(spark, paths.log_ratios).version
                  if fitting and scored_with is not None and DeltaTable.isDeltaTable(spark, paths.log_ratios) else None)
    if latest_fit is not None and latest_fit > scored_with:
        summary.warnings.append(
            f"{paths.weights} was scored with {paths.log_ratios} version {scored_with}, and a later fit "
            f"(version {latest_fit}) is not in these weights: this selection follows the earlier fit; run "
            "'dsel score' (or 'dsel run') first to select with the later one")
    proportions = cfg.target_proportions or ([float(s) for s in fitted.target_sizes] if fitted else [1.0])
    if len(proportions) != len(names):
        raise DselError(f"target_proportions has {len(proportions)} values but {paths.log_ratios} has "
                        f"{len(names)} targets")
    rule = Filters.of(cfg)
    eligibility = {"weights": commit_stamp(spark, paths.weights), "filters": dataclasses.asdict(rule)}
    selection = select_documents(weights, names, proportions, num_samples=cfg.num_samples,
                                 num_tokens=cfg.num_tokens, seed=cfg.seed, method=cfg.method, min_length=rule,
                                 counts=_known_counts(spark, paths, eligibility))
    eligibility.update(selection.counts.record())
    summary.warnings.extend(selection.warnings)
    summary.filtered = selection.filtered
    rows = None
    small = cfg.num_samples is not None and cfg.num_samples <= SMALL_K
    # Materialized once (it is used to find or join the records, and counted): counting then costs
    # nothing, and the count tells when the raw input no longer holds some chosen records.
    selection.chosen = materialized(selection.chosen)
    chosen_rows, chosen_words = selection.chosen.agg(F.count("*"), F.sum("num_words")).first()
    if raw is None:
        raw, located = _selected_raw(spark, cfg, paths, selection)
        if raw is not None:
            rows = carried_rows(raw, summary.run_id) if located else None
    # A few records, the chosen rows one for one: kept in memory, then written and measured at once.
    measured = rows is not None and small
    rows = materialized(rows) if measured else rows
    if raw is None:
        raw = _stored_raw(spark, cfg, paths.weights, summary) or read_raw(spark, cfg, summary=summary)
    if rows is None:
        rows = with_raw_columns(raw, selection.chosen, summary.run_id,
                                broadcast=(cfg.num_samples or 0) <= 1_000_000)
    # In (target, rank) order: a small selection as one sorted file (no sampling job to range-partition);
    # rows kept in memory are read into that file's task as they are, not shuffled to it.
    if small:
        ordered = (rows.coalesce(1) if measured else rows.repartition(1)).sortWithinPartitions("target", "rank")
    else:
        ordered = rows.orderBy("target", "rank")
    fitted = fitted or fitting.result()  # type: ignore[union-attr]
    wait([state])  # its failure, if any, is the overwrite's to report
    with ThreadPoolExecutor(1) as measuring:  # the KL reduction's job runs beside the write's single task
        kl = measuring.submit(run_kl_reduction, spark, cfg, fitted, rows) if measured else None
        commit = write_table(ordered, paths.selected, _metadata(
            cfg, summary, requested=selection.requested, weights_version=weights_version,
            fit_version=summary.fit_version, eligibility=eligibility))
    summary.tables[paths.selected], summary.selected = commit.version, commit.rows
    summary.eligible = selection.eligible
    written = spark.read.format("delta").load(paths.selected)
    # Every chosen row written (as when the lines were read back by position): no need to re-read them.
    if chosen_rows != commit.rows:
        chosen_words = written.agg(F.sum("num_words")).first()[0]
    if commit.rows < chosen_rows:
        summary.warnings.append(
            f"{chosen_rows - commit.rows:,} of the {chosen_rows:,} documents chosen from {paths.weights} are no "
            f"longer in the raw input (it changed since they were scored), so {paths.selected} holds "
            f"{commit.rows:,}; run 'dsel score' (or 'dsel run') and select again to choose among the current ones")
    summary.selected_words = int(chosen_words or 0)
    if commit.rows:
        measure = kl.result() if kl else run_kl_reduction(spark, cfg, fitted)
        summary.kl_reduction = measure["kl_reduction"]
        summary.kl_smoothing = measure["pseudo_counts"] / (measure["pseudo_counts"] + measure["selected_features"])
        summary.kl_own = measure.get("kl_reduction_own") or {}
    else:  # no KL reduction of an empty selection
        summary.warnings.append(f"{paths.selected} is empty: no scored document is eligible. Lower --min-length "
                                f"({rule.min_length}) or the quality filters; 'not eligible' says what each removed"
                                if not selection.eligible else f"{paths.selected} is empty")
    if cfg.export:
        export(written.drop("run_id"), cfg.export, cfg.export_format)
        summary.tables[cfg.export] = -1
    summary.stage("select", started)
    return written


def _known_counts(spark: SparkSession, paths: OutputPaths, eligibility: dict) -> Optional[Counts]:
    """The eligibility counts the last selection recorded, when it was made from this same state of
    the weights table with the same filters (a re-select then skips that pass over the weights)."""
    if not DeltaTable.isDeltaTable(spark, paths.selected):
        return None
    known = (commit_metadata(spark, paths.selected) or {}).get("eligibility") or {}
    if {k: known.get(k) for k in eligibility} != eligibility:
        return None
    return Counts.recorded(known)


def _selected_raw(spark: SparkSession, cfg: DselConfig, paths: OutputPaths,
                  selection) -> tuple[Optional[DataFrame], bool]:
    """The chosen raw records read back by their line (pyarrow reader), when OUT/features knows where
    each line is and the raw files are unchanged since, else None; and whether the weights located
    the lines (the records then carry the chosen rows' columns, see :func:`dsel.select.carried_rows`).

    ``selection.chosen`` is materialized already (see :func:`select`): it is used twice, to find the
    lines and to join them."""
    if not DeltaTable.isDeltaTable(spark, paths.features):
        return None, False
    feats = spark.read.format("delta").load(paths.features)
    if not jsonread.is_fast(feats):
        return None, False
    plan, _ = jsonread.plan(spark, cfg)
    meta = commit_metadata(spark, paths.features) or {}
    scored = commit_metadata(spark, paths.weights) or {}
    if plan is None or scored.get("raw_schema") is None or _reusable(meta.get("features_of"), _fast_key(cfg)) is None:
        return None, False
    if _changed_files(meta.get("input_files"), file_states(plan.files, plan.sizes)) != []:
        return None, False  # the lines are where the table says only in the files it holds, unchanged
    # The weights say where each line is when they were scored from this very features table.
    located = (set(LOCATION_COLUMNS) <= set(selection.chosen.columns)
               and scored.get("features_version") == last_commit(spark, paths.features).version)
    return jsonread.raw_rows(feats, selection.chosen, scored["raw_schema"], located), located


def _record(spark: SparkSession, cfg: DselConfig, summary: Summary, status: str, error: Optional[str] = None) -> None:
    if status != "running":
        summary.finish()
    paths = OutputPaths(cfg.out)
    counts = summary.counts()
    record_run(spark, paths.runs, {
        "run_id": summary.run_id, "command": summary.command, "status": status,
        "started_at": dt.datetime.fromtimestamp(summary.started),
        "finished_at": dt.datetime.fromtimestamp(summary.finished) if summary.finished else None,
        "params": json.dumps(cfg.to_dict(), sort_keys=True, default=str),
        "input_versions": json.dumps(summary.inputs, sort_keys=True), "fit_version": summary.fit_version,
        "refit": None if summary.fit_version is None else summary.refit is not None,
        "read": summary.read, "skipped": sum(summary.skipped.values()) if summary.skipped else (
            0 if summary.scored is not None else None),
        "scored": summary.scored, "selected": summary.selected,
        "counts": json.dumps(counts, sort_keys=True), "table_versions": json.dumps(summary.tables, sort_keys=True),
        "error": error, "host": socket.gethostname(), "pid": os.getpid(), "dsel_version": __version__,
    })


def _run(spark: SparkSession, cfg: DselConfig, summary: Summary) -> None:
    cfg.require("raw", "target", "out")
    if cfg.num_samples is None and cfg.num_tokens is None:
        raise DselError("give --num-samples K or --num-tokens N")
    # Spark's reader: one schema inference for the whole run; the pyarrow reader needs none
    # the targets first: a mistake in them (path, column, format) is told before the long raw pass
    read_targets(spark, cfg, summary)
    raw = None if fast_plan(spark, cfg) is not None else read_raw(spark, cfg, summary=summary)
    feats = featurize(spark, cfg, summary, raw)
    reason = refit_reason(spark, cfg, summary)
    fitted = fit(spark, cfg, summary, feats, reason) if reason else load_fit(spark, cfg, summary)
    if not reason:
        print(f"[dsel] reusing the fit in {OutputPaths(cfg.out).log_ratios} (version {summary.fit_version})", flush=True)
    score(spark, cfg, summary, fitted, feats, count_eligible=False)
    select(spark, cfg, summary, fitted, raw)


def reproduce(spark: SparkSession, cfg: DselConfig, summary: Summary, source_out: str, source_run: str) -> None:
    """Re-run past run ``source_run`` of ``source_out`` into ``cfg.out``, from what it recorded.

    Its Delta inputs are read as of the versions it read (time travel), its fit is read from
    ``source_out/log_ratios`` as of the version it used, and its parameters are its own; the
    documents are then featurized, scored and selected again into ``cfg.out``.  JSON or Parquet
    inputs have no versions: if their files changed since, this fails rather than pretend.
    """
    source = OutputPaths(source_out)
    runs = read_table(spark, source.runs, "runs")
    row = runs.where(F.col("run_id") == source_run).first()
    if row is None:
        known = ", ".join(r["run_id"] for r in runs.select("run_id").limit(5).collect())
        raise DselError(f"{source.runs} has no run '{source_run}' (some it has: {known}); pass one of its run ids")
    if row["command"] not in ("run", "select") or row["status"] != "succeeded" or row["fit_version"] is None:
        raise DselError(f"run '{source_run}' ({row['command']}, {row['status']}) made no selection to reproduce; "
                        "pick a succeeded 'run' or 'select' run")
    inputs = json.loads(row["input_versions"] or "{}")
    pins = {}
    for state in [inputs.get("raw") or {}] + list(inputs.get("targets") or []):
        if "version" in state:
            pins[state["sources"][0]] = int(state["version"])
    params = json.loads(row["params"])
    params.update(out=cfg.out, run_id=summary.run_id, pin_versions=pins or None, export=cfg.export,
                  export_format=cfg.export_format, break_lock=False)
    again = DselConfig.from_mapping(params)
    fitted = load_fit(spark, again, summary, source.log_ratios, int(row["fit_version"]))
    feats = featurize(spark, again, summary)
    recorded = inputs.get("raw") or {}
    if "digest" in recorded and recorded.get("digest") != summary.inputs.get("raw", {}).get("digest"):
        # nothing of this run is kept: a new --out is removed whole (see execute), features and all
        summary.tables.pop(OutputPaths(cfg.out).features, None)
        raise DselError(f"the raw files {', '.join(recorded['sources'])} changed since run '{source_run}' "
                        "read them, and only Delta inputs can be read as they were; restore the files, or "
                        "keep raw data in Delta tables to make runs reproducible")
    paths = OutputPaths(cfg.out)
    written = write_table(fitted.to_frame(spark), paths.log_ratios,
                          _metadata(again, summary, dsel_fit=fitted.params, targets=fitted.target_names,
                                    target_records=list(summary.fit_target_records.values()) or None,
                                    reproduces={"out": source_out, "run_id": source_run,
                                                "fit_version": int(row["fit_version"])}))
    summary.tables[paths.log_ratios], summary.fit_version = written.version, written.version
    summary.refit = f"copied from {source.log_ratios} version {int(row['fit_version'])}"
    score(spark, again, summary, fitted, feats, count_eligible=False)
    select(spark, again, summary, fitted)


def execute(spark: SparkSession, cfg: DselConfig, command: str, **options: str) -> Summary:
    """Run one command ('fit', 'score', 'select', 'run' or 'reproduce') and record it in ``OUT/runs``.

    The run holds ``OUT/lock`` from start to end, so two runs never write one output at once;
    its row in ``OUT/runs`` says 'running' while it works, then 'succeeded' or 'failed'.
    ``reproduce`` takes ``source_out`` and ``source_run`` options.
    """
    stages = {"fit": lambda s: fit(spark, cfg, s), "score": lambda s: score(spark, cfg, s),
              "select": lambda s: select(spark, cfg, s), "run": lambda s: _run(spark, cfg, s),
              "reproduce": lambda s: reproduce(spark, cfg, s, options["source_out"], options["source_run"])}
    if command not in stages:
        raise DselError(f"unknown command {command!r}; use {', '.join(stages)}")
    cfg.require("out")
    require_delta(spark)
    if command in ("run", "fit"):
        cfg.require("raw", "target")
    if command in ("run", "select") and cfg.num_samples is None and cfg.num_tokens is None:
        raise DselError("give --num-samples K or --num-tokens N")
    inputs = [] if command == "reproduce" else [fingerprint(spark, cfg.raw, cfg.raw_format, cfg) if cfg.raw else []]
    if command in ("run", "fit"):
        inputs.append(fingerprint(spark, cfg.target, cfg.target_format, cfg))
    summary = Summary(command=command, run_id=cfg.run_id or cfg.default_run_id(command, [inputs, options]))
    paths = OutputPaths(cfg.out)
    paths.check_apart({"raw": cfg.raw or [], "target": cfg.target or []})
    paths.check_owned()
    if cfg.export and command in ("run", "select", "reproduce"):
        check_export(cfg.export, cfg.out, {"raw": cfg.raw or [], "target": cfg.target or []})
    local = local_dir(cfg.out)
    fresh = local is not None and not os.path.exists(local)
    check_outputs(spark, paths)
    books = bookkeeping_session(spark)  # the run table's and the lock's commits
    taken = claim(books, paths.lock, summary.run_id, cfg.lock_timeout_hours, force=cfg.break_lock)
    try:
        _record(books, cfg, summary, "running")
        if taken is not None:
            mark_taken_over(books, paths.runs, taken, summary.run_id, cfg.break_lock)
        with remembering_commits():  # the lock is held: only this run writes the tables
            stages[command](summary)
    except BaseException as exc:
        error = user_error(exc) if isinstance(exc, Exception) else None
        try:
            if fresh and not summary.tables:
                shutil.rmtree(local, ignore_errors=True)  # failed before writing anything: leave no trace
            else:
                _record(books, cfg, summary, "failed", f"{type(error or exc).__name__}: {error or exc}"[:2000])
        finally:
            release(books, paths.lock, summary.run_id)
        if error is not None:
            raise error from exc
        raise
    # Two commits to two tables, nothing else running: at once (a warm re-select command about 0.6 s
    # shorter). The lock is released even when the run's row could not be written.
    with ThreadPoolExecutor(1) as releasing:
        released = releasing.submit(release, books, paths.lock, summary.run_id)
        try:
            _record(books, cfg, summary, "succeeded")
        finally:
            released.result()
    return summary


__all__ = ["execute", "featurize", "fit", "load_fit", "refit_reason", "reproduce", "score", "select", "read_raw",
           "read_targets"]
