"""Runs: the run history table (``OUT/runs``) and the output lock (``OUT/lock``).

**The run table** holds one row per run id: when it started and ended, its status, its
parameters, the versions of the inputs it read, the ``log_ratios`` version its selection used, its
counts, and the version of every table it wrote.  It is partitioned by ``run_id``, and a run writes
its row by overwriting its own partition (``replaceWhere``), so a rerun replaces its row in one
commit that touches no other run's files (a MERGE would scan the whole history on every write, and
cost about three times as much on a small table).  Run tables written before partitioning get the
same ``replaceWhere`` on the column.

**The lock** keeps two runs from writing one output at once.  It is a one-row Delta table; a
run claims it with a single conditional UPDATE that changes the row only when the lock is free,
already held by the same run id in this process or on another host (a rerun after a crash there), or held
by a run that is known to be gone
(its process is dead on this host, or it claimed the lock more than ``lock_timeout_hours`` ago).
Two runs that claim at the same instant both rewrite the same file, and Delta's optimistic
concurrency lets exactly one of them commit; the other gets a clear error and writes nothing.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from dsel.errors import DselError
from dsel.write import check_schema, driver_rows, sql_path

RUNS_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType()),
    T.StructField("command", T.StringType()),
    T.StructField("status", T.StringType()),  # running, succeeded or failed
    T.StructField("started_at", T.TimestampType()),
    T.StructField("finished_at", T.TimestampType()),
    T.StructField("params", T.StringType()),  # JSON of the DselConfig
    T.StructField("input_versions", T.StringType()),  # JSON {"raw": {...}, "target": [{...}]}
    T.StructField("fit_version", T.LongType()),  # the log_ratios version the scores and selection used
    T.StructField("refit", T.BooleanType()),  # whether this run fit the histograms again
    T.StructField("read", T.LongType()),
    T.StructField("skipped", T.LongType()),
    T.StructField("scored", T.LongType()),
    T.StructField("selected", T.LongType()),
    T.StructField("counts", T.StringType()),  # JSON: every count of the summary, skipped by reason
    T.StructField("table_versions", T.StringType()),  # JSON {table path: Delta version written}
    T.StructField("error", T.StringType()),
    T.StructField("host", T.StringType()),
    T.StructField("pid", T.LongType()),
    T.StructField("dsel_version", T.StringType()),
])

LOCK_SCHEMA = T.StructType([
    T.StructField("lock", T.StringType()),
    T.StructField("run_id", T.StringType()),
    T.StructField("host", T.StringType()),
    T.StructField("pid", T.LongType()),
    T.StructField("claimed_at", T.TimestampType()),
])


def bookkeeping_session(spark: SparkSession) -> SparkSession:
    """A clone of ``spark`` (its settings, credentials and extensions) for the run table's and the lock's
    commits, whose Spark projections are interpreted instead of compiled (``spark.sql.codegen.factoryMode``
    ``NO_CODEGEN``, in this clone only).

    Each commit to a small Delta table runs a few state-reconstruction jobs over Delta's log actions, a
    nested schema too wide for whole-stage code generation, so every task of those jobs generates and
    formats the Java source of a projection before it can look up the compiled class: in a profile of
    warm claim / record / release loops that was about 40% of the JVM's sampled CPU.  The commits are the
    same either way, only faster (figures in ``benchmarks/HISTORY.md``).  The whole session interpreted
    is slower (its select stage at 1 GB 6.0 / 6.5 s → 10.0 / 10.8 s), so only these commits are.

    ``spark`` itself is returned where no JVM session can be cloned: Spark Connect, or a cluster that
    allows Python no such call (Databricks' shared access mode restricts Py4J).
    """
    jsession = getattr(spark, "_jsparkSession", None)
    if jsession is None:
        return spark
    try:
        clone = spark.__class__(spark.sparkContext, jsession.cloneSession())
        clone.conf.set("spark.sql.codegen.factoryMode", "NO_CODEGEN")
    except Exception:  # the same commits, compiled: only slower
        return spark
    return clone


def record_run(spark: SparkSession, path: str, row: dict[str, Any]) -> None:
    """Insert or replace the run's row in the run table: one commit overwriting its ``run_id`` partition."""
    from delta.tables import DeltaTable

    frame = driver_rows(spark, [tuple(row.get(f.name) for f in RUNS_SCHEMA.fields)], RUNS_SCHEMA)
    if not DeltaTable.isDeltaTable(spark, path):
        try:
            frame.write.format("delta").mode("errorifexists").partitionBy("run_id").save(path)
            return
        except Exception:  # another writer created it first; fall through to the overwrite
            pass
    check_schema(spark, path, RUNS_SCHEMA, "runs")
    (frame.write.format("delta").mode("overwrite")
     .option("replaceWhere", f"run_id = '{_quote(row['run_id'])}'").save(path))


@dataclass(frozen=True)
class Holder:
    """Who holds an output's lock."""

    run_id: str
    host: str
    pid: int
    claimed_at: dt.datetime

    def gone(self, timeout_hours: float) -> bool:
        """True when the holder can no longer be running: dead on this host, or older than the timeout."""
        if dt.datetime.now() - self.claimed_at > dt.timedelta(hours=timeout_hours):
            return True
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def holder(spark: SparkSession, path: str) -> Optional[Holder]:
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        return None
    row = spark.read.format("delta").load(path).where(F.col("run_id").isNotNull()).first()
    return None if row is None else Holder(row["run_id"], row["host"], int(row["pid"]), row["claimed_at"])


def _busy(path: str, held: Holder) -> DselError:
    return DselError(
        f"another dsel run, '{held.run_id}' (pid {held.pid} on {held.host}, since {held.claimed_at:%Y-%m-%d %H:%M:%S}), "
        f"is writing to {path.rsplit('/', 1)[0]}; wait for it to finish, or if it is dead, rerun with "
        "--break-lock (or a smaller --lock-timeout-hours)")


def claim(spark: SparkSession, path: str, run_id: str, timeout_hours: float,
          force: bool = False) -> Optional[Holder]:
    """Take the output lock for ``run_id`` or raise DselError naming the run that holds it; the holder
    of another run id it was taken over from (gone, or ``force``), if any."""
    from delta import exceptions as conflicts
    from delta.tables import DeltaTable

    row = ("lock", run_id, socket.gethostname(), os.getpid(), dt.datetime.now().replace(microsecond=0))
    me = driver_rows(spark, [row], LOCK_SCHEMA)
    conflict = tuple(getattr(conflicts, n) for n in _CONFLICTS)
    if not DeltaTable.isDeltaTable(spark, path):
        try:
            me.write.format("delta").mode("errorifexists").save(path)
            return
        except conflict + (AnalysisException,):
            pass  # created by a concurrent run a moment ago: compete through the UPDATE below
    check_schema(spark, path, LOCK_SCHEMA, "lock")
    # Free, or held by this run id in this process, or on another host (a retry there after a crash,
    # whose process cannot be checked from here). On this host, a live process holding the same run
    # id (the same command started twice) keeps it.
    free = (f"run_id IS NULL OR (run_id = '{_quote(run_id)}' AND (host <> '{_quote(row[2])}' "
            f"OR pid = {int(row[3])}))")
    if _take(spark, path, row, free, conflict):
        return
    held = holder(spark, path)
    if held is None:  # no row to update (an emptied lock table): insert this run's row, or take it when free
        names = [f.name for f in LOCK_SCHEMA.fields[1:]]
        with _racing(spark, path, conflict):
            (DeltaTable.forPath(spark, path).alias("l").merge(me.alias("n"), "l.lock = n.lock")
             .whenMatchedUpdate(condition="l.run_id IS NULL OR l.run_id = n.run_id", set={n: f"n.{n}" for n in names})
             .whenNotMatchedInsertAll().execute())
        held = holder(spark, path)
    if held is not None and not _ours(held, run_id) and (force or held.gone(timeout_hours)):
        # Take over from exactly the holder seen here; if it changed meanwhile, the UPDATE matches nothing.
        taken = free + (f" OR (run_id = '{_quote(held.run_id)}' AND host = '{_quote(held.host)}' "
                        f"AND pid = {int(held.pid)})")
        if _take(spark, path, row, taken, conflict):
            return held if held.run_id != run_id else None
        held = holder(spark, path)
    if held is None or not _ours(held, run_id):
        raise _busy(path, held) if held else DselError(f"another dsel run changed {path} at the same moment; rerun")
    return None


def _ours(held: Holder, run_id: str) -> bool:
    """Whether ``held`` is this run id in this very process."""
    return held.run_id == run_id and held.pid == os.getpid() and held.host == socket.gethostname()


def _take(spark: SparkSession, path: str, row: tuple, condition: str, conflict: tuple) -> bool:
    """Write ``row`` into the lock's row where ``condition`` holds; True when it changed the one row.

    SQL, as its UPDATE says how many rows it changed: the lock is then this run's (a concurrent
    commit would have failed this one), with no read of the table to find out."""
    values = ", ".join(f"{f.name} = {_literal(v)}" for f, v in zip(LOCK_SCHEMA.fields[1:], row[1:]))
    with _racing(spark, path, conflict):
        changed = spark.sql(f"UPDATE delta.`{sql_path(spark, path)}` SET {values} WHERE {condition}").first()
    return changed is not None and changed[0] == 1


@contextlib.contextmanager
def _racing(spark: SparkSession, path: str, conflict: tuple) -> Iterator[None]:
    """Around one commit to the lock: a concurrent commit raises the DselError naming the holder."""
    try:
        yield
    except conflict:
        now_held = holder(spark, path)
        raise _busy(path, now_held) if now_held else DselError(
            f"another dsel run changed {path} at the same moment; rerun") from None


#: Delta's optimistic-concurrency errors (in delta-spark's Python API they share no common base class).
_CONFLICTS = ("ConcurrentAppendException", "ConcurrentDeleteDeleteException", "ConcurrentDeleteReadException",
              "ConcurrentTransactionException", "ConcurrentWriteException", "DeltaConcurrentModificationException",
              "MetadataChangedException", "ProtocolChangedException")


def mark_taken_over(spark: SparkSession, path: str, held: Holder, run_id: str, broken: bool) -> None:
    """The run table's row of a run whose lock ``run_id`` took over, when it still says 'running' (its
    process was killed, or ``broken`` with --break-lock): 'failed', saying so, rather than running forever."""
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        return
    row = spark.read.format("delta").load(path).where(F.col("run_id") == held.run_id).first()
    if row is None or row["status"] != "running":
        return
    how = "broken with --break-lock" if broken else "was taken over, its process gone"
    record_run(spark, path, {**row.asDict(), "status": "failed", "finished_at": dt.datetime.now(),
                             "error": f"interrupted: its lock {how}, by run '{run_id}'"})


def release(spark: SparkSession, path: str, run_id: str) -> None:
    """Free the lock if ``run_id`` (in this process) still holds it."""
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        return
    (DeltaTable.forPath(spark, path).update(
        condition=(F.col("run_id") == run_id) & (F.col("pid") == os.getpid()),
        set={"run_id": F.lit(None).cast("string"), "host": F.lit(None).cast("string"),
             "pid": F.lit(None).cast("long"), "claimed_at": F.lit(None).cast("timestamp")}))


def _literal(value: Any) -> str:
    """``value`` (a string, an integer or a datetime) as a SQL literal; a datetime as its instant, read
    back as the same local time whatever the session's time zone (as ``F.lit`` of a datetime)."""
    if isinstance(value, dt.datetime):
        return f"timestamp_seconds({int(value.timestamp())})"
    return str(int(value)) if isinstance(value, int) else f"'{_quote(str(value))}'"


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
