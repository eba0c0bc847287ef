"""The Databricks notebooks in notebooks/ run top to bottom against the test session.

Each notebook is in Databricks source format: cells split on ``# COMMAND ----------``; ``# MAGIC``
cells (markdown, %pip) are skipped and the code cells are exec'd in order in one namespace holding
``spark``, ``dbutils`` (a stand-in for ``dbutils.widgets``: text, dropdown, get) and ``display``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import REPO, sample_docs, write_jsonl

os.environ.setdefault("MPLBACKEND", "Agg")

NOTEBOOKS = REPO / "notebooks"
HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"


class Widgets:
    """``dbutils.widgets``: a widget's value is the job parameter if one is given, else its default."""

    def __init__(self, params: dict[str, str]):
        self.params = dict(params)
        self.values: dict[str, str] = {}

    def text(self, name: str, defaultValue: str, label: str = None) -> None:
        self.values[name] = self.params.get(name, defaultValue)

    def dropdown(self, name: str, defaultValue: str, choices: list, label: str = None) -> None:
        assert defaultValue in choices, f"dropdown {name}: default {defaultValue!r} is not among {choices}"
        value = self.params.get(name, defaultValue)
        assert value in choices, f"dropdown {name}: {value!r} is not among {choices}"
        self.values[name] = value

    def get(self, name: str) -> str:
        if name not in self.values:
            raise ValueError(f"InputWidgetNotDefined: no widget named {name}")
        return self.values[name]


class DBUtils:
    def __init__(self, params: dict[str, str]):
        self.widgets = Widgets(params)


class Display:
    """``display``: evaluates what it is given (a DataFrame is collected) and keeps it."""

    def __init__(self):
        self.shown: list[object] = []

    def __call__(self, obj, *args, **kwargs) -> None:
        from pyspark.sql import DataFrame

        self.shown.append(obj.collect() if isinstance(obj, DataFrame) else obj)


def cells(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith(HEADER + "\n"), f"{path.name} does not start with '{HEADER}'"
    code = []
    for cell in text[len(HEADER):].split(SEPARATOR):
        lines = [line for line in cell.strip().splitlines() if line.strip()]
        if lines and not all(line.startswith("# MAGIC") for line in lines):
            assert not any(line.startswith("# MAGIC") for line in lines), f"{path.name}: a cell mixes MAGIC and code"
            code.append(cell)
    return code


def run_notebook(spark, path: Path, params: dict[str, str]) -> tuple[dict, Display]:
    display = Display()
    namespace = {"spark": spark, "dbutils": DBUtils(params), "display": display, "__name__": "__main__"}
    for i, cell in enumerate(cells(path)):
        exec(compile(cell, f"{path.name}[cell {i}]", "exec"), namespace)
    return namespace, display


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebooks")
    raw, target = [], []
    for domain in ["sci_abstracts", "shakespeare", "movie_reviews"]:
        docs = sample_docs(domain, 60 if domain == "sci_abstracts" else 30, seed=5)
        if domain == "sci_abstracts":
            target, docs = docs[:25], docs[25:]
        raw += docs
    return {"root": root, "raw": write_jsonl(root / "raw.jsonl", raw),
            "target": write_jsonl(root / "target.jsonl", target), "count": len(raw)}


def test_notebooks_are_databricks_source_with_widgets():
    paths = sorted(NOTEBOOKS.glob("*.py"))
    assert [p.name for p in paths] == ["01_dsel_walkthrough.py", "02_dsel_run.py"]
    for path in paths:
        text = path.read_text(encoding="utf-8")
        assert "# MAGIC %md" in text and "dbutils.widgets.get(" in text
        for widget in ("raw", "target", "out", "k", "seed"):
            assert f'dbutils.widgets.text("{widget}"' in text, f"{path.name} has no {widget} widget"


def test_walkthrough_notebook(spark, inputs):
    out = inputs["root"] / "walkthrough-out"
    ns, shown = run_notebook(spark, NOTEBOOKS / "01_dsel_walkthrough.py", {
        "raw": inputs["raw"], "target": inputs["target"], "out": str(out), "k": "15", "seed": "2"})
    summary = ns["summary"]
    assert summary.read == summary.scored == inputs["count"]
    assert summary.selected == 15
    assert summary.finished is not None and [name for name, _ in summary.stages] == ["featurize", "fit", "score", "select"]
    # The log-ratio table: the top 20 buckets, most over-represented first, each with target n-grams.
    top = shown.shown[0]
    assert len(top) == 20 and [r["log_ratio"] for r in top] == sorted((r["log_ratio"] for r in top), reverse=True)
    assert all(r["log_ratio"] > 0 for r in top)
    with_grams = shown.shown[1]
    assert len(with_grams) == 20 and all(r["target_ngrams"] for r in with_grams)
    # The weights histogram is a matplotlib figure covering every raw document.
    import matplotlib.figure

    figures = [obj for obj in shown.shown if isinstance(obj, matplotlib.figure.Figure)]
    assert len(figures) == 1
    heights = [patch.get_height() for patch in figures[0].axes[0].patches]
    assert len(heights) == 50 and sum(heights) == inputs["count"]
    assert spark.read.format("delta").load(str(out / "selected")).count() == 15


def test_run_notebook_matches_the_walkthrough(spark, inputs):
    """The job notebook (execute) selects what the step-by-step notebook selected, and registers the tables."""
    walk_out, run_out = inputs["root"] / "walkthrough-out", inputs["root"] / "run-out"
    if not (walk_out / "selected").exists():
        run_notebook(spark, NOTEBOOKS / "01_dsel_walkthrough.py", {
            "raw": inputs["raw"], "target": inputs["target"], "out": str(walk_out), "k": "15", "seed": "2"})
    # The schema lives under the test's tmp dir, not in ./spark-warehouse (the notebook's
    # CREATE SCHEMA IF NOT EXISTS keeps it).
    spark.sql(f"CREATE SCHEMA dsel_notebook_test LOCATION '{inputs['root'] / 'warehouse'}'")
    ns, shown = run_notebook(spark, NOTEBOOKS / "02_dsel_run.py", {
        "raw": inputs["raw"], "target": inputs["target"], "out": str(run_out), "k": "15", "seed": "2",
        "schema": "dsel_notebook_test"})
    assert ns["result"]["selected"] == 15
    assert shown.shown[0][0]["run_id"] == ns["summary"].run_id

    def ids(path):
        return [(r["id"], r["rank"]) for r in spark.read.format("delta").load(str(path)).orderBy("rank").collect()]

    assert ids(run_out / "selected") == ids(walk_out / "selected")
    registered = spark.sql("SELECT id, rank FROM dsel_notebook_test.dsel_selected ORDER BY rank").collect()
    assert [(r["id"], r["rank"]) for r in registered] == ids(run_out / "selected")
    spark.sql("DROP SCHEMA dsel_notebook_test CASCADE")
