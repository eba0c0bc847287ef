"""Building a SparkSession for the CLI, the spark-submit jobs and the tests.

Library functions never call this: they take the session they are given.  Entry points call
:func:`build_session`, which adds the Delta extension and catalog, bounds Arrow batches, and
defaults to embedded ``local[*]`` when no master is given and the process was not started by
spark-submit.  The Delta jars come from Maven Central through Spark's Ivy resolver
(``delta.configure_spark_with_delta_pip``) unless spark-submit already put them on the classpath.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, Optional

from pyspark.sql import SparkSession

from dsel.errors import DselError

#: Arrow batches sent to the featurize kernel: at most this many bytes (a 50 MB document still fits alone).
ARROW_BATCH_BYTES = 64 * 1024 * 1024


def default_conf() -> dict[str, str]:
    """Settings dsel needs on any session: the Delta extension and catalog, and bounded Arrow batches."""
    return {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "10000",
        "spark.sql.execution.arrow.maxBytesPerBatch": str(ARROW_BATCH_BYTES),
        "spark.sql.adaptive.enabled": "true",
        # Spark's console progress bar (stage, tasks done/total) on stderr during long stages.
        "spark.ui.showConsoleProgress": "true",
    }


def local_conf(master: Optional[str]) -> dict[str, str]:
    """Settings for an embedded local-mode session, where one JVM is driver and executor and the heavy
    work runs in the Python workers (so the JVM's fixed costs dominate its CPU time):

    * Delta rebuilds a table's snapshot with ``snapshotPartitions`` tasks (50 by default): about 5 CPU s
      each time one of dsel's small tables is loaded; one task per core does the same for a few hundred ms.
    * The JVM's C1 compiler only (``TieredStopAtLevel=1``) and the serial collector: measured at about
      half the JVM's CPU of a run, since little Spark code runs hot enough to repay C2 compilation.
    """
    master = master or "local[*]"
    if not master.startswith("local"):
        return {}
    inside = master[len("local["):-1].split(",")[0] if master.startswith("local[") else "1"
    cores = (os.cpu_count() or 2) if inside in ("*", "") else int(inside)
    return {"spark.databricks.delta.snapshotPartitions": str(max(1, cores)),
            "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"}


def parse_conf(pairs: Iterable[str]) -> dict[str, str]:
    """Parse repeatable ``--conf KEY=VALUE`` flags, as spark-submit does."""
    conf = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DselError(f"--conf takes KEY=VALUE, got {pair!r}; for example --conf spark.sql.shuffle.partitions=8")
        conf[key.strip()] = value
    return conf


def build_session(master: Optional[str] = None, conf: Optional[dict[str, str]] = None,
                  app_name: str = "dsel") -> SparkSession:
    """Get or create the SparkSession that entry points hand to the library."""
    builder = SparkSession.builder.appName(app_name)
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if master:
        builder = builder.master(master)
    elif not under_submit:
        builder = builder.master("local[*]")
    if (master or "local").startswith("local") and not under_submit:
        # Embedded Spark: Python workers run in this interpreter's environment (numpy, numba, dsel).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings = {**default_conf(), **(local_conf(master) if not under_submit else {}), **(conf or {})}
    for key, value in settings.items():
        builder = builder.config(key, value)
    if not under_submit and "spark.jars.packages" not in settings and "spark.jars" not in settings:
        from delta import configure_spark_with_delta_pip

        builder = configure_spark_with_delta_pip(builder)
    return builder.getOrCreate()
