"""The end-to-end contract: `dsel run` on JSON lines writes the four Delta tables, deterministically."""
from __future__ import annotations

import datetime as dt
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from delta.tables import DeltaTable
from pyspark.sql import functions as F

import dsel.select
import dsel.write
from dsel.cli import main
from dsel.config import DselConfig
from dsel.errors import DselError
from dsel.evaluate import histogram, kl, kl_summary
from dsel.fit import Fit
from dsel.pipeline import execute
from dsel.read import prepare
from tests.conftest import sample_docs, write_jsonl

DOMAINS = ["sci_abstracts", "movie_reviews", "rust_rfcs", "shakespeare"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A raw pool of four domains (60 docs each) and 40 held-out sci_abstracts docs as the target."""
    root = tmp_path_factory.mktemp("corpus")
    raw, target = [], []
    for domain in DOMAINS:
        docs = sample_docs(domain, 100 if domain == "sci_abstracts" else 60, seed=1)
        if domain == "sci_abstracts":
            target, docs = docs[:40], docs[40:]
        raw += docs
    raw.sort(key=lambda d: d["id"])
    # The raw pool in three files, so partitioning differs from the single-file copy below.
    parts = [write_jsonl(root / "raw" / f"part-{i}.jsonl", raw[i::3]) for i in range(3)]
    single = write_jsonl(root / "raw_single.jsonl", raw[::-1])
    return {"root": root, "raw_dir": str(root / "raw"), "raw_parts": parts, "raw_single": single,
            "target": write_jsonl(root / "target.jsonl", target), "raw_docs": raw}


@pytest.fixture(scope="module")
def contract_run(spark, corpus):
    out = corpus["root"] / "out"
    argv = ["run", "--raw", corpus["raw_dir"], "--target", corpus["target"], "--out", str(out),
            "--num-samples", "50", "--seed", "3"]
    assert main(argv) == 0
    return out, argv


def delta(spark, path):
    assert DeltaTable.isDeltaTable(spark, str(path)), f"{path} is not a Delta table"
    return spark.read.format("delta").load(str(path))


def test_contract_tables_and_columns(spark, corpus, contract_run, capsys):
    out, _ = contract_run
    ratios = delta(spark, out / "log_ratios")
    assert {"bucket", "raw_count", "target_count", "log_ratio"} <= set(ratios.columns)
    assert ratios.count() == 10_000
    weights = delta(spark, out / "weights")
    assert {"id", "log_weight", "num_words"} <= set(weights.columns)
    assert weights.count() == len(corpus["raw_docs"])
    assert weights.select("id").distinct().count() == weights.count()
    selected = delta(spark, out / "selected")
    assert {"id", "text", "domain", "log_weight", "rank"} <= set(selected.columns)
    assert selected.count() == 50
    assert sorted(r["rank"] for r in selected.select("rank").collect()) == list(range(1, 51))
    # the selected log weights are the stored ones
    joined = selected.join(weights.select("id", F.col("log_weight").alias("w")), "id")
    assert joined.where(F.abs(F.col("w") - F.col("log_weight")) > 1e-12).count() == 0
    runs = delta(spark, out / "runs").collect()
    assert len(runs) == 1 and json.loads(runs[0]["counts"])["selected"] == 50
    # the commit carries the run's parameters
    meta = json.loads(DeltaTable.forPath(spark, str(out / "selected")).history(1).first()["userMetadata"])
    assert meta["params"]["num_samples"] == 50 and meta["params"]["seed"] == 3
    # OUT/features and OUT/weights, read only whole or joined on ids, are written without per-file
    # column statistics; the small tables keep them
    for name, indexed in (("features", "0"), ("weights", "0"), ("selected", None), ("skipped", None)):
        detail = DeltaTable.forPath(spark, str(out / name)).detail().first()
        assert detail["properties"].get("delta.dataSkippingNumIndexedCols") == indexed, name
    # each weights file in descending log_weight, for the top-k's page skipping (tests/test_select.py)
    for f in DeltaTable.forPath(spark, str(out / "weights")).toDF().inputFiles():
        stored = pq.read_table(f.removeprefix("file:"), columns=["log_weight"]).column(0).to_pylist()
        assert stored == sorted(stored, reverse=True) and len(stored) > 1, f
    # the encoded features (incompressible varints) are stored without a codec; the other tables keep Spark's
    for name, codec in (("features", "UNCOMPRESSED"), ("weights", "SNAPPY")):
        files = list((out / name).glob("*.parquet"))
        assert files, name
        for f in files:
            chunk = pq.ParquetFile(f).metadata.row_group(0)
            assert {chunk.column(i).compression for i in range(chunk.num_columns)} == {codec}, (name, f)


def test_selection_prefers_the_target_domain(spark, contract_run):
    out, _ = contract_run
    selected = delta(spark, out / "selected")
    hits = selected.where(F.col("domain") == "sci_abstracts").count()
    assert hits >= 40, f"only {hits}/50 selected documents are from the target domain"


def test_rerun_replaces_rows_and_keeps_one_run_row(spark, corpus, contract_run):
    out, argv = contract_run
    before = delta(spark, out / "selected").orderBy("rank").collect()
    assert main(argv) == 0
    after = delta(spark, out / "selected").orderBy("rank").collect()
    assert [r["id"] for r in after] == [r["id"] for r in before]
    assert delta(spark, out / "runs").count() == 1


def test_rows_made_on_the_driver_are_createdataframes_rows_without_a_python_worker(spark):
    """The run row, the lock, the dropped duplicates and the evaluation results are made on the driver
    and sent as Arrow: the same rows and instants as ``createDataFrame`` of Python rows, under a session
    time zone other than the process's, and no Python worker pool of their own (no PythonRDD)."""
    when = dt.datetime(2026, 7, 1, 12, 30, 45)
    schema = ("name string, at timestamp, words array<string>, score double, ok boolean, n long, "
              "nested struct<k: string, v: array<long>>")
    rows = [("a", when, ["x", "y"], 0.5, True, 2 ** 40, ("k", [1, None])), (None,) * 7]
    zone = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "Asia/Kathmandu" if zone != "Asia/Kathmandu" else "UTC")
    try:
        ours, theirs = dsel.write.driver_rows(spark, rows, schema), spark.createDataFrame(rows, schema)
        assert_df_equality(ours.withColumn("u", F.unix_timestamp("at")), theirs.withColumn("u", F.unix_timestamp("at")))
        assert ours.collect()[0]["at"] == when
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)
    assert "PythonRDD" in theirs._jdf.rdd().toDebugString()
    assert "PythonRDD" not in ours._jdf.rdd().toDebugString()
    empty = dsel.write.driver_rows(spark, [], "id string, n long")
    assert empty.count() == 0 and empty.columns == ["id", "n"]


def _selected_ids(spark, out):
    return [r["id"] for r in delta(spark, out / "selected").orderBy("target", "rank").select("id").collect()]


def test_same_seed_same_selection_across_partitionings(spark, corpus, contract_run, tmp_path):
    out, _ = contract_run
    expected = _selected_ids(spark, out)
    cfg = DselConfig.from_mapping({"raw": [corpus["raw_single"]], "target": [corpus["target"]],
                                   "out": str(tmp_path / "single"), "num_samples": 50, "seed": 3})
    previous = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "7")
    try:
        execute(spark, cfg, "run")
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", previous)
    assert _selected_ids(spark, tmp_path / "single") == expected
    assert_df_equality(delta(spark, tmp_path / "single" / "weights").select("id", "log_weight", "num_words"),
                       delta(spark, out / "weights").select("id", "log_weight", "num_words"),
                       ignore_row_order=True)


def test_reselect_reuses_weights_and_changes_with_seed(spark, corpus, contract_run, monkeypatch):
    out, _ = contract_run
    weights_version = DeltaTable.forPath(spark, str(out / "weights")).history(1).first()["version"]
    first = _selected_ids(spark, out)
    cfg = DselConfig.from_mapping({"raw": [corpus["raw_dir"]], "target": [corpus["target"]], "out": str(out),
                                   "num_samples": 20, "seed": 11})
    weights = delta(spark, out / "weights")

    def no_pass(*args):
        raise AssertionError("counted the eligible documents again")

    # The run's selection recorded the eligibility counts of these weights and filters: re-selecting
    # with the same filters reuses them (no pass over the weights), and they are right.
    with monkeypatch.context() as patch:
        patch.setattr(dsel.select, "filter_counts", no_pass)
        summary = execute(spark, cfg, "select")
        with pytest.raises(AssertionError, match="again"):  # other filters: counted again
            execute(spark, cfg.replace(min_length=50), "select")
    assert summary.eligible == weights.where("num_words >= 100").count()
    assert summary.filtered == {"min_length": weights.where("num_words < 100").count()}
    assert summary.selected == 20
    assert DeltaTable.forPath(spark, str(out / "weights")).history(1).first()["version"] == weights_version
    second = _selected_ids(spark, out)
    assert len(second) == 20 and second != first[:20]
    # top-k is the deterministic prefix of the weight order
    execute(spark, cfg.replace(method="topk"), "select")
    weights = delta(spark, out / "weights").where("num_words >= 100")
    expected = [r["id"] for r in weights.orderBy(F.desc("log_weight"), "id").limit(20).collect()]
    assert _selected_ids(spark, out) == expected
    assert delta(spark, out / "runs").count() == 4  # the run, two selects and the failed one


def test_prefetched_commits_are_the_ones_read_one_by_one(spark, contract_run, monkeypatch, tmp_path):
    out, _ = contract_run
    tables = [str(out / name) for name in ("weights", "log_ratios", "selected")]
    expected = {path: dsel.write.last_commit(spark, path) for path in tables}
    with dsel.write.remembering_commits():
        dsel.write.prefetch_commits(spark, [*tables, str(tmp_path / "missing")])
        with monkeypatch.context() as patch:  # read once, all at once: no more reads of these logs
            patch.setattr(dsel.write, "_history_row", lambda *a: pytest.fail("read a prefetched log again"))
            assert {path: dsel.write.last_commit(spark, path) for path in tables} == expected
            assert dsel.write.commit_metadata(spark, tables[0])["command"] == "run"
            with ThreadPoolExecutor(1) as pool:  # another thread, with this thread's remembered commits
                remembered = pool.submit(dsel.write.remembering(dsel.write.last_commit), spark, tables[1])
                assert remembered.result() == expected[tables[1]]
        # a path that is no Delta table is left out, so reading it fails as it would have
        with pytest.raises(Exception, match="not a Delta table"):
            dsel.write.last_commit(spark, str(tmp_path / "missing"))
    # load_state reads a table's files and leaves it as it was; a missing path is no table to load
    dsel.write.load_state(spark, tables[2])
    dsel.write.load_state(spark, str(tmp_path / "missing"))
    assert dsel.write.last_commit(spark, tables[2]) == expected[tables[2]]


def test_select_with_other_fit_settings_fails_before_writing(spark, corpus, contract_run):
    # The fit is checked against the run's settings beside the selection (it is needed only to measure
    # it), and before anything is written.
    out, _ = contract_run
    before = DeltaTable.forPath(spark, str(out / "selected")).history(1).first()["version"]
    cfg = DselConfig.from_mapping({"raw": [corpus["raw_dir"]], "target": [corpus["target"]], "out": str(out),
                                   "num_samples": 10, "seed": 4, "num_buckets": 5000})
    with pytest.raises(DselError, match="fit with num_buckets=10000 but this run has num_buckets=5000"):
        execute(spark, cfg, "select")
    assert DeltaTable.forPath(spark, str(out / "selected")).history(1).first()["version"] == before


def test_token_budget(spark, corpus, contract_run):
    out, _ = contract_run
    cfg = DselConfig.from_mapping({"raw": [corpus["raw_dir"]], "target": [corpus["target"]], "out": str(out),
                                   "num_tokens": 5000, "seed": 3})
    summary = execute(spark, cfg, "select")
    rows = delta(spark, out / "selected").orderBy("rank").collect()
    words = [r["num_words"] for r in rows]
    assert sum(words) >= 5000 and sum(words[:-1]) < 5000
    assert summary.selected_words == sum(words)


def test_several_targets_get_quotas(spark, corpus, tmp_path):
    # the second target keeps its text under another name: one --target-text-column per target
    movies = write_jsonl(tmp_path / "movies.jsonl", [{"review": d["text"]} for d in
                                                     sample_docs("movie_reviews", 300, seed=1)[200:230]])
    cfg = DselConfig.from_mapping({"raw": [corpus["raw_dir"]], "target": [corpus["target"], movies],
                                   "out": str(tmp_path / "out"), "num_samples": 40, "seed": 5,
                                   "target_proportions": [1.0, 1.0], "target_text_column": ["text", "review"]})
    summary = execute(spark, cfg, "run")
    selected = delta(spark, tmp_path / "out" / "selected")
    by_target = {r["target"]: r["count"] for r in selected.groupBy("target").count().collect()}
    assert by_target == {corpus["target"]: 20, movies: 20}
    assert selected.select("id").distinct().count() == 40
    mix = {r["target"]: r["domain"] for r in selected.groupBy("target", "domain").count()
           .orderBy(F.desc("count")).collect()[::-1]}
    assert mix[corpus["target"]] == "sci_abstracts" and mix[movies] == "movie_reviews"
    weights = delta(spark, tmp_path / "out" / "weights").first()
    assert len(weights["log_weights"]) == 2
    assert summary.selected == 40
    # KL reduction: the headline compares each target with the whole selection (the paper's measure);
    # each target is also measured against the 20 documents chosen for it, which are closer to it.
    fitted = Fit.from_frame(delta(spark, tmp_path / "out" / "log_ratios"), cfg.fit_params())
    whole = histogram(prepare(selected, cfg), cfg)
    names = list(fitted.target_names)
    assert names == [corpus["target"], movies] and list(summary.kl_own) == names
    headline = kl_summary(fitted.target_counts, fitted.raw_counts, whole, names)
    assert summary.kl_reduction == pytest.approx(headline["kl_reduction"], abs=1e-12)
    for i, name in enumerate(names):
        own = histogram(prepare(selected.where(F.col("target") == name), cfg), cfg)
        t = fitted.target_counts[i]
        assert summary.kl_own[name] == pytest.approx(kl(t, fitted.raw_counts) - kl(t, own), abs=1e-12)
        assert summary.kl_own[name] > headline["per_target"][name]["kl_reduction"]
    run = delta(spark, tmp_path / "out" / "runs").first()
    assert json.loads(run["counts"])["kl_reduction_own"] == pytest.approx(summary.kl_own)
    # each target's records, counted in the pass that counted its n-grams, are in the summary and the run table
    target_docs = sum(1 for _ in open(corpus["target"], encoding="utf-8"))
    assert json.loads(run["counts"])["targets"] == {corpus["target"]: {"read": target_docs, "skipped": {}},
                                                    movies: {"read": 30, "skipped": {}}}
    assert f"  target read        {target_docs + 30:>12,}\n" in summary.format()
    assert f"    {movies:<16} {30:>12,}\n" in summary.format()


def test_targets_with_their_own_text_column_and_no_ids(spark, corpus, contract_run, tmp_path):
    # A lake's raw table (doc_id, body) and a hand-made target file (content only): the target needs
    # neither the raw's id column nor its text column's name, and the fit and weights are the contract
    # run's (the same texts under the default column names)
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"doc_id": d["id"], "body": d["text"]} for d in corpus["raw_docs"]])
    own = write_jsonl(tmp_path / "own.jsonl", [{"content": json.loads(line)["text"]}
                                               for line in open(corpus["target"], encoding="utf-8")])
    base = {"raw": [raw], "target": [own], "num_samples": 50, "seed": 3, "text_column": "body", "id_column": "doc_id"}
    execute(spark, DselConfig.from_mapping({**base, "target_text_column": "content", "out": str(tmp_path / "o")}),
            "run")
    contract, _ = contract_run
    for table, columns in (("log_ratios", ["target", "bucket", "raw_count", "target_count", "log_ratio", "ngrams"]),
                           ("weights", ["id", "doc_hash", "num_words", "log_weight", "log_weights"])):
        got = delta(spark, tmp_path / "o" / table).select(*columns).orderBy(*columns[:2]).collect()
        want = (spark.read.format("delta").option("versionAsOf", 0).load(str(contract / table))
                .select(*columns).orderBy(*columns[:2]).collect())
        assert got == want, table
    selected = delta(spark, tmp_path / "o" / "selected")
    assert selected.count() == 50 and selected.where("doc_id is null or body is null").count() == 0
    # the text and the id inside a struct column, as lake exports nest them: the same weights and selection
    # (and names a Delta table takes only under column mapping, a space, a comma; a backtick, which
    # a column reference must double)
    nested = write_jsonl(tmp_path / "nested.jsonl",
                         [{"doc": {"meta": {"id": d["id"], "first seen": i}, "body": d["text"]},
                           "source url": f"https://example.org/{i}", "a,b": 1, "x`y": 2}
                          for i, d in enumerate(corpus["raw_docs"])])
    execute(spark, DselConfig.from_mapping({**base, "raw": [nested], "text_column": "doc.body",
                                            "id_column": "doc.meta.id", "target_text_column": "content",
                                            "out": str(tmp_path / "nested")}), "run")
    columns = ["id", "doc_hash", "num_words", "log_weight", "log_weights"]
    assert (delta(spark, tmp_path / "nested" / "weights").select(*columns).orderBy("id").collect()
            == delta(spark, tmp_path / "o" / "weights").select(*columns).orderBy("id").collect())
    chosen = delta(spark, tmp_path / "nested" / "selected").orderBy("rank")
    assert [(r["doc"]["meta"]["id"], r["doc"]["body"]) for r in chosen.collect()] == \
        [(r["doc_id"], r["body"]) for r in selected.orderBy("rank").collect()]
    assert all(r["source url"] == f"https://example.org/{r['doc']['meta']['first seen']}" and r["x`y"] == 2
               for r in chosen.collect())
    # a target without the text column names the option that fixes it
    with pytest.raises(DselError, match=r"target input has no column 'body'; its columns are content\. "
                                        r"Pass --target-text-column NAME"):
        execute(spark, DselConfig.from_mapping({**base, "out": str(tmp_path / "missing")}), "run")


def test_column_names_that_need_column_mapping_are_written(spark, tmp_path):
    # OUT/selected written by an earlier run without such names gains column mapping in a commit that
    # keeps the table's metadata; Delta refused the write with DELTA_INVALID_CHARACTERS_IN_COLUMN_NAMES
    path, meta = str(tmp_path / "selected"), {"dsel_version": "test", "command": "select"}
    dsel.write.write_table(spark.createDataFrame([("a", "x")], "id string, text string"), path, meta)
    odd = spark.createDataFrame([("a", "x", "u", (1,))], "id string, text string, `source url` string, "
                                                        "meta struct<`x y`: int>")
    assert dsel.write.names_to_map(odd.schema) == ["source url", "meta.x y"]
    written = dsel.write.write_table(odd, path, {**meta, "command": "run"})
    assert written.version == 2 and delta(spark, path).collect() == odd.collect()
    history = DeltaTable.forPath(spark, path).history().orderBy("version").collect()
    assert [h["operation"] for h in history] == ["WRITE", "SET TBLPROPERTIES", "WRITE"]
    assert json.loads(history[1]["userMetadata"])["command"] == "select"  # the ALTER repeats the last metadata


def test_exported_json_lines_keep_timestamps_to_the_microsecond(spark, tmp_path):
    """Spark's JSON writer cuts timestamps to milliseconds unless told a format: an exported value changed
    unsaid (OUT/selected and the Parquet export kept it)."""
    from dsel.write import export

    df = spark.sql("select 'a' as id, timestamp'2026-03-29 01:30:00.123456' as ts, "
                   "timestamp_ntz'1900-01-01 00:00:00.000001' as ntz")
    export(df, str(tmp_path / "x"), "jsonl")
    line = json.loads("".join(p.read_text() for p in (tmp_path / "x").glob("part-*")))
    assert line["ts"].startswith("2026-03-29T01:30:00.123456") and line["ntz"] == "1900-01-01T00:00:00.000001"


def test_export_jsonl_and_parquet(spark, corpus, contract_run, tmp_path):
    out, _ = contract_run
    for fmt in ("jsonl", "parquet"):
        cfg = DselConfig.from_mapping({"raw": [corpus["raw_dir"]], "target": [corpus["target"]], "out": str(out),
                                       "num_samples": 10, "seed": 3, "export": str(tmp_path / fmt),
                                       "export_format": fmt})
        execute(spark, cfg, "select")
        reader = spark.read.json if fmt == "jsonl" else spark.read.parquet
        exported = reader(str(tmp_path / fmt))
        assert exported.count() == 10 and {"id", "text", "domain", "log_weight", "rank"} <= set(exported.columns)
    (tmp_path / "notes.txt").write_text("keep")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.json").write_text("{}")
    refused = {str(out): "would overwrite dsel's tables", str(out.parent): "would overwrite dsel's tables",
               corpus["raw_dir"]: "overlaps the raw input", str(tmp_path / "notes.txt"): "is a file",
               str(tmp_path / "mine"): "already holds keep.json"}
    for path, message in refused.items():  # an overwrite would have deleted each of these
        cfg = DselConfig.from_mapping({"raw": [corpus["raw_dir"]], "target": [corpus["target"]], "out": str(out),
                                       "num_samples": 10, "seed": 3, "export": path})
        with pytest.raises(DselError, match=message):
            execute(spark, cfg, "select")
    assert (tmp_path / "notes.txt").read_text() == "keep" and (tmp_path / "mine" / "keep.json").exists()
    assert delta(spark, out / "selected").count() == 10 and len(os.listdir(corpus["raw_dir"])) > 0
    cfg = DselConfig.from_mapping({"raw": [corpus["raw_dir"]], "target": [corpus["target"]], "out": str(out),
                                   "num_samples": 7, "seed": 3, "export": str(tmp_path / "jsonl")})
    execute(spark, cfg, "select")  # an earlier export is replaced
    assert spark.read.json(str(tmp_path / "jsonl")).count() == 7
