"""The deployment files name real entry points, real jobs and real CLI flags.

The asset bundle and the Kubernetes manifests are parsed with PyYAML and the Airflow DAG with
``ast`` (Airflow is not installed); every ``--flag`` they pass must be a flag of the dsel command
they run (``dsel.cli.build_parser()``), and every job or entry point they name must exist.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pyspark
import pytest
import yaml

from dsel.cli import COMMANDS, build_parser, config_from_args
from tests.conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEPLOY = REPO / "deploy"
JOB_COMMANDS = {f"jobs/{name}.py": name for name in COMMANDS}  # jobs/run.py runs `dsel run`, ...


def command_flags(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return {opt for action in sub._actions for opt in action.option_strings if opt.startswith("--")}


def check_args(command: str, args: list[str], where: str, values: dict[str, str] = {}) -> None:
    """Every --flag is a flag of `dsel COMMAND`, and the arguments, with placeholders replaced by their
    defaults (``values``), parse into a valid config."""
    flags = command_flags(command)
    used = [a for a in args if a.startswith("--")]
    assert used, f"{where}: no flags"
    unknown = [a for a in used if a.split("=", 1)[0] not in flags]
    assert not unknown, f"{where}: {unknown} are not flags of `dsel {command}`"
    filled = []
    for arg in args:
        match = re.fullmatch(r"\$\{var\.(\w+)\}|\{\{ *params\.(\w+) *\}\}", arg)
        if match:
            name = match.group(1) or match.group(2)
            assert name in values, f"{where}: {arg} has no default"
            arg = str(values[name])
        filled.append(arg)
    ns = build_parser().parse_args([command, *filled])
    assert ns.command == command
    cfg = config_from_args(ns)
    cfg.require("raw", "out")


def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


# ------------------------------------------------------------------ Databricks asset bundle
@pytest.fixture(scope="module")
def bundle() -> dict:
    with open(DEPLOY / "databricks" / "databricks.yml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def test_bundle_has_daily_job_and_dev_prod_targets(bundle):
    assert bundle["bundle"]["name"] == "dsel"
    assert set(bundle["targets"]) == {"dev", "prod"}
    assert bundle["targets"]["dev"]["mode"] == "development" and bundle["targets"]["prod"]["mode"] == "production"
    (job,) = bundle["resources"]["jobs"].values()
    cron = job["schedule"]["quartz_cron_expression"].split()
    assert len(cron) in (6, 7) and cron[3:6] == ["*", "*", "?"], "the schedule is not daily"
    keys = [t["task_key"] for t in job["tasks"]]
    assert keys == ["fit", "score", "select"]
    # dedicated access mode: Unity Catalog volumes, and the SparkContext and JVM gateway dsel uses
    assert [c["new_cluster"]["data_security_mode"] for c in job["job_clusters"]] == ["SINGLE_USER"]
    for task in job["tasks"]:
        for dep in task.get("depends_on", []):
            assert dep["task_key"] in keys and keys.index(dep["task_key"]) < keys.index(task["task_key"])
    # The wheel the tasks install is the one the bundle's artifact builds from the repo root.
    (artifact,) = bundle["artifacts"].values()
    root = (DEPLOY / "databricks" / artifact["path"]).resolve()
    assert (root / "pyproject.toml").exists() and "--no-deps" in artifact["build"]


def test_bundle_tasks_call_real_entry_points_with_real_flags(bundle):
    project = pyproject()["project"]
    scripts = project["scripts"]
    variables = set(bundle["variables"])
    (job,) = bundle["resources"]["jobs"].values()
    for task in job["tasks"]:
        wheel = task["python_wheel_task"]
        assert wheel["package_name"] == project["name"]
        assert wheel["entry_point"] in scripts, f"{wheel['entry_point']} is not in [project.scripts]"
        module, func = scripts[wheel["entry_point"]].split(":")
        assert callable(getattr(__import__(module, fromlist=[func]), func))
        command, *args = wheel["parameters"]
        assert command == task["task_key"] and command in COMMANDS
        defaults = {name: var["default"] for name, var in bundle["variables"].items()}
        check_args(command, args, f"bundle task {task['task_key']}", defaults)
        for arg in args:
            if arg.startswith("${var."):
                assert arg[len("${var."):-1] in variables, f"{arg} is not a bundle variable"
        assert any(lib["whl"].endswith(".whl") for lib in task["libraries"])


# ------------------------------------------------------------------ Airflow
def test_airflow_dag_submits_real_jobs_with_real_flags():
    tree = ast.parse((DEPLOY / "airflow" / "dsel_dag.py").read_text(encoding="utf-8"))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "id", getattr(n.func, "attr", None)) == "SparkSubmitOperator"]
    assert len(calls) == 3
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
              and isinstance(n.value, ast.Constant) for t in n.targets if isinstance(t, ast.Name)}
    common = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  and any(getattr(t, "id", None) == "COMMON" for t in n.targets))
    common_kw = {kw.arg: kw.value for kw in common.keywords}
    assert consts[common_kw["packages"].id] == "io.delta:delta-spark_4.2_2.13:4.4.0"
    conf = next(n for n in ast.walk(tree) if isinstance(n, ast.Assign)
                and any(getattr(t, "id", None) == "SPARK_CONF" for t in n.targets))
    conf = {k.value: v for k, v in zip(conf.value.keys, conf.value.values)}
    assert ast.literal_eval(conf["spark.pyspark.python"]) == "./env/bin/python"
    # the client-mode driver cannot use ./env (it exists on the executors only): it is given its own Python
    assert "build/dsel-env/bin/python" in ast.unparse(conf["spark.pyspark.driver.python"])
    dag = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "DAG")
    dag_kw = {k.arg: k.value for k in dag.keywords}
    assert ast.literal_eval(dag_kw["schedule"]) == "@daily"
    params = ast.literal_eval(dag_kw["params"])
    seen = []
    for call in calls:
        kw = {k.arg: k.value for k in call.keywords}
        apps = [c.value for c in ast.walk(kw["application"])
                if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        (app,) = [a for a in apps if a.startswith("jobs/")]
        assert (REPO / app).is_file(), f"{app} does not exist"
        args = ast.literal_eval(kw["application_args"])
        check_args(JOB_COMMANDS[app], args, f"airflow task {ast.literal_eval(kw['task_id'])}", params)
        seen.append(JOB_COMMANDS[app])
    assert seen == ["fit", "score", "select"]


# ------------------------------------------------------------------ Kubernetes (spark-operator)
@pytest.mark.parametrize("name", ["sparkapplication.yaml", "scheduledsparkapplication.yaml"])
def test_k8s_manifests_run_real_jobs_with_real_flags(name):
    with open(DEPLOY / "k8s" / name, encoding="utf-8") as fh:
        doc = yaml.safe_load(fh)
    assert doc["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    if doc["kind"] == "ScheduledSparkApplication":
        assert len(doc["spec"]["schedule"].split()) == 5 and doc["spec"]["concurrencyPolicy"] == "Forbid"
        spec = doc["spec"]["template"]
    else:
        assert doc["kind"] == "SparkApplication"
        spec = doc["spec"]
    assert spec["type"] == "Python" and spec["sparkVersion"] == "4.2.0"
    # s3a:// needs hadoop-aws of the Hadoop that Spark ships
    hadoop = next(p.name for p in (Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    assert spec["deps"]["packages"] == ["io.delta:delta-spark_4.2_2.13:4.4.0",
                                        f"org.apache.hadoop:hadoop-aws:{hadoop[len('hadoop-client-api-'):-4]}"]
    # a remote directory's format cannot be guessed: each remote input names it
    args = spec["arguments"]
    for flag in ("--raw", "--target"):
        if "://" in args[args.index(flag) + 1]:
            assert args[args.index(f"{flag}-format") + 1] in ("json", "parquet", "delta"), (name, flag)
    prefix = "local:///opt/dsel/"
    assert spec["mainApplicationFile"].startswith(prefix)
    app = spec["mainApplicationFile"][len(prefix):]
    assert (REPO / app).is_file(), f"{app} does not exist"
    assert all(isinstance(a, str) for a in spec["arguments"]), "arguments must be strings"
    check_args(JOB_COMMANDS[app], spec["arguments"], name)
    # The image the manifests run puts jobs/ where mainApplicationFile points.
    dockerfile = (DEPLOY / "k8s" / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY jobs/ /opt/dsel/jobs/" in dockerfile


# ------------------------------------------------------------------ scripts and docs
def test_scripts_are_executable_and_documented():
    for script in ["standalone/start-cluster.sh", "standalone/stop-cluster.sh", "package.sh"]:
        path = DEPLOY / script
        assert path.stat().st_mode & 0o111, f"{script} is not executable"
        assert path.read_text().startswith("#!/usr/bin/env bash\n")
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("## Running on a cluster, Databricks and schedulers")
    for mention in ["start-cluster.sh", "package.sh", "venv-pack", "--archives", "databricks.yml",
                    "dsel_dag.py", "sparkapplication.yaml", "notebooks/"]:
        assert mention in readme, f"deploy/README.md does not mention {mention}"
