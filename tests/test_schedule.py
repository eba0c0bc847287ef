"""Scheduled runs: a growing Delta input scored incrementally, refits, run history, reproduction,
resuming, the output lock, and outputs of another kind or schema."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import threading

import pytest
from delta.tables import DeltaTable
from pyspark.sql import types as T

from dsel.config import DselConfig
from dsel.errors import ConfigError, DselError
from dsel.pipeline import execute
from dsel.runs import RUNS_SCHEMA, claim, holder, record_run, release
from tests.conftest import sample_docs

SCHEMA = T.StructType([T.StructField("id", T.StringType()), T.StructField("text", T.StringType()),
                       T.StructField("domain", T.StringType())])


def _rows(docs):
    return [(d["id"], d["text"], d["domain"]) for d in docs]


def _weights(spark, out, version=None):
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return sorted((r["id"], r["doc_hash"], r["num_words"], round(r["log_weight"], 9))
                  for r in reader.load(f"{out}/weights").collect())


def _selected(spark, out, version=None):
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return [(r["id"], r["rank"], r["text"], r["domain"]) for r in reader.load(f"{out}/selected").orderBy("rank").collect()]


def _run_row(spark, out, run_id):
    return spark.read.format("delta").load(f"{out}/runs").where(f"run_id = '{run_id}'").first()


@pytest.fixture(scope="module")
def growing(spark, tmp_path_factory):
    """A raw Delta table that grows by one batch (with a null-text record), and two scheduled runs on it."""
    root = tmp_path_factory.mktemp("schedule")
    day1 = sample_docs("sci_abstracts", 40, seed=11) + sample_docs("email_ham", 60, seed=11)
    day2 = sample_docs("sci_abstracts", 70, seed=12)[40:] + sample_docs("shakespeare", 20, seed=12)
    day2 = [d for d in day2 if d["id"] not in {x["id"] for x in day1}]
    target = sample_docs("sci_abstracts", 120, seed=13)[80:]
    raw, tgt = str(root / "raw"), str(root / "target")
    spark.createDataFrame(_rows(day1), SCHEMA).write.format("delta").save(raw)
    spark.createDataFrame(_rows(target), SCHEMA).write.format("delta").save(tgt)
    base = {"raw": [raw], "target": [tgt], "out": str(root / "out"), "num_samples": 25, "seed": 5,
            "min_length": 5}
    first = execute(spark, DselConfig.from_mapping({**base, "run_id": "day1"}), "run")
    after_first = _weights(spark, base["out"])
    batch = _rows(day2) + [("bad-1", None, "x")]
    spark.createDataFrame(batch, SCHEMA).write.format("delta").mode("append").save(raw)
    second = execute(spark, DselConfig.from_mapping({**base, "run_id": "day2", "refit": "never"}), "run")
    return {"root": root, "base": base, "day1": day1, "day2": day2, "first": first, "second": second,
            "after_first": after_first}


def test_a_growing_delta_input_is_featurized_and_scored_incrementally(spark, growing):
    first, second = growing["first"], growing["second"]
    assert first.read == first.featurized == len(growing["day1"])
    new = len(growing["day2"]) + 1
    assert second.featurized == new and second.read == len(growing["day1"]) + new
    assert second.scored_now == len(growing["day2"])  # the null-text record is quarantined, not scored
    assert second.refit is None and second.fit_version == first.fit_version
    after = dict((w[0], w) for w in _weights(spark, growing["base"]["out"]))
    assert all(after[w[0]] == w for w in growing["after_first"])  # earlier documents kept their weights
    # Nothing lost: every document read is scored or quarantined.
    assert second.read == second.scored + sum(second.skipped.values()) and second.skipped == {"null_text": 1}


def test_the_run_table_records_inputs_fit_counts_and_outputs(spark, growing):
    out = growing["base"]["out"]
    row = _run_row(spark, out, "day2")
    assert row["status"] == "succeeded" and row["command"] == "run"
    assert row["finished_at"] >= row["started_at"]
    inputs = json.loads(row["input_versions"])
    assert inputs["raw"]["version"] == 1 and inputs["targets"][0]["version"] == 0
    assert row["fit_version"] == growing["first"].fit_version and row["refit"] is False
    assert (row["read"], row["scored"], row["skipped"], row["selected"]) == (
        growing["second"].read, growing["second"].scored, 1, 25)
    versions = json.loads(row["table_versions"])
    assert f"{out}/selected" in versions and f"{out}/weights" in versions
    assert json.loads(row["params"])["refit"] == "never"
    first = _run_row(spark, out, "day1")
    assert json.loads(first["input_versions"])["raw"]["version"] == 0 and first["refit"] is True


def test_incremental_scores_equal_a_full_rescore_and_past_runs_reproduce(spark, growing):
    out, root = growing["base"]["out"], growing["root"]
    # Reproducing day2 featurizes and scores everything from scratch with day2's fit and inputs.
    again = DselConfig.from_mapping({"out": str(root / "again2")})
    summary = execute(spark, again, "reproduce", source_out=out, source_run="day2")
    assert _weights(spark, root / "again2") == _weights(spark, out)
    # the copied fit keeps what the fit read of the target, and the summary says it
    copied = DeltaTable.forPath(spark, str(root / "again2" / "log_ratios")).history(1).first()["userMetadata"]
    copied = json.loads(copied)
    assert copied["target_records"][0]["read"] > 0 and "\n  target read at fit " in summary.format()
    assert _selected(spark, root / "again2") == _selected(spark, out)
    # day1 read version 0 of the raw table, which has grown since: time travel gives its selection back.
    day1_selected = json.loads(_run_row(spark, out, "day1")["table_versions"])[f"{out}/selected"]
    execute(spark, DselConfig.from_mapping({"out": str(root / "again1")}), "reproduce", source_out=out,
            source_run="day1")
    assert _selected(spark, root / "again1") == _selected(spark, out, day1_selected)
    with pytest.raises(DselError, match="has no run 'nope'"):
        execute(spark, DselConfig.from_mapping({"out": str(root / "again3")}), "reproduce", source_out=out,
                source_run="nope")


def test_a_rerun_resumes_and_a_grown_input_is_refit(spark, growing):
    base, root = growing["base"], growing["root"]
    cfg = DselConfig.from_mapping({**base, "run_id": "day2", "refit": "never"})
    before = _selected(spark, base["out"])
    rerun = execute(spark, cfg, "run")
    assert (rerun.featurized, rerun.scored_now, rerun.refit) == (0, 0, None)  # resumed: nothing redone
    assert _selected(spark, base["out"]) == before
    assert spark.read.format("delta").load(f"{base['out']}/runs").where("run_id = 'day2'").count() == 1
    # With refit=auto, the raw input grew by far more than 10% since the fit: fit and rescore everything.
    refit = execute(spark, DselConfig.from_mapping({**base, "run_id": "day2-auto"}), "run")
    assert refit.refit and "refit_growth" in refit.refit and refit.fit_version > growing["first"].fit_version
    assert refit.featurized == 0 and refit.scored_now == refit.scored
    fresh = execute(spark, DselConfig.from_mapping({**base, "out": str(root / "fresh")}), "run")
    assert _weights(spark, root / "fresh") == _weights(spark, base["out"])
    assert fresh.refit == "no fit yet"


def test_two_runs_claiming_one_output_at_once_one_wins(spark, tmp_path):
    lock = str(tmp_path / "lock")
    claim(spark, lock, "warmup", 24.0)
    release(spark, lock, "warmup")
    results: dict[str, object] = {}

    def attempt(run_id):
        try:
            claim(spark, lock, run_id, 24.0)
            results[run_id] = "won"
        except DselError as exc:
            results[run_id] = str(exc)

    threads = [threading.Thread(target=attempt, args=(f"run-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r, v in results.items() if v == "won"]
    assert len(winners) == 1, results
    loser = next(v for v in results.values() if v != "won")
    assert "another dsel run" in loser and winners[0] in loser
    assert holder(spark, lock).run_id == winners[0]


def test_an_emptied_lock_table_is_claimed_by_inserting_the_row(spark, tmp_path):
    lock = str(tmp_path / "lock")
    claim(spark, lock, "first", 24.0)
    spark.sql(f"DELETE FROM delta.`{lock}`")  # no row left for the UPDATE to take
    claim(spark, lock, "second", 24.0)
    assert holder(spark, lock).run_id == "second" and spark.read.format("delta").load(lock).count() == 1
    with pytest.raises(DselError, match="another dsel run, 'second'"):
        claim(spark, lock, "third", 24.0)
    release(spark, lock, "second")


def test_run_rows_replace_their_partition_and_old_unpartitioned_tables_still_work(spark, tmp_path):
    from delta.tables import DeltaTable

    def row(run_id, status):
        return {"run_id": run_id, "command": "run", "status": status, "pid": 1}

    def statuses(path):
        return sorted((r["run_id"], r["status"]) for r in spark.read.format("delta").load(path).collect())

    new = str(tmp_path / "runs")
    for run_id in ("a", "it's"):  # a quote in the run id, as the replaceWhere predicate quotes it
        record_run(spark, new, row(run_id, "running"))
        record_run(spark, new, row(run_id, "succeeded"))
    assert statuses(new) == [("a", "succeeded"), ("it's", "succeeded")]
    assert DeltaTable.forPath(spark, new).detail().first()["partitionColumns"] == ["run_id"]
    assert spark.read.format("delta").load(new).columns == RUNS_SCHEMA.names
    old = str(tmp_path / "old-runs")  # as dsel wrote it before the table was partitioned
    spark.createDataFrame([tuple(row("a", "succeeded").get(f.name) for f in RUNS_SCHEMA.fields)], RUNS_SCHEMA) \
        .write.format("delta").save(old)
    record_run(spark, old, row("b", "running"))
    record_run(spark, old, row("b", "failed"))
    record_run(spark, old, row("a", "failed"))
    assert statuses(old) == [("a", "failed"), ("b", "failed")]


def test_a_held_lock_refuses_a_second_run_and_a_dead_holder_is_taken_over(spark, growing, tmp_path):
    base = {**growing["base"], "out": str(tmp_path / "out")}
    lock = f"{base['out']}/lock"
    claim(spark, lock, "someone-else", 24.0)  # alive: held by this very process
    with pytest.raises(DselError, match="another dsel run, 'someone-else'.*--break-lock"):
        execute(spark, DselConfig.from_mapping({**base, "run_id": "mine"}), "run")
    assert not os.path.exists(f"{base['out']}/weights")
    release(spark, lock, "someone-else")
    dead = subprocess.Popen(["true"])
    dead.wait()
    spark.sql(f"UPDATE delta.`{lock}` SET run_id = 'crashed', host = '{os.uname().nodename}', pid = {dead.pid}, "
              "claimed_at = current_timestamp()")
    record_run(spark, f"{base['out']}/runs", {"run_id": "crashed", "command": "run", "status": "running",
                                              "started_at": dt.datetime(2026, 11, 30, 1, 0)})  # killed mid-run
    summary = execute(spark, DselConfig.from_mapping({**base, "run_id": "mine"}), "run")
    assert summary.selected == 25 and holder(spark, lock) is None
    crashed = _run_row(spark, base["out"], "crashed")  # not 'running' forever
    assert crashed["status"] == "failed" and crashed["started_at"] == dt.datetime(2026, 11, 30, 1, 0)
    assert crashed["error"] == "interrupted: its lock was taken over, its process gone, by run 'mine'"
    assert _run_row(spark, base["out"], "mine")["status"] == "succeeded"


def test_outputs_of_another_kind_or_schema_are_refused(spark, growing, tmp_path):
    base = growing["base"]
    foreign = tmp_path / "foreign"
    spark.createDataFrame([("a", 1)], "id string, n int").write.format("delta").save(str(foreign / "weights"))
    with pytest.raises(DselError, match="dsel did not write"):
        execute(spark, DselConfig.from_mapping({**base, "out": str(foreign)}), "run")
    spark.range(3).write.parquet(str(tmp_path / "plain" / "features"))
    with pytest.raises(DselError, match="not a Delta table"):
        execute(spark, DselConfig.from_mapping({**base, "out": str(tmp_path / "plain")}), "run")
    # A dsel table of an older layout: other columns.
    old = tmp_path / "old"
    execute(spark, DselConfig.from_mapping({**base, "out": str(old)}), "run")
    meta = json.dumps({"dsel_version": "0.0.1"})
    (spark.createDataFrame([("a", 1.0)], "id string, weight double").write.format("delta").mode("overwrite")
     .option("overwriteSchema", "true").option("userMetadata", meta).save(str(old / "weights")))
    with pytest.raises(DselError, match="other columns"):
        execute(spark, DselConfig.from_mapping({**base, "out": str(old), "refit": "always"}), "run")


def test_a_raw_commit_that_changes_no_record_featurizes_nothing(spark, growing, capsys):
    """An OPTIMIZE of the raw table (or any commit that changes no record) is a new version with the
    same records: the append of the new ones makes no commit, and its rows were taken from the commit
    before it, so every record looked gone and the whole input was featurized again."""
    base = growing["base"]
    before = _weights(spark, base["out"])
    spark.sql(f"OPTIMIZE delta.`{base['raw'][0]}`")
    capsys.readouterr()
    third = execute(spark, DselConfig.from_mapping({**base, "run_id": "day3", "refit": "never"}), "run")
    assert "no longer in the raw input" not in capsys.readouterr().out
    assert third.featurized == 0 and third.read == growing["second"].read
    assert _weights(spark, base["out"]) == before


def test_pinned_versions_read_the_input_as_it_was_and_name_only_inputs(spark, growing, tmp_path):
    """A pin names its input as --raw gives it, give or take a trailing '/' or a file: scheme (such a
    key used to match nothing, and the latest version was read without a word); one that names no
    input is refused."""
    base = growing["base"]
    raw = base["raw"][0]
    pinned = DselConfig.from_mapping({**base, "out": str(tmp_path / "out"), "pin_versions": {f"file:{raw}/": 0}})
    summary = execute(spark, pinned, "run")
    assert summary.read == len(growing["day1"]) and summary.inputs["raw"]["version"] == 0
    with pytest.raises(ConfigError, match=f"names {raw}-old, which is no --raw or --target input"):
        DselConfig.from_mapping({**base, "pin_versions": {f"{raw}-old": 0}})
