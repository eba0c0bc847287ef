"""`dsel run` submitted to a real Spark standalone cluster gives the same tables as local mode.

The cluster is the one ``deploy/standalone/start-cluster.sh`` starts: a master and two workers on
127.0.0.1, each its own JVM; the job goes in with ``spark-submit --deploy-mode client jobs/run.py``,
a separate process with its own driver JVM, so nothing is shared with the test session's JVM.

Executors run Python from this interpreter (``spark.pyspark.python=sys.executable``) with the repo on
``PYTHONPATH`` (``spark.executorEnv.PYTHONPATH``) rather than from a venv-pack archive: the cluster
runs on this machine, and packing an environment that holds pyspark, numba and pyarrow would add a
minute or more to every test run for no extra coverage of dsel itself (``deploy/package.sh`` and
``deploy/README.md`` show the packed-environment way for real clusters).
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyspark
import pytest

from dsel.config import DselConfig
from dsel.pipeline import execute
from tests.conftest import REPO, sample_docs, write_jsonl

pytestmark = pytest.mark.cluster

DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"
SPARK_HOME = Path(pyspark.__file__).resolve().parent
SCRIPTS = REPO / "deploy" / "standalone"
NUM_SAMPLES, SEED = 20, 11


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _master_status(webui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json/", timeout=10) as resp:
        return json.load(resp)


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    """A standalone master and two 1-core workers on 127.0.0.1; stopped at the end, even on failure."""
    run_dir = tmp_path_factory.mktemp("standalone")
    master_port, webui_port, worker_ui = _free_ports(3)
    env = {**os.environ, "PYTHON": sys.executable, "DSEL_CLUSTER_DIR": str(run_dir),
           "DSEL_MASTER_PORT": str(master_port), "DSEL_MASTER_WEBUI_PORT": str(webui_port),
           "DSEL_WORKER_WEBUI_PORT": str(worker_ui), "DSEL_WORKER_MEMORY": "2g", "DSEL_WORKER_CORES": "1"}

    def stop():
        subprocess.run(["bash", str(SCRIPTS / "stop-cluster.sh")], env=env, timeout=120, check=False)
        pids = [int(p.read_text()) for p in run_dir.glob("*.pid")]
        assert not pids, f"stop-cluster.sh left PID files {pids}"

    request.addfinalizer(stop)  # registered before starting, so a half-started cluster is stopped too
    started = subprocess.run(["bash", str(SCRIPTS / "start-cluster.sh")], env=env, timeout=240,
                             capture_output=True, text=True)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(run_dir.glob("*.log")))
    assert started.returncode == 0, f"start-cluster.sh failed:\n{started.stdout}\n{started.stderr}\n{logs}"
    url = f"spark://127.0.0.1:{master_port}"
    assert started.stdout.strip().splitlines()[-1] == url
    pids = {p.stem: int(p.read_text()) for p in run_dir.glob("*.pid")}
    assert sorted(pids) == ["master", "worker-1", "worker-2"]
    assert len(set(pids.values())) == 3  # three JVMs
    return {"url": url, "webui_port": webui_port, "run_dir": run_dir, "pids": pids}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """100 raw documents of three domains in two files, and 30 other sci_abstracts documents as the target."""
    root = tmp_path_factory.mktemp("cluster-data")
    raw, target = [], []
    for domain in ["sci_abstracts", "movie_reviews", "rust_rfcs"]:
        docs = sample_docs(domain, 70 if domain == "sci_abstracts" else 30, seed=4)
        if domain == "sci_abstracts":
            target, docs = docs[:30], docs[30:]
        raw += docs
    for i in range(2):
        write_jsonl(root / "raw" / f"part-{i}.jsonl", raw[i::2])
    return {"root": root, "raw": str(root / "raw"), "target": write_jsonl(root / "target.jsonl", target),
            "count": len(raw)}


def _submit(cluster: dict, data: dict, out: Path, log_dir: Path, *conf: str, args: tuple = ()) -> subprocess.Popen:
    """Start spark-submit in the background (``args``: more dsel flags); its stdout and stderr go to files
    under log_dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_GATEWAY")}
    env.update({"SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(REPO), "PYSPARK_PYTHON": sys.executable,
                "PYSPARK_DRIVER_PYTHON": sys.executable})
    cmd = [
        str(SPARK_HOME / "bin" / "spark-submit"),
        "--master", cluster["url"], "--deploy-mode", "client",
        "--packages", DELTA_PACKAGE,
        "--driver-memory", "1g", "--executor-memory", "1g", "--executor-cores", "1", "--total-executor-cores", "2",
        "--conf", f"spark.pyspark.python={sys.executable}",
        "--conf", f"spark.pyspark.driver.python={sys.executable}",
        "--conf", f"spark.executorEnv.PYTHONPATH={REPO}",
        "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
        "--conf", "spark.ui.enabled=false",
        "--conf", "spark.sql.shuffle.partitions=2", "--conf", "spark.default.parallelism=2",
        "--conf", "spark.databricks.delta.snapshotPartitions=2",
        *[arg for c in conf for arg in ("--conf", c)],
        str(REPO / "jobs" / "run.py"),
        "--raw", data["raw"], "--target", data["target"], "--out", str(out),
        "--num-samples", str(NUM_SAMPLES), "--seed", str(SEED), *args,
    ]
    with open(log_dir / "submit.out", "w") as stdout, open(log_dir / "submit.err", "w") as stderr:
        return subprocess.Popen(cmd, env=env, cwd=str(data["root"]), stdout=stdout, stderr=stderr,
                                stdin=subprocess.DEVNULL)


def _weights(spark, out: Path) -> list[tuple]:
    rows = spark.read.format("delta").load(str(out / "weights")).orderBy("id").collect()
    return [(r["id"], r["doc_hash"], r["num_words"], r["log_weight"], list(r["log_weights"])) for r in rows]


def _selected(spark, out: Path) -> list[tuple]:
    rows = spark.read.format("delta").load(str(out / "selected")).orderBy("target", "rank").collect()
    return [(r["id"], r["target"], r["rank"], r["log_weight"], r["text"]) for r in rows]


def _local_run(spark, data: dict) -> Path:
    """The same config in local mode, in the test session."""
    local_out = data["root"] / "local-out"
    execute(spark, DselConfig.from_mapping({
        "raw": [data["raw"]], "target": [data["target"]], "out": str(local_out),
        "num_samples": NUM_SAMPLES, "seed": SEED,
    }), "run")
    return local_out


def test_spark_submit_to_standalone_matches_local_mode_even_when_an_executor_dies(spark, cluster, data):
    """``dsel run`` through spark-submit on the standalone cluster gives local mode's tables, and does so
    though one executor JVM is SIGKILLed mid-stage: the featurize tasks stall on their first attempt,
    one executor dies while they do, Spark reruns its tasks elsewhere and the worker starts a new
    executor. The workers write OUT/features themselves here (features_writer pyarrow): each task's
    file once. (One submit for both checks: each costs a driver JVM and its executors, about a minute.)"""
    started = time.time()
    root = data["root"] / "cluster"
    markers = root / "markers"
    markers.mkdir(parents=True)
    out = root / "out"
    job = _submit(cluster, data, out, root, "spark.executorEnv.DSEL_FAULT_INJECTION=featurize:stall",
                  f"spark.executorEnv.DSEL_FAULT_DIR={markers}", "spark.executorEnv.DSEL_FAULT_STALL=8",
                  args=("--features-writer", "pyarrow"))
    try:
        deadline = time.time() + 300
        while not list(markers.iterdir()) and time.time() < deadline and job.poll() is None:
            time.sleep(0.5)
        assert list(markers.iterdir()), "no featurize task started on the cluster"
        found = subprocess.run(["pgrep", "-f", "CoarseGrainedExecutorBackend"], capture_output=True, text=True)
        executors = [int(p) for p in found.stdout.split()]
        assert len(executors) == 2, found.stdout
        os.kill(executors[0], 9)  # one executor JVM (and its Python workers with it) dies mid-stage
        local_out = _local_run(spark, data)  # while the cluster job runs
        returncode = job.wait(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    stdout, stderr = (root / "submit.out").read_text(), (root / "submit.err").read_text()
    assert returncode == 0, f"spark-submit exited {returncode}:\n{stdout}\n{stderr[-8000:]}"
    assert re.search(rf"^\s*selected\s+{NUM_SAMPLES}\b", stdout, re.M), stdout
    assert "Lost executor" in stderr or "ExecutorLostFailure" in stderr, stderr[-5000:]
    assert "written by the workers" in stdout, stdout[-3000:]
    print(f"spark-submit to {cluster['url']} finished after {time.time() - started:.1f}s")

    # The job ran on the cluster: the master lists it as finished, and each worker ran an executor of it.
    status = _master_status(cluster["webui_port"])
    assert sum(1 for w in status["workers"] if w["state"] == "ALIVE") == 2
    apps = [a for a in status["completedapps"] if a["name"] == "dsel run"]
    assert len(apps) == 1, status["completedapps"]
    app_id = apps[0]["id"]
    for worker in ("worker-1", "worker-2"):
        executors = list((cluster["run_dir"] / worker / app_id).glob("*/stderr"))
        assert executors, f"{worker} ran no executor of {app_id}"

    cluster_weights, local_weights = _weights(spark, out), _weights(spark, local_out)
    assert len(cluster_weights) == data["count"]
    assert cluster_weights == local_weights
    cluster_selected, local_selected = _selected(spark, out), _selected(spark, local_out)
    assert len(cluster_selected) == NUM_SAMPLES
    assert cluster_selected == local_selected
    runs = spark.read.format("delta").load(str(out / "runs")).collect()
    assert [(r["status"], r["selected"]) for r in runs] == [("succeeded", NUM_SAMPLES)]
