"""A user's mistakes get one clear message naming the fix, or a counted skip; nothing is lost silently."""
from __future__ import annotations

import gzip
import json
import lzma
import os
import re
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

import dsel.errors
from dsel.cli import main
from dsel.config import DselConfig
from dsel.errors import DselError
from dsel.pipeline import execute
from tests.conftest import sample_docs, write_jsonl


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    raw = sample_docs("sci_abstracts", 40, seed=3) + sample_docs("email_ham", 40, seed=3)
    target = sample_docs("sci_abstracts", 80, seed=3)[40:]
    return {"root": root, "raw": raw, "target": write_jsonl(root / "target.jsonl", target)}


def run(spark, **values):
    return execute(spark, DselConfig.from_mapping(values), "run")


def test_bad_records_are_counted_and_nothing_else_is_lost(spark, good):
    root = good["root"]
    big = {"id": "big", "text": (good["raw"][0]["text"] + "\n") * (3_000_000 // len(good["raw"][0]["text"]) + 1)}
    lines = [json.dumps(d) for d in good["raw"]] + [
        '{"id": "broken", "text": "unterminated',  # malformed JSON
        json.dumps({"id": "nulltext", "text": None}),
        json.dumps({"id": "notext"}),  # missing field: null text
        json.dumps({"id": "empty", "text": ""}),
        json.dumps({"id": "blank", "text": "   \n\t "}),
        json.dumps({"text": "a document without an id " * 30}),  # null id
        json.dumps({"id": good["raw"][1]["id"], "text": "another text under an existing id " * 20}),
        json.dumps(big),
    ]
    latin1 = json.dumps({"id": "latin1", "text": "caf\u00e9 au lait " * 20}, ensure_ascii=False).encode("latin-1")
    path = root / "raw_bad.jsonl.gz"
    with gzip.open(path, "wb") as fh:  # a line from a file in another encoding: not UTF-8
        fh.write(("\n".join(lines) + "\n").encode("utf-8") + latin1 + b"\n")
    # the target's bad records are counted as well, in the pass that counts its n-grams
    target = root / "target_bad.jsonl"
    target.write_bytes(open(good["target"], "rb").read() + b'{"id": "t-broken", "text": "unterminated\n'
                       + json.dumps({"id": "t-null", "text": None}).encode() + b"\n" + latin1 + b"\n"
                       + json.dumps({"id": "t-empty", "text": ""}).encode() + b"\n"
                       + json.dumps({"id": "t-blank", "text": " \n\t "}).encode() + b"\n")
    summary = run(spark, raw=[str(path)], target=[str(target)], out=str(root / "out1"), num_samples=10)
    assert summary.skipped == {"malformed_json": 1, "not_utf8": 1, "null_text": 2, "empty_text": 2, "null_id": 1,
                               "duplicate_id": 1}
    assert summary.read == len(lines) + 1
    assert summary.read == summary.scored + sum(summary.skipped.values())
    targets = summary.counts()["targets"]
    assert targets == {str(target): {"read": 40 + 5, "skipped": {"empty_text": 2, "malformed_json": 1, "not_utf8": 1,
                                                                 "null_text": 1}}}
    text = summary.format()
    assert ("target read                  45  (skipped 5: empty_text=2, malformed_json=1, not_utf8=1, "
            "null_text=1)") in text
    assert text.count("not_utf8: lines holding bytes that are not UTF-8") == 1 and "iconv -f LATIN1" in text
    # a later command that uses the fit says what the fit read of the target (the run table counts this run's)
    again = execute(spark, DselConfig.from_mapping({"raw": [str(path)], "out": str(root / "out1"), "num_samples": 5}),
                    "select")
    assert re.search(r"\n  target read at fit +45  \(skipped 5: empty_text=2, malformed_json=1, not_utf8=1, "
                     r"null_text=1\)\n",
                     again.format()) and again.counts()["targets"] == {}
    not_utf8 = spark.read.format("delta").load(str(root / "out1" / "skipped")).where("reason = 'not_utf8'").first()
    assert not_utf8["detail"].startswith('{"id": "latin1", "text": "caf')
    weights = spark.read.format("delta").load(str(root / "out1" / "weights"))
    big_row = weights.where("id = 'big'").first()
    assert big_row is not None and big_row["num_words"] > 300_000
    skipped = spark.read.format("delta").load(str(root / "out1" / "skipped"))
    broken = skipped.where("reason = 'malformed_json'").first()
    assert "unterminated" in broken["detail"] and broken["source_file"].endswith("raw_bad.jsonl.gz")
    assert "WARNING" not in summary.format() and "malformed_json=1" in summary.format()
    # ten documents: the smoothing's 10,000 counts outweigh their n-grams, and the summary says so
    share = summary.counts()["kl_smoothing_share"]
    assert 0.5 < share < 1 and f"add-one smoothing: {share:.0%} of the selection's smoothed counts" in summary.format()
    # (a byte limit's too_large skip: test_jsonread's texts past Jackson's string cap, under both readers)


def test_k_larger_than_pool_takes_all_and_warns(spark, good):
    raw = write_jsonl(good["root"] / "raw.jsonl", good["raw"])
    summary = run(spark, raw=[raw], target=[good["target"]], out=str(good["root"] / "out3"), num_samples=10_000,
                  min_length=50)
    assert summary.selected == summary.eligible < 10_000
    assert any("only" in w and "eligible" in w for w in summary.warnings)


def test_no_eligible_document_gives_an_empty_selection_and_says_why(spark, good, capsys):
    short = [{"id": str(i), "text": f"a short note number {i}"} for i in range(30)]
    raw = write_jsonl(good["root"] / "short.jsonl", short)
    out = good["root"] / "out-short"
    summary = run(spark, raw=[raw], target=[good["target"]], out=str(out), num_samples=5)
    assert summary.selected == summary.eligible == 0 and summary.kl_reduction is None
    assert summary.filtered == {"min_length": 30}
    assert any("is empty: no scored document is eligible. Lower --min-length (100)" in w for w in summary.warnings)
    assert spark.read.format("delta").load(str(out / "selected")).count() == 0
    assert main(["report", "--out", str(out)]) == 2  # nothing to report on, and it says so
    assert "the selection is empty): select some documents first" in capsys.readouterr().err


def test_target_sharing_no_ngram_warns(spark, good):
    raw = write_jsonl(good["root"] / "raw_ascii.jsonl", good["raw"])
    alien = write_jsonl(good["root"] / "alien.jsonl", [{"id": "t1", "text": "ⴰⵣⵓⵍ ⴼⵍⵍⴰⵡⵏ " * 50}])
    # and the raw input given as a target too: its weights are all 0, and the summary says why
    summary = run(spark, raw=[raw], target=[alien, raw], out=str(good["root"] / "out4"), num_samples=5,
                  num_buckets=1_000_000)
    assert any(w.startswith(f"target {alien} shares no n-gram bucket") for w in summary.warnings)
    assert any(w.startswith(f"target {raw} has the raw data's very histogram") for w in summary.warnings)
    assert summary.selected == 5
    weights = spark.read.format("delta").load(str(good["root"] / "out4" / "weights"))
    assert weights.where("log_weights[1] != 0").count() == 0 and weights.where("log_weights[0] != 0").count() > 0


@pytest.mark.parametrize("case, message", [
    ("missing_raw", "input not found"),
    ("tilde_in_a_config_path", "input not found: ~/dsel-no-such-input.jsonl (dsel does not expand ~: write the home "
                               "directory out)"),
    ("glob_characters_in_a_real_name", "input not found: {root}/r[1].jsonl (a file of that very name exists, but "
                                       "Spark's file listing reads its [ as a glob; rename it without them)"),
    ("missing_column", "has no column 'body'"),
    ("empty_target", "has no usable text"),
    ("numeric_text", "not string"),
    ("binary_text", "has type binary, not string; if it holds UTF-8 text that a Parquet writer stored without "
                    "the string annotation (Impala, Hive and some older writers do), pass --conf "
                    "spark.sql.parquet.binaryAsString=true; else point --text-column"),
    ("bad_id_column", "has no id column 'doc'"),
    ("uint64_id", "raw column 'id' has type decimal(20,0); ids must be strings or integers. Whole numbers Spark "
                  "reads as a decimal (a Parquet uint64 column, or decimal(p,0)) are ids once the input holds them "
                  "as strings or signed integers"),
    ("nested_text_column", "raw input has no column 'meta.text'; its columns are id, meta ('meta' is a struct with "
                           "the fields body, lang: pass --text-column meta.FIELD for a field inside it). Pass "
                           "--text-column NAME"),
    ("pretty_printed_json", "every line of the raw input is malformed JSON: dsel reads JSON lines"),
    ("empty_target_file", "the target input ({root}/blank.jsonl) holds no records: its files are empty or hold "
                          "only blank lines; check --target"),
    ("empty_raw_directory", "directory {root}/empty-raw holds no data files (only hidden ones, or none); check the path"),
    ("out_inside_raw_directory", "--out {root}/raw-dir/out is inside the raw input directory {root}/raw-dir, where "
                                 "dsel's tables would be read as raw input; choose an --out outside it"),
    ("latin1_target", "every line of the target input is malformed JSON, with lines holding bytes that are not "
                      "UTF-8: a file in another encoding (Latin-1, Windows-1252, ...), to convert first, for "
                      "example iconv -f LATIN1 -t UTF-8"),
    ("gzip_named_jsonl", "{root}/gzip_named/raw.jsonl is gzip-compressed, which its name does not say; name it to "
                         "end in .jsonl.gz (the codec is chosen by the name); every line of it would be skipped"),
    ("parquet_named_jsonl", "{root}/parquet_named/t.jsonl is a Parquet file, which its name does not say; pass "
                            "--target-format parquet; every line of it would be skipped as malformed"),
    ("latin1_raw", "every line of the raw input is malformed JSON, with lines holding bytes that are not UTF-8"),
    ("latin1_raw_spark_reader", "every line of the raw input is malformed JSON, with lines holding bytes"),
    ("truncated_gzip", "(OSError: Truncated compressed stream): the file is damaged"),
    ("truncated_gzip_spark_reader", "(EOFException: Unexpected end of input stream): the file is damaged"),
    ("xz_file", "is xz-compressed, which Spark's JSON reader does not read; decompress it, or recompress it"),
    ("xz_file_given_as_json", "is xz-compressed, which Spark's JSON reader does not read"),
    ("directory_with_a_readme", "holds JSON-lines files and 1 other file(s) (README.md), which Spark would read "
                                "as data too; pass a glob of the data files, such as"),
    ("colon_in_a_file_name", "Hadoop's file system, which Spark's readers use, cannot open a file whose name holds "
                             "':' (URISyntaxException: Relative path in absolute URI"),
    ("recursive_glob", "'**' matches within one directory level in Spark's globs, not at any depth, so 2 file(s) "
                       "it matches at other depths, such as {root}/recursive_glob/2026/11/b.jsonl, would not be "
                       "read; pass the directory (dsel reads every file under it)"),
    ("loose_and_partitioned_files", "{root}/loose_and_partitioned_files mixes files in partition directories "
                                    "(such as {root}/loose_and_partitioned_files/lang=en/a.jsonl) with files in none "
                                    "(such as {root}/loose_and_partitioned_files/b.jsonl); Spark would read only the "
                                    "partitioned ones, so 1 file(s) would be lost. Move those files"),
    ("keys_differing_in_case", "raw input has columns whose names differ only in case (Text, text, meta.ID, "
                               "meta.id), which a Delta table such as OUT/selected cannot hold; rename or drop"),
    ("repeated_key_spark_reader", "as json: it holds the column 'text' twice, or names that differ only in case"),
    ("output_column_in_another_case", "raw input already has column(s) Rank, which dsel adds to its output (Delta "
                                      "and Spark's columns ignore case); rename them before selecting"),
    ("tar_archive", "is a tar archive, which Spark's JSON reader does not read; extract it and pass the JSON-lines"),
    ("jsonl_given_as_parquet", "it is not a Parquet file (RuntimeException: "),
    # what the lz4 and snzip tools write: Hadoop's codecs took the headers for ~1.6 GB blocks and the JVM died
    ("lz4_frame_file", "{root}/lz4_frame_file/raw.jsonl.lz4 is in the LZ4 frame format (the lz4 tool's), which "
                       "Hadoop's lz4 codec does not read; decompress it, or recompress it with gzip or zstd"),
    ("framed_snappy_target", "{root}/t.jsonl.snappy is in the framed snappy format (the snzip tool's), which "
                             "Hadoop's snappy codec does not read; decompress it"),
    ("colon_beside_a_glob", "cannot list a name holding ':' (backup:2026) in a directory the input names or a glob "
                            "looks into; rename it without ':'"),
    ("link_to_an_enclosing_directory", "{root}/link_loop/sub/up is a symbolic link to {root}/link_loop, a directory "
                                       "it is inside, so its files would be listed without end; remove the link"),
    ("dangling_link_in_raw_directory", "{root}/dangling/b.jsonl is a symbolic link to {root}/gone.jsonl, which does "
                                       "not exist, so its records would be left out of the input unsaid"),
    ("dangling_link_in_a_glob_spark_reader", "{root}/dangling_glob/b.jsonl is a symbolic link to"),
])
def test_mistakes_get_one_clear_message(spark, good, case, message, capsys):
    root = good["root"]
    raw = write_jsonl(root / "raw_ok.jsonl", good["raw"][:10])
    argv = ["run", "--raw", raw, "--target", good["target"], "--out", str(root / f"err-{case}"),
            "--num-samples", "3"]
    if case == "missing_raw":
        argv[2] = str(root / "nope.jsonl")
    elif case == "tilde_in_a_config_path":  # a shell expands ~, a TOML file or a notebook's config does not
        argv[2] = "~/dsel-no-such-input.jsonl"
    elif case == "glob_characters_in_a_real_name":
        argv[2] = write_jsonl(root / "r[1].jsonl", good["raw"][:10])
    elif case == "missing_column":
        argv += ["--text-column", "body"]
    elif case == "empty_target":
        empty = root / "empty.jsonl"
        empty.write_text(json.dumps({"id": "e", "text": ""}) + "\n")
        argv[4] = str(empty)
    elif case == "empty_target_file":  # a file truncated to nothing, or blank lines only
        (root / "blank.jsonl").write_text("\n  \n")
        argv[4] = str(root / "blank.jsonl")
    elif case == "empty_raw_directory":  # an export that has not run yet: only a marker file
        (root / "empty-raw").mkdir()
        (root / "empty-raw" / "_SUCCESS").write_text("")
        argv[2] = str(root / "empty-raw")
    elif case == "out_inside_raw_directory":  # the next run would read OUT's Parquet files as raw input
        write_jsonl(root / "raw-dir" / "a.jsonl", good["raw"][:10])
        argv[2], argv[6] = str(root / "raw-dir"), str(root / "raw-dir" / "out")
    elif case == "gzip_named_jsonl":  # compressed, but named as plain text: Spark reads its bytes as lines
        (root / "gzip_named").mkdir()  # beside a good file, its records were skipped (not_utf8) and the run went on
        (root / "gzip_named" / "raw.jsonl").write_bytes(gzip.compress(open(raw, "rb").read()))
        write_jsonl(root / "gzip_named" / "more.jsonl", good["raw"][10:20])
        argv[2] = str(root / "gzip_named")
    elif case == "parquet_named_jsonl":
        (root / "parquet_named").mkdir()
        pq.write_table(pa.table({"id": ["a"], "text": ["a target document"]}), root / "parquet_named" / "t.jsonl")
        argv[4] = str(root / "parquet_named" / "t.jsonl")
    elif case.startswith("latin1"):  # saved by an editor in Latin-1: every line holds an accented letter
        latin = root / case / "latin1.jsonl"
        latin.parent.mkdir()
        latin.write_bytes("".join(json.dumps({"id": str(i), "text": f"r\u00e9sum\u00e9 number {i} " * 30},
                                             ensure_ascii=False) + "\n" for i in range(2)).encode("latin-1"))
        argv[4 if case == "latin1_target" else 2] = str(latin)
        argv += ["--json-reader", "spark"] if case.endswith("spark_reader") else []
    elif case == "numeric_text":
        argv[4] = write_jsonl(root / "numbers.jsonl", [{"id": "n", "text": 12345}])
    elif case == "binary_text":
        argv[2] = str(root / "binary.parquet")
        pq.write_table(pa.table({"id": [d["id"] for d in good["raw"]],
                                 "text": pa.array([d["text"].encode() for d in good["raw"]], pa.binary())}), argv[2])
    elif case == "nested_text_column":  # a lake export with the text inside a struct
        argv[2] = write_jsonl(root / "nested.jsonl", [{"id": d["id"], "meta": {"body": d["text"], "lang": "en"}}
                                                      for d in good["raw"]])
        argv += ["--text-column", "meta.text", "--target-text-column", "text"]
    elif case == "bad_id_column":
        argv += ["--id-column", "doc"]
    elif case == "uint64_id":
        argv[2] = str(root / "uint64.parquet")
        pq.write_table(pa.table({"id": pa.array(range(len(good["raw"])), pa.uint64()),
                                 "text": [d["text"] for d in good["raw"]]}), argv[2])
    elif case == "pretty_printed_json":
        pretty = root / "pretty.json"
        pretty.write_text(json.dumps(good["raw"][:10], indent=2))
        argv[2] = str(pretty)
    elif case.startswith("truncated_gzip"):
        whole = root / "whole.jsonl.gz"
        with gzip.open(whole, "wt", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(d) + "\n" for d in good["raw"]))
        cut = root / case / "cut.jsonl.gz"  # a download that stopped half way
        cut.parent.mkdir()
        cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
        argv[2] = str(cut)
        argv += ["--json-reader", "spark"] if case.endswith("spark_reader") else []
        message = f"cannot read file://{cut} {message}"
    elif case.startswith("xz_file"):  # Spark's reader would take its bytes as lines, every one malformed
        packed = root / case / "raw.jsonl.xz"
        packed.parent.mkdir()
        packed.write_bytes(lzma.compress(b"".join(json.dumps(d).encode() + b"\n" for d in good["raw"])))
        argv[2] = str(packed.parent)
        argv += ["--raw-format", "json"] if case.endswith("as_json") else []
    elif case == "directory_with_a_readme":  # as a downloaded dataset comes
        folder = root / case
        write_jsonl(folder / "part-1.jsonl", good["raw"][:5])
        write_jsonl(folder / "part-2.jsonl", good["raw"][5:10])
        (folder / "README.md").write_text("# A dataset card\n")
        argv[2] = str(folder)
        message += f" {folder}/*.jsonl"
    elif case == "colon_in_a_file_name":  # a timestamp in the name; the pyarrow reader opens it, Spark's cannot
        argv[2] = write_jsonl(root / case / "2026-11-30T00:00:00.jsonl", good["raw"][:10])
        argv += ["--json-reader", "spark"]
        message = f"cannot read file://{argv[2]}: {message}"
    elif case == "recursive_glob":  # '**' as Python's recursive glob reads it: a user expects every depth
        write_jsonl(root / case / "2026" / "a.jsonl", good["raw"][:5])
        write_jsonl(root / case / "2026" / "11" / "b.jsonl", good["raw"][5:10])
        write_jsonl(root / case / "c.jsonl", good["raw"][10:15])
        argv[2] = str(root / case / "**" / "*.jsonl")
    elif case == "loose_and_partitioned_files":  # Spark would silently leave out b.jsonl
        write_jsonl(root / case / "lang=en" / "a.jsonl", good["raw"][:5])
        write_jsonl(root / case / "b.jsonl", good["raw"][5:10])
        argv[2] = str(root / case)
    elif case in ("keys_differing_in_case", "repeated_key_spark_reader"):  # the pyarrow reader featurized
        # such records, then failed with a traceback at select; Spark's reader refuses them with its own words
        docs = [{"id": d["id"], "text": d["text"], "Text": "x", "meta": {"id": 1, "ID": 2}} for d in good["raw"][:10]]
        argv[2] = write_jsonl(root / f"{case}.jsonl", docs)
        if case == "repeated_key_spark_reader":
            argv += ["--json-reader", "spark"]
    elif case == "output_column_in_another_case":  # was a traceback at select (UNRESOLVED_COLUMN rank)
        argv[2] = write_jsonl(root / f"{case}.jsonl", [{**d, "Rank": i} for i, d in enumerate(good["raw"][:10])])
    elif case == "tar_archive":  # its name ends in .gz, as JSON lines compressed with gzip do
        packed = root / "raw.tar.gz"
        with tarfile.open(packed, "w:gz") as tar:
            tar.add(raw, arcname="raw.jsonl")
        argv[2] = str(packed)
    elif case.startswith("dangling_link"):  # a file moved away from under its link: Spark lists neither
        folder = root / ("dangling" if case == "dangling_link_in_raw_directory" else "dangling_glob")
        write_jsonl(folder / "a.jsonl", good["raw"][:10])
        (folder / "b.jsonl").symlink_to(root / "gone.jsonl")
        argv[2] = str(folder) if folder.name == "dangling" else str(folder / "*.jsonl")
        argv += ["--json-reader", "spark"] if case.endswith("spark_reader") else []
    elif case == "lz4_frame_file":
        argv[2] = str(root / case / "raw.jsonl.lz4")
        os.makedirs(root / case)
        with pa.CompressedOutputStream(argv[2], "lz4") as fh:
            fh.write(open(raw, "rb").read())
    elif case == "framed_snappy_target":  # the stream identifier, then a chunk
        argv[4] = str(root / "t.jsonl.snappy")
        (root / "t.jsonl.snappy").write_bytes(b"\xff\x06\x00\x00sNaPpY\x01\x0c\x00\x00" + bytes(12))
    elif case == "colon_beside_a_glob":  # Hadoop's glob lists the whole directory, this name too
        write_jsonl(root / case / "part-0.jsonl", good["raw"][:10])
        (root / case / "backup:2026").mkdir()
        argv[2] = str(root / case / "part-*.jsonl")
    elif case == "link_to_an_enclosing_directory":
        write_jsonl(root / "link_loop" / "sub" / "a.jsonl", good["raw"][:10])
        (root / "link_loop" / "sub" / "up").symlink_to(root / "link_loop")
        argv[2] = str(root / "link_loop")
    elif case == "jsonl_given_as_parquet":
        argv += ["--target-format", "parquet"]
        message = f"cannot read file:{good['target']}: {message}"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    message = message.format(root=root)
    assert len(err) == 1 and err[0].startswith("dsel: error:") and message in err[0], err



def test_a_file_dsel_may_not_read_is_told_as_such_by_either_reader():
    """Tests run as root, who reads every file: the two readers' errors for a file without read permission,
    as a user's run gives them (the pyarrow reader's task error, Spark's FAILED_READ_FILE), are mapped."""
    fast = ("org.apache.spark.api.python.PythonException: Traceback ...\nOSError: dsel cannot read "
            "file:///d/secret.jsonl: PermissionError: [Errno 13] Failed to open local file '/d/secret.jsonl'. "
            "Detail: [errno 13] Permission denied\n")
    spark_reader = ("[FAILED_READ_FILE.NO_HINT] Encountered error while reading file file:///d/secret.jsonl. "
                    "SQLSTATE: KD001\n\tat org.apache.spark...\nCaused by: java.io.FileNotFoundException: "
                    "/d/secret.jsonl (Permission denied)\n\tat java.base/java.io.FileInputStream.open0\n")
    for text in (fast, spark_reader):
        message = str(dsel.errors.user_error(Exception(text)))
        assert message.startswith("cannot read file:///d/secret.jsonl: permission denied (") and "chmod" in message
        assert "went away" not in message and "damaged" not in message
    damaged = str(dsel.errors.user_error(Exception(fast.replace("secret.jsonl", "a.jsonl.bz2").replace(
        "PermissionError: [Errno 13] Failed to open local file '/d/a.jsonl.bz2'. Detail: [errno 13] Permission denied",
        "IOException: unexpected end of stream"))))
    assert "damaged" in damaged and ".gz" not in damaged  # the gzip hint only for .gz files
    stale = str(dsel.errors.user_error(Exception(spark_reader.replace(
        "java.io.FileNotFoundException: /d/secret.jsonl (Permission denied)",
        "org.apache.hadoop.fs.ChecksumException: Checksum error: file:/d/secret.jsonl at 0 exp: 6021 got: -1378"))))
    assert "its Hadoop checksum file (.NAME.crc beside it) no longer matches it" in stale and "damaged" not in stale


def test_text_is_never_taken_for_a_compressed_file(tmp_path):
    # every local JSON-lines file's first bytes are checked: a tar header's "ustar" at byte 257 alone
    # would have refused a file whose first record says "gustar" there, and "PAR1" or "BZh9" opening a
    # line would have refused a file for one malformed line
    from dsel.read import _mislabelled, check_json_files

    start = '{"id": 1, "text": "'
    texts = {"gustar.jsonl": start + "x" * (256 - len(start)) + 'gustar mucho"}', "par1.jsonl": "PAR1 in a line",
             "bzh.jsonl": "BZh9 1AY&SY, a line"}
    for name, first in texts.items():
        (tmp_path / name).write_text(first + '\n{"id": 2, "text": "fine"}\n', encoding="utf-8")
    assert (tmp_path / "gustar.jsonl").read_bytes()[257:262] == b"ustar"
    check_json_files([str(tmp_path / name) for name in texts])  # no refusal
    packed = tmp_path / "raw.jsonl"
    with tarfile.open(packed, "w") as tar:
        tar.add(tmp_path / "gustar.jsonl", arcname="gustar.jsonl")
    assert "is a tar archive" in _mislabelled(str(packed), packed.read_bytes()[:4096], "raw")

def test_linked_subdirectories_brace_globs_and_hadoop_file_uris_read_every_file(spark, good, tmp_path):
    """A directory's linked subdirectory was left out unsaid (Spark's recursive listing follows the link,
    dsel's walk did not, so no recursive lookup was asked for); a {a,b} glob and Hadoop's file:/PATH
    (both of which Spark reads) were refused as "input not found"."""
    write_jsonl(tmp_path / "kept" / "a.jsonl", good["raw"][:30])
    write_jsonl(tmp_path / "kept" / "b.jsonl", good["raw"][30:50])
    write_jsonl(tmp_path / "day1" / "a.jsonl", good["raw"][50:60])
    write_jsonl(tmp_path / "elsewhere" / "c.jsonl", good["raw"][60:])
    (tmp_path / "day1" / "more").symlink_to(tmp_path / "elsewhere")
    summary = run(spark, raw=[f"file:{tmp_path}/{{kept/a,kept/b,day1}}*"], target=[good["target"]],
                  out=str(tmp_path / "out"), num_samples=5)
    assert summary.read == summary.scored == len(good["raw"])
    files = {r[0].rsplit("/", 2)[-2] for r in spark.read.format("delta").load(str(tmp_path / "out" / "weights"))
             .select("source_file").distinct().collect()}
    assert files == {"kept", "day1", "more"}
    # the same inputs spelt otherwise (file:///x for file:/x, file:/x for /x): nothing featurized or fit
    # again (the whole input was featurized and the fit made again, unsaid)
    again = run(spark, raw=[f"file://{tmp_path}/{{kept/a,kept/b,day1}}*"], target=[f"file:{good['target']}"],
                out=str(tmp_path / "out"), num_samples=5)
    assert (again.featurized, again.scored_now, again.refit) == (0, 0, None) and again.read == len(good["raw"])
    assert again.run_id == summary.run_id  # the same run: its row in OUT/runs replaced, not a second one


def test_output_holding_foreign_data_is_refused(spark, good, tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(DselError, match="did not write"):
        run(spark, raw=[write_jsonl(tmp_path / "r" / "raw.jsonl", good["raw"][:5])], target=[good["target"]],
            out=str(tmp_path), num_samples=2)


def test_ids_derived_from_content_when_there_is_no_id_column(spark, good, tmp_path):
    docs = [{"text": d["text"], "domain": d["domain"]} for d in good["raw"]]
    raw = write_jsonl(tmp_path / "noid.jsonl", docs)
    target = write_jsonl(tmp_path / "t.jsonl", [{"text": d["text"]} for d in sample_docs("sci_abstracts", 60, 3)[40:]])
    run(spark, raw=[raw], target=[target], out=str(tmp_path / "out"), num_samples=5)
    import hashlib

    weights = spark.read.format("delta").load(str(tmp_path / "out" / "weights"))
    expected = hashlib.sha256(docs[0]["text"].encode("utf-8")).hexdigest()
    assert weights.where(F.col("id") == expected).count() == 1
    selected = spark.read.format("delta").load(str(tmp_path / "out" / "selected"))
    assert selected.count() == 5 and "domain" in selected.columns


def test_binary_text_reads_with_the_setting_the_message_names(spark, good, tmp_path):
    path = str(tmp_path / "binary.parquet")
    pq.write_table(pa.table({"id": [d["id"] for d in good["raw"]],
                             "text": pa.array([d["text"].encode() for d in good["raw"]], pa.binary())}), path)
    spark.conf.set("spark.sql.parquet.binaryAsString", "true")
    try:
        summary = run(spark, raw=[path], target=[good["target"]], out=str(tmp_path / "out"), num_samples=10)
    finally:
        spark.conf.unset("spark.sql.parquet.binaryAsString")
    assert summary.scored == len(good["raw"]) and summary.selected == 10


def test_a_missing_table_names_the_command_that_writes_it(spark, good, tmp_path, capsys):
    out = tmp_path / "never-run"
    assert main(["report", "--out", str(out)]) == 2
    assert f"no selected table at {out / 'selected'}; run 'dsel select' (or 'dsel run')" in capsys.readouterr().err
    raw = write_jsonl(tmp_path / "raw" / "a.jsonl", good["raw"][:5])
    assert main(["select", "--raw", raw, "--out", str(out), "--num-samples", "3"]) == 2
    assert f"no weights table at {out / 'weights'}; run 'dsel score' (or 'dsel run')" in capsys.readouterr().err
