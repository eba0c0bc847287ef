"""Read: load a corpus (JSON lines, Parquet, Delta path or catalog table) and mark each record.

:func:`read_input` returns the user's DataFrame with every original column; :func:`prepare` adds
the internal columns the later stages use (``_dsel_*``), without touching the user's columns:

* ``_dsel_id``: the id column cast to string, or, when the input has no id column, the hex
  SHA-256 of the document's UTF-8 text (so identical texts get identical ids);
* ``_dsel_text``: the text, or null when the record is unusable;
* ``_dsel_reason``: why the record is unusable (``malformed_json``, ``not_utf8`` (a line Spark's
  parser rejects that holds bytes that are not UTF-8), ``null_text``, ``null_id``, ``too_large``), or null;
* ``_dsel_hash``: Spark's xxhash64 of the text, which tells apart two documents with one id;
* ``_dsel_source`` and ``_dsel_detail``: the input file and, for malformed lines, their start.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.errors import AnalysisException

from dsel.config import DselConfig, same_input
from dsel.errors import DselError
from dsel.write import GLOB_CHARS, case_clashes

CORRUPT = "_corrupt_record"
#: How dsel has Spark parse JSON lines (its reader, ``from_json``): unusable lines kept in CORRUPT, and
#: no cap on a string's length (Jackson's default is 20,000,000 characters, which made a valid line
#: holding a longer text ``malformed_json``; such a text is now read, and ``too_large`` past
#: ``--max-doc-bytes``).
JSON_OPTIONS = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT, "maxStringLen": str(2**31 - 1)}
#: The skip reason of a line that is not JSON and holds bytes that are not UTF-8: a file in another
#: encoding (Latin-1, Windows-1252, ...), which only converting it to UTF-8 fixes.
NOT_UTF8 = "not_utf8"
#: The skip reasons of lines Spark's JSON parser rejects; their ``detail`` is the line's start.
MALFORMED = ("malformed_json", NOT_UTF8)
#: What the summary says after the skipped counts when a reason is among them: what to do about it.
SKIP_HINTS = {NOT_UTF8: ("lines holding bytes that are not UTF-8: a file in another encoding (Latin-1, "
                         "Windows-1252, ...), to convert first, for example iconv -f LATIN1 -t UTF-8 in.jsonl > "
                         "out.jsonl (or a compressed or binary file under a name that does not say so)")}
ID, TEXT, REASON, HASH, SOURCE, DETAIL = ("_dsel_id", "_dsel_text", "_dsel_reason", "_dsel_hash",
                                          "_dsel_source", "_dsel_detail")
INTERNAL = (ID, TEXT, REASON, HASH, SOURCE, DETAIL)
#: Columns dsel adds to the selected table; raw inputs must not already have them.
OUTPUT_COLUMNS = ("num_words", "log_weight", "rank", "target", "run_id")
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}$")
#: Compressed files Spark's JSON reader decompresses, by suffix (the pyarrow reader: gzip and zstd).
_CODEC_SUFFIXES = (".gz", ".bz2", ".zst", ".zstd", ".deflate", ".lz4", ".snappy")
_JSON_SUFFIXES = tuple(base + codec for base in (".json", ".jsonl", ".ndjson")
                       for codec in ("",) + _CODEC_SUFFIXES) + (".gz", ".bz2", ".zst", ".zstd")
#: Archives and codecs that Spark's JSON reader would read as plain text (every line malformed).
_NOT_DECOMPRESSED = {".tar.gz": "a tar archive", ".tgz": "a tar archive", ".tar.bz2": "a tar archive",
                     ".tar.zst": "a tar archive", ".tar": "a tar archive", ".zip": "a zip archive",
                     ".7z": "a 7-Zip archive", ".xz": "xz-compressed", ".lzma": "lzma-compressed",
                     ".br": "brotli-compressed", ".lzo": "LZO-compressed", ".z": "compress(1)-compressed"}


#: What a file's first bytes say it is: (signature, what it is, the suffix that names it, or None for
#: what Spark's JSON reader does not decompress). Each signature holds a byte that UTF-8 text (or JSON)
#: never holds, a NUL or one that is not UTF-8, or a control character, so that no JSON-lines file
#: matches it: a tar header's "ustar" alone could be a Spanish word ("gustar") at byte 257.
_MAGIC = (
    (rb"\x1f\x8b\x08", "gzip-compressed", ".gz"),
    (rb"\x28\xb5\x2f\xfd", "zstd-compressed", ".zst"),  # or .zstd
    (rb"BZh[1-9](1AY&SY|\x17rE8P\x90)", "bzip2-compressed", ".bz2"),
    # the lz4 and snzip tools' formats: Hadoop's codecs, which Spark's reader uses for .lz4 and .snappy,
    # read only their own block formats (they take these headers for block lengths of ~1.6 GB and the
    # JVM runs out of memory)
    (rb"\x04\x22\x4d\x18", "in the LZ4 frame format (the lz4 tool's), which Hadoop's lz4 codec does not read",
     None),
    (rb"\xff\x06\x00\x00sNaPpY", "in the framed snappy format (the snzip tool's), which Hadoop's snappy codec "
     "does not read", None),
    (rb"PAR1[^\x00]*\x00", "a Parquet file", ".parquet"),
    (rb"\xfd7zXZ\x00", "xz-compressed", None),
    (rb"PK\x03\x04", "a zip archive", None),
    (rb"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", None),
    (rb".{257}ustar(\x00|  \x00)", "a tar archive", None),
)


def _head_of(name: str) -> Optional[bytes]:
    """A local file's first bytes (enough for every magic number of :data:`_MAGIC`), None if unreadable."""
    try:
        with open(name, "rb") as fh:
            return fh.read(4096)
    except OSError:
        return None


def _mislabelled(name: str, head: bytes, role: str) -> Optional[str]:
    """Why ``name`` cannot be read as the JSON lines its name says, judged by its first bytes (a
    compressed file, an archive or a Parquet file under a name Spark reads as plain text), or None."""
    for signature, kind, suffix in _MAGIC:
        named = suffix and name.lower().endswith((suffix, ".zstd") if suffix == ".zst" else suffix)
        if re.match(signature, head, re.DOTALL) and not named:
            fix = (f"pass --{role}-format parquet" if suffix == ".parquet" else
                   f"name it to end in .jsonl{suffix} (the codec is chosen by the name)" if suffix else
                   _unread_fix(kind))
            unsaid = "" if not suffix and name.lower().endswith(_CODEC_SUFFIXES) else ", which its name does not say"
            return f"{name} is {kind}{unsaid}; {fix}"
    return None


def _not_json_lines(files: list[str], role: str) -> Optional[str]:
    """Why the first of ``files`` that is not JSON-lines text is not, judged by its first bytes (see
    :func:`_mislabelled`, or binary data), or None."""
    for name in files[:1000]:
        head = _head_of(name)
        if head is None:
            continue
        why = _mislabelled(name, head, role)
        if why:
            return why
        if b"\x00" in head:
            return f"{name} is not text (it holds NUL bytes); dsel reads JSON lines: check --{role}"
    return None


def check_json_files(names: list[str], role: str = "raw") -> None:
    """Before JSON-lines files are read: raise for the first of ``names`` (paths or file URIs) that is
    an archive or in a codec Spark's JSON reader does not decompress (:func:`check_decompressible`),
    then for the first local one whose first bytes say it is compressed, an archive or Parquet while
    its name says plain JSON lines: every line Spark (or the pyarrow reader) would read from it is
    malformed, so its records would all be skipped."""
    from urllib.parse import unquote, urlparse

    check_decompressible(names)
    for name in names:
        path = unquote(urlparse(name).path) if name.startswith("file:") else name  # as Spark lists files
        head = None if _is_uri(path) else _head_of(path)
        why = head and _mislabelled(path, head, role)
        if why:
            raise DselError(f"{why}; every line of it would be skipped as malformed")


#: the printable ASCII characters, which Spark's file URIs hold as they are or as %-escapes
_URI_KEPT = "".join(chr(i) for i in range(33, 127))


def arrow_path(uri: str) -> tuple[Any, str]:
    """pyarrow's (file system, path) of a file URI as Spark lists it (``inputFiles``,
    ``input_file_name``). Spark %-escapes some characters (a space, #, %) but leaves the others that
    are not ASCII (say ``día.jsonl``) as they are, which pyarrow's URI parser rejects: they are
    %-escaped as UTF-8 first, and pyarrow unescapes everything."""
    from urllib.parse import quote

    from pyarrow import fs

    return fs.FileSystem.from_uri(quote(uri, safe=_URI_KEPT))


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> str:
    """A local path as the file system names it: ``file:///x`` and ``file:/x`` (Hadoop's form) are ``/x``."""
    if path.startswith("file://"):
        return path[len("file://"):]
    return path[len("file:"):] if path.startswith("file:/") else path


def check_decompressible(names: list[str]) -> None:
    """Raise for the first of ``names`` that is an archive or uses a codec Spark's JSON reader
    does not decompress: Spark would read its bytes as lines of text, every one malformed."""
    for name in names:
        lowered = name.lower()
        kind = next((k for suffix, k in _NOT_DECOMPRESSED.items() if lowered.endswith(suffix)), None)
        if kind is not None:
            raise DselError(f"{name} is {kind}, which Spark's JSON reader does not read; {_unread_fix(kind)}")


def _unread_fix(kind: str) -> str:
    """What to do with an archive or a file in a codec Spark's JSON reader does not decompress."""
    return ("extract it and pass the JSON-lines files inside" if "archive" in kind else
            "decompress it, or recompress it with gzip or zstd (.gz, .zst)")


def _matches(path: str) -> list[str]:
    """What a local path or glob names, as Hadoop's globs match: ``{a,b}`` alternatives included."""
    if not any(c in path for c in GLOB_CHARS):
        return [path] if os.path.exists(path) else []
    found = [match for pattern in _alternatives(path) for match in glob.glob(pattern)]
    return list(dict.fromkeys(found))


def _alternatives(pattern: str) -> list[str]:
    """A glob's ``{a,b,...}`` alternatives spelled out (nested ones too), as Hadoop's GlobExpander does;
    a brace without its closing one is taken as it is."""
    depth, start = 0, None
    for i, c in enumerate(pattern):
        if c == "{":
            depth += 1
            start = i if depth == 1 else start
        elif c == "}" and depth:
            depth -= 1
            if depth == 0:
                parts, level, last = [], 0, start + 1
                for j in range(start + 1, i):
                    level += {"{": 1, "}": -1}.get(pattern[j], 0)
                    if pattern[j] == "," and level == 0:
                        parts.append(pattern[last:j])
                        last = j + 1
                parts.append(pattern[last:i])
                return [head + rest for part in parts
                        for head in _alternatives(pattern[:start] + part) for rest in _alternatives(pattern[i + 1:])]
    return [pattern]


def _walk(top: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk`` of a local directory into linked subdirectories too, as Spark's recursive listing
    goes, and not into those Spark leaves out (names starting with '.' or '_'); a link to a directory
    the walk is already inside (which would list its files without end) is refused."""
    above = _ancestors(os.path.realpath(top))
    for root, dirs, names in os.walk(top, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
        rel = os.path.relpath(root, top)
        steps = [] if rel == "." else rel.split(os.sep)
        chain = above | {os.path.realpath(os.path.join(top, *steps[:i])) for i in range(1, len(steps) + 1)}
        for d in dirs:
            path = os.path.join(root, d)
            if os.path.islink(path) and os.path.realpath(path) in chain:
                raise DselError(f"{path} is a symbolic link to {os.readlink(path)}, a directory it is inside, so "
                                "its files would be listed without end; remove the link")
        yield root, dirs, names


def _ancestors(path: str) -> set[str]:
    """``path`` and every directory above it."""
    parts = {path}
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        parts.add(path)
    return parts


def _local_files(source: str) -> list[str]:
    """The files a local path or glob names (those under a directory, as Spark lists them: names
    starting with '.' or '_' left out); [] for a URI or a path that does not exist."""
    if _is_uri(source):
        return []
    return _files_of(_matches(_local(source)))


def _files_of(matches: list[str]) -> list[str]:
    """The files that paths name: themselves, or those under a directory (names starting with '.' or
    '_' left out, files and directories, as Spark leaves them out)."""
    files = []
    for match in matches:
        if not os.path.isdir(match):
            files.append(_linked(match))
            continue
        for root, _, names in _walk(match):
            files += [_linked(os.path.join(root, n)) for n in names if not n.startswith((".", "_"))]
    return files


def _linked(path: str) -> str:
    """``path``, unless it is a symbolic link to nothing, which Spark's listing would silently leave out."""
    if os.path.islink(path) and not os.path.exists(path):
        raise DselError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist, so its records "
                        "would be left out of the input unsaid; fix the link, or remove it")
    return path


def _in_subdirectories(source: str) -> bool:
    """Whether a local directory (or a glob's directories) holds data files in subdirectories that are
    not partitions (``key=value``), such as ``raw/2026-11-30/part-0.jsonl``: Spark's file readers skip
    those unless told to look recursively. Names starting with '.' or '_' are skipped, as Spark does.

    When a file's directories include a partition (``lang=en/``, ``2026/lang=en/``, ``lang=en/2026/``),
    Spark reads every file in such directories with the partition columns, so no lookup is needed; but
    then it silently leaves out the files in no partition directory, so a mix of both is refused."""
    deeper = False
    for top in _matches(_local(source)):
        if not os.path.isdir(top) or os.path.isdir(os.path.join(top, "_delta_log")):
            continue
        names = _files_of([top])
        folders = [os.path.relpath(os.path.dirname(name), top) for name in names]
        nested = _outside_partitions(source, [[] if f == "." else f.split(os.sep) for f in folders], names)
        deeper = deeper or any(nested)
    return deeper


def _outside_partitions(source: str, folders: list[list[str]], names: list[str]) -> list[bool]:
    """For the files ``names`` in ``folders`` (each a list of directory names below the input's top):
    whether each file in no partition directory is in a subdirectory; refused when some are in one."""
    partitioned = [any("=" in part for part in parts) for parts in folders]
    inside = [n for n, yes in zip(names, partitioned) if yes]
    outside = [(n, bool(parts)) for n, parts, yes in zip(names, folders, partitioned) if not yes]
    if inside and outside:
        raise DselError(f"{source} mixes files in partition directories (such as {inside[0]}) with files in none "
                        f"(such as {outside[0][0]}); Spark would read only the partitioned ones, so "
                        f"{len(outside):,} file(s) would be lost. Move those files into partition directories, or "
                        "into an input of their own")
    return [nested for _, nested in outside]


def _remote_in_subdirectories(spark: SparkSession, source: str) -> bool:
    """:func:`_in_subdirectories` for a path on another file system (``s3a://``, ``hdfs://``, ``abfss://``),
    asked of Spark's own listings, which leave out the same names: without partitions, whether a
    recursive listing finds files the default one leaves out; with partitions, whether some files are
    in none (below the files' deepest common directory), which is refused."""
    from pyspark.errors import AnalysisException

    def listing(recursive: bool) -> DataFrame:  # a reader each: a reader's options stay set
        return spark.read.format("text").option("recursiveFileLookup", str(recursive).lower()).load(source)

    try:
        every = sorted(listing(True).inputFiles())
    except AnalysisException:  # no such path: the reader says so
        return False
    try:
        listed = listing(False)
        partitioned = len(listed.columns) > 1
    except Exception as exc:  # a SparkRuntimeException
        if "CONFLICTING_DIRECTORY_STRUCTURES" not in str(exc):
            raise
        partitioned = True
    if not partitioned:
        return bool(set(every) - set(listed.inputFiles()))
    folders = [name.split("/")[:-1] for name in every]
    common = len(os.path.commonprefix(folders))  # the deepest directory all files are under
    _outside_partitions(source, [f[common:] for f in folders], every)
    return False


def file_options(spark: SparkSession, sources: list[str]) -> dict[str, str]:
    """Options for Spark's file readers of ``sources``: a recursive lookup when a directory keeps data
    files in subdirectories that are not partitions (which it then reads, with no partition columns)."""
    for source in sources:  # a link to nothing named directly (a glob's match); those in directories are
        for match in [] if _is_uri(source) else _matches(_local(source)):  # checked as they are walked below
            if not os.path.isdir(match):
                _linked(match)
    # every source walked (no short cut at the first deeper one): the walk also checks its files' links
    deeper = any([_remote_in_subdirectories(spark, s) if _is_uri(s) else _in_subdirectories(s) for s in sources])
    return {"recursiveFileLookup": "true"} if deeper else {}


def detect_format(source: str) -> str:
    """Guess a source's format: a Delta directory, Parquet, JSON lines, or a catalog table name."""
    path = _local(source)
    if not _is_uri(source):
        matches = _matches(path)
        if not matches:
            if "/" not in source and _TABLE_NAME.match(source):
                return "table"
            tilde = " (dsel does not expand ~: write the home directory out)" if source.startswith("~") else ""
            if os.path.exists(path):  # a name holding *?[{, which Spark's listing takes as a glob
                tilde = (" (a file of that very name exists, but Spark's file listing reads its "
                         f"{''.join(sorted(set(GLOB_CHARS) & set(path)))} as a glob; rename it without them)")
            raise DselError(f"input not found: {source}{tilde}. Check the path, or pass a catalog table "
                            "name (catalog.schema.table) with --raw-format/--target-format table")
        if "**" in path:  # Spark's (Hadoop's) globs take ** as *, within one directory level
            deeper = sorted(set(_files_of(glob.glob(path, recursive=True))) - set(_files_of(matches)))
            if deeper:
                raise DselError(f"{source}: '**' matches within one directory level in Spark's globs, not at "
                                f"any depth, so {len(deeper):,} file(s) it matches at other depths, such as "
                                f"{deeper[0]}, would not be read; pass the directory (dsel reads every file under "
                                "it), or a glob per level, or '*' if one level is what you mean")
        first = matches[0]
        if os.path.isdir(first):
            if os.path.isdir(os.path.join(first, "_delta_log")):
                return "delta"
            files = _local_files(first)
            names = [n.lower() for n in files]
            if not names:
                raise DselError(f"directory {source} holds no data files (only hidden ones, or none); check the path")
            if all(n.endswith(".parquet") for n in names):
                return "parquet"
            if all(n.endswith(_JSON_SUFFIXES) for n in names):
                return "json"
            check_decompressible(files)
            for kind, suffixes in (("JSON-lines", _JSON_SUFFIXES), ("Parquet", (".parquet",))):
                data = [n for n in names if n.endswith(suffixes)]
                if data and len(data) >= len(names) / 2:
                    others = sorted(os.path.relpath(f, first) for f, n in zip(files, names) if not n.endswith(suffixes))
                    longest_first = sorted(suffixes, key=len, reverse=True)
                    ends = [next(s for s in longest_first if n.endswith(s)) for n in data]
                    pattern = "*" + max(sorted(set(ends)), key=ends.count)
                    raise DselError(f"directory {source} holds {kind} files and {len(others)} other file(s) "
                                    f"({', '.join(others[:3])}), which Spark would read as data too; pass a glob "
                                    f"of the data files, such as {os.path.join(source, pattern)}")
            raise DselError(f"cannot tell the format of directory {source}; pass --raw-format/--target-format "
                            "(json, parquet or delta)")
        path = first
    lowered = path.lower()
    if lowered.endswith(".parquet"):
        return "parquet"
    if lowered.endswith(_JSON_SUFFIXES):
        return "json"
    check_decompressible([path])
    raise DselError(f"cannot tell the format of {source}; pass --raw-format/--target-format "
                    "(json, parquet, delta or table)")


def read_input(spark: SparkSession, sources: list[str], fmt: str, cfg: DselConfig, role: str,
               schema: Optional[T.StructType] = None, state: Optional[dict[str, Any]] = None) -> DataFrame:
    """Read one input (``role`` is 'raw' or 'target', for messages) with all its columns.

    For JSON lines, Spark infers the schema (a pass over the data, or a sample of it with
    ``json_sampling_ratio``) unless ``schema`` is given: dsel passes the schema it stored
    when it first read the same input, so later stages parse the text once each.

    A Delta input is read as of one version: ``cfg.pin_versions[source]`` when set, else the
    latest, so that a table growing during the run is read consistently.  When ``state`` is given
    it receives :func:`input_state` of what was read.
    """
    if not sources:
        raise DselError(f"no {role} input given; pass --{role} PATH")
    formats = {detect_format(s) if fmt == "auto" else fmt for s in sources}
    if len(formats) > 1:
        raise DselError(f"{role} inputs mix formats ({', '.join(sorted(formats))}); give inputs of one "
                        f"format per --{role}, or set --{role}-format")
    kind = formats.pop()
    try:
        if kind == "json":
            for source in sources:
                check_json_files(_local_files(source), role)
            reader = spark.read.options(**JSON_OPTIONS, **file_options(spark, sources))
            if schema is not None:
                if CORRUPT not in schema.fieldNames():
                    schema = T.StructType(schema.fields + [T.StructField(CORRUPT, T.StringType())])
                reader = reader.schema(schema)
            df = reader.option("samplingRatio", cfg.json_sampling_ratio).json(sources)
        elif kind == "parquet":
            df = spark.read.options(**file_options(spark, sources)).parquet(*sources)
        elif kind == "delta":
            if len(sources) != 1:
                raise DselError(f"give one Delta table per --{role}; got {len(sources)} paths")
            version = _delta_version(spark, sources[0], cfg, path=True)
            df = spark.read.format("delta").option("versionAsOf", version).load(sources[0])
        else:
            _check_table_name(sources)
            version = _delta_version(spark, sources[0], cfg, path=False)
            df = (spark.table(sources[0]) if version is None
                  else spark.sql(f"SELECT * FROM {sources[0]} VERSION AS OF {int(version)}"))
    except AnalysisException as exc:
        repeated = re.search(r"COLUMN_ALREADY_EXISTS\].*?`([^`]*)`", str(exc))
        if repeated:
            raise DselError(f"cannot read {role} input {', '.join(sources)} as {kind}: it holds the column "
                            f"'{repeated.group(1)}' twice, or names that differ only in case (Spark's columns "
                            f"ignore case); {_CASE_FIX}") from None
        raise DselError(f"cannot read {role} input {', '.join(sources)} as {kind}: "
                        f"{str(exc).splitlines()[0].rstrip('. ')}. Check the path and --{role}-format") from None
    df = _check_columns(df, cfg, role)
    if state is not None:
        state.update(input_state(df, sources, kind, version if kind in ("delta", "table") else None))
    return df


def _check_table_name(sources: list[str]) -> None:
    if len(sources) != 1 or not _TABLE_NAME.match(sources[0]):
        raise DselError(f"{sources!r} is not a valid table name; use catalog.schema.table with "
                        "letters, digits and underscores")


def _delta_version(spark: SparkSession, source: str, cfg: DselConfig, path: bool) -> Optional[int]:
    """The version to read a Delta input at: the pinned one, else the latest (None: not a Delta table)."""
    from delta.tables import DeltaTable

    pinned = next((v for k, v in (cfg.pin_versions or {}).items() if same_input(k) == same_input(source)), None)
    try:
        table = DeltaTable.forPath(spark, source) if path else DeltaTable.forName(spark, source)
    except Exception:
        if path or pinned is not None:
            raise DselError(f"{source} is not a Delta table; check the path, or --raw-format/--target-format")
        return None
    latest = int(table.history(1).select("version").first()[0])
    if pinned is not None and pinned > latest:
        raise DselError(f"{source} has no version {pinned} (latest is {latest}); fix pin_versions")
    return latest if pinned is None else int(pinned)


def fingerprint(spark: SparkSession, sources: list[str], fmt: str, cfg: DselConfig) -> list[str]:
    """A cheap identity of an input's current contents, read before a run starts (for default run ids):
    a Delta version, or the names, sizes and times of local files.  Remote files count by name only."""
    prints = []
    for source in sources:
        kind = detect_format(source) if fmt == "auto" else fmt
        if kind == "table":
            _check_table_name([source])
        if kind in ("delta", "table"):
            prints.append(f"{same_input(source)}@{_delta_version(spark, source, cfg, path=kind == 'delta')}")
        elif _is_uri(source):
            prints.append(same_input(source))
        else:
            path = _local(source)
            names = _matches(path) or [path]
            files = sorted(os.path.join(root, n) for name in names for root, _, found in
                           (_walk(name) if os.path.isdir(name) else [(os.path.dirname(name), [], [os.path.basename(name)])])
                           for n in found)
            stats = [f"{f}:{os.stat(f).st_size}:{os.stat(f).st_mtime_ns}" for f in files if os.path.exists(f)]
            prints.append(hashlib.sha256("\n".join(stats).encode()).hexdigest())
    return prints


def input_state(df: DataFrame, sources: list[str], kind: str, version: Optional[int]) -> dict[str, Any]:
    """What an input was when it was read: a Delta version, or a digest of its files' names, sizes and times."""
    if version is not None:
        return {"sources": list(sources), "format": kind, "version": version}
    files = df.inputFiles()
    return {"sources": list(sources), "format": kind, "files": len(files), "digest": files_digest(files)}


def files_digest(files: list[str]) -> str:
    """SHA-256 of the files' names, sizes and modification times (names only where they cannot be stat'ed)."""
    return hashlib.sha256("\n".join(f"{name}:{state}" if state else name
                                    for name, state in sorted(file_states(files).items())).encode()).hexdigest()


def file_states(files: list[str], sizes: Optional[dict[str, int]] = None) -> dict[str, str]:
    """Each file's ``size:mtime_ns`` where it can be stat'ed, else its size in ``sizes``, else ""."""
    states = {}
    for name in files:
        local = _local(name)
        local = local.replace("///", "/") if local.startswith("///") else local
        try:
            info = os.stat(local)
            states[name] = f"{info.st_size}:{info.st_mtime_ns}"
        except OSError:
            states[name] = str((sizes or {}).get(name, ""))
    return states


def _binary_hint(kind: T.DataType) -> str:
    if not isinstance(kind, T.BinaryType):
        return ""
    return ("if it holds UTF-8 text that a Parquet writer stored without the string annotation (Impala, Hive "
            "and some older writers do), pass --conf spark.sql.parquet.binaryAsString=true; else ")


def _decimal_hint(kind: T.DataType) -> str:
    if not isinstance(kind, T.DecimalType) or kind.scale != 0:
        return ""
    return ("Whole numbers Spark reads as a decimal (a Parquet uint64 column, or decimal(p,0)) are ids once "
            "the input holds them as strings or signed integers (CAST(id AS STRING) when writing it); else ")


def field_type(schema: T.StructType, name: str) -> Optional[T.DataType]:
    """The type of column ``name`` in ``schema``: a top-level column of that name, or else a field
    inside struct columns (``meta.body``); None when there is neither."""
    kind: Optional[T.DataType] = schema
    for part in _parts(schema, name):
        if not isinstance(kind, T.StructType):
            return None
        kind = next((f.dataType for f in kind.fields if f.name == part), None)
    return kind


def quoted(name: str) -> str:
    """``name`` as one part of a Spark column reference: in backticks, a backtick in it doubled."""
    return "`" + name.replace("`", "``") + "`"


def column(schema: T.StructType, name: str) -> Column:
    """Column ``name`` (see :func:`field_type`), each part quoted."""
    return F.col(".".join(quoted(part) for part in _parts(schema, name)))


def _parts(schema: T.StructType, name: str) -> list[str]:
    """The path to column ``name``: itself when a top-level column has that name, else its dotted parts."""
    return [name] if name in schema.fieldNames() else name.split(".")


def _head(fields: dict[str, T.DataType], name: str) -> tuple[Optional[T.DataType], str]:
    """The type and name of the top-level column that ``name``'s first part names."""
    head = name.split(".")[0]
    return fields.get(head), head


def _struct_hint(kind: Optional[T.DataType], name: str, flag: str) -> str:
    """When column ``name`` has type ``kind`` and it is a struct: its fields, as the flag to pass."""
    if not isinstance(kind, T.StructType):
        return ""
    inner = ", ".join(f.name for f in kind.fields)
    return f" ('{name}' is a struct with the fields {inner}: pass {flag} {name}.FIELD for a field inside it)"


def _check_columns(df: DataFrame, cfg: DselConfig, role: str,
                   not_utf8: Optional[Callable[[], bool]] = None) -> DataFrame:
    """Check the input's columns for the config.  ``not_utf8`` tells whether a line rejected as JSON
    holds bytes that are not UTF-8 (by default from ``df``'s rejected lines), asked only when every
    line is rejected."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    visible = [n for n in fields if n != CORRUPT]
    flag = "--target-text-column" if role == "target" else "--text-column"
    sources = getattr(cfg, role, None) or []
    if not fields:  # Spark's reader infers no column, not even the corrupt record's, from no lines
        raise DselError(f"the {role} input ({', '.join(sources)}) holds no records: its files "
                        f"are empty or hold only blank lines; check --{role}")
    text_type = field_type(df.schema, cfg.text_column)
    if text_type is None:
        binary = None if visible else _not_json_lines([f for s in sources for f in _local_files(s)], role)
        if binary:
            raise DselError(f"every line of the {role} input is malformed JSON: {binary}")
        if not visible and (not_utf8 or (lambda: _rejected_not_utf8(df)))():
            raise DselError(f"every line of the {role} input is malformed JSON, with {SKIP_HINTS[NOT_UTF8]}")
        if not visible:
            raise DselError(f"every line of the {role} input is malformed JSON: dsel reads JSON lines, one "
                            "object per line. Convert a pretty-printed JSON file or array first (for example "
                            "jq -c '.[]' in.json > in.jsonl), or pass --" + role + "-format if it is not JSON")
        each = " (once per --target, in the same order, when their names differ)" if len(cfg.target) > 1 else ""
        raise DselError(f"{role} input has no column '{cfg.text_column}'; its columns are {', '.join(visible)}"
                        f"{_struct_hint(*_head(fields, cfg.text_column), flag)}. Pass {flag} NAME"
                        + (each if role == "target" else ""))
    if not isinstance(text_type, T.StringType):
        raise DselError(f"{role} column '{cfg.text_column}' has type {text_type.simpleString()}, not string; "
                        f"{_binary_hint(text_type)}point {flag} at a string column"
                        f"{_struct_hint(text_type, cfg.text_column, flag)}")
    if role == "target":  # a target's ids are not used: without an id column they are derived from the text
        return df
    id_type = field_type(df.schema, cfg.id_column)
    if id_type is not None and not isinstance(id_type, (T.StringType, T.IntegralType)):
        raise DselError(f"{role} column '{cfg.id_column}' has type {id_type.simpleString()}; "
                        f"ids must be strings or integers. {_binary_hint(id_type)}{_decimal_hint(id_type)}"
                        "Pass --id-column NAME"
                        f"{_struct_hint(id_type, cfg.id_column, '--id-column')}")
    if cfg.id_column != "id" and id_type is None:
        raise DselError(f"{role} input has no id column '{cfg.id_column}'; its columns are {', '.join(visible)}"
                        f"{_struct_hint(*_head(fields, cfg.id_column), '--id-column')}. "
                        "Fix --id-column, or leave it at 'id' to derive ids from the text")
    same = case_clashes(df.schema)
    if role == "raw" and same:  # Spark may tell them apart (spark.sql.caseSensitive), OUT/selected cannot
        raise DselError(f"raw input has columns whose names differ only in case ({', '.join(same)}), which a "
                        f"Delta table such as OUT/selected cannot hold; {_CASE_FIX}")
    clashing = clashes(fields, OUTPUT_COLUMNS + INTERNAL)
    if role == "raw" and clashing:
        raise DselError(f"raw input already has column(s) {', '.join(clashing)}, which dsel adds to its "
                        "output (Delta and Spark's columns ignore case); rename them before selecting")
    return df


def clashes(columns: Iterable[str], added: Sequence[str]) -> list[str]:
    """The ``columns`` whose names are those of columns dsel ``added`` to them, whatever the case."""
    taken = {a.lower() for a in added}
    return [c for c in columns if c.lower() in taken]


_CASE_FIX = ("rename or drop one of them in the data (a JSON key, say with jq, or a column, with a Spark job), "
             "then run again")


def _rejected_not_utf8(df: DataFrame) -> bool:
    """Whether a line of ``df``'s files, every one of which Spark's JSON reader rejected, is not UTF-8
    (read as text: Spark refuses a query of the corrupt-record column alone)."""
    files = df.inputFiles() if CORRUPT in df.columns else []
    if not files:
        return False
    lines = df.sparkSession.read.text(files)
    return lines.where(~F.is_valid_utf8(F.col("value"))).limit(1).count() > 0


def prepare(df: DataFrame, cfg: DselConfig, max_doc_bytes: Optional[int] = None) -> DataFrame:
    """Add the internal ``_dsel_*`` columns (see the module docstring) to a DataFrame from read_input."""
    text = column(df.schema, cfg.text_column)
    has_id = field_type(df.schema, cfg.id_column) is not None
    doc_id = column(df.schema, cfg.id_column).cast("string") if has_id else F.sha2(text, 256)
    limit = cfg.max_doc_bytes if max_doc_bytes is None else max_doc_bytes
    reason = F.when(text.isNull(), F.lit("null_text"))
    detail = F.lit(None).cast("string")
    if CORRUPT in df.columns:
        corrupt = F.col(CORRUPT)
        malformed = F.when(F.is_valid_utf8(corrupt), F.lit("malformed_json")).otherwise(F.lit(NOT_UTF8))
        reason = F.when(corrupt.isNotNull(), malformed).when(text.isNull(), F.lit("null_text"))
        detail = F.substring(corrupt, 1, 200)
    reason = reason.when(doc_id.isNull(), F.lit("null_id")).when(F.octet_length(text) > limit, F.lit("too_large"))
    return (df.withColumn(REASON, reason)
            .withColumn(ID, doc_id)
            .withColumn(TEXT, F.when(F.col(REASON).isNull(), text))
            .withColumn(HASH, F.xxhash64(text))
            .withColumn(SOURCE, F.input_file_name())
            .withColumn(DETAIL, detail))


def user_columns(df: DataFrame) -> list[str]:
    """The input's own columns, without Spark's corrupt-record column and dsel's internal ones."""
    return [c for c in df.columns if c != CORRUPT and c not in INTERNAL]


# The features table's Parquet files, read by the Python workers themselves (fit's and score's
# fast path for the tables the pyarrow JSON reader writes; see dsel.jsonread).


def parquet_files(spark: SparkSession, feats: DataFrame) -> Optional[list[str]]:
    """The Parquet files of a features table (a Delta table without partitions), or None when the
    table's properties say they may not hold its rows as the table does: deletion vectors enabled
    (deleted rows stay in the files) or column mapping (the files' columns have other names)."""
    files = tuple(sorted(feats.inputFiles()))
    if files and files not in _PLAIN_FILES:
        from delta.tables import DeltaTable

        detail = DeltaTable.forPath(spark, files[0].rsplit("/", 1)[0]).detail().first()
        properties = detail["properties"] or {}
        _PLAIN_FILES[files] = (properties.get("delta.enableDeletionVectors", "false").lower() != "true"
                               and properties.get("delta.columnMapping.mode", "none").lower() == "none")
    return list(files) if not files or _PLAIN_FILES[files] else None


#: Whether a features table's files hold its rows, by its files (a new commit lists other files).
_PLAIN_FILES: dict[tuple[str, ...], bool] = {}


def plain_parquet(spark: SparkSession) -> bool:
    """Whether the Delta tables this session creates hold their rows as their Parquet files do: no
    table default (deletion vectors, column mapping) could make the two differ (for the tables the
    workers write and convert)."""
    defaults = "spark.databricks.delta.properties.defaults."
    return all(spark.conf.get(defaults + key, None) in (None, "", "false", "none")
               for key in ("enableDeletionVectors", "columnMapping.mode"))


def per_file(spark: SparkSession, files: list[str], run, schema: str, tasks: Optional[int] = None) -> DataFrame:
    """``run`` (reading its files with :func:`parquet_parts`) in one task per Parquet file, or in
    ``tasks`` tasks."""
    return spark.range(0, len(files), 1, max(1, min(len(files), tasks or len(files)))).mapInArrow(run, schema)


def parquet_parts(files: list[str], batches: Iterator[pa.RecordBatch], columns: list[str]) -> Iterator[pa.RecordBatch]:
    """In a task: the ``columns`` of each file whose index the input batches hold, in record batches."""
    import pyarrow.parquet as pq

    for batch in batches:
        for index in batch.column(0).to_pylist():
            filesystem, path = arrow_path(files[index])
            with filesystem.open_input_file(path) as handle:
                yield from pq.ParquetFile(handle).iter_batches(batch_size=8192, columns=columns)


def parallelism(spark: SparkSession) -> int:
    """The default parallelism (the cores of a local session), also under Spark Connect."""
    try:
        return max(1, spark.sparkContext.defaultParallelism)
    except Exception:  # Spark Connect
        return max(1, int(spark.conf.get("spark.default.parallelism", "2")))
