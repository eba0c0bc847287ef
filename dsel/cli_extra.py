"""The flags and the body of ``dsel evaluate`` and ``dsel report`` (kept out of cli.py; imports are lazy)."""
from __future__ import annotations

import argparse
import json
import os

from dsel.config import DselConfig
from dsel.errors import DselError

EVALUATE_METHODS = ("random", "dsir-gumbel", "dsir-topk", "heuristic-classification", "heuristic-classification-topk")


def add_arguments(cmd: argparse.ArgumentParser, name: str) -> None:
    """The flags that ``evaluate`` and ``report`` take besides the DselConfig ones."""
    if name == "evaluate":
        cmd.add_argument("--label-column", required=True,
                         help="raw column holding each document's label, e.g. domain")
        cmd.add_argument("--target-label", required=True,
                         help="the label value the target stands for; k = eligible raw documents with it")
        cmd.add_argument("--methods", nargs="+", choices=EVALUATE_METHODS, default=list(EVALUATE_METHODS),
                         help="methods to compare (default: all)")
        cmd.add_argument("--k", type=int, default=None, help="documents per method (default: see --target-label)")
        cmd.add_argument("--json", dest="json_path", default=None, help="also write the result table as JSON here")
    else:
        cmd.add_argument("--report-dir", default=None,
                         help="where to write report.json and report.html (default: OUT_report beside OUT)")
        cmd.add_argument("--label-column", default="domain",
                         help="column whose mix in raw and selection is shown, when present (default domain)")


def run_command(spark, cfg: DselConfig, ns: argparse.Namespace) -> str:
    """Run ``evaluate`` or ``report``; return the text to print."""
    if ns.command == "evaluate":
        from dsel.evaluation import evaluate, format_table

        if ns.k is not None and ns.k <= 0:
            raise DselError("--k must be a positive number of documents")
        if ns.json_path:
            _check_destination(ns.json_path, "--json", directory=False)
            from dsel.write import check_side_output

            check_side_output(ns.json_path, "--json", cfg.out, {"raw": cfg.raw, "target": cfg.target})
        result = evaluate(spark, cfg, ns.label_column, ns.target_label, methods=ns.methods, k=ns.k)
        if ns.json_path:
            from dsel.write import write_file

            write_file(spark, ns.json_path, json.dumps(result, indent=2, sort_keys=True))
        return format_table(result)
    from dsel.report_html import format_summary, write_report

    cfg.require("out")
    if ns.report_dir:
        _check_destination(ns.report_dir, "--report-dir", directory=True)
    return format_summary(write_report(spark, cfg.out, ns.report_dir, ns.label_column))


def _check_destination(path: str, flag: str, directory: bool) -> None:
    """Before any work: a local ``path`` that cannot take what ``flag`` writes (a directory, or a file)."""
    from dsel.write import local_dir

    local = local_dir(path)
    if local is None:
        return
    if directory and os.path.isfile(local):
        raise DselError(f"{flag} {path} is a file; give a directory for report.json and report.html")
    if not directory and os.path.isdir(local):
        raise DselError(f"{flag} {path} is a directory; give the path of a file for the JSON table")
