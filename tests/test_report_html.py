"""``dsel report``: report.json and a self-contained report.html, checked in real headless Chromium.

Chromium is installed by .ci/run (Debian's ``chromium`` package); the test fails, never skips,
when it is missing.
"""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from html import escape

import pytest

from dsel.cli import main
from dsel.config import DselConfig
from dsel.errors import DselError
from dsel.evaluate import run_kl_reduction
from dsel.kernel import oracle_bucket, oracle_ngrams
from tests.conftest import sample_docs, write_jsonl

DOMAINS = ["sci_abstracts", "movie_reviews", "rust_rfcs", "shakespeare"]


@pytest.fixture(scope="module")
def report(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    raw, target = [], []
    for domain in DOMAINS:
        docs = sample_docs(domain, 80 if domain == "sci_abstracts" else 40, seed=5, max_chars=8000)
        if domain == "sci_abstracts":
            target, docs = docs[:40], docs[40:]
        raw += docs
    # a record repeating an id with another text and label: skipped as duplicate_id, so in no raw figure
    duplicate = {"id": raw[0]["id"], "text": raw[1]["text"] + " again", "domain": "DUPLICATE"}
    # and one without a label: counted as "(no value)" in the label mix (the report failed on it)
    raw[-1] = {k: v for k, v in raw[-1].items() if k != "domain"}
    raw_path = write_jsonl(root / "raw.jsonl", raw + [duplicate])
    target_path = write_jsonl(root / "target.jsonl", target)
    out = root / "out"
    assert main(["run", "--raw", raw_path, "--target", target_path, "--out", str(out), "--num-samples", "30",
                 "--seed", "0"]) == 0
    # Two methods on the same data, written beside the run; the report puts them side by side.
    assert main(["evaluate", "--raw", raw_path, "--target", target_path, "--out", str(out), "--label-column",
                 "domain", "--target-label", "sci_abstracts", "--methods", "random", "dsir-gumbel"]) == 0
    assert main(["report", "--out", str(out), "--report-dir", str(root / "rep")]) == 0
    data = json.loads((root / "rep" / "report.json").read_text())
    return {"root": root, "out": out, "json": data, "html": root / "rep" / "report.html", "target": target,
            "raw": raw}


def test_a_report_dir_that_is_a_file_is_refused(report, capsys):
    assert main(["report", "--out", str(report["out"]), "--report-dir", str(report["html"])]) == 2
    assert "--report-dir" in capsys.readouterr().err and report["html"].read_text().startswith("<!")
    # nor one inside --out (every later command on it refused the files) or inside an input's directory
    assert main(["report", "--out", str(report["out"]), "--report-dir", str(report["out"] / "rep")]) == 2
    assert "is inside --out" in capsys.readouterr().err and not (report["out"] / "rep").exists()
    from dsel.write import check_side_output

    for raw, inside in (("/d/raw", "/d/raw/rep"), ("/d/*.jsonl", "/d/rep"), ("/d/{a,b}.jsonl", "/d/rep")):
        with pytest.raises(DselError, match=f"--report-dir {inside} is inside the raw input {re.escape(raw)}, whose"):
            check_side_output(inside, "--report-dir", "/o", {"raw": [raw]})
    check_side_output("/d/rep", "--report-dir", "/o", {"raw": ["/d/raw.jsonl"]})  # beside a file: no harm


def test_an_evaluated_out_still_takes_the_pipelines_commands(report, tmp_path, capsys):
    """OUT/evaluation is a directory of two tables, not one: it was taken for a foreign file, and every
    later command on an evaluated --out failed."""
    out = tmp_path / "out"
    shutil.copytree(report["out"], out)
    raw = str(tmp_path / "raw.jsonl")  # a copy, which loses records below
    shutil.copy(report["root"] / "raw.jsonl", raw)
    # a fit with another target, not scored: the select follows the weights' fit and says so, and the
    # report shows that fit (it showed the later fit's KL reduction, buckets and target)
    other = write_jsonl(tmp_path / "other.jsonl", [d for d in report["raw"] if d.get("domain") == "shakespeare"])
    assert main(["fit", "--raw", raw, "--target", other, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["select", "--raw", raw, "--out", str(out), "--num-samples", "12", "--seed", "1"]) == 0
    printed = capsys.readouterr()
    kl = re.search(r"KL reduction +(-?[0-9.]+)", printed.out).group(1)
    assert "version 0, and a later fit (version 1) is not in these weights" in printed.out + printed.err
    # its report names the run's target, from the fit (the select was given none)
    assert main(["report", "--out", str(out), "--report-dir", str(tmp_path / "rep")]) == 0
    target = str(report["root"] / "target.jsonl")
    made = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert made["params"]["target"] == [target] and list(made["buckets"]) == [target]
    assert f"{made['kl']['kl_reduction']:.4f}" == kl and made["fit_version"] == 0 and not made["notes"]
    assert f"; target {escape(target)}; method" in (tmp_path / "rep" / "report.html").read_text()
    # the raw input loses the two highest-weighted documents: the report says so (it showed 3 of 5 unsaid)
    gone = {d["id"] for d in made["documents"]["highest"][:2]}
    with open(raw, encoding="utf-8") as fh:
        kept = [line for line in fh if json.loads(line)["id"] not in gone]
    with open(raw, "w", encoding="utf-8") as fh:
        fh.writelines(kept)
    assert main(["report", "--out", str(out), "--report-dir", str(tmp_path / "rep")]) == 0
    notes = json.loads((tmp_path / "rep" / "report.json").read_text())["notes"]
    assert notes == ["2 scored documents are no longer in the raw input (it changed since they were scored): the raw "
                     "label mix leaves them out", "2 of the highest-weighted eligible documents are no longer in the "
                     "raw input (it changed since they were scored) and are not shown"]


def test_report_json_holds_the_kl_reduction_and_the_label_mix(spark, report):
    data = report["json"]
    cfg = DselConfig.from_mapping({**data["params"], "out": str(report["out"])})
    assert data["kl"]["kl_reduction"] == pytest.approx(run_kl_reduction(spark, cfg)["kl_reduction"], rel=1e-12)
    assert data["kl"]["kl_reduction"] > 0
    mix = data["label_mix"]
    assert mix["column"] == "domain" and sum(mix["selected"].values()) == 30 == data["counts"]["selected"]
    assert max(mix["selected"], key=mix["selected"].get) == "sci_abstracts"
    assert sum(mix["raw"].values()) == data["counts"]["scored"] == 160 and mix["raw"]["(no value)"] == 1
    assert sum(data["log_weight"]["selected"]) == 30 and sum(data["log_weight"]["raw"]) == 160
    highest = data["documents"]["highest"]
    assert len(highest) == 5 and highest[0]["log_weight"] >= highest[-1]["log_weight"]
    assert all(len(d["snippet"]) <= 400 for d in highest + data["documents"]["lowest"])



def test_a_report_beside_an_out_given_as_a_uri(spark, report):
    # --out file:///... was written to a local directory named 'file:' in the working directory
    assert main(["report", "--out", f"file://{report['out']}"]) == 0
    assert json.loads((report["root"] / "out_report" / "report.json").read_text())["kl"] == report["json"]["kl"]
    # other schemes (s3a://, abfss://, dbfs:/) are written through Hadoop's file system: here its local one
    from dsel.write import _hadoop_write

    _hadoop_write(spark, f"file://{report['root']}/hadoop/report.json", "día".encode())
    assert (report["root"] / "hadoop" / "report.json").read_text(encoding="utf-8") == "día"

def test_report_ngrams_come_from_the_fit_and_really_hash_into_their_buckets(spark, report):
    ratios = spark.read.format("delta").load(str(report["out"] / "log_ratios"))
    stored = {r["bucket"]: r["ngrams"] for r in ratios.select("bucket", "ngrams").collect()}
    target_grams = {g for d in report["target"] for g, _ in oracle_ngrams(d["text"])}
    # The fit kept up to 3 real target n-grams for every bucket the target uses, each hashing into it.
    used = {r["bucket"] for r in ratios.where("target_count > 0").select("bucket").collect()}
    assert {b for b, grams in stored.items() if grams} == used
    assert all(oracle_bucket(g) == b and g in target_grams for b, grams in stored.items() for g in grams)
    assert all(1 <= len(stored[b]) <= 3 for b in used)
    buckets = next(iter(report["json"]["buckets"].values()))
    html = report["html"].read_text(encoding="utf-8")
    for side in ("highest", "lowest"):
        rows = buckets[side]
        assert len(rows) == 15
        for row in rows:
            assert all(oracle_bucket(g) == row["bucket"] for g in row["ngrams"])
            assert all(f'<span class="ngram">{escape(g)}</span>' in html for g in row["ngrams"])
    # The highest buckets show the fit's n-grams, read from the table; the lowest, raw n-grams.
    assert all(row["ngrams"] == stored[row["bucket"]] and row["ngrams"] for row in buckets["highest"])
    raw_grams = {g for d in report["raw"] for g, _ in oracle_ngrams(d["text"])}
    assert sum(len(row["ngrams"]) for row in buckets["lowest"]) > 15
    assert all(g in raw_grams for row in buckets["lowest"] for g in row["ngrams"])
    high = [r["log_ratio"] for r in buckets["highest"]]
    low = [r["log_ratio"] for r in buckets["lowest"]]
    assert high == sorted(high, reverse=True) and low == sorted(low) and min(high) > 0 > max(low)


def test_report_html_renders_in_headless_chromium(report):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "headless Chromium is needed: apt-get install -y chromium (.ci/run does it)"
    profile = tempfile.mkdtemp(prefix="dsel-chromium-")
    try:
        dom = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--dump-dom", report["html"].as_uri()],
            capture_output=True, text=True, timeout=120, check=True).stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    kl = report["json"]["kl"]["kl_reduction"]
    assert re.search(r'id="kl-reduction"[^>]*>' + re.escape(f"{kl:.4f}") + "<", dom)
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', dom)
    assert {alt for alt, _ in images} >= {"log-weight distribution", "length distribution", "domain mix",
                                          "KL reduction per method"}
    assert len(images) == 5
    methods = {m["method"]: m for m in report["json"]["methods"]}
    assert set(methods) == {"random", "dsir-gumbel"}
    assert methods["dsir-gumbel"]["kl_reduction"] > methods["random"]["kl_reduction"]
    for m in methods.values():
        assert re.search(rf"<td>{m['method']}</td><td class=\"n\">{m['kl_reduction']:.4f}</td>", dom), m
    # the page names the evaluation's own run and targets: a later select would not change that section
    evaluated = {m["run_id"] for m in methods.values()}
    assert len(evaluated) == 1 and evaluated.isdisjoint({report["json"]["params"].get("run_id"), None})
    assert f"its run <code>{evaluated.pop()}</code> (targets {report['root'] / 'target.jsonl'}, written 20" in dom
    from PIL import Image

    for alt, data in images:
        picture = Image.open(io.BytesIO(base64.b64decode(data)))
        assert picture.format == "PNG" and picture.size[0] > 200 and picture.size[1] > 50, alt
    # Self-contained: no external resource.
    assert not re.search(r'(src|href)="(https?:|//)', dom)
    assert "Highest-weighted eligible documents" in dom and "Mix of domain" in dom
