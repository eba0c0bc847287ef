"""The ``dsel`` command: ``dsel {fit,score,select,run} [flags]``.

Every :class:`~dsel.config.DselConfig` field is a flag (``num_samples`` is ``--num-samples``),
and ``--config FILE.toml`` takes the same keys; flags given on the command line win over the
file.  ``--master`` and repeatable ``--conf KEY=VALUE`` work as in spark-submit.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import Any, NoReturn, Optional, Sequence

from dsel.config import FIELD_HELP, DselConfig
from dsel.errors import DselError, user_error

COMMANDS = {
    "fit": "fit raw and target histograms; write OUT/log_ratios",
    "score": "score every raw document; write OUT/weights and OUT/skipped",
    "select": "resample from OUT/weights; write OUT/selected",
    "run": "fit, score and select in one go (a rerun featurizes and scores only new documents)",
    "reproduce": "re-run a past selection into --out from the input versions and the fit it recorded",
    "evaluate": "compare DSIR with random and classifier baselines on a labelled raw pool (precision@k, KL reduction)",
    "report": "write report.json and a self-contained report.html for the run under --out",
}


def _flag_kwargs(field: dataclasses.Field) -> dict[str, Any]:
    hint = typing.get_type_hints(DselConfig)[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint
    doc = _with_default(FIELD_HELP.get(field.name, ""), field)
    if base is bool:
        return {"action": "store_true", "default": None, "help": doc}
    if typing.get_origin(base) is list:
        item = typing.get_args(base)[0]
        if item is float:
            return {"nargs": "+", "type": float, "default": None, "help": doc}
        return {"action": "append", "type": item, "default": None, "help": doc + " (repeatable)"}
    if base is int:
        return {"type": int, "default": None, "help": doc}
    if base is float:
        return {"type": float, "default": None, "help": doc}
    if typing.get_origin(base) is dict:
        return {"type": _json_object, "default": None, "help": doc}
    return {"type": str, "default": None, "help": doc}


def _with_default(doc: str, field: dataclasses.Field) -> str:
    """The help text with the key's default appended, unless it says it already or there is none to say."""
    default = field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc]
    if default is None or default is False or default in ("", [], {}) or "default" in doc.lower():
        return doc
    return f"{doc.rstrip('.')} (default {default})"


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose mistakes (a flag's bad value, a missing one) print one line, as dsel's
    own errors do, instead of the whole usage before it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"dsel: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dsel", description="DSIR data selection on Apache Spark, into Delta tables.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, text in COMMANDS.items():
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", help="TOML file with the same keys as the flags but --master and --conf")
        cmd.add_argument("--master", help="Spark master URL, as spark-submit's --master (default local[*])")
        cmd.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                         help="Spark setting, as spark-submit's --conf (repeatable)")
        for field in dataclasses.fields(DselConfig):
            cmd.add_argument("--" + field.name.replace("_", "-"), dest=field.name, **_flag_kwargs(field))
        if name == "reproduce":
            cmd.add_argument("--source-out", required=True, help="the output directory that holds the past run")
            cmd.add_argument("--source-run-id", required=True, help="the run id in SOURCE_OUT/runs to reproduce")
        if name in ("evaluate", "report"):
            from dsel.cli_extra import add_arguments

            add_arguments(cmd, name)
    return parser


def config_from_args(ns: argparse.Namespace) -> DselConfig:
    """Merge --config TOML with the flags (flags win) into a validated DselConfig."""
    flags = {f.name: getattr(ns, f.name) for f in dataclasses.fields(DselConfig) if getattr(ns, f.name) is not None}
    if "num_tokens_to_fit" in flags and flags["num_tokens_to_fit"] not in ("auto", "all"):
        flags["num_tokens_to_fit"] = _int_or_text(flags["num_tokens_to_fit"])
    if ns.config:
        return DselConfig.from_toml(ns.config, flags)
    return DselConfig.from_mapping(flags)


def _json_object(value: str) -> dict:
    import json

    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}); give an object such as '{{\"/data/raw\": 3}}'")
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("give a JSON object such as '{\"/data/raw\": 3}'")
    return parsed


def _int_or_text(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(ns)
        from dsel.pipeline import execute
        from dsel.session import build_session, parse_conf

        spark = build_session(ns.master, parse_conf(ns.conf), app_name=f"dsel {ns.command}")
        if ns.command in ("evaluate", "report"):
            from dsel.cli_extra import run_command

            print(run_command(spark, cfg, ns))
            return 0
        options = ({"source_out": ns.source_out, "source_run": ns.source_run_id}
                   if ns.command == "reproduce" else {})
        summary = execute(spark, cfg, ns.command, **options)
    except DselError as exc:
        print(f"dsel: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        error = user_error(exc)  # evaluate and report read inputs outside execute
        if error is None:
            raise
        print(f"dsel: error: {error}", file=sys.stderr)
        return 2
    print(summary.format())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
