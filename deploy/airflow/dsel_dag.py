"""Airflow DAG: dsel fit -> score -> select every day, each a spark-submit of a job in jobs/.

Needs the ``apache-airflow-providers-apache-spark`` provider and a Spark connection (``spark_default``,
for example ``spark://HOST:7077``, or ``yarn`` / ``k8s://...``).  The workers submit from a checkout of
dsel at ``DSEL_HOME`` (for the jobs/ scripts) and ship the packed environment that
``deploy/package.sh`` builds (``dist/dsel-env.tar.gz``) to the executors; the driver runs in the same
environment unpacked at ``DSEL_HOME/build/dsel-env`` (package.sh leaves it there).  Paths and sizes are DAG
params: trigger with ``{"raw": ..., "target": ..., "out": ..., "num_samples": ..., "seed": ...}``
to override them.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow import DAG
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

DSEL_HOME = os.environ.get("DSEL_HOME", "/opt/dsel")
DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"
SPARK_CONF = {
    # Executors run Python from the packed environment, unpacked as ./env in their work dir.
    "spark.pyspark.python": "./env/bin/python",
    # The driver runs where the worker submits (client mode), where ./env does not exist: it uses the
    # same environment unpacked beside the checkout (deploy/package.sh), as deploy/README.md does.
    "spark.pyspark.driver.python": os.path.join(DSEL_HOME, "build/dsel-env/bin/python"),
}
COMMON = dict(
    conn_id="spark_default",
    packages=DELTA_PACKAGE,
    archives=os.path.join(DSEL_HOME, "dist/dsel-env.tar.gz") + "#env",
    conf=SPARK_CONF,
    executor_cores=1,
    executor_memory="2g",
    driver_memory="2g",
    verbose=False,
)

with DAG(
    dag_id="dsel_daily",
    description="DSIR data selection with dsel: fit, score, select into Delta tables",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=10)},
    params={
        "raw": "/data/corpus/raw",
        "target": "/data/corpus/target",
        "out": "/data/dsel/daily",
        "num_samples": 100000,
        "seed": 0,
    },
    tags=["dsel", "spark"],
) as dag:
    fit = SparkSubmitOperator(
        task_id="fit",
        name="dsel-fit",
        application=os.path.join(DSEL_HOME, "jobs/fit.py"),
        application_args=["--raw", "{{ params.raw }}", "--target", "{{ params.target }}",
                          "--out", "{{ params.out }}"],
        **COMMON,
    )
    score = SparkSubmitOperator(
        task_id="score",
        name="dsel-score",
        application=os.path.join(DSEL_HOME, "jobs/score.py"),
        application_args=["--raw", "{{ params.raw }}", "--out", "{{ params.out }}"],
        **COMMON,
    )
    select = SparkSubmitOperator(
        task_id="select",
        name="dsel-select",
        application=os.path.join(DSEL_HOME, "jobs/select.py"),
        application_args=["--raw", "{{ params.raw }}", "--out", "{{ params.out }}",
                          "--num-samples", "{{ params.num_samples }}", "--seed", "{{ params.seed }}"],
        **COMMON,
    )
    fit >> score >> select
