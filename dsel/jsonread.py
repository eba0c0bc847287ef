"""The fast JSON-lines reader: raw files parsed by pyarrow inside the Python workers.

Spark's JSON reader parses every line with Jackson in the JVM and then ships the text to the
Python workers that run the kernel; both cost about as much as the kernel itself.  For JSON-lines
inputs (plain, gzip or zstd) on a filesystem pyarrow can open, dsel instead distributes a small list of
(file, byte range) splits and, in one ``mapInArrow`` pass, reads each split with pyarrow (bounded
blocks of whole lines), runs the kernel and emits the rows of ``OUT/features`` directly: the same
columns as :func:`dsel.featurize.features`, plus where each record's line is (``line_start``,
``line_length``) so that ``select`` reads back only the chosen lines, and a summary of the
column types seen (``raw_types``, on one row per task), from which the raw schema is rebuilt.

It gives exactly what Spark's reader gives, by these rules (checked by ``tests/test_jsonread.py``
against Spark on real and bad input):

* Lines end at ``\\n``, ``\\r\\n`` or ``\\r``; a UTF-8 BOM at the start of a line is dropped (as
  Jackson drops it at the start of its input, which under Spark's reader is one line);
  whitespace-only lines are no records.  A split owns the lines that start inside it.  A line
  holding bytes that are not UTF-8 is parsed alone (below); a line
  that starts as UTF-16 or UTF-32 does makes the run fall back to Spark's reader (see below).
* A block of lines is parsed by pyarrow; when pyarrow rejects a line (or a block holds something
  pyarrow types differently from Spark: integers beyond 64 bits, non-string text or ids), that
  line is parsed alone with Python's ``json``, which accepts what Jackson accepts under Spark's
  defaults except a few lenient forms (single quotes, trailing text after the object, top-level
  arrays); strings of any length (dsel lifts Jackson's 20,000,000-character cap in Spark's parser
  too, ``dsel.read.JSON_OPTIONS``).  Lines that Python rejects are ``malformed_json``, or
  ``not_utf8`` when their bytes are not UTF-8 (as Spark's reader tells them apart, with
  ``is_valid_utf8`` on the rejected line); after the pass Spark's own parser (``from_json``)
  re-checks those lines, and if it accepts any of them the run falls back to Spark's reader.
* A text or id that is not a JSON string is its JSON text, as Spark's exact string parsing gives.
  Ids are cast to strings; without an id column (in every record) the id is the SHA-256 of the
  text.  ``_dsel_hash`` is Spark's ``xxhash64`` of the text (seed 42).
* The schema is inferred like Spark's (fields sorted by name, long + double = double, mixed types
  = string, empty structs and empty names dropped, nulls as string).  Decimal-sized integers,
  duplicate keys in one record, UTF-16 or UTF-32 lines and other rare forms make the run fall back
  to Spark's reader.

Everything else (Parquet, Delta, catalog tables, bzip2, deflate, lz4 and snappy files, filesystems pyarrow
cannot open, ``json_sampling_ratio`` < 1, ``json_reader = "spark"``) goes through Spark's reader,
with one log line saying why.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from dsel.config import DselConfig
from dsel.errors import CANNOT_READ, DselError
from dsel.featurize import FEATURES_SCHEMA
from dsel.read import (CORRUPT, ID, INTERNAL, JSON_OPTIONS, MALFORMED, NOT_UTF8, _check_columns, arrow_path,
                       check_json_files, detect_format, file_options, parallelism)
from dsel.write import forget_commit

#: Extra columns of a features table written by this reader (after FEATURES_SCHEMA's).
EXTRA_SCHEMA = ("line_start long, line_length long, id_key long, id_from_text boolean, raw_types string, "
                "fit_counts binary")
#: The columns of a features table this reader writes.
FEATURES_COLUMNS = FEATURES_SCHEMA + ", " + EXTRA_SCHEMA
#: Jackson's default StreamReadConstraints under Spark: deeper nesting is malformed (dsel lifts its cap
#: on a string's length, see dsel.read.JSON_OPTIONS).
MAX_DEPTH = 1000
BLOCK_BYTES = 16 << 20
#: Up to this many buckets, each task keeps its n-gram counts per fit bin (FIT_BINS x B int64: 5 MB at
#: the default 10,000) and stores them, compressed, on its summary row (``fit_counts``), so that a
#: capped fit sums the first bins of every task instead of decoding every record again.
FIT_COUNTS_MAX_BUCKETS = 1 << 16
SPARK_SEED = 42
_OTHER_CODECS = (".bz2", ".deflate", ".lz4", ".snappy")
_ROW = re.compile(r"in row (\d+)")
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_BOM = b"\xef\xbb\xbf"


# ---------------------------------------------------------------------------------------------
# Spark's xxhash64 (XXH64, seed 42) over the UTF-8 bytes of a string array.

_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P4 = np.uint64(0x85EBCA77C2B2AE63)
_P5 = np.uint64(0x27D4EB2F165667C5)


@njit(cache=True, nogil=True, inline="always")
def _rotl64(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@njit(cache=True, nogil=True, inline="always")
def _read64(buf, p):
    v = np.uint64(0)
    for i in range(7, -1, -1):
        v = (v << np.uint64(8)) | np.uint64(buf[p + i])
    return v


@njit(cache=True, nogil=True, inline="always")
def _round(acc, value):
    acc = acc + value * _P2
    return _rotl64(acc, 31) * _P1


@njit(cache=True, nogil=True)
def _xxh64(buf, a, n, seed):
    p = a
    end = a + n
    if n >= 32:
        v1 = seed + _P1 + _P2
        v2 = seed + _P2
        v3 = seed
        v4 = seed - _P1
        while p + 32 <= end:
            v1 = _round(v1, _read64(buf, p))
            v2 = _round(v2, _read64(buf, p + 8))
            v3 = _round(v3, _read64(buf, p + 16))
            v4 = _round(v4, _read64(buf, p + 24))
            p += 32
        h = _rotl64(v1, 1) + _rotl64(v2, 7) + _rotl64(v3, 12) + _rotl64(v4, 18)
        for v in (v1, v2, v3, v4):
            h = (h ^ _round(np.uint64(0), v)) * _P1 + _P4
    else:
        h = seed + _P5
    h += np.uint64(n)
    while p + 8 <= end:
        h ^= _round(np.uint64(0), _read64(buf, p))
        h = _rotl64(h, 27) * _P1 + _P4
        p += 8
    if p + 4 <= end:
        k = (np.uint64(buf[p]) | (np.uint64(buf[p + 1]) << np.uint64(8)) | (np.uint64(buf[p + 2]) << np.uint64(16))
             | (np.uint64(buf[p + 3]) << np.uint64(24)))
        h ^= k * _P1
        h = _rotl64(h, 23) * _P2 + _P3
        p += 4
    while p < end:
        h ^= np.uint64(buf[p]) * _P5
        h = _rotl64(h, 11) * _P1
        p += 1
    h ^= h >> np.uint64(33)
    h *= _P2
    h ^= h >> np.uint64(29)
    h *= _P3
    h ^= h >> np.uint64(32)
    return h


@njit(cache=True, nogil=True)
def _xxh64_all(data, offsets, valid, seed, out):
    for i in range(out.shape[0]):
        if valid[i]:
            out[i] = _xxh64(data, offsets[i], offsets[i + 1] - offsets[i], seed)
        else:
            out[i] = seed


def xxhash64(strings: pa.Array) -> np.ndarray:
    """Spark's ``xxhash64(col)`` of a string array as int64 (42 for nulls)."""
    strings = strings.cast(pa.large_string()) if not pa.types.is_large_string(strings.type) else strings
    out = np.zeros(len(strings), dtype=np.uint64)
    if len(strings):
        offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64)[strings.offset:strings.offset + len(strings) + 1]
        data = strings.buffers()[2]
        data = np.frombuffer(data, dtype=np.uint8) if data is not None and data.size else np.zeros(1, np.uint8)
        valid = ~np.asarray(strings.is_null(), dtype=bool)
        _xxh64_all(data, offsets, valid, np.uint64(SPARK_SEED), out)
    return out.view(np.int64)


# ---------------------------------------------------------------------------------------------
# Spark's JSON schema inference, on a small type tree: "null", "long", "double", "boolean",
# "string", "decimal", {"struct": {name: tree}} or {"array": tree}.

def _merge(a: Any, b: Any) -> Any:
    """Spark's JsonInferSchema.compatibleType on type trees."""
    if a == b:
        return a
    if a == "null":
        return b
    if b == "null":
        return a
    if isinstance(a, str) and isinstance(b, str) and {a, b} == {"long", "double"}:
        return "double"
    if isinstance(a, dict) and isinstance(b, dict):
        if "struct" in a and "struct" in b:
            fields = dict(a["struct"])
            for name, t in b["struct"].items():
                fields[name] = _merge(fields[name], t) if name in fields else t
            return {"struct": fields}
        if "array" in a and "array" in b:
            return {"array": _merge(a["array"], b["array"])}
    if "decimal" in (a, b):
        return "decimal"
    return "string"


def _py_type(value: Any) -> Any:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int):
        return "long" if -(1 << 63) <= value < (1 << 63) else "decimal"
    if isinstance(value, float):
        return "double"
    if isinstance(value, list):
        t = "null"
        for item in value:
            t = _merge(t, _py_type(item))
        return {"array": t}
    return {"struct": {k: _py_type(v) for k, v in value.items()}}


def _arrow_type(t: pa.DataType) -> Any:
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "long"
    if pa.types.is_floating(t):
        return "double"
    if pa.types.is_struct(t):
        return {"struct": {t.field(i).name: _arrow_type(t.field(i).type) for i in range(t.num_fields)}}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return {"array": _arrow_type(t.value_type)}
    return "string"  # strings, and the timestamps pyarrow infers from strings (Spark does not)


def _depth(tree: Any) -> int:
    if isinstance(tree, dict):
        if "struct" in tree:
            return 1 + max((_depth(t) for t in tree["struct"].values()), default=0)
        return 1 + _depth(tree["array"])
    return 0


def _spark_type(tree: Any) -> Optional[T.DataType]:
    """The Spark type of a tree after Spark's canonicalization (None: the field is dropped)."""
    if isinstance(tree, dict) and "array" in tree:
        inner = _spark_type(tree["array"])
        return T.ArrayType(inner, True) if inner is not None else None
    if isinstance(tree, dict):
        fields = [T.StructField(n, t, True) for n, t in ((n, _spark_type(v)) for n, v in _sorted(tree["struct"]))
                  if n and t is not None]
        return T.StructType(fields) if fields else None
    return {"null": T.StringType(), "string": T.StringType(), "long": T.LongType(), "double": T.DoubleType(),
            "boolean": T.BooleanType()}[tree]


def _sorted(fields: dict) -> list:
    # Java's String.compareTo order (UTF-16 code units), as Spark sorts inferred fields
    return sorted(fields.items(), key=lambda kv: kv[0].encode("utf-16-be"))


def _has(tree: Any, leaf: str) -> bool:
    if isinstance(tree, dict):
        return any(_has(t, leaf) for t in (tree["struct"].values() if "struct" in tree else [tree["array"]]))
    return tree == leaf


# ---------------------------------------------------------------------------------------------
# Reading splits in the workers.


class _Block:
    """The records of one block of lines: pyarrow tables and single lines, in no particular order."""

    def __init__(self) -> None:
        self.arrow: list[tuple[pa.Array, pa.Array, np.ndarray, np.ndarray, bool]] = []
        self.ids: list = []
        self.id_from_text: list = []
        self.texts: list = []
        self.starts: list = []
        self.lengths: list = []
        self.details: list = []
        self.not_utf8: list = []  # of the single lines: the line's bytes are not UTF-8
        self.failures = 0

    def columns(self) -> Optional[tuple[pa.Array, pa.Array, np.ndarray, np.ndarray, np.ndarray, pa.Array,
                                        np.ndarray]]:
        """(ids, texts, id_from_text, line_start, line_length, detail, not_utf8) of every record, or None if none."""
        ids = [a[0] for a in self.arrow]
        texts = [a[1] for a in self.arrow]
        starts = [a[2] for a in self.arrow]
        lengths = [a[3] for a in self.arrow]
        from_text = [np.full(len(a[2]), a[4]) for a in self.arrow]
        details = [pa.nulls(len(a[2]), pa.string()) for a in self.arrow]
        not_utf8 = [np.zeros(len(a[2]), bool) for a in self.arrow]
        if self.starts:
            ids.append(pa.array(self.ids, pa.binary()).cast(pa.string()))
            texts.append(pa.array(self.texts, pa.binary()).cast(pa.string()))
            starts.append(np.array(self.starts, np.int64))
            lengths.append(np.array(self.lengths, np.int64))
            from_text.append(np.array(self.id_from_text, bool))
            details.append(pa.array(self.details, pa.binary()).view(pa.string()))
            not_utf8.append(np.array(self.not_utf8, bool))
        if not starts or not sum(len(s) for s in starts):
            return None
        return (pa.concat_arrays(ids), pa.concat_arrays(texts), np.concatenate(from_text), np.concatenate(starts),
                np.concatenate(lengths), pa.concat_arrays(details), np.concatenate(not_utf8))


@dataclass
class _Summary:
    """What a task saw: the merged type tree, malformed lines, records without an id field, and
    anything that makes the run fall back to Spark's reader."""

    types: Any = field(default_factory=lambda: {"struct": {}})
    malformed: int = 0
    id_from_text: int = 0
    fallback: list = field(default_factory=list)
    counts: Optional[np.ndarray] = None  # int64 [1, B]: n-gram bucket counts of the usable records
    bins: np.ndarray = field(default_factory=lambda: np.zeros(64, np.int64))  # usable features per fit bin
    by_bin: Optional[np.ndarray] = None  # in a task: int64 [FIT_BINS, B] (or [1, B], see FIT_COUNTS_MAX_BUCKETS)

    def count(self, batch: pa.RecordBatch, num_buckets: int) -> None:
        """Add a features batch's usable records to ``by_bin`` and ``bins`` (unusable ones have no features)."""
        from dsel import kernel
        from dsel.featurize import FIT_BINS

        if self.by_bin is None:
            self.by_bin = np.zeros((FIT_BINS if num_buckets <= FIT_COUNTS_MAX_BUCKETS else 1, num_buckets), np.int64)
        feats = batch.column(batch.schema.get_field_index("features"))
        bins = batch.column(batch.schema.get_field_index("fit_bin")).to_numpy(zero_copy_only=False)
        kernel.count_features(feats, bins if len(self.by_bin) > 1 else np.zeros(len(feats), np.int64), self.by_bin)
        weights = batch.column(batch.schema.get_field_index("num_features")).to_numpy(zero_copy_only=False)
        self.bins += np.bincount(bins, weights=weights, minlength=len(self.bins)).astype(np.int64)

    def to_json(self) -> str:
        if self.by_bin is not None:  # a task's
            total = self.by_bin.sum(axis=0)
        else:  # merged ones
            total = self.counts[0] if self.counts is not None else np.zeros(0, np.int64)
        cells = np.flatnonzero(total)
        return json.dumps({"types": self.types, "malformed": self.malformed, "id_from_text": self.id_from_text,
                           "fallback": sorted(set(self.fallback)), "bins": self.bins.tolist(),
                           "cells": cells.tolist(), "counts": total[cells].tolist()})

    def fit_counts(self) -> Optional[bytes]:
        """The task's counts per fit bin, zlib-compressed little-endian int64 [FIT_BINS, B] (b"" when it
        counted nothing), or None when B is over :data:`FIT_COUNTS_MAX_BUCKETS`."""
        if self.by_bin is None:
            return b""
        return zlib.compress(self.by_bin.astype("<i8").tobytes(), 1) if len(self.by_bin) > 1 else None

    def add(self, other: dict, num_buckets: int) -> None:
        self.types = _merge(self.types, other["types"])
        self.malformed += other["malformed"]
        self.id_from_text += other["id_from_text"]
        self.fallback = sorted(set(self.fallback) | set(other["fallback"]))
        if self.counts is None:
            self.counts = np.zeros((1, num_buckets), np.int64)
        np.add.at(self.counts[0], np.asarray(other["cells"], np.int64), np.asarray(other["counts"], np.int64))
        self.bins += np.asarray(other["bins"], np.int64)


def _open(uri: str, codec: Optional[str]):
    """``uri`` as a stream decompressed with ``codec`` (see :func:`_codec`), or as a seekable file."""
    filesystem, path = arrow_path(uri)
    return filesystem.open_input_stream(path, compression=codec) if codec else filesystem.open_input_file(path)


def _line_pieces(stream, start: int, end: float, block: int) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) pieces of whole lines from ``stream`` (positioned at ``start``): the lines
    that start in [start, end), each piece ending after a ``\\n`` or at the end of the file."""
    at, pending, size = start, [], 0
    while True:
        chunk = stream.read(block)
        done = not chunk
        if not done:
            pending.append(chunk)
            size += len(chunk)
            last = chunk.rfind(b"\n")
            if last < 0:
                continue
            cut = size - len(chunk) + last + 1
        else:
            cut = size
            if not cut:
                return
        buf = b"".join(pending)
        piece = buf[:cut]
        if at + cut >= end:
            r = int(end - at - 1)
            stop = piece.find(b"\n", r) + 1 if r >= 0 else 0
            stop = stop if stop > 0 else (cut if r >= 0 else 0)
            if stop > 0:
                yield at, piece[:stop]
            return
        yield at, piece
        if done:
            return
        at += cut
        rest = buf[cut:]
        pending, size = ([rest], len(rest)) if rest else ([], 0)


def _read_split(split: dict, block: int) -> Iterator[tuple[int, bytes]]:
    stream = _open(split["uri"], split["codec"])
    start, end = split["start"], split["end"]
    if start > 0:
        stream.seek(start - 1)
        if stream.read(1) != b"\n":  # the line under way belongs to the split before
            while True:
                if end is not None and start >= end:
                    return  # no line starts in the split (say one long line, or lines ending in lone \r)
                chunk = stream.read(block)
                if not chunk:
                    return
                i = chunk.find(b"\n")
                if i >= 0:
                    start += i + 1
                    break
                start += len(chunk)
            if end is not None and start >= end:
                return
            stream.seek(start)
    yield from _line_pieces(stream, start, float("inf") if end is None else end, block)


def _pieces(split: dict, block: int) -> Iterator[tuple[int, bytes]]:
    """:func:`_read_split`, its read errors (a truncated gzip file, a file gone) naming the file."""
    try:
        yield from _read_split(split, block)
    except (OSError, EOFError) as exc:
        raise OSError(f"{CANNOT_READ}{split['uri']}: {type(exc).__name__}: {exc}") from exc


def _utf8_prefix(line: bytes, chars: int) -> bytes:
    """The first ``chars`` characters of ``line`` as Spark's UTF8String counts them (by leading byte)."""
    pos = 0
    for _ in range(chars):
        if pos >= len(line):
            break
        b = line[pos]
        pos += 1 if b < 0xC0 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4 if b < 0xF8 else 1
    return line[:pos]


def _raw_value(text: str, key: str) -> str:
    """The JSON text of top-level field ``key`` of a one-object line (the last one, as parsers keep)."""
    from json.decoder import scanstring

    idx = _WS.match(text, 0).end() + 1
    found = ""
    while True:
        idx = _WS.match(text, idx).end()
        if text[idx] == "}":
            return found
        name, idx = scanstring(text, idx + 1)
        idx = _WS.match(text, _WS.match(text, idx).end() + 1).end()
        _, end = _DECODER.raw_decode(text, idx)
        if name == key:
            found = text[idx:end]
        idx = _WS.match(text, end).end()
        if text[idx] == ",":
            idx += 1


class _Duplicate(Exception):
    pass


def _pairs(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Duplicate()
    return out


def _field_value(value: Any, line: str, key: str) -> Optional[bytes]:
    """A text or id value as Spark reads it into a string column (non-strings: their JSON text)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8", "replace")  # a lone surrogate becomes '?', as in Java
    return _raw_value(line, key).encode("utf-8", "replace")


def _cr_split(raw: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    """The lines of ``raw`` split at lone carriage returns; those after one without a leading byte-order
    mark unless they are just the mark (the first line's is dropped with the other lines', see
    :func:`_parse_block`)."""
    if b"\r" not in raw:
        yield offset, raw
        return
    pos = 0
    for i, piece in enumerate(raw.split(b"\r")):
        bom = 3 if i and len(piece) > 3 and piece.startswith(_BOM) else 0
        yield offset + pos + bom, piece[bom:]
        pos += len(piece) + 1


def _one_line(raw: bytes, offset: int, block: _Block, summary: _Summary, text_col: str, id_col: str) -> None:
    """Parse one line with Python's json and record it in ``block`` (lines pyarrow did not take)."""
    for at, sub in _cr_split(raw, offset):
        if not sub.strip(b" \t"):
            continue
        value, line, undecoded = None, "", False
        try:
            line = sub.decode("utf-8")
            value = json.loads(line, object_pairs_hook=_pairs)
        except UnicodeDecodeError:
            undecoded = True
        except _Duplicate:
            summary.fallback.append("a record has the same key twice")
        except (ValueError, RecursionError):
            pass
        if isinstance(value, list) or (value is None and sub.lstrip(b" \t").startswith(b"[")):
            summary.fallback.append("a line holds a JSON array (Spark reads its objects as records)")
        ok = isinstance(value, dict)
        block.starts.append(at)
        block.lengths.append(len(sub))
        block.not_utf8.append(undecoded)  # never ok: nothing was decoded
        if not ok:
            summary.malformed += 1
            block.ids.append(None)
            block.id_from_text.append(False)
            block.texts.append(None)
            block.details.append(_utf8_prefix(sub, 200))
            continue
        tree = _py_type(value)
        if _depth(tree) > MAX_DEPTH:
            summary.fallback.append("a record nests deeper than 1000 levels")
        summary.types = _merge(summary.types, tree)
        block.details.append(None)
        block.texts.append(_field_value(value.get(text_col), line, text_col))
        block.id_from_text.append(id_col not in value)
        summary.id_from_text += id_col not in value
        block.ids.append(_field_value(value.get(id_col), line, id_col))


def _big_integers(arr: pa.Array) -> bool:
    """Whether a double column may hold integers beyond 64 bits (pyarrow reads them as doubles)."""
    t = arr.type
    if pa.types.is_floating(t):
        big = pc.greater_equal(pc.abs(arr), 9.2e18)
        return bool(pc.any(big).as_py())
    if pa.types.is_struct(t):
        return any(_big_integers(arr.field(i)) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _big_integers(arr.flatten())
    return False


def _arrow_table(data: bytes, starts: np.ndarray, ends: np.ndarray, lines: np.ndarray) -> tuple[Optional[pa.Table], int]:
    """(table, -1) when pyarrow parses the lines; (None, row) when it fails at a known row; (None, -1) otherwise."""
    import pyarrow.json as pj

    first, last = int(lines[0]), int(lines[-1])
    if last - first + 1 == len(lines):
        buf = data[starts[first]:ends[last]]
    else:
        buf = b"\n".join(data[starts[j]:ends[j]] for j in lines)
    try:
        table = pj.read_json(io.BytesIO(buf), read_options=pj.ReadOptions(
            use_threads=False, block_size=max(len(buf) + 1, 1 << 20)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        m = _ROW.search(str(exc))
        return None, int(m.group(1)) if m else -1
    return (table, -1) if table.num_rows == len(lines) else (None, -1)


def _take_table(table: pa.Table, starts: np.ndarray, ends: np.ndarray, lines: np.ndarray, offset: int,
                block: _Block, summary: _Summary, text_col: str, id_col: str) -> bool:
    """Record a pyarrow-parsed table in ``block``; False if it holds what pyarrow types unlike Spark."""
    names = table.schema.names
    text = table.column(text_col).combine_chunks() if text_col in names else None
    ident = table.column(id_col).combine_chunks() if id_col in names else None
    if text is not None and not (pa.types.is_string(text.type) or pa.types.is_null(text.type)):
        return False
    if ident is not None and not (pa.types.is_string(ident.type) or pa.types.is_integer(ident.type)
                                  or pa.types.is_null(ident.type)):
        return False
    tree = {"struct": {f.name: _arrow_type(f.type) for f in table.schema}}
    if len(set(names)) != len(names) or _depth(tree) > MAX_DEPTH:
        return False
    if _has(tree, "double") and any(_big_integers(c.combine_chunks()) for c in table.columns):
        return False
    summary.types = _merge(summary.types, tree)
    n = table.num_rows
    text = text.cast(pa.string()) if text is not None else pa.nulls(n, pa.string())
    ident = ident.cast(pa.string()) if ident is not None else pa.nulls(n, pa.string())
    block.arrow.append((ident, text, offset + starts[lines], ends[lines] - starts[lines], id_col not in names))
    summary.id_from_text += n if id_col not in names else 0
    return True


#: The byte sequences that Jackson, parsing a line's bytes as Spark's JSON reader does, decodes as
#: UTF-8: it checks the continuation bytes and rejects surrogates, but takes overlong forms and code
#: points past U+10FFFF (which Python's strict decoding rejects).
_JACKSON_UTF8 = re.compile(rb"(?:[\x00-\x7f]|[\xc0-\xdf][\x80-\xbf]|\xed[\x80-\x9f][\x80-\xbf]"
                           rb"|[\xe0-\xec\xee\xef][\x80-\xbf]{2}|[\xf0-\xf7][\x80-\xbf]{3})*")


def _jackson_rejects(line: bytes) -> bool:
    """Whether Spark's JSON reader rejects ``line`` for its bytes: Jackson cannot decode a byte
    sequence before the end of the line's first JSON value (it does not read past that value)."""
    ok = _JACKSON_UTF8.match(line).end()
    if ok == len(line):
        return False
    head = line[:ok].decode("utf-8", "replace")
    try:
        _DECODER.raw_decode(head, _WS.match(head).end())
    except ValueError:
        return True
    return False


def _other_encoding(data: np.ndarray, starts: np.ndarray, ends: np.ndarray, first: np.ndarray) -> bool:
    """Whether a line starts as Jackson's encoding detection takes for UTF-16 or UTF-32 (a zero byte
    among its first two, or a UTF-16 byte-order mark): Spark's reader decodes such lines (even those
    of a UTF-16 file, which its line splitting shifts by a byte), so only it gives what it gives."""
    second = data[np.minimum(starts + 1, len(data) - 1)]
    two = ends - starts > 1
    return bool(((ends > starts) & ((first == 0) | (two & ((second == 0) | ((first == 0xFF) & (second == 0xFE))
                                                           | ((first == 0xFE) & (second == 0xFF)))))).any())


def _not_utf8(piece: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which lines of ``piece`` hold bytes that are not UTF-8.  pyarrow's parser passes them into its
    strings (where the kernel's lowercasing would fail), Spark's rejects the line; so these lines are
    parsed alone, where Python's strict decoding makes them ``not_utf8`` as Spark's reader does.
    The whole piece is validated at once (Arrow, about 3 ms per 16 MB block); lines one by one only
    when that fails."""
    bad = np.zeros(len(starts), bool)
    whole = pa.LargeStringArray.from_buffers(1, pa.py_buffer(np.array([0, len(piece)], np.int64)), pa.py_buffer(piece))
    try:
        whole.validate(full=True)
        return bad
    except pa.ArrowInvalid:
        pass
    for j in range(len(starts)):
        try:
            piece[starts[j]:ends[j]].decode("utf-8")
        except UnicodeDecodeError:
            bad[j] = True
    return bad


#: After this many pyarrow failures in one block, its remaining lines are parsed one by one.
_MAX_FAILURES = 8


def _parse_block(piece: bytes, offset: int, summary: _Summary, text_col: str, id_col: str) -> _Block:
    """Split a piece of whole lines and parse them: runs of '{' lines with pyarrow, the rest one by one."""
    data = np.frombuffer(piece, np.uint8)
    newlines = np.flatnonzero(data == 10)
    starts = np.concatenate([[0], newlines + 1]).astype(np.int64)
    ends = np.concatenate([newlines, [len(piece)]]).astype(np.int64)
    if starts[-1] == len(piece):
        starts, ends = starts[:-1], ends[:-1]
    nonempty = ends > starts
    ends = ends - (nonempty & (data[np.maximum(ends - 1, 0)] == 13))
    # Spark's reader hands Jackson each line alone, and Jackson skips a byte-order mark at the start of
    # its input: a file's first line, or any line (files joined with cat keep their marks). It looks for
    # one only in an input of 4 bytes or more: a line (up to a lone CR) that is just the mark is malformed
    last = max(len(piece) - 1, 0)
    bom = (ends - starts >= 4) & (data[np.minimum(starts + 3, last)] != 13)
    for i, byte in enumerate(_BOM):
        bom &= data[np.minimum(starts + i, last)] == byte
    starts = starts + 3 * bom
    first = data[np.minimum(starts, len(piece) - 1)]
    if _other_encoding(data, starts, ends, first):
        summary.fallback.append("a line is UTF-16 or UTF-32 (Spark's parser detects the encoding of each line)")
    arrow = (ends > starts) & (first == ord("{")) & ~_not_utf8(piece, starts, ends)
    carriage = np.flatnonzero(data == 13)
    if len(carriage):
        holder = np.searchsorted(starts, carriage, "right") - 1
        arrow[holder[carriage < ends[holder]]] = False
    block = _Block()
    for j in np.flatnonzero(~arrow):
        _one_line(piece[starts[j]:ends[j]], offset + int(starts[j]), block, summary, text_col, id_col)
    lines = np.flatnonzero(arrow)
    i = 0
    while i < len(lines):
        if block.failures >= _MAX_FAILURES:
            for j in lines[i:]:
                _one_line(piece[starts[j]:ends[j]], offset + int(starts[j]), block, summary, text_col, id_col)
            break
        todo = lines[i:]
        table, bad = _arrow_table(piece, starts, ends, todo)
        if bad == 0:
            block.failures += 1
            j = todo[0]
            _one_line(piece[starts[j]:ends[j]], offset + int(starts[j]), block, summary, text_col, id_col)
            i += 1
            continue
        if bad > 0:
            block.failures += 1
            todo = todo[:bad]
            table, _ = _arrow_table(piece, starts, ends, todo)
        if table is None or not _take_table(table, starts, ends, todo, offset, block, summary, text_col, id_col):
            block.failures += 1
            for j in todo:
                _one_line(piece[starts[j]:ends[j]], offset + int(starts[j]), block, summary, text_col, id_col)
        i += len(todo)
    return block


def _block_batch(block: _Block, source: str, limit: int, params: tuple) -> Optional[pa.RecordBatch]:
    """The features rows of one block (FEATURES_SCHEMA + EXTRA_SCHEMA, raw_types null)."""
    from dsel.featurize import FIT_BINS, featurize_batch

    cols = block.columns()
    if cols is None:
        return None
    ids, texts, from_text, starts, lengths, details, not_utf8 = cols
    n = len(ids)
    derive = from_text & ~np.asarray(texts.is_null(), dtype=bool)
    if derive.any():
        rows = np.flatnonzero(derive)
        derived = [hashlib.sha256(t).hexdigest() for t in texts.take(pa.array(rows)).cast(pa.binary()).to_pylist()]
        values = np.array(ids.to_pylist(), dtype=object)
        values[rows] = derived
        ids = pa.array(values, pa.string())
    too_large = pc.fill_null(pc.greater(pc.binary_length(texts), limit), False)
    reason = pc.if_else(too_large, pa.scalar("too_large"), pa.nulls(n, pa.string()))
    reason = pc.if_else(ids.is_null(), pa.scalar("null_id"), reason)
    reason = pc.if_else(texts.is_null(), pa.scalar("null_text"), reason)
    reason = pc.if_else(details.is_valid(), pa.scalar("malformed_json"), reason)
    reason = pc.if_else(pa.array(not_utf8), pa.scalar(NOT_UTF8), reason)
    usable = pc.if_else(reason.is_null(), texts, pa.nulls(n, pa.string()))
    id_keys = xxhash64(ids)
    fit_bins = pa.array(np.mod(id_keys, FIT_BINS).astype(np.int32))
    sources = pa.array([source] * n, pa.string())
    batch = featurize_batch(ids, pa.array(xxhash64(texts)), usable, reason, sources, details, fit_bins, params)
    extra = [pa.array(starts), pa.array(lengths), pa.array(id_keys), pa.array(from_text), pa.nulls(n, pa.string()),
             pa.nulls(n, pa.binary())]
    return pa.RecordBatch.from_arrays(batch.columns + extra, names=batch.schema.names + [
        "line_start", "line_length", "id_key", "id_from_text", "raw_types", "fit_counts"])


def _with_summary(batch: pa.RecordBatch, summary: _Summary) -> pa.RecordBatch:
    """The task's last batch, its first row carrying the task's summary and counts per fit bin."""
    rest = [None] * (batch.num_rows - 1)
    batch = batch.set_column(batch.schema.get_field_index("raw_types"), "raw_types",
                             pa.array([summary.to_json()] + rest, pa.string()))
    return batch.set_column(batch.schema.get_field_index("fit_counts"), "fit_counts",
                            pa.array([summary.fit_counts()] + rest, pa.binary()))


def _task_function(tasks: list, text_col: str, id_col: str, limit: int, params: tuple, block_bytes: int):
    """The mapInArrow function: each input row is a task number; read its splits, yield features rows."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from dsel.featurize import _inject_fault

        _inject_fault("featurize")
        summary, held = _Summary(), None
        for batch in batches:
            for task in batch.column(0).to_pylist():
                for split in tasks[task]:
                    for offset, piece in _pieces(split, block_bytes):
                        out = _block_batch(_parse_block(piece, offset, summary, text_col, id_col), split["source"],
                                           limit, params)
                        if out is None:
                            continue
                        summary.count(out, params[0])
                        if held is not None:
                            yield held
                        held = out
        if held is not None:
            yield _with_summary(held, summary)

    return run


# ---------------------------------------------------------------------------------------------
# The driver: plan the splits, run the pass, check what it saw.

@dataclass
class Plan:
    """The raw JSON-lines files as Spark lists them (its ``input_file_name``) and the tasks' splits."""

    files: list[str]
    tasks: list[list[dict]]
    sizes: dict[str, int]

    def only(self, spark: SparkSession, files: list[str]) -> "Plan":
        """The plan of some of these files (say the new ones), packed into tasks anew."""
        sizes = {name: self.sizes[name] for name in files}
        return Plan(list(files), _pack(spark, list(files), sizes), sizes)


def _codec(name: str) -> Optional[str]:
    """The compression the fast reader decompresses ``name`` with (pyarrow's codec name), by its
    suffix as Spark's reader goes by it: gzip (.gz) or Zstandard (.zst, .zstd, as The Pile and
    RedPajama ship); None for a plain file."""
    lowered = name.lower()
    return "gzip" if lowered.endswith(".gz") else "zstd" if lowered.endswith((".zst", ".zstd")) else None


def plan(spark: SparkSession, cfg: DselConfig) -> tuple[Optional[Plan], str]:
    """The fast reader's plan for ``cfg.raw``, or (None, why Spark's reader reads it instead)."""
    from pyarrow import fs

    if cfg.json_reader == "spark":
        return None, "json_reader is 'spark'"
    try:
        kinds = {detect_format(s) if cfg.raw_format == "auto" else cfg.raw_format for s in cfg.raw}
    except Exception:  # Spark's reader gives the message
        return None, "the raw input could not be listed"
    if kinds != {"json"}:
        return None, f"the raw input is {', '.join(sorted(kinds))}, not JSON lines"
    dotted = [c for c in (cfg.text_column, cfg.id_column) if "." in c]
    if dotted:
        return None, f"the column '{dotted[0]}' may be a field inside a struct column, which Spark's reader reads"
    if float(cfg.json_sampling_ratio) < 1.0:
        return None, "json_sampling_ratio < 1 asks for Spark's schema inference on a sample"
    options = file_options(spark, cfg.raw)  # a layout Spark would read only in part is refused here
    try:
        listed = spark.read.format("text").options(**options).load(cfg.raw)
        files = sorted(listed.inputFiles())
    except Exception:
        return None, "Spark's file listing failed; its reader reports why"
    if len(listed.columns) > 1:
        return None, "the raw files are in partition directories (key=value), whose columns Spark's reader adds"
    if not files:
        return None, "no raw files"
    check_json_files(files)
    odd = [f for f in files if f.lower().endswith(_OTHER_CODECS)]
    if odd:
        return None, f"{odd[0]} is compressed with a codec the fast reader does not read (it reads gzip and zstd)"
    sizes = {}
    try:
        for name in files:
            filesystem, path = arrow_path(name)
            info = filesystem.get_file_info(path)
            if info.type != fs.FileType.File:
                return None, f"pyarrow cannot open {name}"
            sizes[name] = info.size
    except Exception as exc:  # an unsupported scheme, or no credentials for it in pyarrow
        return None, f"pyarrow cannot open {files[0].split(':', 1)[0]}: paths ({str(exc).splitlines()[0][:120]})"
    return Plan(files, _pack(spark, files, sizes), sizes), ""


def _pack(spark: SparkSession, files: list[str], sizes: dict[str, int]) -> list[list[dict]]:
    """The splits of ``files`` in tasks of about equal cost, as many as a multiple of the cores.

    A file costs its bytes plus ``openCostInBytes``, as in Spark's packing of file splits, and the
    number of tasks is the one Spark's packing starts from (the cost over ``maxPartitionBytes``, or
    over less on a small input) rounded up to a multiple of the cores. Spark's own packing, greedy
    in descending size, can leave a core idle for its last task (four plain files of 57 to 66 MB on
    two cores: tasks of 66, 66 and 119 MB). Here each compressed file goes whole to the task that
    costs least so far, largest first; the plain files, in order, then fill the tasks to one level,
    cut at byte offsets (a split owns the lines that start inside it) into pieces of at least
    ``openCostInBytes`` (or half the split size, if smaller). Tasks left empty are dropped, and the
    costliest task comes first."""
    max_bytes = int(_conf_bytes(spark, "spark.sql.files.maxPartitionBytes", 128 << 20))
    open_cost = int(_conf_bytes(spark, "spark.sql.files.openCostInBytes", 4 << 20))
    cores = parallelism(spark)
    total = sum(sizes[name] for name in files) + open_cost * len(files)
    split_bytes = max(1, min(max_bytes, max(open_cost, total // cores)))
    count = -(-total // split_bytes)  # Spark's, rounded up to a multiple of the cores:
    count = max(1, -(-count // cores) * cores)
    loads, tasks = [0] * count, [[] for _ in range(count)]
    for name in sorted((name for name in files if _codec(name)), key=lambda name: -sizes[name]):
        i = loads.index(min(loads))
        tasks[i].append({"uri": name, "source": name, "codec": _codec(name), "start": 0, "end": None,
                         "size": sizes[name]})
        loads[i] += sizes[name] + open_cost
    plain = [name for name in files if not _codec(name)]
    level = _level(sorted(loads), sum(sizes[name] + open_cost for name in plain))
    # each bin takes the next stretch of the plain files' costs laid end to end; a file's bytes
    # follow its opening cost
    order = sorted(range(count), key=loads.__getitem__)
    bounds, at = [], 0
    for n, i in enumerate(order):
        room = max(0, level - loads[i])
        bounds.append((i, at, float("inf") if n == count - 1 else at + room))
        at += room
    smallest = max(1, min(open_cost, split_bytes // 2))  # no piece of a file smaller, but a whole small file
    b, at = 0, 0
    for name in plain:
        size, first, start = sizes[name], at + open_cost, 0  # first: where the file's bytes begin
        while bounds[b][2] <= first and (bounds[b][2] < first or size > 0):
            b += 1
        while True:
            i, hi = bounds[b][0], bounds[b][2]
            stop = int(min(size, hi - first))
            if stop < size and stop - start < smallest:  # too little room here: the next task takes it
                b += 1
                continue
            stop = size if size - stop < smallest else stop
            tasks[i].append({"uri": name, "source": name, "codec": None, "start": start,
                             "end": None if stop == size else stop, "size": stop - start})
            loads[i] += stop - start + (open_cost if start == 0 else 0)
            if stop == size:
                break
            start, b = stop, b + 1
        at = first + size
    return [tasks[i] for i in sorted(range(count), key=lambda i: -loads[i]) if tasks[i]]


def _level(loads: list[int], extra: int) -> int:
    """The level to which ``extra`` fills bins already holding ``loads`` (ascending), rounded up."""
    used = 0
    for n, load in enumerate(loads):
        step = (loads[n + 1] - load) * (n + 1) if n + 1 < len(loads) else None
        if step is None or used + step > extra:
            return load + -(-(extra - used) // (n + 1))
        used += step
    return 0


def _conf_bytes(spark: SparkSession, key: str, default: int) -> int:
    value = str(spark.conf.get(key, str(default))).strip().lower()
    m = re.fullmatch(r"(\d+)\s*([kmgt]?)b?", value)
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)] if m else default


def features(spark: SparkSession, cfg: DselConfig, raw_plan: Plan, stats: Optional[bool] = None) -> DataFrame:
    """The features rows of every raw record, read by pyarrow in the workers (one pass); ``stats`` as
    in :func:`dsel.featurize.features`."""
    return tasks_frame(spark, raw_plan).mapInArrow(features_function(cfg, raw_plan, stats), FEATURES_COLUMNS)


def features_function(cfg: DselConfig, raw_plan: Plan, stats: Optional[bool] = None):
    """The mapInArrow function of :func:`features`: its input rows are task numbers (:func:`tasks_frame`)."""
    from dsel.featurize import kernel_params

    return _task_function(raw_plan.tasks, cfg.text_column, cfg.id_column, cfg.max_doc_bytes, kernel_params(cfg, stats),
                          BLOCK_BYTES)


def tasks_frame(spark: SparkSession, raw_plan: Plan) -> DataFrame:
    """One row per task of the plan (its number), one task each."""
    num = len(raw_plan.tasks)
    return spark.range(0, num, 1, num)


def is_fast(feats: DataFrame) -> bool:
    """Whether a features table was written by this reader (it knows where each line is)."""
    return "line_start" in feats.columns


#: Up to this many files in a features table, the driver merges the tasks' summaries itself (each up to
#: B counts, one per task); beyond, they are first merged on the executors.
SUMMARIES_ON_DRIVER = 256


def summary(feats: DataFrame, num_buckets: int, on_driver: int = SUMMARIES_ON_DRIVER) -> _Summary:
    """The merged summaries the tasks left in ``raw_types``.

    Each holds up to B bucket counts, and a table has one per task that wrote it.  Up to ``on_driver``
    files the driver collects them; beyond, they are merged in one task per core first and the driver
    merges those few, so its memory does not grow with the raw input (a few hundred summaries are
    not worth the extra Python stage)."""

    def merged(texts: Iterable[str]) -> _Summary:
        total = _Summary()
        for text in texts:
            total.add(json.loads(text), num_buckets)
        return total

    def merge(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        texts = [t for batch in batches for t in batch.column(0).to_pylist()]
        if texts:
            yield pa.RecordBatch.from_pydict({"raw_types": [merged(texts).to_json()]})

    rows = feats.where(F.col("raw_types").isNotNull()).select("raw_types")
    if len(feats.inputFiles()) > on_driver:
        rows = rows.coalesce(parallelism(feats.sparkSession)).mapInArrow(merge, "raw_types string")
    return merged(row[0] for row in rows.collect())


def raw_schema(seen: _Summary) -> T.StructType:
    """The schema Spark's reader infers for the same input (with ``_corrupt_record`` if a line was malformed)."""
    inferred = _spark_type(seen.types)
    fields = list(inferred.fields) if inferred is not None else []
    if seen.malformed:
        fields.append(T.StructField(CORRUPT, T.StringType(), True))
    return T.StructType(sorted(fields, key=lambda f: f.name.encode("utf-16-be")))


@dataclass
class Checked:
    """A features table this reader wrote, checked: the raw schema (JSON) and, unless the check had to
    change records, the raw bucket counts and features per fit bin counted in the same pass."""

    schema: str
    counted: Optional[tuple[np.ndarray, np.ndarray]]


def check(spark: SparkSession, cfg: DselConfig, feats: DataFrame, path: str,
          metadata: str) -> tuple[Optional[Checked], str]:
    """Validate a features table this reader wrote: (Checked, "") or (None, why to use Spark's reader).

    Raises the same DselError as Spark's reader path for unusable inputs (missing text column, ...).
    Re-checks malformed lines with Spark's parser, and nulls the derived ids of records without an
    id field when other records have one (Spark's reader gives them a null id).
    """
    seen = summary(feats, cfg.num_buckets)
    if seen.fallback:
        return None, seen.fallback[0]
    if _has(seen.types, "decimal"):
        return None, "integers beyond 64 bits (Spark infers decimals)"
    if CORRUPT in seen.types["struct"]:
        return None, f"the input has a column named {CORRUPT}"
    schema = raw_schema(seen)
    _check_columns(spark.createDataFrame([], schema), cfg, "raw",
                   lambda: feats.where(F.col("skip_reason") == NOT_UTF8).limit(1).count() > 0)
    if seen.malformed and _spark_accepts_some(spark, feats, schema):
        return None, "Spark's JSON parser accepts lines that Python's rejects (single quotes, trailing text, ...)"
    counted = (seen.counts[0], seen.bins) if seen.counts is not None else None
    if seen.id_from_text and cfg.id_column in schema.fieldNames():
        _null_missing_ids(spark, path, metadata)
        counted = None
    return Checked(schema.json(), counted), ""


def _spark_accepts_some(spark: SparkSession, feats: DataFrame, schema: T.StructType) -> bool:
    # from_json decodes a line's bytes leniently (U+FFFD for what is not UTF-8), Spark's JSON reader does
    # not: the lines it rejects for their bytes are not asked about
    bad = lines_of(feats.where(F.col("skip_reason").isin(*MALFORMED)), keep=lambda line: not _jackson_rejects(line))
    parsed = bad.select(F.from_json("_dsel_line", schema, JSON_OPTIONS).alias("r"))
    return parsed.where(F.col(f"r.{CORRUPT}").isNull()).limit(1).count() > 0


def _null_missing_ids(spark: SparkSession, path: str, metadata: str) -> None:
    """Records without an id field, when the input has an id column, have a null id (reason null_id).

    One Delta UPDATE of the rows concerned; the commit carries the features table's metadata, so
    the table is still recognised as up to date."""
    from delta.tables import DeltaTable

    if DeltaTable.forPath(spark, path).toDF().where(F.col("id_from_text")).limit(1).count() == 0:
        return
    key = "spark.databricks.delta.commitInfo.userMetadata"
    spark.conf.set(key, metadata)
    try:
        _update_missing_ids(spark, path)
    finally:
        spark.conf.unset(key)
        forget_commit(path)


def _update_missing_ids(spark: SparkSession, path: str) -> None:
    from delta.tables import DeltaTable

    keep = F.col("skip_reason").isin(*MALFORMED, "null_text")
    table = DeltaTable.forPath(spark, path)
    values = {
        ID: F.lit(None).cast("string"), "skip_reason": F.when(keep, F.col("skip_reason")).otherwise(F.lit("null_id")),
        "features": F.lit(b"").cast("binary"), "num_words": F.lit(0).cast("long"),
        "num_features": F.lit(0).cast("long"), "fit_bin": F.lit(SPARK_SEED % 64), "id_from_text": F.lit(False)}
    if "id_key" in table.toDF().columns:  # a table an earlier dsel wrote (then appended to) has none
        values["id_key"] = F.lit(SPARK_SEED).cast("long")
    table.update(F.col("id_from_text"), values)


def lines_of(rows: DataFrame, keep: Optional[Callable[[bytes], bool]] = None) -> DataFrame:
    """``rows`` (columns source_file, line_start, line_length, ...) with ``_dsel_line``: the line itself,
    read back from the raw file (one task per file, so a compressed file is decompressed once), as its
    bytes are (Spark's parsers decide what is JSON).  ``keep``: only the rows whose line it keeps."""
    fields = [f for f in rows.schema.fields]
    out_schema = T.StructType(fields + [T.StructField("_dsel_line", T.StringType(), True)])

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        got = [b for b in batches if b.num_rows]
        if not got:
            return
        table = pa.Table.from_batches(got)
        for source in pc.unique(table.column("source_file")).to_pylist():
            part = table.filter(pc.equal(table.column("source_file"), source))
            part = part.sort_by([("line_start", "ascending")])
            starts = part.column("line_start").to_pylist()
            lengths = part.column("line_length").to_pylist()
            lines = []
            codec = _codec(source)
            if codec:
                stream, at = _open(source, codec), 0
                for start, length in zip(starts, lengths):
                    skip = start - at
                    while skip > 0:
                        got = len(stream.read(min(skip, BLOCK_BYTES)))
                        if not got:
                            raise DselError(f"{source} is shorter than when it was featurized; run 'dsel score' again")
                        skip -= got
                    lines.append(bytes(stream.read(length)))
                    at = start + length
            else:
                handle = _open(source, None)
                lines = [bytes(handle.read_at(length, start)) for start, length in zip(starts, lengths)]
            if keep is not None:
                kept = [keep(line) for line in lines]
                part, lines = part.filter(pa.array(kept, pa.bool_())), [x for x, k in zip(lines, kept) if k]
            line_array = pa.array(lines, pa.binary()).view(pa.string())
            yield pa.RecordBatch.from_arrays([c.combine_chunks() for c in part.columns] + [line_array],
                                             names=part.schema.names + ["_dsel_line"])

    # a few rows (the selection, or the malformed lines): one task per core, each file in one task
    return rows.repartition(parallelism(rows.sparkSession), "source_file").mapInArrow(read, out_schema)


def raw_rows(feats: DataFrame, keys: DataFrame, schema_json: str, located: bool = False) -> DataFrame:
    """The raw records (every user column, plus ``_dsel_id`` and ``_dsel_hash``) of the usable
    features rows whose (id, hash) is in ``keys`` (columns id, doc_hash): parsed by Spark's
    ``from_json`` from their lines, read back from the raw files.  Nothing else of the raw input
    is read.  ``located``: ``keys`` are the chosen rows (:data:`dsel.select.SELECTED_COLUMNS`) with each
    line's source_file, line_start and line_length (from a weights table scored from this features
    table), so the features are not looked up, and each record carries its chosen row's columns
    (see :func:`dsel.select.carried_rows`)."""
    from dsel.featurize import LOCATION_COLUMNS
    from dsel.read import HASH, quoted
    from dsel.select import CARRIED, SELECTED_COLUMNS

    schema = T.StructType.fromJson(json.loads(schema_json))
    if CORRUPT not in schema.fieldNames():
        schema = T.StructType(schema.fields + [T.StructField(CORRUPT, T.StringType(), True)])
    carried: list = []
    if located:
        carried = [F.col(quoted(CARRIED + c)) for c in SELECTED_COLUMNS]
        lines = keys.select(F.col("id").alias(ID), F.col("doc_hash").alias(HASH), *LOCATION_COLUMNS,
                            *[F.col(c).alias(f"{CARRIED}{c}") for c in SELECTED_COLUMNS])
    else:
        lines = (feats.where(F.col("skip_reason").isNull())
                 .select(ID, HASH, *LOCATION_COLUMNS)
                 .join(F.broadcast(keys.select(F.col("id").alias("_k_id"), F.col("doc_hash").alias("_k_hash"))),
                       (F.col(ID) == F.col("_k_id")) & (F.col(HASH) == F.col("_k_hash")), "left_semi"))
    parsed = lines_of(lines).select(ID, HASH, *carried, F.from_json("_dsel_line", schema, JSON_OPTIONS)
                                    .alias("_dsel_record"))
    user = [f.name for f in schema.fields if f.name != CORRUPT and f.name not in INTERNAL]
    return parsed.select(*[F.col("_dsel_record").getField(c).alias(c) for c in user], ID, HASH, *carried)
