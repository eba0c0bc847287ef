"""The embedded session's start-up caches: the Delta jar list (see test_config) and the JVM's
class-data-sharing archive, written by a first JVM as it exits and mapped by the next one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dsel.session import DELTA_EXTENSION, _unless_given, build_session

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
from dsel.session import build_session
spark = build_session("local[1]", {"spark.ui.enabled": "false",
                                   "spark.driver.extraJavaOptions": "-Xlog:class+load=info:file=" + sys.argv[1]})
assert spark.range(5).count() == 5
assert spark.conf.get("spark.sql.shuffle.partitions") == "8"  # local mode: 4 per core, at least 8
assert spark.conf.get("spark.ui.showConsoleProgress") == "false"  # stderr is a pipe, not a terminal
from pyspark.sql import Window, functions as F
# a window over one partition, as dsel ranks a small selection: Spark's warning about it is quieted
assert spark.range(5).withColumn("r", F.row_number().over(Window.orderBy("id"))).count() == 5
# a task that fails fails its job at once here (local[1]): its error reaches the driver whole, once
def fail(batches):
    raise ValueError("dsel-test: a task failed")
    yield from batches
try:
    spark.range(2).mapInArrow(fail, "id long").write.format("delta").save(sys.argv[2])
except Exception as exc:
    assert "ValueError: dsel-test: a task failed" in str(exc), str(exc)[-500:]
else:
    raise AssertionError("the task did not fail")
"""


#: The second session only starts (and counts), to see where its classes came from.
MAPPING = SCRIPT[:SCRIPT.index("assert spark.conf.get")]


def _session(cache: Path, log: Path, script: str = SCRIPT) -> None:
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script, str(log), str(log.parent / "failed")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    if script is not SCRIPT:
        return
    assert "WARN" in done.stderr and "No Partition Defined" not in done.stderr  # Spark logs here, not that warning
    # nor, without task retries, the failed task's error again with its stack traces (see dsel.session.quiet)
    assert "dsel-test" not in done.stderr and "Aborting task" not in done.stderr, done.stderr[-3000:]


def test_a_first_session_writes_the_class_archive_and_the_next_one_maps_it(tmp_path):
    from dsel.session import _ARCHIVE_MAGIC

    cache, log = tmp_path / "cache", tmp_path / "classes.log"
    _session(cache, log)
    archives = sorted((cache / "dsel").glob("jvm-*"))
    assert len(archives) == 1 and archives[0].suffix == ".jsa", archives  # published whole, no partial left
    assert archives[0].read_bytes()[:4] == _ARCHIVE_MAGIC
    assert "shared objects file (top)" not in log.read_text()
    _session(cache, log, MAPPING)
    loaded = log.read_text()
    assert "source: shared objects file (top)" in loaded  # classes came from the archive this time
    assert "org.apache.spark.SparkContext source: shared objects file" in loaded


def test_a_session_told_not_to_write_an_archive_maps_one_but_writes_none(tmp_path, monkeypatch):
    """The test session's JVM (the last to exit) is built with write_class_archive=False: it would spend
    20-30 s at exit writing an archive only later runs could map."""
    from dsel.session import _ARCHIVE_MAGIC, class_archive, class_sharing

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert class_sharing("-Xss4m", write=False) == ("-Xss4m", None)
    options, publish = class_sharing("-Xss4m")
    assert "-XX:ArchiveClassesAtExit=" in options and publish is not None
    archive = class_archive("-Xss4m")
    archive.write_bytes(_ARCHIVE_MAGIC + bytes(16))
    for write in (False, True):
        options, publish = class_sharing("-Xss4m", write=write)
        assert options.startswith(f"-Xss4m -XX:SharedArchiveFile={archive} ") and publish is None


def test_settings_the_application_was_given_win_over_dsels_defaults(spark):
    """On a running session (a notebook, a Databricks job; spark-submit's --conf likewise, see
    dsel.session._given_conf) build_session keeps what the application set, where dsel's defaults
    used to overwrite it; the conf passed in (the CLI's --conf) still wins."""
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    try:
        spark.conf.set(key, "777")
        assert build_session() is spark
        assert spark.conf.get(key) == "777"
        build_session(conf={key: "555"})
        assert spark.conf.get(key) == "555"
    finally:
        spark.conf.set(key, before)
    defaults = {"spark.sql.extensions": DELTA_EXTENSION, key: "10000"}
    assert _unless_given(defaults, {"spark.sql.extensions": "x.Ext", key: "5"}) == {
        "spark.sql.extensions": "x.Ext," + DELTA_EXTENSION}  # Delta's extension joins the given one
    assert _unless_given(defaults, {"spark.sql.extensions": f"x.Ext, {DELTA_EXTENSION}"}) == {key: "10000"}
    assert _unless_given(defaults, {}) == defaults


NO_DELTA = """
import sys
from pyspark.sql import SparkSession
from dsel.config import DselConfig
from dsel.errors import DselError
from dsel.pipeline import execute
spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
try:
    execute(spark, DselConfig(raw=sys.argv[1], target=sys.argv[1], out=sys.argv[2], num_samples=1), "run")
except DselError as exc:
    print("DselError:", exc)
"""


def test_a_session_without_delta_is_told_how_to_add_it(tmp_path):
    """A user's own session (or spark-submit without --packages) has no Delta classes: one line names the
    fix, where Delta's Python API failed with "'JavaPackage' object is not callable"."""
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"id": "1", "text": "one document"}\n')
    done = subprocess.run([sys.executable, "-c", NO_DELTA, str(raw), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "DselError: this Spark session has no Delta Lake jars" in done.stdout, done.stdout[-2000:]
    assert "--packages io.delta:delta-spark_" in done.stdout and "build_session()" in done.stdout
    assert not (tmp_path / "out").exists()
