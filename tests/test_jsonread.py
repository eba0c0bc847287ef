"""The pyarrow reader gives exactly what Spark's JSON reader gives: same features, weights, skipped
records, selection and schema, on real documents and bad lines, plain and gzip, split files."""
from __future__ import annotations

import gzip
import json
import random
import re
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F

from dsel import fit, jsonread, read, score
from dsel.config import DselConfig
from dsel.errors import DselError
from dsel.featurize import FEATURES_SCHEMA, STAT_COLUMNS
from dsel.pipeline import execute
from tests.conftest import sample_docs, write_jsonl

FEATURE_COLUMNS = [c.strip().split(" ")[0] for c in FEATURES_SCHEMA.split(",")]


def _bad_lines(docs: list[dict]) -> list[str]:
    """Every kind of record the skip accounting and the schema inference must agree on."""
    big = {"id": "big", "text": (docs[0]["text"] + "\n") * (300_000 // len(docs[0]["text"]) + 1)}
    return [
        '{"id": "broken", "text": "unterminated',
        json.dumps({"id": "nulltext", "text": None}),
        json.dumps({"id": "notext", "domain": "x"}),
        json.dumps({"id": "empty", "text": ""}),
        json.dumps({"id": "blank", "text": "   \n\t "}),
        json.dumps({"text": "a document without an id " * 30}),
        json.dumps({"id": docs[1]["id"], "text": "another text under an existing id " * 20}),
        json.dumps(docs[2]),  # the same record twice
        json.dumps(big),
        '{"id": "num", "text": 12345.50, "score": 1}',  # non-string text: its JSON text
        '{"id": "obj", "text": {"k": [1, 2,  3], "z": "é"}, "score": 2.5}',
        json.dumps({"id": 77, "text": "an integer id " * 40, "meta": {"a": 1, "b": [1, 2]}}),
        json.dumps({"id": "nested", "text": "nested values " * 40, "meta": {"c": "x", "a": None}, "tags": []}),
        json.dumps({"id": "mixed", "text": "mixed types " * 40, "score": "high", "": 3, "e": {}}),
        "5",
        '"just a string"',
        '{"id": "tab", "text": "raw\ttab"}',
        '{"id": "lead", "text": "zero", "n": 01}',
        "   ",
        "",
        json.dumps({"id": "surrogate", "text": "\ud83d\ude00 emoji and lone \ud800 surrogate " * 10}),
        json.dumps({"id": "nonascii", "text": "Ünïcödé tëxt, 日本語のテキスト, ελληνικά " * 20}, ensure_ascii=False),
    ]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("jsonread")
    docs = sample_docs("sci_abstracts", 60, seed=5) + sample_docs("movie_reviews", 60, seed=5)
    random.Random(1).shuffle(docs)
    # some records carry names a column reference must quote (a backtick doubled) and that a Delta table
    # takes only under column mapping (a space): both readers carry them to OUT/selected
    docs = [{**d, "x`y": i, "source url": f"https://example.org/{i}"} if i % 7 == 0 else d for i, d in enumerate(docs)]
    target = write_jsonl(root / "target.jsonl", sample_docs("sci_abstracts", 100, seed=5)[60:])
    lines = [json.dumps(d, ensure_ascii=False) for d in docs]
    bad = _bad_lines(docs)
    raw = root / "raw"
    raw.mkdir()
    # plain, with the bad lines spread through it
    plain = lines[:50]
    for i, line in enumerate(bad):
        plain.insert(2 * i + 1, line)
    plain[4] = "\ufeff" + plain[4]  # a byte-order mark inside a file (files joined with cat): Jackson skips it
    # ... when its input has 4 bytes or more: a line that is only the mark is malformed, one with a blank is not
    plain[6:7] = ["\ufeff", "\ufeff ", "\ufeff\r" + plain[6]]
    (raw / "a.jsonl").write_text("\n".join(plain) + "\n", encoding="utf-8")
    with open(raw / "a.jsonl", "ab") as fh:  # bytes that are not UTF-8 in a record: Spark's reader rejects the line
        fh.write(b'{"id": "latin1", "text": "caf\xe9 ' + b"au lait " * 20 + b'"}\n')
        fh.write(b'{"id": "surrogate bytes", "text": "x\xed\xa0\x80y ' + b"word " * 30 + b'"}\n')
        fh.write(json.dumps({"id": "after the bytes", "text": docs[0]["text"]}).encode("utf-8") + b"\n")
    # gzip
    with gzip.open(raw / "b.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines[50:90] + bad[:4]) + "\n")
    # a byte-order mark, Windows line ends, a lone carriage return, no final newline
    tail = lines[90:]
    body = "\r\n".join(tail[:-2]) + "\r\n" + tail[-2] + "\r\ufeff" + tail[-1]
    # a name Spark's URIs hold partly %-escaped (space, #) and partly as is (í), which pyarrow must open too
    (raw / "c día #1.jsonl").write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    return {"root": root, "raw": str(raw), "target": target}


def _run(spark, inputs, name, **extra):
    out = inputs["root"] / name
    cfg = DselConfig.from_mapping({"raw": [inputs["raw"]], "target": [inputs["target"]], "out": str(out),
                                   "num_samples": 30, "seed": 4, "min_length": 20, "run_id": "same", **extra})
    summary = execute(spark, cfg, "run")
    return out, summary


def _ran(spark, inputs, name, **extra):
    """The output of test_fast_reader_matches_spark_reader's run ``name``, made now if that test did not run."""
    out = inputs["root"] / name
    if not (out / "selected").exists():
        _run(spark, inputs, name, **extra)
    return out


def _table(spark, out, name, columns=None, order=None):
    df = spark.read.format("delta").load(str(out / name))
    rows = df.select(*(columns or df.columns)).collect()
    rows = [tuple(r) for r in rows]
    return rows if order else sorted(rows, key=repr)


def _meta(spark, out, name):
    return json.loads(DeltaTable.forPath(spark, str(out / name)).history(1).first()["userMetadata"])


#: The weights' columns but the line positions, which only the pyarrow reader knows.
WEIGHT_COLUMNS = ["id", "doc_hash", "num_words", "log_weight", "log_weights", *STAT_COLUMNS, "source_file"]


def _same_outputs(spark, fast, slow):
    for name, columns in (("features", FEATURE_COLUMNS), ("weights", WEIGHT_COLUMNS), ("skipped", None),
                          ("log_ratios", None)):
        assert _table(spark, fast, name, columns) == _table(spark, slow, name, columns), name
    order = ["target", "rank"]
    fast_sel = spark.read.format("delta").load(str(fast / "selected"))
    slow_sel = spark.read.format("delta").load(str(slow / "selected"))
    assert fast_sel.columns == slow_sel.columns
    assert fast_sel.schema == slow_sel.schema
    assert [tuple(r) for r in fast_sel.orderBy(*order).collect()] == [tuple(r) for r in slow_sel.orderBy(*order).collect()]
    assert _meta(spark, fast, "weights")["raw_schema"] == _meta(spark, slow, "weights")["raw_schema"]


def _same_direct(spark, direct, fast, fast_counts, direct_counts):
    """A features table the workers wrote and converted (features_writer pyarrow) holds the rows and the
    columns Spark's Delta writer wrote, has its table properties, and the run made the same selection;
    so does the weights table the scoring workers wrote."""
    assert direct_counts == fast_counts
    assert _table(spark, direct, "features") == _table(spark, fast, "features")
    d, f = (spark.read.format("delta").load(str(o / "features")) for o in (direct, fast))
    assert d.schema == f.schema
    _same_outputs(spark, direct, fast)
    history = DeltaTable.forPath(spark, str(direct / "features")).history().orderBy("version").collect()
    assert [h["operation"] for h in history] == ["CONVERT", "SET TBLPROPERTIES"]
    assert json.loads(history[-1]["userMetadata"])["input_files"] == _meta(spark, fast, "features")["input_files"]
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{direct / 'features'}`").first()
    assert detail["properties"]["delta.enableChangeDataFeed"] == "true"
    assert detail["properties"]["delta.enableDeletionVectors"] == "false"
    assert detail["numFiles"] > 5  # one file per task (maxPartitionBytes makes many)
    assert not (direct / "_staging_parquet").exists()
    names = [p.name for p in (direct / "features").iterdir() if p.name != "_delta_log"]
    assert len(names) == detail["numFiles"] and all(re.fullmatch(r"part-\d{5}\.parquet", n) for n in names), names
    # The scoring workers wrote OUT/weights too: Spark's columns, each file in descending log_weight with
    # a page index on it (a re-select's bound skips pages), snappy as Spark's writer compresses.
    d, f = (spark.read.format("delta").load(str(o / "weights")) for o in (direct, fast))
    assert d.schema == f.schema
    history = DeltaTable.forPath(spark, str(direct / "weights")).history().orderBy("version").collect()
    assert [h["operation"] for h in history] == ["CONVERT", "SET TBLPROPERTIES"]
    assert json.loads(history[-1]["userMetadata"])["features_version"] == 1  # the features' CONVERT, then properties
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{direct / 'weights'}`").first()
    assert detail["properties"]["delta.dataSkippingNumIndexedCols"] == "0"
    files = sorted((direct / "weights").glob("part-*.parquet"))
    assert len(files) == detail["numFiles"] > 1
    for path in files:
        meta = pq.ParquetFile(path).metadata
        weights = pq.read_table(path, columns=["log_weight"]).column(0).to_numpy()
        assert (np.diff(weights) <= 0).all() and meta.num_rows == len(weights) > 0
        column = meta.row_group(0).column(meta.schema.names.index("log_weight"))
        assert column.has_column_index and column.compression == "SNAPPY"


def test_fast_reader_matches_spark_reader(spark, inputs, monkeypatch):
    previous = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(40_000))  # many splits inside a.jsonl
    try:
        fast, fast_summary = _run(spark, inputs, "fast")
        left = inputs["root"] / "direct" / "_staging_parquet"  # as a run killed while writing leaves it
        left.mkdir(parents=True)
        (left / "part-00099.parquet").write_bytes(b"partial")
        direct, direct_summary = _run(spark, inputs, "direct", features_writer="pyarrow")
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", previous)
    slow, slow_summary = _run(spark, inputs, "slow", json_reader="spark")
    _same_direct(spark, direct, fast, fast_summary.counts(), direct_summary.counts())
    assert "line_start" in spark.read.format("delta").load(str(fast / "features")).columns  # the fast path ran
    assert "line_start" not in spark.read.format("delta").load(str(slow / "features")).columns
    assert fast_summary.counts() == slow_summary.counts()
    assert fast_summary.skipped == {"malformed_json": 8, "not_utf8": 2, "null_text": 4, "empty_text": 3, "null_id": 1,
                                    "duplicate_id": 2}
    _same_outputs(spark, fast, slow)
    # the fast path's weights say where each document's line is (select reads the chosen lines from
    # there); the Spark reader's have no line positions
    weights = spark.read.format("delta").load(str(fast / "weights")).collect()
    assert all(r["line_start"] is not None for r in weights)
    files = {}
    for r in weights:
        path = unquote(r["source_file"].removeprefix("file://"))
        if path not in files:
            files[path] = (gzip.open if path.endswith(".gz") else open)(path, "rb").read()
        line = json.loads(files[path][r["line_start"]:r["line_start"] + r["line_length"]])
        assert str(line["id"]) == r["id"]
    slow_lines = spark.read.format("delta").load(str(slow / "weights")).where("line_start is not null").count()
    assert slow_lines == 0
    # the fast path settled the two duplicate records on the driver (no shuffle of the weights)
    feats = spark.read.format("delta").load(str(fast / "features"))
    settled = score.duplicates(feats)
    assert settled is not None and len(settled) == 2
    # the featurize tasks stored each id's key as Spark hashes it; a table without the keys (an earlier
    # dsel's) is checked from its ids, with the same answer
    usable = feats.where("skip_reason is null")
    assert usable.count() > 0 and usable.where(F.col("id_key") != F.xxhash64("_dsel_id")).count() == 0
    assert sorted(score.duplicates(feats.drop("id_key"))) == sorted(settled)
    monkeypatch.setattr(score, "DUPLICATES_ON_DRIVER", 1)
    assert score.duplicates(feats) is None  # too many for the driver: Spark de-duplicates the weights
    shuffled, shuffled_summary = _run(spark, inputs, "shuffled", features_writer="pyarrow")
    assert shuffled_summary.counts() == fast_summary.counts()
    _same_outputs(spark, shuffled, fast)
    history = DeltaTable.forPath(spark, str(shuffled / "weights")).history().collect()
    assert "CONVERT" not in [h["operation"] for h in history]  # Spark's writer, after its shuffle of the ids
    schema = json.loads(_meta(spark, fast, "weights")["raw_schema"])
    types = {f["name"]: f["type"] for f in schema["fields"]}
    assert types["score"] == "string" and types["id"] == "string" and "" not in types and "e" not in types
    assert types["meta"]["fields"][0]["name"] == "a"  # nested fields sorted, as Spark infers them
    skipped = spark.read.format("delta").load(str(fast / "skipped"))
    broken = skipped.where("reason = 'malformed_json' and detail like '%unterminated%'").collect()
    assert sorted(r["source_file"].rsplit("/", 1)[1] for r in broken) == ["a.jsonl", "b.jsonl.gz"]


def test_fit_bins_counted_from_the_parquet_files_equal_spark_decoding(spark, inputs):
    # A capped fit takes the first fit bins; the pyarrow reader's table counts them straight from its files.
    from dsel.featurize import FIT_BINS
    from dsel.fit import _dense, feature_histograms, fit_raw

    out = _ran(spark, inputs, "fast")
    feats = spark.read.format("delta").load(str(out / "features"))
    per_bin = _dense(feature_histograms(feats, F.col("fit_bin"), FIT_BINS, 10_000), FIT_BINS, 10_000)
    files = sorted(feats.inputFiles())
    # the tasks' summaries, merged on the driver or first on the executors, hold the counts of every usable record
    assert len(files) >= 2
    for on_driver in (jsonread.SUMMARIES_ON_DRIVER, 1):
        seen = jsonread.summary(feats, 10_000, on_driver)
        assert np.array_equal(seen.counts[0], per_bin.sum(axis=0)), on_driver
        assert np.array_equal(seen.bins, per_bin.sum(axis=1)), on_driver
    for bins in (1, 7, 40, FIT_BINS):
        # from the counts per fit bin each task stored, and decoded from every record: the same
        stored = fit._stored_bin_counts(spark, files, 10_000, bins)
        assert stored is not None and np.array_equal(stored, per_bin[:bins].sum(axis=0)), bins
        assert np.array_equal(fit._decoded_bin_counts(spark, files, 10_000, bins), stored), bins
        assert np.array_equal(fit.bin_counts(spark, feats, 10_000, bins), stored), bins
    # and a fit capped at 7 bins gets the same raw counts both ways
    totals = per_bin.sum(axis=1)
    cfg = DselConfig.from_mapping({"raw": [inputs["raw"]], "out": str(out), "num_tokens_to_fit": int(np.cumsum(totals)[6])})
    fast = fit_raw(feats, cfg, (per_bin.sum(axis=0), totals), lambda bins: fit.bin_counts(spark, feats, 10_000, bins))
    assert np.array_equal(fast[0], fit_raw(feats, cfg)[0]) and np.array_equal(fast[0], per_bin[:7].sum(axis=0))
    assert fast[1] == int(totals.sum()) and 0 < per_bin[:7].sum() < per_bin.sum()


def test_stored_fit_counts_are_not_used_when_a_task_lacks_them(spark, tmp_path):
    # Rows appended by an earlier dsel (or with more buckets than are stored) have no fit_counts on
    # their summary row: then the first bins are decoded from the records instead.
    import zlib

    import pyarrow.parquet as pq

    from dsel.featurize import FIT_BINS

    counts = np.arange(FIT_BINS * 5, dtype=np.int64).reshape(FIT_BINS, 5)
    blob = zlib.compress(counts.astype("<i8").tobytes())
    for name, rows in (("a", [None, "{}", None]), ("b", ["{}"]), ("c", ["{}"])):
        blobs = [blob if r and name != "c" else (b"" if r else None) for r in rows]
        pq.write_table(pa.table({"raw_types": pa.array(rows, pa.string()), "fit_counts": pa.array(blobs, pa.binary())}),
                       tmp_path / f"{name}.parquet")
    files = [(tmp_path / f"{n}.parquet").as_uri() for n in ("a", "b", "c")]
    assert np.array_equal(fit._stored_bin_counts(spark, files, 5, 3), 2 * counts[:3].sum(axis=0))
    pq.write_table(pa.table({"raw_types": pa.array(["{}"]), "fit_counts": pa.nulls(1, pa.binary())}),
                   tmp_path / "d.parquet")
    assert fit._stored_bin_counts(spark, files + [(tmp_path / "d.parquet").as_uri()], 5, 3) is None


def test_features_files_are_read_directly_only_while_they_hold_the_table_rows(spark, inputs, tmp_path):
    # The workers read OUT/features' Parquet files themselves. The table is created without deletion
    # vectors (Databricks can turn them on for every new table); once a table has them, an UPDATE
    # leaves the old rows in the files, and the files are no longer read directly.
    from dsel.read import parquet_files

    raw = write_jsonl(tmp_path / "raw.jsonl", sample_docs("movie_reviews", 20, seed=8))
    out = tmp_path / "out"
    execute(spark, DselConfig.from_mapping({"raw": [raw], "target": [inputs["target"]], "out": str(out),
                                            "num_samples": 5}), "run")
    path = str(out / "features")
    assert DeltaTable.forPath(spark, path).detail().first()["properties"]["delta.enableDeletionVectors"] == "false"
    feats = spark.read.format("delta").load(path)
    assert parquet_files(spark, feats) == sorted(feats.inputFiles())
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    one = feats.where("num_words > 0").first()["_dsel_id"]
    DeltaTable.forPath(spark, path).update(F.col("_dsel_id") == one, {"num_words": F.col("num_words") + 1})
    feats = spark.read.format("delta").load(path)
    in_files = sum(pq.read_metadata(f.replace("file://", "")).num_rows for f in feats.inputFiles())
    assert in_files > feats.count()  # the deletion vectors hide rows the files still hold
    assert parquet_files(spark, feats) is None
    assert fit.bin_counts(spark, feats, 10_000, 3) is None  # the fit then reads the table through Delta


def test_reselect_reads_back_only_the_chosen_lines(spark, inputs):
    fast, slow = _ran(spark, inputs, "fast"), _ran(spark, inputs, "slow", json_reader="spark")
    kl = {}
    for out, reader in ((fast, "auto"), (slow, "spark")):
        cfg = DselConfig.from_mapping({"raw": [inputs["raw"]], "target": [inputs["target"]], "out": str(out),
                                       "num_samples": 45, "seed": 8, "min_length": 20, "json_reader": reader,
                                       "run_id": "same"})
        kl[reader] = execute(spark, cfg, "select").kl_reduction
        if reader == "auto":
            cfg_fast = cfg
    order = ["target", "rank"]
    got = spark.read.format("delta").load(str(fast / "selected")).orderBy(*order).collect()
    want = spark.read.format("delta").load(str(slow / "selected")).orderBy(*order).collect()
    assert got == want and len(got) == 45
    # The fast path measures the selection from the records it writes, the other from the written table.
    assert kl["auto"] == pytest.approx(kl["spark"], rel=1e-12) and kl["auto"] != 0
    assert {r["id"] for r in got} & {"77", "nonascii", "surrogate"} <= {r["id"] for r in want}

    # A weights table of the earlier layout (no line positions) still serves select, which then finds
    # the lines through the features table; the next scoring replaces it whole with the new columns.
    weights = str(fast / "weights")
    meta = DeltaTable.forPath(spark, weights).history(1).first()["userMetadata"]
    old = spark.read.format("delta").load(weights).drop("source_file", "line_start", "line_length")
    (old.localCheckpoint().write.format("delta").mode("overwrite").option("overwriteSchema", "true")
     .option("userMetadata", meta).save(weights))
    execute(spark, cfg_fast, "select")
    assert spark.read.format("delta").load(str(fast / "selected")).orderBy(*order).collect() == want
    execute(spark, cfg_fast.replace(refit="always"), "run")
    assert {"source_file", "line_start", "line_length"} <= set(spark.read.format("delta").load(weights).columns)
    assert spark.read.format("delta").load(str(fast / "selected")).orderBy(*order).collect() == want


def test_lenient_json_falls_back_to_spark_reader(spark, inputs, tmp_path, capsys):
    docs = sample_docs("sci_abstracts", 20, seed=6)
    lines = [json.dumps(d) for d in docs] + ["{'id': 'single', 'text': '" + "single quotes " * 3 + "'}",
                                             '{"id": "tail", "text": "trailing text"} after']
    raw = tmp_path / "lenient.jsonl"
    # Spark's reader also takes what Jackson decodes and Python's UTF-8 does not (an overlong "/"), and
    # bytes after a record's end
    raw.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "overlong", "text": "x\xc0\xafy ' + b"word " * 9
                    + b'"}\n{"id": "tail bytes", "text": "' + b"after the record " * 5 + b'"} \xff\n')
    cfg = {"raw": [str(raw)], "target": [inputs["target"]], "num_samples": 5, "min_length": 5, "run_id": "same"}
    fast = execute(spark, DselConfig.from_mapping({**cfg, "out": str(tmp_path / "fast")}), "run")
    assert "Spark's JSON parser accepts lines" in capsys.readouterr().out
    slow = execute(spark, DselConfig.from_mapping({**cfg, "out": str(tmp_path / "slow"), "json_reader": "spark"}), "run")
    assert fast.counts() == slow.counts() and fast.skipped == {}
    _same_outputs(spark, tmp_path / "fast", tmp_path / "slow")


def test_utf16_lines_fall_back_to_spark_reader(spark, inputs, tmp_path, capsys):
    # Jackson detects UTF-16 and UTF-32 by the zero bytes a line starts with, so Spark's reader reads the
    # lines of a UTF-16 file (its line splitting shifts them by a byte): only Spark's reader gives that
    docs = sample_docs("movie_reviews", 12, seed=6)
    raw = tmp_path / "raw"
    write_jsonl(raw / "a.jsonl", docs[:6])
    (raw / "b.jsonl").write_bytes(("\n".join(json.dumps(d) for d in docs[6:]) + "\n").encode("utf-16"))
    cfg = {"raw": [str(raw)], "target": [inputs["target"]], "num_samples": 5, "min_length": 5, "run_id": "same"}
    fast = execute(spark, DselConfig.from_mapping({**cfg, "out": str(tmp_path / "fast")}), "run")
    assert "a line is UTF-16 or UTF-32" in capsys.readouterr().out
    slow = execute(spark, DselConfig.from_mapping({**cfg, "out": str(tmp_path / "slow"), "json_reader": "spark"}), "run")
    assert fast.counts() == slow.counts() and fast.scored > 6  # Spark's reader decodes most UTF-16 lines
    _same_outputs(spark, tmp_path / "fast", tmp_path / "slow")


def test_zstd_files_are_read_by_the_fast_reader(spark, inputs, tmp_path, capsys):
    # The Pile and RedPajama ship JSON lines as .jsonl.zst: the workers decompress them with pyarrow
    # (one task per file, several zstd frames in one file), and select reads the chosen lines back
    # Also a directory sharded by day, as exports write them: Spark's readers skip subdirectories that are
    # not partitions (key=value) unless told to look recursively, and dsel tells them (Spark skips '_' ones)
    docs = sample_docs("movie_reviews", 30, seed=7) + sample_docs("sci_abstracts", 30, seed=7)
    raw = tmp_path / "raw"
    (raw / "2026-11-30" / "more").mkdir(parents=True)
    write_jsonl(raw / "_temporary" / "0" / "part-0.jsonl", docs[:3])
    for name, part in (("a.jsonl.zst", docs[:20]), ("2026-11-30/b.jsonl.zstd", docs[20:40])):
        with pa.CompressedOutputStream(str(raw / name), "zstd") as out:
            out.write("".join(json.dumps(d) + "\n" for d in part[:10]).encode())
        with open(raw / name, "ab") as fh, pa.CompressedOutputStream(fh, "zstd") as out:  # a second frame
            out.write("".join(json.dumps(d) + "\n" for d in part[10:]).encode())
    write_jsonl(raw / "2026-11-30" / "more" / "c.jsonl", docs[40:])
    cfg = {"raw": [str(raw)], "target": [inputs["target"]], "num_samples": 25, "min_length": 5, "run_id": "same"}
    plan, why = jsonread.plan(spark, DselConfig.from_mapping(cfg))
    assert plan is not None and why == "" and len(plan.files) == 3
    fast = execute(spark, DselConfig.from_mapping({**cfg, "out": str(tmp_path / "fast")}), "run")
    assert "Spark's reader" not in capsys.readouterr().out
    slow = execute(spark, DselConfig.from_mapping({**cfg, "out": str(tmp_path / "slow"), "json_reader": "spark"}),
                   "run")
    assert fast.counts() == slow.counts() and fast.scored == 60 and fast.selected == 25
    _same_outputs(spark, tmp_path / "fast", tmp_path / "slow")
    selected = spark.read.format("delta").load(str(tmp_path / "fast" / "selected")).collect()
    from_zstd = {d["id"]: d["text"] for d in docs[:40]}
    read_back = [(r["id"], r["text"]) for r in selected if r["id"] in from_zstd]
    assert len(read_back) >= 5 and all(text == from_zstd[i] for i, text in read_back)  # lines from the zstd files


def test_texts_past_jacksons_default_string_cap_are_read_by_both_readers(spark, inputs, tmp_path):
    # Jackson's default cap on a JSON string (20,000,000 characters) made a valid line holding a longer
    # text malformed_json under both readers; dsel lifts it: such a text is read and scored (and read
    # back by select), and one past --max-doc-bytes is too_large with its id.
    docs = sample_docs("movie_reviews", 20, seed=8)
    words = " ".join(d["text"] for d in docs)
    docs.insert(7, {"id": "long", "text": (words * (20_000_100 // len(words) + 1))[:20_000_100]})
    docs.insert(13, {"id": "longer", "text": (words * (23_000_000 // len(words) + 1))[:23_000_000]})
    raw = write_jsonl(tmp_path / "raw" / "part.jsonl", docs)
    cfg = {"raw": [raw], "target": [inputs["target"]], "num_samples": 21, "min_length": 1, "run_id": "same",
           "max_doc_bytes": 22_000_000}
    fast = execute(spark, DselConfig.from_mapping({**cfg, "out": str(tmp_path / "fast")}), "run")
    slow = execute(spark, DselConfig.from_mapping({**cfg, "out": str(tmp_path / "slow"), "json_reader": "spark"}),
                   "run")
    assert fast.counts() == slow.counts() and fast.skipped == {"too_large": 1} and fast.scored == 21
    _same_outputs(spark, tmp_path / "fast", tmp_path / "slow")
    assert [r[:2] for r in _table(spark, tmp_path / "fast", "skipped")] == [("longer", "too_large")]
    selected = {r["id"]: r["text"] for r in spark.read.format("delta").load(str(tmp_path / "fast" / "selected"))
                .select("id", "text").collect()}
    assert selected["long"] == docs[7]["text"]


def _covered(tasks, sizes):
    """Check that the tasks' splits hold each compressed file whole and each plain file's bytes once."""
    for name, size in sizes.items():
        pieces = sorted((s["start"], size if s["end"] is None else s["end"])
                        for t in tasks for s in t if s["uri"] == name)
        if jsonread._codec(name):
            assert pieces == [(0, size)], (name, pieces)
        else:
            assert pieces[0][0] == 0 and pieces[-1][1] == size, (name, pieces)
            assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:])), (name, pieces)
            assert all(a < b for a, b in pieces) or pieces == [(0, 0)], (name, pieces)


def test_raw_splits_make_tasks_of_equal_cost_in_a_multiple_of_the_cores(spark):
    """The fast reader's tasks: four plain files of 57 to 66 MB on two cores are four tasks of one
    size, not Spark's three (66, 66 and 119 MB, one core idle for the last); compressed files stay
    whole; many small files are spread by their opening cost; one small file is one task."""
    mb, cores = 1 << 20, spark.sparkContext.defaultParallelism
    assert cores == 2
    sizes = {f"/d/part-{i}.jsonl": int(m * mb) for i, m in enumerate((62.5, 66.2, 65.9, 56.6))}
    tasks = jsonread._pack(spark, list(sizes), sizes)
    _covered(tasks, sizes)
    costs = [sum(s["size"] + (4 * mb if s["start"] == 0 else 0) for s in t) for t in tasks]
    assert len(tasks) % cores == 0 and max(costs) - min(costs) <= 8 * mb, costs  # no piece under 4 MB
    sizes = {"/d/a.json.gz": 500 * mb, "/d/b.jsonl.zst": 100 * mb, "/d/c.jsonl": 300 * mb}
    tasks = jsonread._pack(spark, list(sizes), sizes)
    _covered(tasks, sizes)
    assert [s["uri"] for s in tasks[0]] == ["/d/a.json.gz"] and len(tasks) % cores == 0
    sizes = {f"/d/{i:04d}.jsonl": 1000 + i for i in range(1000)}
    tasks = jsonread._pack(spark, list(sizes), sizes)
    _covered(tasks, sizes)
    assert len(tasks) == 32 and all(31 <= len(t) <= 32 for t in tasks)  # 1,000 files of 4 MB's opening cost each
    sizes = {"/d/one.jsonl": 3000, "/d/empty.jsonl": 0}
    tasks = jsonread._pack(spark, list(sizes), sizes)
    _covered(tasks, sizes)
    assert len(tasks) == 1


def _bytes_read() -> int:
    """Bytes this process has read through system calls so far (Linux)."""
    with open("/proc/self/io") as fh:
        return int(next(line for line in fh if line.startswith("rchar:")).split()[1])


def test_a_split_owning_no_line_start_reads_no_further_than_its_end(tmp_path):
    """A split owns the lines that start in it; in a file whose lines end in lone carriage returns
    (one \\n-line to the end of the file) the later splits own none, and stop at their own end
    instead of reading to the end of the file looking for a \\n."""
    mb, block = 1 << 20, 1 << 20
    path = tmp_path / "mac.jsonl"
    record = json.dumps({"id": "x", "text": "lorem ipsum " * 40}).encode()
    path.write_bytes(b"\r".join([record] * (24 * mb // len(record))))
    size = path.stat().st_size
    cuts = [0, 8 * mb, 16 * mb, None]
    pieces = []
    for start, end in zip(cuts, cuts[1:]):
        split = {"uri": str(path), "codec": None, "start": start, "end": end}
        before = _bytes_read()
        pieces.append(list(jsonread._read_split(split, block)))
        if start:
            read_here = _bytes_read() - before
            assert read_here <= (end or size) - start + 2 * block, (start, read_here)
    assert [len(p) for p in pieces[1:]] == [0, 0]
    assert b"".join(piece for _, piece in pieces[0]) == path.read_bytes()


def test_xxhash64_matches_spark(spark):
    rng = random.Random(3)
    alphabet = "ab é日\n\t😀"
    values = ["", "a", None] + ["".join(rng.choice(alphabet) for _ in range(n)) for n in range(1, 90)]
    expected = [r[0] for r in spark.createDataFrame([(v,) for v in values], "s string")
                .select(F.xxhash64("s")).collect()]
    assert jsonread.xxhash64(pa.array(values, pa.string())).tolist() == expected


def test_other_inputs_use_spark_reader(spark, tmp_path):
    docs = sample_docs("sci_abstracts", 5, seed=6)
    plain = write_jsonl(tmp_path / "a.jsonl", docs)
    parquet = str(tmp_path / "p")
    spark.createDataFrame(docs).write.parquet(parquet)
    (tmp_path / "p2").mkdir()
    (tmp_path / "p2" / "a.jsonl.bz2").write_bytes(b"")
    plan, why = jsonread.plan(spark, DselConfig.from_mapping({"raw": [plain]}))
    assert plan is not None and plan.files == [f"file://{plain}"] and why == ""
    write_jsonl(tmp_path / "parts" / "lang=en" / "a.jsonl", docs)
    # a plain directory below a partition keeps the partition column: no recursive lookup, Spark's reader
    write_jsonl(tmp_path / "parts" / "lang=fr" / "2026" / "b.jsonl", docs)
    for values, reason in (({"raw": [parquet]}, "parquet"), ({"raw": [plain], "json_reader": "spark"}, "spark"),
                           ({"raw": [plain], "json_sampling_ratio": 0.5}, "sample"),
                           ({"raw": [str(tmp_path / "parts")]}, "partition"),
                           ({"raw": [str(tmp_path / "p2" / "a.jsonl.bz2")], "raw_format": "json"}, "codec")):
        plan, why = jsonread.plan(spark, DselConfig.from_mapping(values))
        assert plan is None and reason in why



def test_directory_layouts_on_other_file_systems_are_judged_by_sparks_listings(spark, tmp_path):
    # an s3a:// or hdfs:// directory is not walked by Python: Spark's default and recursive listings
    # are compared (checked here through file:// URIs), with the same answers as the local walk
    docs = sample_docs("sci_abstracts", 3, seed=6)
    for name in ("plain/a.jsonl", "plain/2026-11-30/b.jsonl", "parts/lang=en/a.jsonl", "parts/lang=fr/2026/b.jsonl",
                 "top/a.jsonl", "mixed/lang=en/a.jsonl", "mixed/b.jsonl", "clash/lang=en/a.jsonl", "clash/x/b.jsonl"):
        write_jsonl(tmp_path / name, docs)
    layouts = ("plain", "parts", "top")
    assert [read._remote_in_subdirectories(spark, f"file://{tmp_path / n}") for n in layouts] == [True, False, False]
    assert [read._in_subdirectories(str(tmp_path / n)) for n in layouts] == [True, False, False]
    for name in ("mixed", "clash"):
        for check in (lambda: read._remote_in_subdirectories(spark, f"file://{tmp_path / name}"),
                      lambda: read._in_subdirectories(str(tmp_path / name))):
            with pytest.raises(DselError, match="mixes files in partition directories"):
                check()

def _text_before(text_hash: int, first: bool) -> str:
    """A text whose content hash (xxhash64) comes before ``text_hash`` (``first``) or after it."""
    for i in range(1000):
        text = f"the same id, another text number {i} " * 10
        if (int(jsonread.xxhash64(pa.array([text]))[0]) < text_hash) == first:
            return text
    raise AssertionError("no such text")


def test_a_directory_that_gains_files_featurizes_only_those(spark, tmp_path, capsys):
    docs = sample_docs("sci_abstracts", 40, seed=21) + sample_docs("email_ham", 40, seed=21)
    raw = tmp_path / "raw"
    write_jsonl(raw / "day1.jsonl", docs[:50])
    target = write_jsonl(tmp_path / "target.jsonl", sample_docs("sci_abstracts", 90, seed=21)[60:])
    # The workers write the first table (converted to Delta); Spark's writer appends to it and rebuilds it.
    base = {"raw": [str(raw)], "target": [target], "num_samples": 20, "seed": 3, "min_length": 10,
            "features_writer": "pyarrow"}
    out = tmp_path / "out"
    first = execute(spark, DselConfig.from_mapping({**base, "out": str(out), "run_id": "day1"}), "run")
    assert first.featurized == first.read == 50
    assert "written by the workers" in capsys.readouterr().out
    before = {r["id"]: r for r in spark.read.format("delta").load(str(out / "weights")).collect()}
    # Day 2 brings a gzip file: new documents, a record of a stored id that comes before the stored one
    # (it replaces it), one of another stored id that comes after (it loses), and a null text.
    wins = {"id": docs[0]["id"], "text": _text_before(before[docs[0]["id"]]["doc_hash"], True)}
    loses = {"id": docs[1]["id"], "text": _text_before(before[docs[1]["id"]]["doc_hash"], False)}
    day2 = docs[50:] + [wins, loses, {"id": "n", "text": None}]
    with gzip.open(raw / "day2.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(d) + "\n" for d in day2))
    second = execute(spark, DselConfig.from_mapping({**base, "out": str(out), "run_id": "day2", "refit": "never"}),
                     "run")
    assert "featurizing the 1 raw files" in capsys.readouterr().out
    assert (second.featurized, second.read) == (len(day2), 50 + len(day2))
    assert second.scored_now == len(docs) - 50 + 1  # the new ids, and the stored row replaced
    assert second.fit_version == first.fit_version and second.read == second.scored + sum(second.skipped.values())
    after = {r["id"]: r for r in spark.read.format("delta").load(str(out / "weights")).collect()}
    assert after[wins["id"]]["source_file"].endswith("day2.jsonl.gz")
    assert all(after[i] == row for i, row in before.items() if i != wins["id"])
    skipped = {(r["id"], r["reason"], r["source_file"].rsplit("/", 1)[-1]) for r in
               spark.read.format("delta").load(str(out / "skipped")).collect()}
    assert {(wins["id"], "duplicate_id", "day1.jsonl"), (loses["id"], "duplicate_id", "day2.jsonl.gz"),
            ("n", "null_text", "day2.jsonl.gz")} <= skipped
    # (that scoring everything again with day 2's fit gives the same tables, test_schedule's reproduce checks;
    # that an appended table fits and scores as a fresh run over all files, the next test and test_schedule's
    # incremental tests)
    # A file it holds changed: everything is featurized again.
    write_jsonl(raw / "day1.jsonl", docs[:49])
    # ... and day 2 can no longer be reproduced from JSON files: refused, and the new --out left absent
    with pytest.raises(DselError, match="changed since run 'day2' read them"):
        execute(spark, DselConfig.from_mapping({"out": str(tmp_path / "refused")}), "reproduce", source_out=str(out),
                source_run="day2")
    assert not (tmp_path / "refused").exists()
    again = execute(spark, DselConfig.from_mapping({**base, "out": str(out), "run_id": "day3"}), "run")
    assert "1 raw files changed or went" in capsys.readouterr().out
    assert again.featurized == again.read == 49 + len(day2)


def test_a_table_without_fit_counts_still_appends_and_fits_capped(spark, tmp_path):
    # A features table an earlier dsel wrote has no fit_counts and no id_key column: new files are
    # appended to it as it is (a record without an id and one repeating a stored id among them), a
    # capped fit decodes its first bins, and the shared ids are found from the ids; all give what a
    # fresh run over all files gives.
    from dsel.write import forget_commit

    docs = sample_docs("movie_reviews", 30, seed=5) + sample_docs("python_peps", 30, seed=5)
    docs.append({"id": docs[3]["id"], "text": docs[50]["text"] + " The id of another.", "domain": "x"})
    # alone in its file (a block without ids): its id, derived from the text, is nulled by an UPDATE
    no_id = {"text": docs[40]["text"] + " No id here.", "domain": "x"}
    raw = tmp_path / "raw"
    write_jsonl(raw / "day1.jsonl", docs[:35])
    target = write_jsonl(tmp_path / "target.jsonl", sample_docs("python_peps", 50, seed=6)[30:])
    base = {"raw": [str(raw)], "target": [target], "num_samples": 10, "seed": 4, "features_writer": "pyarrow",
            "num_tokens_to_fit": 4000, "refit": "always"}
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    execute(spark, DselConfig.from_mapping({**base, "out": str(out), "run_id": "day1"}), "run")
    features = str(out / "features")
    key = "spark.databricks.delta.commitInfo.userMetadata"
    spark.conf.set(key, DeltaTable.forPath(spark, features).history(1).first()["userMetadata"])
    try:
        (spark.read.format("delta").load(features).drop("fit_counts", "id_key").write.format("delta")
         .mode("overwrite").option("overwriteSchema", "true").save(features))
    finally:
        spark.conf.unset(key)
        forget_commit(features)
    write_jsonl(raw / "day2.jsonl", docs[35:])
    write_jsonl(raw / "day2b.jsonl", [no_id])
    second = execute(spark, DselConfig.from_mapping({**base, "out": str(out), "run_id": "day2"}), "run")
    assert second.featurized == 27 and second.read == 62
    assert not {"fit_counts", "id_key"} & set(spark.read.format("delta").load(features).columns)
    assert second.skipped["null_id"] == 1 and second.skipped["duplicate_id"] == 1
    execute(spark, DselConfig.from_mapping({**base, "out": str(fresh), "run_id": "day2"}), "run")
    assert {"fit_counts", "id_key"} <= set(spark.read.format("delta").load(str(fresh / "features")).columns)
    # the cap took some bins, not all
    capped = spark.read.format("delta").load(str(fresh / "log_ratios")).agg(F.sum("raw_count")).first()[0]
    usable = spark.read.format("delta").load(str(fresh / "features")).where("skip_reason is null")
    assert 0 < capped < usable.agg(F.sum("num_features")).first()[0]
    for name in ("log_ratios", "weights", "skipped"):
        columns = WEIGHT_COLUMNS if name == "weights" else None
        assert _table(spark, out, name, columns) == _table(spark, fresh, name, columns), name
