"""Building a SparkSession for the CLI, the spark-submit jobs and the tests.

Library functions never call this: they take the session they are given.  Entry points call
:func:`build_session`, which adds the Delta extension and catalog, bounds Arrow batches, and
defaults to embedded ``local[*]`` when no master is given and the process was not started by
spark-submit.  dsel's defaults give way to the settings the application already has (spark-submit's
``--conf`` and ``spark-defaults.conf``, a running session's), and the ``conf`` passed in (the CLI's
``--conf``) overrides both.  The Delta jars come from Maven Central through Spark's Ivy resolver
(``delta.configure_spark_with_delta_pip``) unless spark-submit already put them on the classpath.
Ivy resolves them again at every JVM start (about 1 s and 1 CPU s even when they are downloaded), so
the first session records the jar files Ivy resolved in a small cache file, and later sessions put
exactly those files on the classpath with ``spark.jars`` while they all still exist.

An embedded session's JVM also maps a class-data-sharing archive (JDK AppCDS) of the classes an
earlier session loaded, so it does not look them up in ~280 jars, parse and verify them again:
about 4.5 CPU s and 4 s of wall time less per start.  The first session without an archive for
this java, pyspark and JVM options writes one as its JVM exits (``-XX:ArchiveClassesAtExit``, once,
about 200 MB under the cache directory), and publishes it only when that JVM exited cleanly.  A
JVM that cannot use an archive runs without it.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Iterable, Optional

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from dsel.errors import DselError

#: Arrow batches sent to the featurize kernel: at most this many bytes (a 50 MB document still fits alone).
ARROW_BATCH_BYTES = 64 * 1024 * 1024
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"


def default_conf() -> dict[str, str]:
    """Settings dsel needs on any session: the Delta extension and catalog, and bounded Arrow batches."""
    return {
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "10000",
        "spark.sql.execution.arrow.maxBytesPerBatch": str(ARROW_BATCH_BYTES),
        "spark.sql.adaptive.enabled": "true",
        # Spark's console progress bar (stage, tasks done/total) during long stages, on a terminal only:
        # it redraws one line with carriage returns, which a log file keeps as one line running into
        # the next message.
        "spark.ui.showConsoleProgress": str(_terminal(sys.stderr)).lower(),
    }


def _terminal(stream: object) -> bool:
    """True when ``stream`` is an interactive terminal (not a file, a pipe or a notebook's capture)."""
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def local_conf(master: Optional[str]) -> dict[str, str]:
    """Settings for an embedded local-mode session, where one JVM is driver and executor and the heavy
    work runs in the Python workers (so the JVM's fixed costs dominate its CPU time):

    * Delta rebuilds a table's snapshot with ``snapshotPartitions`` tasks (50 by default): about 5 CPU s
      each time one of dsel's small tables is loaded; one task per core does the same for a few hundred ms.
    * The JVM's C1 compiler only (``TieredStopAtLevel=1``) and the serial collector: measured at about
      half the JVM's CPU of a run, since little Spark code runs hot enough to repay C2 compilation.
      With C1 alone the JVM reserves only 48 MB for compiled code, which a long session fills (the test
      suite's within 30 s, a 16 GB run's at times during its score stage); the JVM then stops compiling
      and runs all new code interpreted.  ``ReservedCodeCacheSize=240m`` is the tiered default.
    * Four shuffle partitions per core (at least 8) instead of 200: below 200, every map task of a
      shuffle writes one file per partition (Spark's bypass-merge writer), and dsel's shuffles are
      small aggregations over many tasks (the fit's histograms, the duplicate ids, the eligibility
      counts): at 4 GB, fit 7.4 → 4.8 s, score 14.8 → 12.4 s, 131 → 117 CPU s (two runs each way).
      Adaptive execution still coalesces them.
    """
    master = master or "local[*]"
    if not master.startswith("local"):
        return {}
    inside = master[len("local["):-1].split(",")[0] if master.startswith("local[") else "1"
    cores = (os.cpu_count() or 2) if inside in ("*", "") else int(inside)
    return {"spark.databricks.delta.snapshotPartitions": str(max(1, cores)),
            "spark.sql.shuffle.partitions": str(max(8, 4 * cores)),
            "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m -XX:+UseSerialGC"}


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
                  app_name: str = "dsel", write_class_archive: bool = True) -> SparkSession:
    """Get or create the SparkSession that entry points hand to the library.

    ``write_class_archive=False``: an embedded session maps a class-data-sharing archive when there is
    one but does not write one as its JVM exits (writing it takes 20-30 s at exit, which pays off only
    for later sessions that start with the same java, pyspark and JVM options)."""
    builder = SparkSession.builder.appName(app_name)
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if master:
        builder = builder.master(master)
    elif not under_submit:
        builder = builder.master("local[*]")
    if (master or "local").startswith("local") and not under_submit:
        # Embedded Spark: Python workers run in this interpreter's environment (numpy, numba, dsel).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    defaults = {**default_conf(), **(local_conf(master) if not under_submit else {})}
    settings = {**_unless_given(defaults, _given_conf(under_submit)), **(conf or {})}
    publish = None
    if not under_submit and (master or "local").startswith("local") and SparkContext._gateway is None:
        options, publish = class_sharing(settings.get("spark.driver.extraJavaOptions", ""), write_class_archive)
        settings["spark.driver.extraJavaOptions"] = options
    for key, value in settings.items():
        builder = builder.config(key, value)
    if publish is not None:
        atexit.register(publish)
    if under_submit or "spark.jars.packages" in settings or "spark.jars" in settings:
        return quiet(builder.getOrCreate())
    from delta import configure_spark_with_delta_pip

    packages = delta_package()
    cache = jar_cache(packages, settings.get("spark.jars.repositories", ""))
    jars = _cached_jars(cache)
    if jars:
        return quiet(builder.config("spark.jars", jars).getOrCreate())
    spark = configure_spark_with_delta_pip(builder).getOrCreate()
    conf = spark.sparkContext.getConf()
    if conf.get("spark.jars.packages", "") == packages:
        _remember_jars(cache, conf.get("spark.jars", ""))
    return quiet(spark)


def delta_package() -> str:
    """The Maven coordinates of the Delta jars for the installed delta-spark and Spark."""
    from delta import configure_spark_with_delta_pip

    return configure_spark_with_delta_pip(SparkSession.Builder())._options["spark.jars.packages"]


def require_delta(spark: SparkSession) -> None:
    """Fail with one line naming the fix when the session's JVM has no Delta Lake classes (a session
    built without the Delta jars, or spark-submit without ``--packages``), where Delta's Python API
    would fail with "'JavaPackage' object is not callable".  Spark Connect sessions (no JVM here)
    and builds with Delta inside (Databricks) pass."""
    try:
        from py4j.java_gateway import JavaPackage

        found = spark.sparkContext._jvm.io.delta.tables.DeltaTable  # type: ignore[union-attr]
    except Exception:  # Spark Connect: the server has the tables, or says so itself
        return
    if isinstance(found, JavaPackage):
        raise DselError(f"this Spark session has no Delta Lake jars; start it with dsel.session.build_session(), "
                        f"or give spark-submit --packages {delta_package()} with --conf spark.sql.extensions="
                        f"{DELTA_EXTENSION} --conf spark.sql.catalog.spark_catalog="
                        "org.apache.spark.sql.delta.catalog.DeltaCatalog")


def _given_conf(under_submit: bool) -> dict[str, str]:
    """The settings the application already has: a running session's (a notebook, a Databricks job, a
    test), or those spark-submit started it with (its ``--conf`` and ``spark-defaults.conf``).  An
    embedded session is launched with the builder's settings, so it has none of its own."""
    active = SparkContext._active_spark_context
    if active is None and not under_submit:
        return {}
    if active is None:
        SparkContext._ensure_initialized()  # attach to spark-submit's JVM, whose properties hold its --conf
        return dict(SparkConf().getAll())
    given = dict(active.getConf().getAll())
    session = SparkSession.getActiveSession()
    if session is not None:  # settings changed at run time (spark.conf.set) on the running session
        given.update({k: v for k in default_conf() if (v := session.conf.get(k, None)) is not None})
    return given


def _unless_given(defaults: dict[str, str], given: dict[str, str]) -> dict[str, str]:
    """dsel's defaults without those the application was given otherwise, which they would silently
    override; Delta's extension is added to the given ones instead."""
    kept = {k: v for k, v in defaults.items() if k not in given}
    extensions = [e.strip() for e in given.get("spark.sql.extensions", "").split(",") if e.strip()]
    if extensions and DELTA_EXTENSION not in extensions:
        kept["spark.sql.extensions"] = ",".join(extensions + [DELTA_EXTENSION])
    return kept


#: Driver loggers whose warnings dsel's own queries raise by design, which would only alarm a user:
#: the window that ranks a selection of at most ``dsel.select.RANK_BIN_ROWS`` rows, all in one
#: partition ("No Partition Defined ... serious performance degradation"; larger selections are
#: ranked in key bins), Delta's UPDATE of the one-row lock table ("Could not validate number of
#: records due to missing statistics"), Spark shortening a long plan in its own messages, and Spark's
#: file sources looking for a streaming sink's metadata under every glob given as an input (a warning
#: with a FileNotFoundException's stack trace for a glob that matched files).
QUIET_LOGGERS = ("org.apache.spark.sql.execution.window.WindowExec",
                 "org.apache.spark.sql.delta.commands.UpdateCommand",
                 "org.apache.spark.util.SparkStringUtils",
                 "org.apache.spark.sql.execution.streaming.sinks.FileStreamSink")


#: Loggers that, where a failed task fails its job at once, print the error the driver's exception
#: then carries whole (the Python traceback and the Java stack), each with its stack trace again: a
#: truncated ``.gz`` gave five traces, about 250 lines, above dsel's one-line message.  Silenced (with
#: Spark's "Aborting task" lines) in ``local`` and ``local[N]`` sessions, where no task is retried; a
#: session that retries tasks (``local[N,F]``, a cluster) keeps them, as its retries are logged there.
TASK_FAILURE_LOGGERS = ("org.apache.spark.executor.Executor",
                        "org.apache.spark.scheduler.TaskSetManager",
                        "org.apache.spark.sql.execution.datasources.FileFormatWriter",
                        "org.apache.spark.sql.delta.files.DeltaFileFormatWriter")


def quiet(spark: SparkSession) -> SparkSession:
    """Raise :data:`QUIET_LOGGERS` to ERROR in the driver of a session dsel built (their errors still show),
    and, when no task is retried, silence :data:`TASK_FAILURE_LOGGERS` and Spark's "Aborting task" lines."""
    try:
        log4j = spark.sparkContext._jvm.org.apache.logging.log4j  # type: ignore[union-attr]
        for name in QUIET_LOGGERS:
            log4j.core.config.Configurator.setLevel(name, log4j.Level.ERROR)
        if re.fullmatch(r"local(\[(\*|\d+)\])?", spark.sparkContext.master or ""):
            for name in TASK_FAILURE_LOGGERS:
                log4j.core.config.Configurator.setLevel(name, log4j.Level.FATAL)
            # org.apache.spark.util.Utils logs errors it does not rethrow too: only this one line goes
            result = log4j.core.Filter.Result
            context = log4j.LogManager.getContext(False)
            root = context.getConfiguration().getRootLogger()
            if "pattern=Aborting task" not in str(root.getFilter()):  # once per JVM, however many sessions
                root.addFilter(log4j.core.filter.RegexFilter.createFilter(
                    "Aborting task", None, False, result.DENY, result.NEUTRAL))
                context.updateLoggers()
    except Exception:  # Spark Connect (no JVM here), or another logging backend: the warnings stay
        pass
    return spark


def _cache_dir() -> Path:
    try:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dsel"
    except (KeyError, RuntimeError):  # no home directory: a cache that is never found
        return Path(os.devnull) / "dsel"


def jar_cache(packages: str, repositories: str = "") -> Path:
    """The file that remembers which jar files Ivy resolved for ``packages`` (from ``repositories``)."""
    key = hashlib.sha256(f"{packages}|{repositories}".encode()).hexdigest()[:16]
    return _cache_dir() / f"delta-jars-{key}.txt"


#: The first bytes of a JDK dynamic CDS archive (CDS_DYNAMIC_ARCHIVE_MAGIC, little-endian); the JVM
#: writes the header after every region, so a file that starts with them was written whole.
_ARCHIVE_MAGIC = bytes.fromhex("a8ab0bf0")
_QUIET_CDS = "-Xlog:cds=off -Xlog:cds+dynamic=off"


def class_archive(java_options: str) -> Optional[Path]:
    """Where the class-data-sharing archive for this java, pyspark and JVM options lives (None when
    no java is found: Spark will fail to start with its own message)."""
    import pyspark

    home = os.environ.get("JAVA_HOME")  # as Spark's launcher picks java
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        return None
    java = os.path.realpath(java)
    jars = Path(pyspark.__file__).parent / "jars"
    listing = sorted(os.listdir(jars)) if jars.is_dir() else []
    # The JVM refuses an archive made with another class path, so each pyspark install gets its own.
    key = "|".join([java, str(os.stat(java).st_mtime_ns), pyspark.__version__, str(jars.resolve()), java_options,
                    *listing, os.environ.get("SPARK_HOME", "")])
    return _cache_dir() / f"jvm-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsa"


def class_sharing(java_options: str, write: bool = True):
    """(JVM options, publish) for an embedded session: map the archive when there is one; else (when
    ``write``) have this JVM write one as it exits, and ``publish`` (to run at exit) moves it into place
    once the JVM exited cleanly.  ``publish`` is None when nothing is to be published."""
    archive = class_archive(java_options)
    if archive is None:
        return java_options, None
    if _whole_archive(archive):
        return f"{java_options} -XX:SharedArchiveFile={archive} {_QUIET_CDS}".strip(), None
    if not write:
        return java_options, None
    try:
        archive.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return java_options, None
    _remove_stale(archive)
    partial = archive.with_name(f"{archive.name}.{os.getpid()}.tmp")
    return (f"{java_options} -XX:ArchiveClassesAtExit={partial} {_QUIET_CDS}".strip(),
            lambda: _publish_archive(partial, archive))


def _whole_archive(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(_ARCHIVE_MAGIC)) == _ARCHIVE_MAGIC
    except OSError:
        return False


def _remove_stale(archive: Path) -> None:
    """Drop partial archives left by processes that are gone (killed before their JVM finished)."""
    for partial in archive.parent.glob(f"{archive.name}.*.tmp"):
        try:
            os.kill(int(partial.name.split(".")[-2]), 0)
        except (ValueError, ProcessLookupError):
            partial.unlink(missing_ok=True)
        except OSError:
            pass


def _publish_archive(partial: Path, archive: Path) -> None:
    """At exit: stop Spark, let the JVM exit (it leaves on EOF of its stdin) and write the archive,
    then move the archive into place if the JVM exited cleanly and wrote it whole."""
    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    try:
        if proc is not None and proc.stdin is not None:
            if SparkContext._active_spark_context is not None:
                SparkContext._active_spark_context.stop()
            proc.stdin.close()
            proc.wait(timeout=300)
        if proc is not None and proc.returncode == 0 and _whole_archive(partial):
            os.replace(partial, archive)
    except Exception:  # an archive is only a speed-up: never fail the exit over it
        pass
    finally:
        partial.unlink(missing_ok=True)


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _all_local(jars: str) -> bool:
    """Whether a comma-separated jar list names at least one file and only files that exist here."""
    files = [_local(j) for j in jars.split(",") if j]
    return bool(files) and all(os.path.isfile(f) for f in files)


def _cached_jars(cache: Path) -> Optional[str]:
    """The remembered jar list, when it names only files that still exist; else None (resolve again)."""
    try:
        jars = cache.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return jars if _all_local(jars) else None


def _remember_jars(cache: Path, jars: str) -> None:
    """Record the jars Ivy resolved (local files only); an unwritable cache only costs the next start 1 s."""
    if not _all_local(jars):
        return
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(jars, encoding="utf-8")
        tmp.replace(cache)
    except OSError:
        pass
