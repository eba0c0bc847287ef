"""Write: Delta tables under the output directory, the run table, and exports.

Every table is written whole with ``mode("overwrite")`` in one Delta commit, so rerunning a
run replaces its rows instead of adding to them, and a crash leaves the previous version
intact.  Each commit carries the run's parameters as JSON in ``userMetadata``.  The run table
is updated with a MERGE on ``run_id``: one row per run, however often it is rerun.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from dsel.errors import DselError

RUNS_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType()),
    T.StructField("command", T.StringType()),
    T.StructField("started_at", T.TimestampType()),
    T.StructField("finished_at", T.TimestampType()),
    T.StructField("params", T.StringType()),
    T.StructField("counts", T.StringType()),
    T.StructField("table_versions", T.StringType()),
    T.StructField("dsel_version", T.StringType()),
])
TABLES = ("features", "log_ratios", "weights", "skipped", "selected", "runs", "evaluation")


@dataclass(frozen=True)
class OutputPaths:
    """Where each Delta table of a run lives under the output directory."""

    out: str

    def table(self, name: str) -> str:
        return self.out.rstrip("/") + "/" + name

    @property
    def log_ratios(self) -> str:
        return self.table("log_ratios")

    @property
    def weights(self) -> str:
        return self.table("weights")

    @property
    def skipped(self) -> str:
        return self.table("skipped")

    @property
    def selected(self) -> str:
        return self.table("selected")

    @property
    def runs(self) -> str:
        return self.table("runs")

    @property
    def features(self) -> str:
        return self.table("features")

    @property
    def staging(self) -> str:
        return self.table("_staging_scored")

    def check_owned(self) -> None:
        """Refuse to write into a local directory that holds data dsel did not write."""
        if "://" in self.out and not self.out.startswith("file://"):
            return
        local = self.out[len("file://"):] if self.out.startswith("file://") else self.out
        if os.path.isfile(local):
            raise DselError(f"--out {self.out} is a file; give a directory for dsel's tables")
        if os.path.isdir(local) and os.listdir(local):
            foreign = [n for n in os.listdir(local) if n not in TABLES + ("_staging_scored",)]
            if foreign:
                raise DselError(f"--out {self.out} already holds {', '.join(sorted(foreign)[:3])}, which dsel did "
                                "not write; choose an empty or new directory for --out")


@dataclass(frozen=True)
class Written:
    """A commit dsel made: the table's new version and the rows it wrote (from Delta's metrics, no scan)."""

    version: int
    rows: int


def write_table(df: DataFrame, path: str, metadata: dict[str, Any]) -> Written:
    """Overwrite the Delta table at ``path`` with ``df`` in one commit."""
    (df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
     .option("userMetadata", json.dumps(metadata, sort_keys=True, default=str)).save(path))
    return last_commit(df.sparkSession, path)


def last_commit(spark: SparkSession, path: str) -> Written:
    from delta.tables import DeltaTable

    row = DeltaTable.forPath(spark, path).history(1).select("version", "operationMetrics").first()
    return Written(int(row["version"]), int((row["operationMetrics"] or {}).get("numOutputRows", -1)))


def read_table(spark: SparkSession, path: str, what: str) -> DataFrame:
    """Read a dsel Delta table, with a message naming the command that writes it when it is missing."""
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        raise DselError(f"no {what} table at {path}; run 'dsel {'fit' if what == 'log_ratios' else 'score'}' "
                        "(or 'dsel run') with the same --out first")
    return spark.read.format("delta").load(path)


def commit_metadata(spark: SparkSession, path: str) -> Optional[dict[str, Any]]:
    """The userMetadata of the latest commit of a Delta table, parsed from JSON."""
    from delta.tables import DeltaTable

    raw = DeltaTable.forPath(spark, path).history(1).select("userMetadata").first()[0]
    return json.loads(raw) if raw else None


def record_run(spark: SparkSession, path: str, row: dict[str, Any]) -> None:
    """Insert or replace the run's row (MERGE on run_id) in the run table."""
    from delta.tables import DeltaTable

    frame = spark.createDataFrame([tuple(row[f.name] for f in RUNS_SCHEMA.fields)], RUNS_SCHEMA)
    if not DeltaTable.isDeltaTable(spark, path):
        try:
            frame.write.format("delta").mode("errorifexists").save(path)
            return
        except Exception:  # another writer created it first; fall through to the merge
            pass
    (DeltaTable.forPath(spark, path).alias("r")
     .merge(frame.alias("n"), "r.run_id = n.run_id")
     .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())


def export(df: DataFrame, path: str, fmt: str) -> None:
    """Write the selected documents as JSON lines or Parquet files (overwriting ``path``)."""
    writer = df.write.mode("overwrite")
    if fmt == "jsonl":
        writer.json(path)
    else:
        writer.parquet(path)
