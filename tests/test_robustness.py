"""Faults tested for real: a failed task, a killed driver, hostile names, strict mode."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from pyspark.sql import functions as F

from dsel.cli import main
from dsel.config import DselConfig
from dsel.errors import DselError
from dsel.pipeline import execute
from dsel.runs import claim, holder, release
from tests.conftest import REPO, sample_docs, write_jsonl


@pytest.fixture(scope="module")
def small(tmp_path_factory, spark):
    """A small pool and target, and the selection a clean in-process run makes of them."""
    root = tmp_path_factory.mktemp("faults")
    raw = sample_docs("sci_abstracts", 60, seed=7) + sample_docs("email_ham", 60, seed=7)
    target = sample_docs("sci_abstracts", 90, seed=7)[60:]
    paths = {"raw": write_jsonl(root / "raw" / "a.jsonl", raw[::2]), "target": write_jsonl(root / "t.jsonl", target)}
    write_jsonl(root / "raw" / "b.jsonl", raw[1::2])
    paths["raw"] = str(root / "raw")
    cfg = DselConfig.from_mapping({"raw": [paths["raw"]], "target": [paths["target"]], "out": str(root / "clean"),
                                   "num_samples": 30, "seed": 9})
    execute(spark, cfg, "run")
    return {"root": root, **paths, "clean": _tables(spark, root / "clean")}


def _tables(spark, out):
    weights = sorted((r["id"], round(r["log_weight"], 9)) for r in
                     spark.read.format("delta").load(str(out / "weights")).collect())
    selected = [(r["id"], r["rank"]) for r in
                spark.read.format("delta").load(str(out / "selected")).orderBy("rank").collect()]
    return weights, selected


def _argv(small, out, *extra):
    return ["run", "--raw", small["raw"], "--target", small["target"], "--out", str(out), "--num-samples", "30",
            "--seed", "9", "--conf", "spark.ui.showConsoleProgress=false", "--conf", "spark.ui.enabled=false",
            "--conf", "spark.sql.shuffle.partitions=2", *extra]


def _spawn(argv, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "dsel.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)


def test_a_failed_task_then_a_killed_driver_then_a_rerun_give_complete_output_without_duplicates(spark, small):
    """A featurize task fails on its first attempt and is retried (Spark's local[2,3] allows it); the
    driver and its JVM are then killed right after featurize; the rerun resumes after that stage and
    leaves the clean run's tables. (One process for both faults: each costs a JVM and a run.)"""
    out = small["root"] / "killed"
    proc = _spawn(_argv(small, out, "--master", "local[2,3]"), {"DSEL_FAULT_INJECTION": "featurize"})
    seen = ""
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        if "[dsel] featurize done" in line or not line:
            break
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its JVM, mid-run
    proc.wait()
    assert "[dsel] featurize done" in seen, seen[-3000:]
    assert "dsel fault injection" in seen  # the first attempt really failed and was retried
    assert not (out / "selected").exists()
    crashed = spark.read.format("delta").load(str(out / "runs")).collect()
    assert [r["status"] for r in crashed] == ["running"]  # the dead run still holds the lock
    rerun = _spawn(_argv(small, out, "--master", "local[2]"))
    log = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, log[-3000:]
    assert "[dsel] featurize done" not in log  # resumed after the completed stage
    assert _tables(spark, out) == small["clean"]
    runs = spark.read.format("delta").load(str(out / "runs")).collect()
    assert len(runs) == 1 and runs[0]["status"] == "succeeded" and runs[0]["selected"] == 30
    assert runs[0]["run_id"] == crashed[0]["run_id"]


def test_two_processes_writing_one_output_at_once_one_fails_clearly(spark, small):
    out = small["root"] / "contended"
    procs = {seed: _spawn(_argv(small, out, "--master", "local[1]", "--seed", seed)) for seed in ("9", "10")}
    logs = {seed: p.communicate(timeout=600)[0] for seed, p in procs.items()}
    codes = {seed: p.returncode for seed, p in procs.items()}
    assert sorted(codes.values()) == [0, 2], logs
    winner = next(s for s, c in codes.items() if c == 0)
    loser_log = logs[next(s for s, c in codes.items() if c == 2)]
    assert "dsel: error: another dsel run" in loser_log and "--break-lock" in loser_log, loser_log[-2000:]
    if winner == "9":
        assert _tables(spark, out) == small["clean"]
    else:
        clean = small["root"] / "clean-10"
        execute(spark, DselConfig.from_mapping({"raw": [small["raw"]], "target": [small["target"]],
                                                "out": str(clean), "num_samples": 30, "seed": 10}), "run")
        assert _tables(spark, out) == _tables(spark, clean)
    runs = spark.read.format("delta").load(str(out / "runs")).collect()
    assert [r["status"] for r in runs] == ["succeeded"]


@pytest.mark.parametrize("flags, message", [
    (["--raw", "x`; DROP TABLE y; --", "--raw-format", "table"], "not a valid table name"),
    (["--raw", "main.default.t; DROP TABLE y"], "input not found"),
    (["--text-column", "text`; DROP TABLE y; --"], "text_column"),
    (["--run-id", "r1'; DROP TABLE runs; --"], "run_id"),
])
def test_hostile_names_fail_cleanly(spark, small, tmp_path, capsys, flags, message):
    argv = ["run", "--raw", small["raw"], "--target", small["target"], "--out", str(tmp_path / "o"),
            "--num-samples", "3"]
    for i in range(0, len(flags), 2):
        if flags[i] in argv:
            argv[argv.index(flags[i]) + 1] = flags[i + 1]
        else:
            argv += flags[i:i + 2]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_strict_mode_fails_on_skipped_records(spark, small, tmp_path, capsys):
    bad = tmp_path / "bad"
    write_jsonl(bad / "a.jsonl", sample_docs("sci_abstracts", 10, seed=8) + [{"id": "n", "text": None}])
    argv = ["run", "--raw", str(bad), "--target", small["target"], "--out", str(tmp_path / "o"),
            "--num-samples", "3", "--strict"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "null_text=1" in err and "skipped" in err
    # a skipped target record fails it too, naming the record
    target = tmp_path / "target.jsonl"
    target.write_bytes(open(small["target"], "rb").read() + b'{"id": "t-null", "text": null}\n')
    good = write_jsonl(tmp_path / "good" / "a.jsonl", sample_docs("sci_abstracts", 10, seed=8))
    argv = ["run", "--raw", good, "--target", str(target), "--out", str(tmp_path / "o2"), "--num-samples", "3",
            "--strict"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "target records were skipped" in err[0] and "null_text=1" in err[0], err
    assert "null_text in file://" in err[0] and "id 't-null'" in err[0]
    # so does a target text without a single token, as a raw one would
    target.write_bytes(open(small["target"], "rb").read() + b'{"id": "t-blank", "text": " \\n "}\n')
    assert main(argv[:6] + [str(tmp_path / "o3")] + argv[7:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "target records were skipped" in err[0] and "empty_text=1" in err[0], err


def test_a_live_process_holding_the_same_run_id_keeps_the_lock(spark, tmp_path):
    """The same command started twice gets the same default run id: the second used to take the lock
    from the first, still running, and both wrote the output. A live holder on this host keeps it; a
    dead one, or one on another host (a retry after a crash there), gives it back to the run id."""
    path = str(tmp_path / "lock")
    claim(spark, path, "r1", 24)
    dead = subprocess.Popen(["true"])
    dead.wait()
    for host, pid, taken in [(socket.gethostname(), 1, False), (socket.gethostname(), dead.pid, True),
                             ("elsewhere", 1, True)]:
        spark.sql(f"UPDATE delta.`{path}` SET host = '{host}', pid = {pid}")
        if taken:
            claim(spark, path, "r1", 24)
            assert holder(spark, path).pid == os.getpid()
        else:
            with pytest.raises(DselError, match=r"another dsel run, 'r1' \(pid 1 on "):
                claim(spark, path, "r1", 24)
    release(spark, path, "r1")
    assert holder(spark, path) is None


def test_the_lock_is_released_when_the_last_run_row_cannot_be_written(spark, small, tmp_path, monkeypatch):
    import dsel.pipeline

    out = tmp_path / "out"
    shutil.copytree(small["root"] / "clean", out)
    base = {"raw": [small["raw"]], "target": [small["target"]], "out": str(out), "num_samples": 30, "seed": 10}
    real = dsel.pipeline.record_run
    modes = []

    def failing(session, path, row):
        # the run rows are written by a clone of the session (its settings carried), projections interpreted
        modes.append((session is not spark, session.conf.get("spark.sql.codegen.factoryMode"),
                      session.conf.get("spark.dsel.test.carried", None)))
        if row["status"] == "succeeded":
            raise OSError("dsel-test: the run table cannot be written")
        return real(session, path, row)

    monkeypatch.setattr(dsel.pipeline, "record_run", failing)
    spark.conf.set("spark.dsel.test.carried", "yes")
    factory = spark.conf.get("spark.sql.codegen.factoryMode")  # the test session interprets (conftest)
    spark.conf.set("spark.sql.codegen.factoryMode", "FALLBACK")  # Spark's default: compiled
    try:
        with pytest.raises(OSError, match="dsel-test"):
            execute(spark, DselConfig.from_mapping({**base, "run_id": "first"}), "select")
        assert spark.conf.get("spark.sql.codegen.factoryMode") == "FALLBACK"  # the session itself compiles them
    finally:
        spark.conf.unset("spark.dsel.test.carried")
        spark.conf.set("spark.sql.codegen.factoryMode", factory)
    monkeypatch.undo()
    assert modes == [(True, "NO_CODEGEN", "yes")] * 2, modes
    # the lock is free: another run needs no --break-lock
    assert execute(spark, DselConfig.from_mapping({**base, "run_id": "second"}), "select").selected == 30


def test_pickle_is_never_used():
    for path in (REPO / "dsel").glob("*.py"):
        assert "pickle" not in path.read_text(), path


def test_a_relative_out_serves_every_command_and_a_changed_input_is_told(spark, small, tmp_path):
    # Delta's SQL (the lock's UPDATE, CONVERT TO DELTA) takes only absolute paths: a relative --out used to
    # fail its second command ("Unsupported data source type for direct query on files: delta")
    raw = write_jsonl(tmp_path / "raw" / "a.jsonl", sample_docs("sci_abstracts", 30, seed=8)
                      + sample_docs("email_ham", 30, seed=8))
    out = os.path.relpath(tmp_path / "out", os.getcwd())  # the driver's and the JVM's working directory
    assert not os.path.isabs(out)
    cfg = {"raw": [raw], "target": [small["target"]], "out": out, "num_samples": 12, "seed": 1}
    first = execute(spark, DselConfig.from_mapping({**cfg, "features_writer": "pyarrow"}), "run")
    again = execute(spark, DselConfig.from_mapping({**cfg, "seed": 2}), "select")
    assert first.selected == again.selected == 12 and not again.warnings
    # the raw file loses most of its records: a select from the stored weights says what it could not write
    lines = open(raw, encoding="utf-8").read().splitlines()
    with open(raw, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines[:8]) + "\n")
    short = execute(spark, DselConfig.from_mapping({**cfg, "seed": 3}), "select")
    assert short.selected < 12
    assert any(w.startswith(f"{12 - short.selected} of the 12 documents chosen from") for w in short.warnings)


def test_tables_whose_first_write_was_interrupted_are_written_anew(spark, small, tmp_path, capsys):
    # A run killed while it wrote a table for the first time leaves data files and a _delta_log with
    # no commit (Spark's Delta writer), or Parquet files and no log at all (the workers' writer, killed
    # between moving its files in place and converting them). The next run writes those tables anew.
    out = tmp_path / "out"
    shutil.copytree(small["root"] / "clean", out)
    for name in ("features", "weights", "skipped", "selected"):
        log = out / name / "_delta_log"
        shutil.rmtree(log)
        if name != "features":
            (log / "_staged_commits").mkdir(parents=True)
    assert list((out / "weights").glob("part-*.parquet"))
    cfg = {"raw": [small["raw"]], "target": [small["target"]], "num_samples": 30, "seed": 9}
    execute(spark, DselConfig.from_mapping({**cfg, "out": str(out), "features_writer": "pyarrow"}), "run")
    said = capsys.readouterr().out
    for name in ("features", "weights", "skipped", "selected"):
        assert f"{out / name} holds only the files of a first write that was stopped" in said, name
    assert f"{out / 'weights'} written by the workers" in said  # the leftovers made way for them
    assert _tables(spark, out) == small["clean"]
    # anything else in a table's directory is still refused
    shutil.rmtree(out / "skipped" / "_delta_log")
    (out / "skipped" / "notes.txt").write_text("mine")
    with pytest.raises(DselError, match="skipped exists but is not a Delta table"):
        execute(spark, DselConfig.from_mapping({**cfg, "out": str(out)}), "run")


def test_materialized_frames_are_persisted_where_executors_with_cached_blocks_can_be_removed(spark):
    """A local checkpoint's blocks cannot be recomputed; under dynamic allocation with a finite
    cachedExecutorIdleTimeout executors are removed with them, so there a frame is persisted instead
    (Spark recomputes lost blocks), computed at once either way and with the same rows."""
    from dsel.pipeline import checkpoint_is_safe, materialized

    def getter(conf):
        return lambda key, default: conf.get(key, default)

    assert checkpoint_is_safe(getter({}))
    assert checkpoint_is_safe(getter({"spark.dynamicAllocation.enabled": "true"}))  # Spark's timeout: infinity
    assert checkpoint_is_safe(getter({"spark.dynamicAllocation.enabled": "false",
                                      "spark.dynamicAllocation.cachedExecutorIdleTimeout": "60s"}))
    removable = {"spark.dynamicAllocation.enabled": "true", "spark.dynamicAllocation.cachedExecutorIdleTimeout": "60s"}
    assert not checkpoint_is_safe(getter(removable))
    df = spark.range(0, 1000, 1, 4).withColumn("square", F.col("id") * F.col("id"))
    local = materialized(df)  # the test session has no dynamic allocation
    assert not local.is_cached and "LogicalRDD" in local._jdf.queryExecution().analyzed().toString()
    persisted = materialized(df, getter(removable))
    assert persisted.is_cached and persisted.storageLevel.useDisk
    assert sorted(persisted.collect()) == sorted(local.collect()) == sorted(df.collect())
    persisted.unpersist()
