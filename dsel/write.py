"""Write: Delta tables under the output directory, and exports.

Every table is written whole with ``mode("overwrite")`` in one Delta commit (or appended to, for the
records or files a growing input adds), so rerunning a run replaces its rows instead of adding to
them, and a crash leaves the previous version intact.  A new ``OUT/features`` may instead be written
by the tasks themselves into a staging directory and converted to Delta once they all succeeded
(:func:`parquet_writer`, :func:`publish_parquet`).  Each commit carries the run's parameters as
JSON in ``userMetadata``.  The run table and the lock are written by :mod:`dsel.runs`.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar, Union

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from dsel.errors import DselError

T_ = TypeVar("T_")
TABLES = ("features", "log_ratios", "weights", "skipped", "selected", "runs", "lock", "evaluation")


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
    def lock(self) -> str:
        return self.table("lock")

    def check_apart(self, inputs: dict[str, Sequence[str]]) -> None:
        """Refuse an --out inside a local input directory (``inputs``: role -> paths): the next read
        of that directory would take dsel's tables for input files."""
        local = local_dir(self.out)
        if local is None:
            return
        for role, sources in inputs.items():
            for source in sources:
                path = local_dir(source)
                if path is None or not os.path.isdir(path):
                    continue
                if _within(_comparable(self.out), _comparable(path)):
                    raise DselError(f"--out {self.out} is inside the {role} input directory {source}, where dsel's "
                                    f"tables would be read as {role} input; choose an --out outside it")

    def check_owned(self) -> None:
        """Refuse to write into a local directory that holds data dsel did not write."""
        local = local_dir(self.out)
        if local is None:
            return
        if os.path.isfile(local):
            raise DselError(f"--out {self.out} is a file; give a directory for dsel's tables")
        if os.path.isdir(local) and os.listdir(local):
            # _staging_scored: a table earlier dsel versions left behind while scoring
            foreign = [n for n in os.listdir(local) if n not in TABLES + ("_staging_scored", STAGING)]
            if foreign:
                raise DselError(f"--out {self.out} already holds {', '.join(sorted(foreign)[:3])}, which dsel did "
                                "not write; choose an empty or new directory for --out")


#: What Spark's file writers leave in a directory they wrote: an earlier export, which --export replaces.
_WRITER_FILES = re.compile(r"^(\.?part-.*|\.?_SUCCESS(\.crc)?|_committed_.*|_started_.*)$")


def check_export(export: str, out: str, inputs: dict[str, Sequence[str]]) -> None:
    """Refuse an ``--export`` path whose overwrite would delete what is not an earlier export: dsel's
    tables (``out``, or a directory holding it), an input (``inputs``: role -> paths), or a file or a
    directory of files Spark's writers did not leave there; nor one inside an input directory, which
    the next read would take for input."""
    target = _comparable(export)
    if _within(target, _comparable(out)) or _within(_comparable(out), target):
        raise DselError(f"--export {export} would overwrite dsel's tables in --out {out}; give --export a path "
                        "outside --out")
    for role, sources in inputs.items():
        for source in sources:
            root = _comparable(_glob_root(source))
            if _within(root, target) or _within(target, root):
                raise DselError(f"--export {export} overlaps the {role} input {source}, which its overwrite would "
                                f"delete or the next read take for {role} input; give --export a path of its own")
    local = local_dir(export)
    if local is None or not os.path.exists(local):
        return
    if not os.path.isdir(local):
        raise DselError(f"--export {export} is a file, which dsel would replace with a directory of part files; "
                        "give --export a new or empty directory")
    foreign = sorted(n for n in os.listdir(local) if not _WRITER_FILES.match(n))
    if foreign:
        raise DselError(f"--export {export} already holds {', '.join(foreign[:3])}, which dsel did not write and "
                        "its overwrite would delete; give --export a new or empty directory")


def check_side_output(path: str, flag: str, out: Optional[str], inputs: dict[str, Sequence[str]]) -> None:
    """Refuse a path for a report or a JSON file inside ``out`` (whose later commands refuse files dsel's
    tables did not write) or inside an input directory (whose next read would take them for input)."""
    target = _comparable(path)
    if out and _within(target, _comparable(out)):
        raise DselError(f"{flag} {path} is inside --out {out}, where files that are not dsel's tables make later "
                        f"commands on it refuse; give {flag} a path outside --out")
    for role, sources in inputs.items():
        for source in sources or []:
            if _within(target, _comparable(_glob_root(source))):
                raise DselError(f"{flag} {path} is inside the {role} input {source}, whose next read would take "
                                f"what it writes for {role} input; give {flag} a path outside it")


def _comparable(path: str) -> str:
    """``path`` resolved (links, ``..``) when it is local, else as given without a trailing slash."""
    local = local_dir(path)
    return os.path.realpath(local) if local is not None else path.rstrip("/")


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


#: The characters that make a path a glob in Spark's (Hadoop's) file listing.
GLOB_CHARS = "*?[{"


def _glob_root(path: str) -> str:
    """The directory a glob lists (the path itself when it has no wildcard)."""
    cut = min((path.find(c) for c in GLOB_CHARS if c in path), default=-1)
    return path if cut < 0 else (path[:cut].rsplit("/", 1)[0] or "/")


#: Where the workers write a new table's Parquet files before it becomes a Delta table (see
#: :func:`parquet_writer`); it is left behind only by a run that was killed, and the next one removes it.
STAGING = "_staging_parquet"


@dataclass(frozen=True)
class Written:
    """A commit dsel made: the table's new version and the rows it wrote (from Delta's metrics, no scan)."""

    version: int
    rows: int


#: Tables whose columns are fixed by dsel (``selected`` carries the raw input's own columns, and
#: ``features``, dsel's cache of the featurize pass, is rebuilt whole when its layout changes).
FIXED_SCHEMA_TABLES = ("log_ratios", "weights", "skipped")


def write_table(df: DataFrame, path: str, metadata: dict[str, Any], mode: str = "overwrite",
                change_feed: bool = False, column_stats: bool = True, compressed: bool = True,
                plain_files: bool = False) -> Written:
    """Write ``df`` to the Delta table at ``path`` in one commit (``overwrite`` or ``append``).

    An existing table must have been written by dsel and, for the tables with fixed columns,
    have the same columns; otherwise this fails instead of mixing data.  ``change_feed`` turns on
    Delta's change data feed when the table is created (``OUT/features``, for incremental scoring).
    ``column_stats=False`` creates the table without per-file column statistics
    (``delta.dataSkippingNumIndexedCols=0``; row counts are still kept): for ``OUT/features`` and
    ``OUT/weights``, which are only ever read whole or joined on ids, so the statistics would cost the
    writers about 10% (features) and 20% (weights) of their JVM CPU for no file ever skipped.
    ``compressed=False`` writes this commit's Parquet files without a compression codec: for
    ``OUT/features``, whose encoded n-gram counts (nearly all of its bytes) are varints that Snappy
    cannot shrink (64 MB files stayed within 0.01%), so compressing them only cost CPU (about 5% of a
    4 GB run's CPU, in the writers and in the readers that decode them).  ``plain_files`` creates the
    table without deletion vectors, whatever a platform's default (Databricks can turn them on for
    every new table): its rows must be its Parquet files' rows, as the workers read those directly.
    """
    from delta.tables import DeltaTable

    check_table(df.sparkSession, path, df.schema, appending=mode != "overwrite")
    # the version an append starts from: an append of no rows makes no commit, and the latest is then
    # the one before, whose rows are not this write's
    before = (int(_latest(df.sparkSession, path)["version"])
              if mode != "overwrite" and DeltaTable.isDeltaTable(df.sparkSession, path) else None)
    writer = (df.write.format("delta").mode(mode)
              .option("userMetadata", json.dumps(metadata, sort_keys=True, default=str)))
    if mode == "overwrite":
        writer = writer.option("overwriteSchema", "true")
    if change_feed:
        writer = writer.option("delta.enableChangeDataFeed", "true")
    if plain_files and mode == "overwrite":
        writer = writer.option("delta.enableDeletionVectors", "false")
    if not column_stats and mode == "overwrite":
        writer = writer.option("delta.dataSkippingNumIndexedCols", "0")
    if not compressed:
        writer = writer.option("compression", "uncompressed")
    writer = mapping_names(writer, df, path)
    try:
        writer.save(path)
    finally:
        forget_commit(path)
    written = last_commit(df.sparkSession, path)
    return Written(written.version, 0) if written.version == before else written


#: the characters Delta allows in column names only under column mapping
_UNMAPPED = re.compile(r"[ ,;{}()\n\t=]")


def _structs(kind: T.DataType, prefix: str = "") -> Iterator[tuple[str, T.StructType]]:
    """Every struct type in ``kind`` (itself, in its fields, arrays' elements and maps' values), with
    the path prefix of its fields (``meta.``)."""
    if isinstance(kind, T.ArrayType):
        yield from _structs(kind.elementType, prefix)
    elif isinstance(kind, T.MapType):
        yield from _structs(kind.valueType, prefix)
    elif isinstance(kind, T.StructType):
        yield prefix, kind
        for f in kind.fields:
            yield from _structs(f.dataType, f"{prefix}{f.name}.")


def names_to_map(kind: T.DataType) -> list[str]:
    """Column names (paths, at any depth) holding a character a Delta table refuses without column
    mapping (a space, ``,;{}()=``, a tab or a newline), such as a raw input's ``source url``."""
    return [prefix + f.name for prefix, struct in _structs(kind) for f in struct.fields if _UNMAPPED.search(f.name)]


def case_clashes(kind: T.DataType) -> list[str]:
    """Column names (paths, at any depth) that differ only in case from a sibling's (``text``, ``Text``):
    Delta tables never tell them apart, Spark's columns only when case-sensitive."""
    found = []
    for prefix, struct in _structs(kind):
        lowered = [f.name.lower() for f in struct.fields]
        found += [prefix + f.name for f, low in zip(struct.fields, lowered) if lowered.count(low) > 1]
    return found


def mapping_names(writer: Any, df: DataFrame, path: str) -> Any:
    """``writer`` (of ``df`` to the Delta table at ``path``), with column mapping when ``df`` has
    column names that need it (:func:`names_to_map`), else as it is: a new table gets it from the
    write's option; an existing one without it first gains it by an ALTER (the only way a table may),
    in a commit that repeats the table's last metadata."""
    if not names_to_map(df.schema):
        return writer
    _map_column_names(df.sparkSession, path)
    return writer.option("delta.columnMapping.mode", "name")


def _map_column_names(spark: SparkSession, path: str) -> None:
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        return
    properties = DeltaTable.forPath(spark, path).detail().first()["properties"] or {}
    if properties.get("delta.columnMapping.mode", "none") != "none":
        return
    key = "spark.databricks.delta.commitInfo.userMetadata"
    spark.conf.set(key, json.dumps(commit_metadata(spark, path) or {}, sort_keys=True, default=str))
    try:
        spark.sql(f"ALTER TABLE delta.`{sql_path(spark, path)}` SET TBLPROPERTIES ('delta.minReaderVersion' = '2', "
                  "'delta.minWriterVersion' = '5', 'delta.columnMapping.mode' = 'name')")
    finally:
        spark.conf.unset(key)
        forget_commit(path)


def check_outputs(spark: SparkSession, paths: OutputPaths) -> None:
    """Before a run writes anything: every table already under ``--out`` must be one dsel wrote (all
    read at once, one thread each; the first failing table in :data:`TABLES` order is reported)."""
    # OUT/evaluation is a directory of two tables (dsel evaluate --out), each checked as one
    names = [name for name in TABLES if name not in ("runs", "lock", "evaluation")] + [
        "evaluation/selected", "evaluation/results"]
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda name: check_table(spark, paths.table(name), None), names))


def check_table(spark: SparkSession, path: str, schema: Optional[T.StructType], appending: bool = False) -> None:
    """Refuse to write over a table dsel did not write, or one of its tables with other columns
    (any of them when ``appending`` rows to it)."""
    from delta.tables import DeltaTable

    name = path.rstrip("/").rsplit("/", 1)[-1]
    local = local_dir(path)
    if local is not None and os.path.exists(local) and not DeltaTable.isDeltaTable(spark, path):
        if not interrupted_write(local):
            raise DselError(f"{path} exists but is not a Delta table; move it away or choose another --out")
        if path not in _INTERRUPTED:
            _INTERRUPTED.add(path)
            print(f"[dsel] {path} holds only the files of a first write that was stopped before it committed; "
                  "they belong to no version of the table, and this run writes the table anew", flush=True)
    if not DeltaTable.isDeltaTable(spark, path):
        return
    metadata = commit_metadata(spark, path) or {}
    # dsel evaluate wrote OUT/evaluation/selected without its version before it was checked as a table
    if "dsel_version" not in metadata and metadata.get("command") != "evaluate":
        raise DselError(f"{path} is a Delta table that dsel did not write; choose another --out")
    if schema is not None and (appending or name in FIXED_SCHEMA_TABLES):
        check_schema(spark, path, schema, name, added=not appending)


_INTERRUPTED: set[str] = set()
_COMMIT_FILE = re.compile(r"^\d+\.(json|checkpoint\b.*)$")


def interrupted_write(local: str) -> bool:
    """True when local directory ``local`` holds only what a table's first write leaves when its
    process is killed before the commit: data files (``part-*``, their hidden checksums and
    temporary files, in ``key=value`` partition directories too) and a ``_delta_log`` without a
    commit.  A later write commits its own files; Delta never reads files its log does not list."""
    if not os.path.isdir(local):
        return False
    for root, dirs, files in os.walk(local):
        inside = os.path.relpath(root, local).split(os.sep)
        if inside[0] == "_delta_log":
            if len(inside) == 1 and any(_COMMIT_FILE.match(name) for name in files):
                return False
            continue
        if any(not name.startswith(("part-", ".part-")) for name in files):
            return False
        if any(not (d == "_delta_log" and inside == ["."]) and "=" not in d for d in dirs):
            return False
    return True


def check_schema(spark: SparkSession, path: str, schema: T.StructType, what: str, added: bool = False) -> None:
    """Fail when the Delta table at ``path`` has other columns than ``schema``.  ``added``: the table
    is being replaced whole, and ``schema`` may add columns after the table's (a later dsel's layout)."""
    have = [(f.name, f.dataType.simpleString()) for f in spark.read.format("delta").load(path).schema.fields]
    want = [(f.name, f.dataType.simpleString()) for f in schema.fields]
    if have != (want[:len(have)] if added else want):
        raise DselError(f"{path} holds a '{what}' table with other columns ({', '.join(n for n, _ in have)}) "
                        f"than this run writes ({', '.join(n for n, _ in want)}), perhaps from another dsel "
                        "version; write to a new --out, or move that table away")


_MEMO = threading.local()


@contextlib.contextmanager
def remembering_commits(commits: Optional[dict] = None) -> Iterator[None]:
    """Within this block, remember each table's latest commit once read: for one dsel command, which
    holds ``OUT/lock``, so only it writes its tables (and every write here forgets the table's entry).
    ``commits``: remember into another thread's (see :func:`remembering`)."""
    outer = getattr(_MEMO, "commits", None)
    _MEMO.commits = commits if commits is not None else ({} if outer is None else outer)
    try:
        yield
    finally:
        _MEMO.commits = outer


def remembering(fn: Callable[..., T_]) -> Callable[..., T_]:
    """``fn``, to be called in another thread, with the commits this thread remembers (see
    :func:`remembering_commits`); ``fn`` itself when this thread remembers none."""
    commits = getattr(_MEMO, "commits", None)
    if commits is None:
        return fn

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> T_:
        with remembering_commits(commits):
            return fn(*args, **kwargs)
    return call


def forget_commit(path: str) -> None:
    """Drop ``path``'s remembered commit (call after writing to it)."""
    commits = getattr(_MEMO, "commits", None)
    if commits is not None:
        commits.pop(path, None)


def _latest(spark: SparkSession, path: str):
    """The latest commit's version, timestamp, operationMetrics and userMetadata (one read of the log per table in
    a :func:`remembering_commits` block)."""
    commits = getattr(_MEMO, "commits", None)
    if commits is not None and path in commits:
        return commits[path]
    row = _history_row(spark, path)
    if commits is not None:
        commits[path] = row
    return row


def _history_row(spark: SparkSession, path: str):
    from delta.tables import DeltaTable

    return (DeltaTable.forPath(spark, path).history(1)
            .select("version", "timestamp", "operationMetrics", "userMetadata").first())


def prefetch_commits(spark: SparkSession, paths: Sequence[str]) -> None:
    """Read the latest commit of each of ``paths`` that is a Delta table, all at once (one thread each),
    into this :func:`remembering_commits` block: each read is a few small driver-side steps, mostly waiting."""
    from delta.tables import DeltaTable

    commits = getattr(_MEMO, "commits", None)
    wanted = [p for p in dict.fromkeys(paths) if commits is not None and p not in commits]
    if not wanted:
        return
    with ThreadPoolExecutor(len(wanted)) as pool:
        rows = list(pool.map(lambda p: _history_row(spark, p) if DeltaTable.isDeltaTable(spark, p) else None, wanted))
    commits.update((p, row) for p, row in zip(wanted, rows) if row is not None)


def load_state(spark: SparkSession, path: str) -> None:
    """Compute the current state (the list of files) of the Delta table at ``path``, when it is one: Delta
    keeps it, so an overwrite that follows without another commit in between does not compute it
    again.  Run it in a thread while other work goes on."""
    from delta.tables import DeltaTable

    if DeltaTable.isDeltaTable(spark, path):
        spark.read.format("delta").load(path).inputFiles()


def last_commit(spark: SparkSession, path: str) -> Written:
    row = _latest(spark, path)
    return Written(int(row["version"]), int((row["operationMetrics"] or {}).get("numOutputRows", -1)))


def commit_stamp(spark: SparkSession, path: str) -> str:
    """The latest commit's version and time: names one state of a table even when the table was
    deleted and written again from version 0."""
    row = _latest(spark, path)
    return f"{row['version']}@{row['timestamp'].isoformat()}"


def read_table(spark: SparkSession, path: str, what: str) -> DataFrame:
    """Read a dsel Delta table, with a message naming the command that writes it when it is missing."""
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        if what == "runs":
            raise DselError(f"no runs table at {path}; every dsel command writes one: check the --out given")
        writer = {"log_ratios": "fit", "selected": "select"}.get(what, "score")
        raise DselError(f"no {what} table at {path}; run 'dsel {writer}' (or 'dsel run') with the same --out first")
    return spark.read.format("delta").load(path)


def commit_metadata(spark: SparkSession, path: str) -> Optional[dict[str, Any]]:
    """The userMetadata of the latest commit of a Delta table, parsed from JSON."""
    raw = _latest(spark, path)["userMetadata"]
    return json.loads(raw) if raw else None


#: A path that starts with a URI scheme (``s3a:``, ``dbfs:``, ``file:``).
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def sql_path(spark: SparkSession, path: str) -> str:
    """``path`` as Delta's SQL names a table (``delta.`path```), quoted: SQL takes only an absolute path
    there (a relative one is "Unsupported data source type for direct query on files: delta"), so a
    relative path is qualified as Spark's readers and writers resolve it, against the default file
    system's working directory."""
    if not (path.startswith("/") or _SCHEME.match(path)):
        try:
            hadoop = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(path)
            conf = spark.sparkContext._jsc.hadoopConfiguration()
            path = str(hadoop.getFileSystem(conf).makeQualified(hadoop).toString())
        except Exception:  # Spark Connect: no JVM here; the server resolves it, if it can
            pass
    return path.replace("`", "``")


def write_file(spark: SparkSession, path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to the file ``path``, replacing it: a local path (plain or ``file://``)
    with Python, creating its directory; any other (``s3a://``, ``abfss://``, ``dbfs:/``) through the
    Hadoop file system Spark uses for it, as the tables are written."""
    local = local_dir(path)
    if local is not None and not _SCHEME.match(local):
        os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
        with open(local, "w", encoding="utf-8") as fh:
            fh.write(text)
        return
    _hadoop_write(spark, path, text.encode("utf-8"))


def _hadoop_write(spark: SparkSession, path: str, data: bytes) -> None:
    jvm = spark.sparkContext._jvm  # type: ignore[union-attr]
    target = jvm.org.apache.hadoop.fs.Path(path)
    stream = target.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).create(target, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def driver_rows(spark: SparkSession, rows: Sequence[Sequence[Any]], schema: Union[T.StructType, str]) -> DataFrame:
    """A DataFrame of a few rows made on the driver (the run table's row, the lock, dropped duplicates),
    sent to the JVM as one Arrow table.

    ``spark.createDataFrame`` of Python rows re-serializes them in a Python worker pool of its own,
    apart from the one the Arrow UDFs use: a second daemon and a worker per core, started by the first
    run-table write of every session (about 1.3 s and 2 CPU s of a fresh 1 GB run).  An Arrow table goes
    to the JVM without a Python worker.  A naive ``datetime`` is taken as local time, as
    ``createDataFrame`` takes it, and sent as that instant.
    """
    import datetime as dt

    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_type

    kind = schema if isinstance(schema, T.StructType) else T.StructType.fromDDL(schema)
    columns = list(zip(*rows)) if rows else [()] * len(kind.fields)
    arrays = []
    for field, values in zip(kind.fields, columns):
        if isinstance(field.dataType, T.TimestampType):  # the instant, whatever the session's time zone
            arrays.append(pa.array([v if v is None else v.astimezone(dt.timezone.utc) for v in values],
                                   pa.timestamp("us", tz="UTC")))
        else:
            arrays.append(pa.array(list(values), to_arrow_type(field.dataType)))
    return spark.createDataFrame(pa.Table.from_arrays(arrays, names=kind.names), kind)


def local_dir(path: str) -> Optional[str]:
    """The local directory of ``path`` (a plain or file:// path), or None for other file systems."""
    local = path[len("file://"):] if path.startswith("file://") else path
    return None if "://" in local else local


def parquet_writer(run: Callable[[Iterator[Any]], Iterator[Any]], directory: str, schema: Any,
                   order: Optional[str] = None, compression: str = "none") -> Callable:
    """A ``mapInArrow`` function that writes what ``run`` yields for its task into
    ``directory/part-NNNNN.parquet`` (NNNNN: the first task number in its input) with pyarrow, and
    yields one row (file, rows): the JVM neither receives nor encodes the rows.

    A task attempt writes a hidden temporary file and renames it, so a retried or speculative
    attempt leaves exactly one file with the same rows.  ``schema`` (an Arrow schema) is the files'
    schema; batches are cast to it.  No compression codec, as for ``OUT/features`` written by Spark
    (see :func:`write_table`); row groups of up to :data:`ROW_GROUP_BYTES`; Parquet statistics (which
    let Spark skip row groups, say where ``skip_reason`` is null) on all but the encoded counts;
    dictionary encoding only for the columns that repeat (the rest would only try it and fall back).

    ``order``: a column to write each task's rows in descending order of (a task then holds all its
    rows: give it a bounded share of the input), with Parquet's page index, so that a reader filtering
    on a lower bound of that column skips the pages below it.  ``compression``: the codec."""

    def write(batches: Iterator[Any]) -> Iterator[Any]:
        import uuid

        import pyarrow as pa

        held = list(batches)
        tasks = [t for b in held for t in b.column(0).to_pylist()]
        if not tasks:
            return
        name = f"{directory}/part-{tasks[0]:05d}.parquet"
        partial = f"{directory}/.part-{tasks[0]:05d}.{uuid.uuid4().hex}.tmp"
        rows, pending, size, writer = 0, [], 0, None
        options = _writer_options(compression, order is not None)
        try:
            for batch in _ordered((_as(b, schema) for b in run(iter(held))), schema, order):
                pending.append(batch)
                size += batch.nbytes
                rows += batch.num_rows
                if size >= ROW_GROUP_BYTES:
                    writer = _row_group(writer, partial, schema, pending, options)
                    pending, size = [], 0
            if pending:
                writer = _row_group(writer, partial, schema, pending, options)
            if writer is not None:
                writer.close()
                writer = None
                os.replace(partial, name)
        finally:
            if writer is not None:
                writer.close()
            if os.path.exists(partial):
                os.remove(partial)
        yield pa.RecordBatch.from_pydict({"file": [name if rows else None], "rows": [rows]},
                                         pa.schema([("file", pa.string()), ("rows", pa.int64())]))

    return write


#: Row groups of :func:`parquet_writer`: batches are gathered up to this many bytes (as Spark's writer
#: makes row groups of up to 128 MB); a task holds at most this much beside the batch it is given.
ROW_GROUP_BYTES = 64 << 20
#: Columns of the tables written by :func:`parquet_writer` whose values repeat (dictionary-encoded), and
#: those without statistics (the encoded counts: no reader filters on them, and they are most bytes).
_REPEATING = ("skip_reason", "source_file", "fit_bin", "id_from_text")
_UNFILTERED = ("features", "fit_counts")
#: Rows per Parquet page of an ordered file (``parquet.page.row.count.limit``, Spark's default): a reader
#: bounding the ordered column reads the pages that can reach the bound, a few of these rows at most each.
PAGE_ROWS = 20_000
#: Batch size of an ordered task's rows (see :func:`parquet_writer`).
ORDERED_BATCH_ROWS = 1 << 16
#: The rows :func:`parquet_writer` yields, one per task: the file it wrote (null when it had no rows), its rows.
PARQUET_WRITER_SCHEMA = "file string, rows long"


def _as(batch: Any, schema: Any) -> Any:
    """``batch`` cast to ``schema`` (names, types, nullability) when it differs."""
    import pyarrow as pa

    if batch.schema == schema:
        return batch
    return pa.Table.from_batches([batch]).cast(schema).combine_chunks().to_batches()[0]


def _writer_options(compression: str, indexed: bool) -> dict:
    """pyarrow ParquetWriter options: the codec, and (``indexed``) the page index, with pages of at most
    :data:`PAGE_ROWS` rows as Spark's Parquet writer makes them (set explicitly: not every pyarrow
    version that dsel accepts limits the rows of a page by default, and older ones cannot)."""
    import inspect

    import pyarrow.parquet as pq

    options: dict[str, Any] = {"compression": compression, "write_page_index": indexed}
    if indexed and "max_rows_per_page" in inspect.signature(pq.ParquetWriter.__init__).parameters:
        options["max_rows_per_page"] = PAGE_ROWS
    return options


def _ordered(batches: Iterator[Any], schema: Any, order: Optional[str]) -> Iterator[Any]:
    """``batches`` (of ``schema``) as they come, or (``order``) all of them in descending order of that
    column, in batches of at most :data:`ORDERED_BATCH_ROWS` rows."""
    if order is None:
        yield from batches
        return
    import pyarrow as pa
    import pyarrow.compute as pc

    table = pa.Table.from_batches(list(batches), schema)
    table = table.take(pc.sort_indices(table, sort_keys=[(order, "descending")]))
    yield from table.to_batches(max_chunksize=ORDERED_BATCH_ROWS)


def _row_group(writer: Any, path: str, schema: Any, batches: list, options: dict) -> Any:
    """Write ``batches`` as one row group, opening the file first if need be; returns the writer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if writer is None:
        writer = pq.ParquetWriter(path, schema, use_dictionary=[f.name for f in schema if f.name in _REPEATING],
                                  write_statistics=[f.name for f in schema if f.name not in _UNFILTERED], **options)
    table = pa.Table.from_batches(batches, schema)
    writer.write_table(table, row_group_size=table.num_rows)
    return writer


def publish_parquet(spark: SparkSession, staging: str, path: str, metadata: dict[str, Any],
                    properties: dict[str, str]) -> int:
    """Make the Parquet files in local directory ``staging`` the new Delta table at local ``path``
    (which must not exist): rename the directory, convert it in place (no statistics, as
    ``delta.dataSkippingNumIndexedCols=0`` keeps none either) and set ``properties``; both commits
    carry ``metadata``.  Returns the table's version.  On failure no directory is left at ``path``."""
    import shutil

    local = local_dir(path)
    os.rename(staging, local)
    quoted = sql_path(spark, path)
    key = "spark.databricks.delta.commitInfo.userMetadata"
    before = spark.conf.get(key, None)
    spark.conf.set(key, json.dumps(metadata, sort_keys=True, default=str))
    try:
        spark.sql(f"CONVERT TO DELTA parquet.`{quoted}` NO STATISTICS")
        settings = ", ".join(f"'{k}' = '{v}'" for k, v in properties.items())
        spark.sql(f"ALTER TABLE delta.`{quoted}` SET TBLPROPERTIES ({settings})")
    except BaseException:
        shutil.rmtree(local, ignore_errors=True)
        raise
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)
        forget_commit(path)
    return last_commit(spark, path).version


def export(df: DataFrame, path: str, fmt: str) -> None:
    """Write the selected documents as JSON lines or Parquet files (overwriting ``path``)."""
    writer = df.write.mode("overwrite")
    if fmt == "jsonl":  # timestamps to the microsecond Spark keeps (its JSON default stops at milliseconds)
        writer.option("timestampFormat", "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX").option(
            "timestampNTZFormat", "yyyy-MM-dd'T'HH:mm:ss.SSSSSS").json(path)
    else:
        writer.parquet(path)
