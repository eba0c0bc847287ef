"""Building a SparkSession for the CLI, the spark-submit jobs and the tests.

Library functions never call this: they take the session they are given.  Entry points call
:func:`build_session`, which adds the Delta extension and catalog, bounds Arrow batches, and
defaults to embedded ``local[*]`` when no master is given and the process was not started by
spark-submit.  The Delta jars come from Maven Central through Spark's Ivy resolver
(``delta.configure_spark_with_delta_pip``) unless spark-submit already put them on the classpath.
Ivy resolves them again at every JVM start (about 1 s and 1 CPU s even when they are downloaded), so
the first session records the jar files Ivy resolved in a small cache file, and later sessions put
exactly those files on the classpath with ``spark.jars`` while they all still exist.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
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
    if under_submit or "spark.jars.packages" in settings or "spark.jars" in settings:
        return builder.getOrCreate()
    from delta import configure_spark_with_delta_pip

    packages = configure_spark_with_delta_pip(SparkSession.Builder())._options["spark.jars.packages"]
    cache = jar_cache(packages, settings.get("spark.jars.repositories", ""))
    jars = _cached_jars(cache)
    if jars:
        return builder.config("spark.jars", jars).getOrCreate()
    spark = configure_spark_with_delta_pip(builder).getOrCreate()
    conf = spark.sparkContext.getConf()
    if conf.get("spark.jars.packages", "") == packages:
        _remember_jars(cache, conf.get("spark.jars", ""))
    return spark


def jar_cache(packages: str, repositories: str = "") -> Path:
    """The file that remembers which jar files Ivy resolved for ``packages`` (from ``repositories``)."""
    key = hashlib.sha256(f"{packages}|{repositories}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "dsel" / f"delta-jars-{key}.txt"


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _cached_jars(cache: Path) -> Optional[str]:
    """The remembered jar list, when it names only files that still exist; else None (resolve again)."""
    try:
        jars = cache.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    files = [_local(j) for j in jars.split(",") if j]
    return jars if files and all(os.path.isfile(f) for f in files) else None


def _remember_jars(cache: Path, jars: str) -> None:
    """Record the jars Ivy resolved (local files only); an unwritable cache only costs the next start 1 s."""
    files = [_local(j) for j in jars.split(",") if j]
    if not files or not all(os.path.isfile(f) for f in files):
        return
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(jars, encoding="utf-8")
        tmp.replace(cache)
    except OSError:
        pass
