"""``dsel report``: a self-contained HTML report (and report.json) of a finished run.

It reads the tables under ``OUT`` (log_ratios, weights, selected) and the run's parameters from
the ``userMetadata`` of the ``selected`` table's latest commit, and writes, into ``--report-dir``
(default: ``OUT`` + ``_report``, beside OUT, because dsel refuses to write into an ``OUT`` that
holds files it does not own):

* ``report.json``: every number shown;
* ``report.html``: one file, the plots embedded as base64 PNG (matplotlib, Agg backend), no
  external resource, so it opens offline and can be attached to a ticket.

Sections: KL reduction (:mod:`dsel.evaluate`), the log-weight distribution of the raw pool
against the selection, the length (words) distributions, the buckets with the highest and lowest
log ratio, the mix of a label column (``--label-column``, default ``domain``) in the raw pool and
in the selection when the column exists, and the highest- and lowest-weighted eligible documents
(truncated).

Every distribution is aggregated in Spark (fixed bins, counts per bin); only bin counts, at most
2 x T x B log-ratio rows and a few truncated documents reach the driver.

Readable n-grams: buckets are hashes, so the report names a bucket by sample n-grams that fall
in it.  The highest-ratio buckets show the n-grams the fit kept from the target (the ``ngrams``
column of ``OUT/log_ratios``, see :mod:`dsel.fit`): nothing is re-hashed.  The lowest-ratio buckets
are the ones the target (almost) never uses, so the fit has no target n-gram for them; they show
n-grams sampled the same way (the kernel's sampler, :func:`dsel.featurize.target_histogram`) from at
most :data:`NGRAM_SAMPLE_DOCS` raw documents, read while the report is made.  Both are
frequency-weighted samples; several n-grams share a bucket, so these are examples of what the bucket
counts, not its definition.
"""
from __future__ import annotations

import base64
import html
import io
import json
import time
from typing import Any, Optional

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from delta.tables import DeltaTable

from dsel import __version__
from dsel.config import DselConfig
from dsel.errors import DselError
from dsel.fit import Fit
from dsel.read import ID, REASON, TEXT, prepare, quoted, read_input
from dsel.report import kl_text
from dsel.select import Filters, eligible, filter_counts
from dsel.write import OutputPaths, check_side_output, commit_metadata, last_commit, read_table, write_file

NUM_BINS = 40
TOP_BUCKETS = 15
NGRAM_SAMPLE_DOCS = 2000
SHOWN_DOCS = 5
SNIPPET_CHARS = 400
#: The label mix's name for records without a value in the label column.
NO_LABEL = "(no value)"


# ------------------------------------------------------------------------------------------ data
def run_config(spark: SparkSession, out: str) -> tuple[DselConfig, dict[str, Any]]:
    """The run's DselConfig and the userMetadata of the selected table's latest commit (which also names
    the versions of the fit and the weights the selection was made from)."""
    path = OutputPaths(out).selected
    read_table(spark, path, "selected")
    meta = commit_metadata(spark, path) or {}
    if "params" not in meta:
        raise DselError(f"{path} was not written by 'dsel select' or 'dsel run'; report on a dsel output directory")
    cfg = DselConfig.from_mapping(meta["params"])
    return cfg.replace(out=out), meta


def _as_selected(spark: SparkSession, path: str, what: str, version: Optional[int],
                 notes: list[str]) -> DataFrame:
    """A table as the selection read it (its ``version``), so that a later fit or score does not change
    the report of an earlier selection; the latest version, with a note, once that one is gone."""
    latest = read_table(spark, path, what)
    if version is None or last_commit(spark, path).version == version:
        return latest
    try:
        df = spark.read.format("delta").option("versionAsOf", version).load(path)
        df.schema  # resolves the version now
        return df
    except Exception:  # vacuumed or its log entries cleaned up
        notes.append(f"{what} version {version}, which the selection was made from, is no longer in {path}'s "
                     "history: the report shows the latest version")
        return latest


def binned(df: DataFrame, column: str, bins: int = NUM_BINS, log10: bool = False,
           edges: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(edges, counts) of a numeric column, counted in Spark over fixed bins."""
    value = F.log10(F.greatest(F.col(column).cast("double"), F.lit(1.0))) if log10 else F.col(column).cast("double")
    if edges is None:
        low, high = df.agg(F.min(value), F.max(value)).first()
        if low is None:
            return np.array([0.0, 1.0]), np.zeros(1, dtype=np.int64)
        if high <= low:
            high = low + 1.0
        edges = np.linspace(low, high, bins + 1)
    low, high, n = float(edges[0]), float(edges[-1]), len(edges) - 1
    index = F.least(F.greatest(F.floor((value - F.lit(low)) / F.lit((high - low) / n)), F.lit(0)), F.lit(n - 1))
    counts = np.zeros(n, dtype=np.int64)
    for row in df.where(value.isNotNull()).groupBy(index.cast("int").alias("b")).count().collect():
        counts[row["b"]] = row["count"]
    return edges, counts


def common_edges(frames: list[tuple[DataFrame, str]], bins: int = NUM_BINS, log10: bool = False) -> np.ndarray:
    lows, highs = [], []
    for df, column in frames:
        value = F.log10(F.greatest(F.col(column).cast("double"), F.lit(1.0))) if log10 else F.col(column)
        low, high = df.agg(F.min(value), F.max(value)).first()
        if low is not None:
            lows.append(low)
            highs.append(high)
    if not lows:
        return np.linspace(0.0, 1.0, bins + 1)
    low, high = min(lows), max(highs)
    return np.linspace(low, high if high > low else low + 1.0, bins + 1)


def raw_bucket_ngrams(df_prepared: DataFrame, cfg: DselConfig, buckets: list[int]) -> dict[int, list[str]]:
    """Sample n-grams of ``df_prepared`` (a prepared raw sample) in each of ``buckets``, smallest key first."""
    from dsel.featurize import target_histogram
    from dsel.fit import NGRAMS_PER_BUCKET

    wanted = sorted(set(int(b) for b in buckets))
    rows = (target_histogram(df_prepared, cfg, NGRAMS_PER_BUCKET)
            .where(F.col("ngram").isNotNull() & F.col("bucket").isin(wanted)).orderBy("bucket", "key", "ngram")
            .collect())
    result: dict[int, list[str]] = {b: [] for b in wanted}
    for row in rows:
        result[int(row["bucket"])].append(row["ngram"])
    return result


def _sample(df_prepared: DataFrame, total: int, limit: int) -> DataFrame:
    if total <= limit:
        return df_prepared
    from dsel.baselines import uniform

    return df_prepared.where(uniform(0, "report-sample", ID) <= F.lit(limit / total))


def collect_report(spark: SparkSession, out: str, label_column: Optional[str] = "domain",
                   run: Optional[tuple[DselConfig, dict[str, Any]]] = None) -> dict[str, Any]:
    """Every number and table of the report, as a JSON-ready dict (plots are drawn from it); ``run`` is
    :func:`run_config`'s answer when the caller has it."""
    from dsel.evaluate import run_kl_reduction

    started = time.time()
    cfg, meta = run or run_config(spark, out)
    paths = OutputPaths(out)
    notes: list[str] = []
    # the fit and the weights the selection was made from, not a later fit's or score's
    weights = _as_selected(spark, paths.weights, "weights", meta.get("weights_version"), notes)
    selected = read_table(spark, paths.selected, "selected")
    ratios = _as_selected(spark, paths.log_ratios, "log_ratios", meta.get("fit_version"), notes)
    report: dict[str, Any] = {"out": out, "dsel_version": __version__, "params": cfg.to_dict(), "notes": notes,
                              "fit_version": meta.get("fit_version"), "weights_version": meta.get("weights_version")}
    report["kl"] = run_kl_reduction(spark, cfg, Fit.from_frame(ratios, cfg.fit_params()))

    rule = Filters.of(cfg)
    eligible_count, removed = filter_counts(weights, rule)[:2]
    report["counts"] = {"scored": sum(removed.values()) + eligible_count, "eligible": eligible_count,
                        "selected": selected.count()}
    report["filtered"] = removed

    edges = common_edges([(weights, "log_weight"), (selected, "log_weight")])
    report["log_weight"] = {"edges": edges.tolist(), "raw": binned(weights, "log_weight", edges=edges)[1].tolist(),
                            "selected": binned(selected, "log_weight", edges=edges)[1].tolist()}
    edges = common_edges([(weights, "num_words"), (selected, "num_words")], log10=True)
    report["num_words"] = {"edges_log10": edges.tolist(),
                           "raw": binned(weights, "num_words", log10=True, edges=edges)[1].tolist(),
                           "selected": binned(selected, "num_words", log10=True, edges=edges)[1].tolist(),
                           "min_length": cfg.min_length}

    # Highest and lowest log-ratio buckets of each target, with sample n-grams.
    stored = "ngrams" in ratios.columns  # fits before dsel kept n-gram samples have none
    table = ratios.select("target", "target_name", "bucket", "raw_count", "target_count", "log_ratio",
                          *(["ngrams"] if stored else [])).toArrow()
    cols = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    if not report["params"]["target"]:  # 'dsel select' is given no --target: the fit's targets are the run's
        names = {int(t): str(n) for t, n in zip(cols["target"], cols["target_name"])}
        report["params"]["target"] = [names[t] for t in sorted(names)]
    raw_prepared = prepare(read_input(spark, cfg.raw, cfg.raw_format, cfg, "raw"), cfg)
    report["buckets"] = {}
    for t in sorted(set(cols["target"].tolist())):
        mine = cols["target"] == t
        order = np.argsort(cols["log_ratio"][mine], kind="stable")
        rows = [{k: _plain(v[mine][i]) for k, v in cols.items()} for i in order]
        for r in rows:
            r["ngrams"] = list(r.get("ngrams") or [])
        report["buckets"][rows[0]["target_name"]] = {"highest": rows[::-1][:TOP_BUCKETS], "lowest": rows[:TOP_BUCKETS]}
    lowest = [r["bucket"] for parts in report["buckets"].values() for r in parts["lowest"]]
    raw_grams = raw_bucket_ngrams(_sample(raw_prepared, report["counts"]["scored"], NGRAM_SAMPLE_DOCS), cfg, lowest)
    for parts in report["buckets"].values():
        for r in parts["lowest"]:
            r["ngrams"] = raw_grams.get(r["bucket"], [])

    # Label mix.
    if label_column and label_column in selected.columns and label_column in raw_prepared.columns:
        label = F.coalesce(F.col(quoted(label_column)).cast("string"), F.lit(NO_LABEL))
        # the scored records: one per id, the one OUT/weights kept (not those skipped as duplicate_id)
        kept = weights.select(F.col("id").alias("_r_id"), F.col("doc_hash").alias("_r_hash"))
        scored = (raw_prepared.where(F.col(REASON).isNull())
                  .join(kept, (raw_prepared[ID] == kept["_r_id"]) & (raw_prepared["_dsel_hash"] == kept["_r_hash"]),
                        "left_semi").dropDuplicates([ID]))
        raw_mix = {r["l"]: int(r["count"]) for r in scored.groupBy(label.alias("l")).count().collect()}
        sel_mix = {r["l"]: int(r["count"]) for r in selected.groupBy(label.alias("l")).count().collect()}
        report["label_mix"] = {"column": label_column, "raw": raw_mix, "selected": sel_mix}
        if sum(raw_mix.values()) < report["counts"]["scored"]:
            notes.append(f"{report['counts']['scored'] - sum(raw_mix.values()):,} scored documents are no longer in "
                         "the raw input (it changed since they were scored): the raw label mix leaves them out")

    # Highest- and lowest-weighted eligible documents, truncated.
    pool = eligible(weights, rule, check=False)  # filter_counts checked the statistics above
    report["documents"] = {}
    for side, order in (("highest", F.col("log_weight").desc()), ("lowest", F.col("log_weight").asc())):
        ids = pool.orderBy(order, F.col("id")).limit(SHOWN_DOCS).select(
            F.col("id").alias("_r_id"), F.col("doc_hash").alias("_r_hash"), "num_words", "log_weight")
        docs = (raw_prepared.join(F.broadcast(ids), (raw_prepared[ID] == ids["_r_id"])
                                  & (raw_prepared["_dsel_hash"] == ids["_r_hash"]))
                .dropDuplicates(["_r_id"])
                .select(F.col("_r_id").alias("id"), "num_words", "log_weight",
                        F.substring(F.col(TEXT), 1, SNIPPET_CHARS).alias("snippet"),
                        (F.length(F.col(TEXT)) > SNIPPET_CHARS).alias("truncated"),
                        *([F.col(quoted(label_column)).cast("string").alias("label")]
                          if label_column and label_column in raw_prepared.columns else [])))
        rows = [r.asDict() for r in docs.collect()]
        rows.sort(key=lambda r: r["log_weight"], reverse=(side == "highest"))
        report["documents"][side] = rows
        if len(rows) < min(SHOWN_DOCS, eligible_count):
            notes.append(f"{min(SHOWN_DOCS, eligible_count) - len(rows)} of the {side}-weighted eligible documents "
                         "are no longer in the raw input (it changed since they were scored) and are not shown")
    # Every method of a `dsel evaluate --out OUT` on the same data, side by side.
    results = OutputPaths(out).table("evaluation") + "/results"
    if DeltaTable.isDeltaTable(spark, results):
        report["methods"] = [
            {k: r[k] for k in ("method", "precision", "kl_reduction", "k", "selected", "target_label", "targets",
                               "run_id")}
            for r in spark.read.format("delta").load(results).orderBy("method").collect()]
        # the evaluation is a run of its own: the page says which, and when, as a later select leaves it as it was
        report["methods_written"] = str(DeltaTable.forPath(spark, results).history(1).first()["timestamp"])
    report["seconds"] = round(time.time() - started, 2)
    return report


# ------------------------------------------------------------------------------------------ plots
def _plain(value: Any) -> Any:
    """A numpy scalar or array from Arrow as a plain Python value."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if hasattr(value, "item") else value


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _density(counts: list[int]) -> np.ndarray:
    arr = np.asarray(counts, dtype=float)
    return arr / arr.sum() if arr.sum() else arr


def plots(report: dict[str, Any]) -> dict[str, str]:
    """Base64 PNGs keyed by section name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images: dict[str, str] = {}
    lw = report["log_weight"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.stairs(_density(lw["raw"]), lw["edges"], label=f"raw pool ({sum(lw['raw']):,})", fill=True, alpha=0.4)
    ax.stairs(_density(lw["selected"]), lw["edges"], label=f"selection ({sum(lw['selected']):,})", linewidth=2)
    ax.set_xlabel("log importance weight")
    ax.set_ylabel("share of documents")
    ax.legend()
    images["log_weight"] = _png(fig)

    nw = report["num_words"]
    edges = np.power(10.0, nw["edges_log10"])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.stairs(_density(nw["raw"]), edges, label="raw pool", fill=True, alpha=0.4)
    ax.stairs(_density(nw["selected"]), edges, label="selection", linewidth=2)
    ax.axvline(max(nw["min_length"], 1), color="grey", linestyle="--", label=f"min_length {nw['min_length']}")
    ax.set_xscale("log")
    ax.set_xlabel("words per document")
    ax.set_ylabel("share of documents")
    ax.legend()
    images["num_words"] = _png(fig)

    if report.get("methods"):
        methods = report["methods"]
        fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(methods)))
        ax.barh([m["method"] for m in methods], [m["kl_reduction"] for m in methods], color="#4a7ab5")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("KL reduction (nats, add-one smoothing)")
        images["methods"] = _png(fig)

    for name, parts in report["buckets"].items():
        rows = parts["highest"][::-1] + parts["lowest"][::-1]
        labels = [(" / ".join(r["ngrams"][:2]) or f"bucket {r['bucket']}")[:40] for r in rows]
        fig, ax = plt.subplots(figsize=(7, 0.22 * len(rows) + 1))
        values = [r["log_ratio"] for r in rows]
        ax.barh(range(len(rows)), values, color=["tab:green" if v > 0 else "tab:red" for v in values])
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.set_xlabel(f"log ratio (target {name} vs raw)")
        images[f"buckets:{name}"] = _png(fig)

    mix = report.get("label_mix")
    if mix:
        labels = sorted(set(mix["raw"]) | set(mix["selected"]), key=lambda l: -mix["selected"].get(l, 0))
        raw_share = _density([mix["raw"].get(l, 0) for l in labels])
        sel_share = _density([mix["selected"].get(l, 0) for l in labels])
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(labels) + 1))
        y = np.arange(len(labels))
        ax.barh(y - 0.2, raw_share, height=0.4, label="raw pool")
        ax.barh(y + 0.2, sel_share, height=0.4, label="selection")
        ax.set_yticks(y, [str(l) for l in labels], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"share of documents by {mix['column']}")
        ax.legend()
        images["label_mix"] = _png(fig)
    return images


# ------------------------------------------------------------------------------------------ HTML
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(images: dict[str, str], key: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{images[key]}">' if key in images else ""


def render_html(report: dict[str, Any], images: dict[str, str]) -> str:
    """The report as one self-contained HTML page."""
    kl = report["kl"]
    own = "kl_reduction_own" in kl
    params = report["params"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>dsel report — {_e(report['out'])}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;"
        "text-align:left;vertical-align:top}td.n{text-align:right}pre{white-space:pre-wrap;font-size:.85em;"
        "background:#f6f6f6;padding:.5em;margin:0}img{max-width:100%}.kl{font-size:2em;font-weight:bold}</style>",
        "</head><body>",
        f"<h1>dsel report</h1><p>Output <code>{_e(report['out'])}</code>, dsel {_e(report['dsel_version'])}; "
        f"raw {_e(', '.join(params['raw']))}; target {_e(', '.join(params['target']))}; method "
        f"{_e(params['method'])}, seed {_e(params['seed'])}, {_e(params['ngrams'])}-grams in "
        f"{_e(params['num_buckets'])} buckets ({_e(params['hash_kind'])}); the selection's fit is "
        f"<code>log_ratios</code> version {_e(report.get('fit_version'))}, its weights <code>weights</code> version "
        f"{_e(report.get('weights_version'))}.</p>",
        *(f"<p><b>Note:</b> {_e(n)}.</p>" for n in report.get("notes", [])),
        "<h2>Counts</h2><table>" + "".join(f"<tr><th>{_e(k)}</th><td class=n>{v:,}</td></tr>"
                                            for k, v in report["counts"].items())
        + "".join(f"<tr><th>not eligible: {_e(k)}</th><td class=n>{v:,}</td></tr>"
                  for k, v in report.get("filtered", {}).items()) + "</table>",
        '<h2 id="kl">KL reduction</h2>',
        f'<p>KL reduction: <span class="kl" id="kl-reduction">{kl["kl_reduction"]:.4f}</span> nats '
        f'(add-one smoothing; with add-1e-8 smoothing: <span id="kl-reduction-epsilon">'
        f'{kl["kl_reduction_epsilon"]:.4f}</span>).</p>',
        "<p>Mean over targets of KL(target ‖ raw) − KL(target ‖ selection), on the run's hashed n-gram "
        "histograms; the raw histogram is the run's fit sample (see <code>dsel.evaluate</code>).</p>",
        "<table><tr><th>target</th><th>KL(target‖raw)</th><th>KL(target‖selection)</th><th>reduction</th>"
        "<th>reduction (ε=1e-8)</th>" + ("<th>reduction, its own picks</th>" if own else "") + "</tr>"
        + "".join(f"<tr><td>{_e(n)}</td><td class=n>{p['kl_target_raw']:.4f}</td>"
                  f"<td class=n>{p['kl_target_selected']:.4f}</td><td class=n>{p['kl_reduction']:.4f}</td>"
                  f"<td class=n>{p['kl_reduction_epsilon']:.4f}</td>"
                  + (f"<td class=n>{kl_text(p.get('kl_reduction_own'))}</td>" if own else "") + "</tr>"
                  for n, p in kl["per_target"].items())
        + "</table>"
        + ("<p>With several targets, each chosen for by its quota, the last column compares each target with "
           "the documents chosen for it.</p>" if own else ""),
        "<h2>Log importance weights</h2>", _img(images, "log_weight", "log-weight distribution"),
        "<h2>Document lengths</h2>", _img(images, "num_words", "length distribution"),
        *([
            '<h2 id="methods">Methods side by side</h2>',
            "<p>From <code>dsel evaluate --out</code> on this output, its run <code>"
            + _e(report["methods"][0]["run_id"]) + "</code> (targets " + _e(", ".join(report["methods"][0]["targets"]))
            + ", written " + _e(report.get("methods_written", "")) + "; a later run or select does not change it): "
            "every method picked k documents of the same pool; precision is the share of them labelled with the "
            "target label.</p>",
            "<table><tr><th>method</th><th>KL reduction</th><th>precision at k</th><th>k</th></tr>"
            + "".join(f"<tr><td>{_e(m['method'])}</td><td class=n>{m['kl_reduction']:.4f}</td>"
                      f"<td class=n>{m['precision']:.3f}</td><td class=n>{m['k']:,}</td></tr>"
                      for m in report["methods"]) + "</table>",
            _img(images, "methods", "KL reduction per method")] if report.get("methods") else []),
    ]
    for name, buckets in report["buckets"].items():
        parts.append(f"<h2>Buckets by log ratio — target {_e(name)}</h2>")
        parts.append(_img(images, f"buckets:{name}", f"log ratios for {name}"))
        parts.append("<p>Sample n-grams (frequency-weighted): for the highest buckets, the ones the fit kept from "
                     "the target; for the lowest, sampled from up to 2,000 raw documents (several n-grams share a "
                     "bucket).</p>")
        for side in ("highest", "lowest"):
            parts.append(f"<h3>{side}</h3><table><tr><th>bucket</th><th>log ratio</th><th>target count</th>"
                         "<th>raw count</th><th>n-grams</th></tr>")
            for r in buckets[side]:
                grams = ", ".join(f'<span class="ngram">{_e(g)}</span>' for g in r["ngrams"])
                parts.append(f"<tr><td class=n>{r['bucket']}</td><td class=n>{r['log_ratio']:.3f}</td>"
                             f"<td class=n>{r['target_count']:,}</td><td class=n>{r['raw_count']:,}</td>"
                             f"<td>{grams}</td></tr>")
            parts.append("</table>")
    mix = report.get("label_mix")
    if mix:
        parts.append(f"<h2>Mix of {_e(mix['column'])}</h2>")
        parts.append(_img(images, "label_mix", f"{mix['column']} mix"))
        total_raw, total_sel = sum(mix["raw"].values()) or 1, sum(mix["selected"].values()) or 1
        parts.append(f"<table><tr><th>{_e(mix['column'])}</th><th>raw</th><th>selection</th></tr>")
        for label in sorted(set(mix["raw"]) | set(mix["selected"]), key=lambda l: -mix["selected"].get(l, 0)):
            r, s = mix["raw"].get(label, 0), mix["selected"].get(label, 0)
            parts.append(f"<tr><td>{_e(label)}</td><td class=n>{r:,} ({r / total_raw:.1%})</td>"
                         f"<td class=n>{s:,} ({s / total_sel:.1%})</td></tr>")
        parts.append("</table>")
    for side in ("highest", "lowest"):
        parts.append(f"<h2>{side.capitalize()}-weighted eligible documents</h2><table>"
                     "<tr><th>id</th><th>log weight</th><th>words</th><th>text</th></tr>")
        for d in report["documents"][side]:
            label = f"<br>{_e(d['label'])}" if d.get("label") is not None else ""
            text = _e(d["snippet"]) + (" …" if d["truncated"] else "")
            parts.append(f"<tr><td>{_e(d['id'])}{label}</td><td class=n>{d['log_weight']:.1f}</td>"
                         f"<td class=n>{d['num_words']:,}</td><td><pre>{text}</pre></td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def default_report_dir(out: str) -> str:
    return out.rstrip("/") + "_report"


def write_report(spark: SparkSession, out: str, report_dir: Optional[str] = None,
                 label_column: Optional[str] = "domain") -> dict[str, Any]:
    """Write report.json and report.html for the run under ``out``; return the report dict (with paths)."""
    target_dir = (report_dir or default_report_dir(out)).rstrip("/")
    run = run_config(spark, out)
    check_side_output(target_dir, "--report-dir", out, {"raw": run[0].raw, "target": run[0].target})
    report = collect_report(spark, out, label_column, run)
    images = plots(report)
    report["files"] = {"json": target_dir + "/report.json", "html": target_dir + "/report.html"}
    write_file(spark, report["files"]["json"], json.dumps(report, indent=2, sort_keys=True, default=str))
    write_file(spark, report["files"]["html"], render_html(report, images))
    return report


def format_summary(report: dict[str, Any]) -> str:
    kl = report["kl"]
    return "\n".join([
        f"dsel report — {report['out']}",
        f"  KL reduction       {kl['kl_reduction']:>12.4f}  (add-1e-8 smoothing: {kl['kl_reduction_epsilon']:.4f})",
        *[f"    {name}, against its own picks: {kl_text(value)}"
          for name, value in kl.get("kl_reduction_own", {}).items()],
        f"  selected           {report['counts']['selected']:>12,}",
        f"  wrote {report['files']['json']}",
        f"  wrote {report['files']['html']}",
        f"  time               {report['seconds']:>11.1f}s",
    ])


__all__ = ["collect_report", "plots", "render_html", "write_report", "format_summary", "raw_bucket_ngrams",
           "run_config"]
